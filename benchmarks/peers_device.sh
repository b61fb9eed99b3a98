#!/usr/bin/env bash
# RecBole's SASRec beside our backbone (issue 24) on one GPU machine, the three Amazon datasets at once:
# per dataset our backbone, then RecBole `defaults` and `ours` side by side, both tools on the GPU
# (benchmarks/bench_peers.py --device cuda). On 2 CPU cores RecBole needs hours per run; a GPU
# machine runs all of it inside the device tool's 10-minute call.
#
#   bash benchmarks/peers_device.sh --pack      here: data and wheels into .peers/ and .whl/ (git-ignored)
#   bash benchmarks/peers_device.sh             there (device tool: carry [".peers", ".whl"]); figures in $OUT
#   bash benchmarks/peers_device.sh --dry-run   here, on the CPU: the same steps on Toys, tiny (1 epoch each)
#
# What travels (the tool's 64 MiB hold the repository, about 12 MB, and about 47 MB of this): per
# dataset one archive of its raw Amazon files and the dataset prepared here with its config and
# `data.feature_dtype=float16` (item features stored in half precision: the float32 text vectors of
# the three catalogs alone are 65 MB), and the wheels the CUDA image lacks (recbole, colorlog,
# texttable, webdataset, braceexpand; RecBole 1.2.1 also passes tests/data/test_recbole_export.py
# with pandas 3.1.1, so the image's pandas serves). All nine runs start at once; each RecBole run
# stops after the epoch that passes PEERS_SECONDS (default 300) of its own clock, and every run is
# ended at PEERS_DEADLINE (default 420 s) wall time, RecBole keeping its last finished epoch
# (marked unfinished unless it stopped by itself). Then one table per dataset (about a minute):
# $OUT gets <ds>.md and the logs (peers_logs.tgz). Device tool: timeout_s 600.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATASETS=(beauty sports toys)
MODE="${1:-run}"
SECONDS_BUDGET="${PEERS_SECONDS:-300}"
DEADLINE="${PEERS_DEADLINE:-420}"
WHEELS=(recbole==1.2.1 colorlog==4.7.2 texttable==1.7.0 webdataset==1.0.2 braceexpand==0.1.7)

overrides() {  # the dataset's config as prepared by --pack
  echo "data.path=data_cache/amazon data.feature_dtype=float16 data.prepared_dir=data_cache/$1_f16" \
       "runtime.run_dir=runs/peers_device/$1"
}

if [[ "$MODE" == "--pack" ]]; then
  rm -rf .peers .whl
  mkdir -p .peers .whl data_cache/amazon
  cp ../shared/data/amazon/* data_cache/amazon/
  for ds in "${DATASETS[@]}"; do
    name="$(sed -n 's/^  name: *//p' "configs/$ds.yaml")"
    # shellcheck disable=SC2046
    .venv/bin/rodpo data prepare --config "configs/$ds.yaml" $(overrides "$ds") runtime.progress=false
    tar czf ".peers/$ds.tgz" "data_cache/${ds}_f16" data_cache/amazon/"$name"*
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  du -ch .peers .whl | tail -1
  exit 0
fi

PY=python3
DEVICE=cuda
EXTRA=()
SHORT=()
if [[ "$MODE" == "--dry-run" ]]; then  # rehearsal on this machine's venv: one dataset, one epoch each
  PY="$ROOT/.venv/bin/python"
  DEVICE=cpu
  DATASETS=(toys)
  EXTRA=(--max-epochs 1)
  SHORT=(pretrain.epochs=1)
  DEADLINE="${PEERS_DEADLINE:-1500}"
  OUT="${OUT:-$ROOT/runs/peers_device/out}"
fi
OUT="${OUT:?set OUT (the device tool sets it)}"
mkdir -p "$OUT" runs/peers_device/logs
PATHS="$(mktemp -d)"
ln -s "$ROOT/kernels" "$PATHS/rodpo_kernels"  # the kernels/ folder is the package rodpo_kernels
if [[ "$MODE" != "--dry-run" ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PATHS/site" .whl/*.whl
fi
export PYTHONPATH="$PATHS:$ROOT:$PATHS/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=2
for ds in "${DATASETS[@]}"; do
  [[ -f "data_cache/${ds}_f16/manifest.json" ]] || tar xzf ".peers/$ds.tgz"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c "import recbole.trainer, recbole.model.sequential_recommender, rodpo_dist.cli, rodpo_kernels" \
  || { echo "an import fails: nothing run"; exit 1; }

bench() {  # dataset, variants, extra arguments: the benchmark's command line in CMD
  local ds="$1" variants="$2"
  shift 2
  # shellcheck disable=SC2207
  CMD=("$PY" benchmarks/bench_peers.py --config "configs/$ds.yaml" --out runs/peers_device --threads 2
       --device "$DEVICE" --variants "$variants" "$@" $(overrides "$ds") "${SHORT[@]}")
}

run_until() {  # log file, then CMD, ended at the deadline (a RecBole run keeps its last finished epoch)
  timeout --kill-after=10 "$DEADLINE" "${CMD[@]}" > "$1" 2>&1 || echo "exit $? (deadline $DEADLINE s): ${CMD[*]}" >> "$1"
}

# every run at once: our backbone, RecBole `defaults` and RecBole `ours` of each dataset; the
# training phase ends by PEERS_DEADLINE seconds, leaving time for the tables
pids=()
for ds in "${DATASETS[@]}"; do
  bench "$ds" ""
  run_until "runs/peers_device/logs/$ds-backbone.log" &
  pids+=("$!")
  for variant in defaults ours; do
    bench "$ds" "$variant" --peers-only --max-seconds "$SECONDS_BUDGET" "${EXTRA[@]}"
    run_until "runs/peers_device/logs/$ds-$variant.log" &
    pids+=("$!")
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
status=0
tables=()
for ds in "${DATASETS[@]}"; do  # one table per dataset from what finished or stopped (no training)
  bench "$ds" defaults,ours --no-train
  ("${CMD[@]}" > "runs/peers_device/logs/$ds-table.log" 2>&1 &&
   cp "runs/peers_device/${ds}_f16/table.md" "$OUT/$ds.md") &
  tables+=("$!")
done
for pid in "${tables[@]}"; do wait "$pid" || status=1; done
tar czf "$OUT/peers_logs.tgz" -C runs/peers_device logs
tail -n 3 runs/peers_device/logs/*.log
exit "$status"
