#!/usr/bin/env bash
# Kernel checks for a machine with a CUDA GPU: the kernel tests with compiled Triton (no
# interpreter; the Triton backend runs on CUDA tensors), then the GPU benchmarks.
# Usage: bash kernels/gpu_check.sh   (from anywhere; about 2-4 minutes on one H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
export TRITON_INTERPRET=0
python -m pytest tests/kernels -q -p no:cacheprovider
python -m rodpo_kernels.bench topk --device cuda --dtype bfloat16 --users 1024 --items 10000000 \
  --k 100 --max-naive-gib 64
python -m rodpo_kernels.bench dpo --device cuda --users 4096 --items 1000000 --neg 1 16
