#!/usr/bin/env bash
# The GPU checks, run on a lent GPU machine (see the device tool) from the repository root:
#   bash benchmarks/gpu_check.sh [out-dir]
# The gpu-marked tests, then the re-ranking / System 1 latency on the GPU and, on the same
# host, on one CPU thread. Expects torch with CUDA; the project's other pure-Python needs
# (omegaconf, antlr4, diffusers, importlib_metadata) may come as wheels in .whl/.
set -u
out=${1:-.}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/pytest_gpu.log"
timeout 120 python3 benchmarks/bench_rerank.py --device cuda --repeats 50 | tee "$out/rerank_cuda.json"
OMP_NUM_THREADS=1 timeout 120 python3 benchmarks/bench_rerank.py --device cpu --repeats 30 | tee "$out/rerank_cpu_same_host.json"
