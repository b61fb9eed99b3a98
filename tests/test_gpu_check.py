"""The GPU check's rehearsal: `kernels/gpu_check.sh --dry-run` runs where no GPU (and no DeepSpeed) is."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_the_json_without_cuda_or_deepspeed(tmp_path):
    blocked = tmp_path / "blocked"  # the bare device image has no DeepSpeed: importing it must fail here too
    blocked.mkdir()
    (blocked / "deepspeed.py").write_text("raise ModuleNotFoundError(\"No module named 'deepspeed'\")\n")
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(blocked)}
    proc = subprocess.run(["bash", str(ROOT / "kernels" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["triton_interpret"] == "0"
    assert all(report[s] == "skipped: --dry-run (needs CUDA)" for s in ("kernel_tests", "topk", "dpo"))
    runs = report["training"]["runs"]
    assert set(runs) == {"pretrain_cpu", "align_cpu"}
    scale = report["scale_steps"]["rows"]  # the large-catalog steps, CPU-sized: sparse table rows < catalog
    assert [(r["loss"], r["table"]) for r in scale] == [("sampled", "sparse"), ("full", "dense")]
    assert scale[0]["table_rows_with_gradient"] < scale[1]["table_rows_with_gradient"] == 2000
    assert all(r["steps"] > 0 and r["last_loss"] > 0 for r in runs.values())
    assert (out / "gpu_check.log").is_file()
