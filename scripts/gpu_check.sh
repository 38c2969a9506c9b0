#!/usr/bin/env bash
# One-shot GPU check for the device machine (torch preinstalled; hydra/omegaconf from .whl/).
# Writes everything it prints to $OUT (or ./gpu_out).
set -uo pipefail
OUT="${OUT:-gpu_out}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl && export PYTHONPATH="$HOME/site:."
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/device.txt"
timeout 200 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 150 python scripts/bench_optimizer.py --device cuda --rounds 10 2>&1 | tee "$OUT/bench_optimizer_cuda.txt"
timeout 60 python scripts/bench_curvature.py --device cuda --rounds 10 2>&1 | tee "$OUT/bench_curvature_cuda.txt"
timeout 60 python scripts/bench_bnp.py --device cuda --rounds 20 2>&1 | tee "$OUT/bench_bnp_cuda.txt"
timeout 240 python scripts/bench_sweep.py --device cuda --cases mnist_mlp 2>&1 | tee "$OUT/bench_sweep_cuda.txt"
