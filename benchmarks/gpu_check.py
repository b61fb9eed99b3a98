"""GPU check: compiled Triton kernel tests, GPU kernel benchmarks and bf16 CUDA training steps.

Run it through ``bash kernels/gpu_check.sh [--dry-run]`` (that script makes ``rodpo_kernels`` and
``rodpo_dist`` importable by path on a bare image). Every section appends to one JSON of figures
(``<out>/gpu_check.json``, rewritten after each section, so a run cut short keeps what it measured):

- ``kernel_tests``: ``pytest tests/kernels`` with ``TRITON_INTERPRET=0`` (the tests put the Triton
  backend on CUDA tensors when a device is present): fp32, bf16 and fp16, odd shapes included.
- ``topk``: fused top-K (``topk_scores``, Triton) against torch ``mm`` + ``topk`` at each catalog size
  and dtype: best / median time, TFLOP/s and share of the bf16 peak, peak extra memory, and each
  path's id sets against the exact fp32 top-K of the same stored values for every user.
- ``dpo``: fused DPO loss forward + backward against the PyTorch reference: time, loss and
  gradients compared.
- ``training``: ``rodpo pretrain`` and ``rodpo align`` (plain engine) on the demo config for one epoch
  each, CPU fp32 and CUDA bf16 from the same data and initial weights (dropout off, so the two differ
  only by precision and device): per-step losses compared within a stated tolerance, sequences/s.

- ``scale_steps``: pretraining steps of the demo-size model at 1M, 10M and 100M items on one GPU: the
  sampled softmax with the sparse item table and lazy AdamW, and the full softmax with a dense table
  (up to 10M): seconds per step, peak memory, table rows with a gradient.

``--dry-run`` stops before anything needs CUDA: it checks the imports, runs the training section's
CPU half and the scale steps on a tiny catalog and writes the JSON, so device minutes are not spent
on a typo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BF16_PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16 (NVIDIA datasheet); the measured matmul is reported beside it
# CUDA bf16 vs CPU fp32, relative, per logged step: bf16 keeps 8 mantissa bits (2^-8 = 0.4% per
# rounding) and the runs drift apart over the steps; alignment also re-ranks pool candidates whose
# scores differ by less than bf16 resolves, which can change the sampled negatives.
LOSS_RTOL = {"pretrain": 0.02, "align": 0.05}


class Report:
    """The JSON of figures, rewritten after every section."""

    def __init__(self, out: Path) -> None:
        self.path = out / "gpu_check.json"
        self.data: dict = {}

    def put(self, section: str, value) -> None:
        self.data[section] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"[{section}] {json.dumps(value, default=str)[:2000]}", flush=True)


def environment(dry_run: bool) -> dict:
    import triton

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
           "host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    if dry_run:
        return env
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192**3 / (time.perf_counter() - tic) / 1e12
    return env | {"device": props.name, "sms": props.multi_processor_count,
                  "memory_gib": round(props.total_memory / 2**30, 1),
                  "bf16_peak_tflops_datasheet": BF16_PEAK_TFLOPS,
                  "bf16_matmul_8192_tflops_measured": round(measured, 1)}


def kernel_tests(out: Path, timeout: int) -> dict:
    """pytest tests/kernels, compiled; counts from the junit XML."""
    xml = out / "kernel_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=os.environ | {"TRITON_INTERPRET": "0"})
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout} s", "tail": (exc.stdout or "")[-3000:]}
    (out / "kernel_tests.log").write_text(proc.stdout + proc.stderr)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    return {"returncode": proc.returncode, "summary": summary, **counts, "failed_tests": failed[:40],
            "seconds": round(time.perf_counter() - tic, 1)}


def _exact_topk_ids(users: torch.Tensor, items: torch.Tensor, k: int, chunk: int = 64) -> torch.Tensor:
    """Top-k ids of the exact fp32 product of the stored values, a chunk of users at a time."""
    items32 = items.float()
    return torch.cat([(users[lo:lo + chunk].float() @ items32.T).topk(k, dim=1).indices
                      for lo in range(0, users.shape[0], chunk)])


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose id sets are equal."""
    return float((a.sort(dim=1).values == b.sort(dim=1).values).all(dim=1).float().mean())


def topk(sizes: list[int], dtypes: list[str], users: int, dim: int, k: int, repeats: int) -> list[dict]:
    from rodpo_kernels import topk_scores
    from rodpo_kernels.bench import _measure

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n_items in sizes:
        for name in dtypes:
            dtype = getattr(torch, name)
            u = torch.randn(users, dim, device="cuda", generator=gen).to(dtype)
            items = torch.randn(n_items, dim, device="cuda", generator=gen).to(dtype)
            exact = _exact_topk_ids(u, items, k)
            flops = 2 * users * n_items * dim
            for path, fn in (("torch_mm_topk", lambda: (u @ items.T).topk(k, dim=1)),
                             ("fused_triton", lambda: topk_scores(u, items, k, backend="triton"))):
                m = _measure(fn, "cuda", repeats)
                ids = m.pop("result")[1]
                tflops = flops / m["best_s"] / 1e12
                rows.append({"items": n_items, "users": users, "dim": dim, "k": k, "dtype": name, "path": path,
                             "best_ms": round(m["best_s"] * 1e3, 3), "median_ms": round(m["median_s"] * 1e3, 3),
                             "tflops": round(tflops, 2), "share_of_bf16_peak": round(tflops / BF16_PEAK_TFLOPS, 4),
                             "peak_extra_gib": round(m["peak_bytes"] / 2**30, 3),
                             "id_sets_equal_exact_fp32": _same_sets(ids, exact)})
                print(rows[-1], flush=True)
                del ids
            del u, items, exact
            torch.cuda.empty_cache()
    for row in rows:
        base = next(r for r in rows if r["items"] == row["items"] and r["dtype"] == row["dtype"]
                    and r["path"] == "torch_mm_topk")
        row["time_vs_torch"] = round(row["best_ms"] / base["best_ms"], 3)
        row["memory_vs_torch"] = round(row["peak_extra_gib"] / max(base["peak_extra_gib"], 1e-9), 4)
    return rows


def dpo(contexts: int, n_items: int, dim: int, negs: list[int], dtypes: list[str], repeats: int) -> list[dict]:
    from rodpo_kernels import dpo_loss
    from rodpo_kernels.bench import _measure

    rows = []
    for name in dtypes:
        dtype = getattr(torch, name)
        for m in negs:
            gen = torch.Generator(device="cuda").manual_seed(m)
            make = lambda *shape: torch.randn(*shape, device="cuda", generator=gen).to(dtype)  # noqa: E731
            h, h_ref, items, ref_items = make(contexts, dim), make(contexts, dim), make(n_items, dim), make(n_items, dim)
            pos = torch.randint(1, n_items, (contexts,), device="cuda", generator=gen)
            neg = torch.randint(1, n_items, (contexts, m), device="cuda", generator=gen)
            variant = "sdpo" if m > 1 else "pairwise"
            out = {}
            for backend in ("reference", "triton"):
                hh, ii = h.clone().requires_grad_(), items.clone().requires_grad_()

                def step():
                    hh.grad = ii.grad = None
                    loss = dpo_loss(hh, h_ref, ii, pos, neg, 0.1, ref_items=ref_items, variant=variant,
                                    backend=backend).loss
                    loss.backward()
                    return loss.detach().float()

                meas = _measure(step, "cuda", repeats)
                out[backend] = (meas, hh.grad.float(), ii.grad.float())
            (ref, gh_ref, gi_ref), (fused, gh, gi) = out["reference"], out["triton"]
            scale = lambda g: float(g.abs().max()) or 1.0  # noqa: E731
            rows.append({"contexts": contexts, "negatives": m, "variant": variant, "items": n_items, "dtype": name,
                         "reference_ms": round(ref["best_s"] * 1e3, 3), "fused_ms": round(fused["best_s"] * 1e3, 3),
                         "time_vs_reference": round(fused["best_s"] / ref["best_s"], 3),
                         "reference_peak_mib": round(ref["peak_bytes"] / 2**20, 1),
                         "fused_peak_mib": round(fused["peak_bytes"] / 2**20, 1),
                         "loss_reference": float(ref["result"]), "loss_fused": float(fused["result"]),
                         "loss_rel_diff": abs(float(ref["result"]) - float(fused["result"])) / abs(float(ref["result"])),
                         "grad_h_max_rel_diff": float((gh - gh_ref).abs().max()) / scale(gh_ref),
                         "grad_items_max_rel_diff": float((gi - gi_ref).abs().max()) / scale(gi_ref)})
            print(rows[-1], flush=True)
            del out, h, h_ref, items, ref_items
            torch.cuda.empty_cache()
    return rows


def _rodpo(args: list[str], log: Path) -> float:
    """Run the `rodpo` CLI (as a module: the package may not be installed); returns wall seconds."""
    tic = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ rodpo {' '.join(args)}\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "rodpo_dist.cli", *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                       check=True)
    return time.perf_counter() - tic


def _train_records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"]


def training(work: Path, log: Path, devices: list[str], tiny: bool) -> dict:
    """One epoch of pretraining then alignment per device (CPU fp32, CUDA bf16), same data and init."""
    data = str(work / "data")
    common = ["--config", "configs/demo.yaml", f"data.prepared_dir={data}", "model.dropout=0",
              "runtime.log_every=1", "runtime.progress=false", "pretrain.epochs=1", "align.epochs=1"]
    if tiny:
        common += ["data.synthetic.num_users=300", "data.synthetic.num_items=200", "pool.k=20"]
    _rodpo(["data", "prepare", *common], log)
    result: dict = {"loss_rtol": LOSS_RTOL, "runs": {}}
    init = None
    for stage in ("pretrain", "align"):
        losses = {}
        for device in devices:
            bf16 = device == "cuda"
            run_dir = work / f"{device}"
            args = [stage, *common, f"runtime.run_dir={run_dir}", f"runtime.device={device}",
                    f"{stage}.bf16={str(bf16).lower()}"] + (["--init", init] if stage == "align" else [])
            seconds = _rodpo(args, log)
            records = _train_records(run_dir / ("pretrain" if stage == "pretrain" else "align-rodpo"))
            losses[device] = [r["loss"] for r in records]
            result["runs"][f"{stage}_{device}"] = {
                "bf16": bf16, "wall_s": round(seconds, 1), "steps": len(records),
                "seq_per_s_median": sorted(r["seq_per_s"] for r in records)[len(records) // 2],
                "first_losses": [round(x, 5) for x in losses[device][:5]], "last_loss": round(losses[device][-1], 5)}
        if stage == "pretrain":
            init = str(work / "cpu" / "pretrain" / "best")  # both alignments start from the CPU fp32 weights
        if len(devices) == 2:
            cpu, cuda = losses["cpu"], losses["cuda"]
            rel = [abs(a - b) / abs(a) for a, b in zip(cpu, cuda)]
            result[f"{stage}_max_rel_loss_diff"] = round(max(rel), 5)
            result[f"{stage}_first_step_rel_loss_diff"] = round(rel[0], 6)
            result[f"{stage}_within_tolerance"] = len(cpu) == len(cuda) and max(rel) <= LOSS_RTOL[stage]
    return result


def scale_steps(sizes: list[int], device: str, steps: int, full_max: int) -> list[dict]:
    """Pretraining steps of the demo-size model (64-d, 2 layers, ID table only) at catalog sizes: the
    sampled softmax (4,096 popularity negatives) with the sparse item table and lazy AdamW, and the
    full softmax with a dense table up to `full_max` items; 256 sequences of 20 Zipf-drawn items."""
    from rodpo_dist.config import load_config
    from rodpo_dist.model import build_model, optimizer_param_groups
    from rodpo_dist.train.engine import clip_grad_norm
    from rodpo_dist.train.losses import next_item_loss, sampling_distribution
    from rodpo_dist.train.optim import build_optimizer

    rows = []
    for n_items in sizes:
        for loss in ("sampled", "full"):
            if loss == "full" and n_items > full_max:
                continue
            sparse = loss == "sampled"
            cfg = load_config(None, [f"pretrain.loss={loss}", "pretrain.num_sampled=4096", "model.max_len=20",
                                     f"model.sparse_item_table={str(sparse).lower()}", "pretrain.item_chunk=65536"])
            gen = torch.Generator(device=device).manual_seed(0)
            with torch.device(device):
                model = build_model(cfg, {}, {}, n_items)
                seq = torch.exp(torch.rand(256, 21, generator=gen, device=device) * math.log(n_items)).long().clamp(1, n_items)
                counts = torch.bincount(seq.flatten(), minlength=n_items + 1).cpu()
            q = sampling_distribution(counts, "popularity", 0.75).to(device)
            optimizer = build_optimizer(optimizer_param_groups(model, 0.0), 1e-3, sparse)
            params = list(model.parameters())
            table = model.item_encoder.id_embedding.weight
            times, used = [], 0
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i in range(steps + 1):
                _sync(device)
                tic = time.perf_counter()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    ce, _ = next_item_loss(model, seq, cfg, q)
                (ce / 5120).backward()
                used = int(table.grad.coalesce().indices().shape[1]) if table.grad.is_sparse else n_items
                clip_grad_norm(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _sync(device)
                if i:
                    times.append(time.perf_counter() - tic)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            rows.append({"items": n_items, "loss": loss, "table": "sparse" if sparse else "dense",
                         "s_per_step": round(sorted(times)[len(times) // 2], 4), "peak_gib": round(peak, 2),
                         "table_rows_with_gradient": used, "loss_value": round(float(ce.detach()) / 5120, 4)})
            print(rows[-1], flush=True)
            del model, optimizer, params, table, seq, q, ce  # ce.grad_fn holds the parameters
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="stop before anything needs CUDA")
    parser.add_argument("--sections", nargs="+", default=["kernel_tests", "topk", "dpo", "training", "scale_steps"],
                        choices=["kernel_tests", "topk", "dpo", "training", "scale_steps"])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--users", type=int, default=1024)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dpo-contexts", type=int, default=4096)
    parser.add_argument("--dpo-items", type=int, default=1_000_000)
    parser.add_argument("--neg", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds for the kernel tests")
    parser.add_argument("--scale-items", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--scale-full-max", type=int, default=10_000_000, help="largest catalog of the full softmax")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out)
    import rodpo_dist.cli  # noqa: F401  (the package imports by path: fail here, not mid-run)
    import rodpo_kernels.bench  # noqa: F401

    report.put("environment", environment(args.dry_run))
    if not args.dry_run and not torch.cuda.is_available():
        report.put("error", "no CUDA device: run with --dry-run on a machine without one")
        return 1
    steps = {
        "kernel_tests": lambda: kernel_tests(args.out, args.test_timeout),
        "topk": lambda: topk(args.items, args.dtypes, args.users, args.dim, args.k, args.repeats),
        "dpo": lambda: dpo(args.dpo_contexts, args.dpo_items, args.dim, args.neg, args.dtypes, args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        steps["training"] = lambda: training(Path(tmp), args.out / "training.log",
                                             ["cpu"] if args.dry_run else ["cpu", "cuda"], tiny=args.dry_run)
        steps["scale_steps"] = lambda: scale_steps([2_000] if args.dry_run else args.scale_items,
                                                   "cpu" if args.dry_run else "cuda", 1 if args.dry_run else 5,
                                                   args.scale_full_max)
        for name in args.sections:
            if args.dry_run and name not in ("training", "scale_steps"):
                report.put(name, "skipped: --dry-run (needs CUDA)")
                continue
            tic = time.perf_counter()
            try:
                value = steps[name]()
            except Exception as exc:  # one failing section must not lose the others' figures
                value = {"error": f"{type(exc).__name__}: {exc}"}
            value = value if isinstance(value, dict) else {"rows": value}
            report.put(name, value | {"section_s": round(time.perf_counter() - tic, 1)})
    failed = [n for n, v in report.data.items() if isinstance(v, dict) and "error" in v]
    kt = report.data.get("kernel_tests", {})
    failed += ["kernel_tests"] if isinstance(kt, dict) and kt.get("returncode") else []
    print(f"gpu_check: {'FAILED ' + ', '.join(failed) if failed else 'all sections ran'}; figures in {report.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
