#!/usr/bin/env bash
# The GPU check, as is on a bare CUDA image (python3 with torch and triton; no deepspeed, no
# webdataset, this package not installed): compiled Triton kernel tests, fused top-K and DPO-loss
# benchmarks, bf16 CUDA pretraining/alignment steps against CPU fp32. Figures: $OUT/gpu_check.json
# (default runs/gpu_check/), log: $OUT/gpu_check.log. About 5 minutes on one H200.
# Usage: bash kernels/gpu_check.sh [--dry-run] [benchmarks/gpu_check.py options]
#   --dry-run  stops before anything needs CUDA (imports, the CPU half of the training steps, the JSON)
# Packages missing on the image travel as wheels in .whl/ (webdataset, braceexpand: see
# kernels/BENCHMARKS.md); without them, an installed environment must provide them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/runs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PATHS="$(mktemp -d)"
ln -s "$ROOT/kernels" "$PATHS/rodpo_kernels"  # the kernels/ folder is the package rodpo_kernels
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PATHS/site" "$ROOT"/.whl/*.whl
fi
export PYTHONPATH="$PATHS:$ROOT:$PATHS/site${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
set -o pipefail
"$PY" "$ROOT/benchmarks/gpu_check.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
