#!/usr/bin/env bash
# CI: the project as users get it from a built wheel, not from the editable install the tests use.
#
# 1. Builds the wheel from the files a clean clone holds (tracked and untracked-but-not-ignored files,
#    copied to a temporary folder, so nothing built or cached here can leak into it).
# 2. Installs it without -e and without dependencies into a fresh virtualenv. The dependencies are
#    not downloaded again (a CPU torch must never be replaced by a multi-GB CUDA build): one .pth line
#    puts the project virtualenv's site-packages on the fresh one's path. A path added by a .pth
#    line is only appended to sys.path: the .pth files inside it are not run, so the editable
#    install's import hook (`__editable__.rodpo_dist-*.pth`) stays off, and `rodpo_dist` and
#    `rodpo_kernels` can only come from the wheel. The check below asserts exactly that.
# 3. From a folder outside the checkout: `rodpo --help`, `import rodpo_kernels` (with the compiled
#    top-K source shipped beside it), and a tiny data prepare -> pretrain -> recommend.
#
# Usage: .ci/wheel_check.sh   (VENV: the project virtualenv, default .venv; run by `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-.venv}
[[ $VENV = /* ]] || VENV="$REPO/$VENV"
PY="$VENV/bin/python"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rodpo-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # the fresh virtualenv must see the wheel only
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"  # never rebuild the shared extension cache's entries
step() { printf '\n== wheel check: %s\n' "$*"; }

step "build the wheel from a clean copy of the checkout"
mkdir "$WORK/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) \
    | tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/src" -xf -
else  # an exported tree without git
  tar -C "$REPO" --exclude=./.venv --exclude=./runs --exclude=./data_cache --exclude=./build \
      --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$WORK/src" -xf -
fi
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/rodpo_dist-*.whl)
echo "$(basename "$WHEEL"): $("$PY" -m zipfile -l "$WHEEL" | grep -c '\.py ') Python files"

step "install it (no -e, no dependencies) into a fresh virtualenv"
BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
"$BASE" -m venv --without-pip "$WORK/venv"
FRESH="$WORK/venv/bin/python"
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  > "$("$FRESH" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/project_dependencies.pth"
# pip (from the project virtualenv) installs into the fresh one: --ignore-installed, because it also sees
# the editable install's metadata on the appended path
"$FRESH" -m pip install -q --no-deps --no-index --ignore-installed "$WHEEL"

cd "$WORK"
step "rodpo_dist and rodpo_kernels come from the wheel, not from the checkout"
"$FRESH" - "$REPO" <<'EOF'
import importlib.util, pathlib, sys, sysconfig
repo, site = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
import rodpo_dist, rodpo_kernels
for module in (rodpo_dist, rodpo_kernels):
    where = pathlib.Path(module.__file__).resolve()
    assert where.is_relative_to(site) and not where.is_relative_to(repo), f"{module.__name__} from {where}"
assert not any("Editable" in getattr(f, "__name__", "") for f in sys.meta_path), sys.meta_path
assert str(repo) not in map(str, sys.path), sys.path
select = pathlib.Path(importlib.util.find_spec("rodpo_kernels.topk_scoring").origin).with_name("select.cpp")
assert select.is_file(), f"{select} is not in the wheel"
print(f"rodpo_dist: {pathlib.Path(rodpo_dist.__file__).parent}")
EOF

step "rodpo --help, import rodpo_kernels"
"$WORK/venv/bin/rodpo" --help > help.txt && head -3 help.txt
"$FRESH" -c 'import rodpo_kernels; from rodpo_kernels import dpo_loss, topk_scores; print("rodpo_kernels:", rodpo_kernels.__file__)'

step "a tiny data prepare -> pretrain -> recommend"
TINY=(data.synthetic.num_items=150 data.synthetic.num_users=100 data.synthetic.num_clusters=6
      data.synthetic.max_seq_len=10 model.hidden=16 model.heads=1 model.max_len=8 pretrain.epochs=1
      runtime.progress=false data.prepared_dir="$WORK/data" runtime.run_dir="$WORK/runs")
"$WORK/venv/bin/rodpo" data prepare "${TINY[@]}" | tail -2
"$WORK/venv/bin/rodpo" pretrain "${TINY[@]}"
printf '%s\n' '{"user": "a", "history": [3, 17, 42]}' '{"user": "b", "history": [150]}' > requests.jsonl
"$WORK/venv/bin/rodpo" recommend --checkpoint "$WORK/runs/pretrain/best" --input requests.jsonl --k 5 --out recs.jsonl
"$FRESH" - <<'EOF'
import json
recs = [json.loads(line) for line in open("recs.jsonl")]
assert [r["user"] for r in recs] == ["a", "b"] and all(len(r["items"]) == 5 for r in recs), recs
assert not {3, 17, 42} & set(recs[0]["items"]) and 150 not in recs[1]["items"], recs
print("recommend:", recs[0]["items"])
EOF
step "passed"
