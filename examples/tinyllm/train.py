"""Train the tiny Llama the tinyllm example builds (about a minute on 2 CPU cores).

  python -m examples.tinyllm.train

Text that ships with the machine: the license texts in /usr/share/common-licenses
and the docstrings of Python's standard library. A byte-level BPE tokenizer (vocab
2048, `tokenizers`) and a 4-layer Llama (hidden 128, 4 heads; about 1.6M
parameters, `transformers`) are trained on it; the model folder
(examples/tinyllm/model: config.json, model.safetensors, tokenizer files) is
a Hugging Face checkpoint that transformers and vLLM load as is. Held-out text
goes to examples/tinyllm/data (validation text, calibration text, prompts). The
trained weights are committed, so builds never retrain; rerunning gives a
similar, not identical, model (thread timing).
"""

from __future__ import annotations

import ast
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
DATA = HERE / "data"
VOCAB = 2048
# a plain chat template, so the checkpoint carries one as real chat models do
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
CONTEXT = 128


def corpus() -> list[str]:
    """Paragraphs of local English text."""
    parts: list[str] = []
    lic = Path("/usr/share/common-licenses")
    if lic.is_dir():
        for f in sorted(lic.iterdir()):
            if f.is_file():
                parts += f.read_text(errors="ignore").split("\n\n")
    stdlib = Path(ast.__file__).parent
    for f in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(f.read_text(errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts += doc.split("\n\n")
    paras = [" ".join(p.split()) for p in parts]
    return [p for p in paras if len(p) > 60]


def main() -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    random.seed(0)
    torch.manual_seed(0)
    paras = corpus()
    random.shuffle(paras)
    n_val = max(40, len(paras) // 50)
    val, calib, train = paras[:n_val], paras[n_val : 2 * n_val], paras[2 * n_val :]
    print(f"{len(paras)} paragraphs, {sum(map(len, train)) / 1e6:.2f} MB of training text", file=sys.stderr)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(train, trainer)
    MODEL.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE  # transformers 5 writes it to chat_template.jinja
    fast.save_pretrained(str(MODEL))

    ids = []
    for p in train:
        ids += [fast.bos_token_id, *tok.encode(p).ids, fast.eos_token_id]
    data = torch.tensor(ids, dtype=torch.long)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, batch = 400, 16
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (batch,))
        x = torch.stack([data[s : s + CONTEXT] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    model.generation_config.pad_token_id = fast.eos_token_id
    model.save_pretrained(str(MODEL), safe_serialization=True)

    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "validation.txt").write_text("\n".join(val) + "\n")
    (DATA / "calibration.txt").write_text("\n".join(calib) + "\n")
    prompts = [" ".join(p.split()[:8]) for p in val[:16]]
    (DATA / "prompts.txt").write_text("\n".join(prompts) + "\n")
    with torch.no_grad():
        nll, count = 0.0, 0
        for p in val:
            x = torch.tensor([[fast.bos_token_id, *tok.encode(p).ids][:CONTEXT]])
            out = model(input_ids=x, labels=x)
            nll += out.loss.item() * (x.shape[1] - 1)
            count += x.shape[1] - 1
    ppl = float(torch.exp(torch.tensor(nll / count)))
    (MODEL / "training.json").write_text(
        json.dumps(
            {
                "parameters": sum(p.numel() for p in model.parameters()),
                "steps": steps,
                "batch": batch,
                "context": CONTEXT,
                "train_paragraphs": len(train),
                "validation_perplexity": round(ppl, 2),
                "seconds": round(time.time() - t0, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"held-out perplexity {ppl:.1f} (uniform: {VOCAB})", file=sys.stderr)


if __name__ == "__main__":
    main()
