"""LLM targets (task: text-generation): vLLM, TensorRT-LLM."""
