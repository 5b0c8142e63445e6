# mscompile on NVIDIA's TensorRT image, for users with NVIDIA GPUs.
# NOT BUILT OR RUN in mscompile's own CI: the build machines have no Docker
# engine, no GPU and cannot reach nvcr.io (see README, "What ran where").
#
#   docker build -t mscompile .
#   docker run --gpus all --rm -v $PWD:/work -w /work mscompile build examples/digits/model.yaml
#   docker run --gpus all --rm -w /opt/mscompile --entrypoint python mscompile -m pytest -m tensorrt
FROM nvcr.io/nvidia/tensorrt:25.01-py3

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/mscompile
COPY pyproject.toml README.md ./
COPY compiler ./compiler
COPY passes ./passes
COPY examples ./examples
COPY calibration_data ./calibration_data
COPY tests ./tests
# torch comes from the CUDA index inside the image's own pip configuration;
# keep it in the range pyproject.toml allows.
RUN python -m pip install --upgrade pip \
 && python -m pip install "torch>=2.6,<2.15" \
 && python -m pip install -e ".[dev,tensorrt]"

WORKDIR /work
ENTRYPOINT ["mscompile"]
CMD ["--help"]
