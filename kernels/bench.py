"""Micro-benchmarks: ``python -m rodpo_kernels.bench {topk,dpo} [--device cpu|cuda] [...]``.

Every path runs in its own subprocess on identical inputs (same seed). Time: best and median of
``--repeats`` runs after one warm-up. Memory, CPU: ``ru_maxrss`` high-water mark of the subprocess
after the path minus before it (inputs are generated in chunks, so the mark before the path is
their resident size); it counts every allocation torch makes, at page granularity. Memory, CUDA:
``torch.cuda.max_memory_allocated`` above the allocation before the path. Ratios are against the
first (baseline) row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

TOPK_PATHS = ("naive", "fast", "fast_fp32", "fast_torch_select", "matmul", "matmul_tiled",
              "matmul_tiled_bf16", "matmul_tiled_int8")
ONEDNN_PATHS = ("matmul_tiled_bf16", "matmul_tiled_int8")  # oneDNN CPU modes on fp32 items
FAST_PATHS = ("fast", "fast_fp32", "fast_torch_select")
DPO_PATHS = ("reference", "fused")


def _randn(rows: int, cols: int, dtype: torch.dtype, device: str, gen: torch.Generator):
    """Random matrix built in 64k-row chunks (no full-size fp32 transient)."""
    out = torch.empty(rows, cols, dtype=dtype, device=device)
    for lo in range(0, rows, 1 << 16):
        hi = min(rows, lo + (1 << 16))
        out[lo:hi] = torch.randn(hi - lo, cols, generator=gen).to(device, dtype)
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(fn, device: str, repeats: int) -> dict:
    """Run ``fn`` once to warm up, then ``repeats`` times; time and peak extra memory."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"best_s": min(times), "median_s": statistics.median(times), "peak_bytes": peak,
            "result": result}


def int8_tile_gemm(items: torch.Tensor, users: torch.Tensor, tile_rows: int, bits: int = 7):
    """oneDNN's u8 x s8 GEMM with fp32 output for items-major tiles: ``(q_items, score)``, where
    ``score(q_items[lo:hi])`` approximates ``items[lo:hi] @ users.T``. Items are quantized per
    tensor to ``bits`` unsigned bits (7 keeps x86's u8 x s8 int16 pair sums from saturating),
    users per row to int8."""
    zero = 1 << (bits - 1)
    x_scale = float(items.abs().amax()) / (zero - 1)
    q_items = torch.empty(items.shape, dtype=torch.uint8)
    for lo in range(0, items.shape[0], 1 << 16):
        chunk = items[lo:lo + (1 << 16)].float() / x_scale
        q_items[lo:lo + (1 << 16)] = chunk.round_().add_(zero).clamp_(0, 255)
    w_scale = users.float().abs().amax(1) / 127
    packed = torch.ops.onednn.qlinear_prepack(
        (users.float() / w_scale[:, None]).round_().to(torch.int8), [tile_rows, items.shape[1]])
    w_zero = torch.zeros(users.shape[0], dtype=torch.int32)

    def score(q_rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(q_rows, x_scale, zero, packed, w_scale, w_zero,
                                                  None, 1.0, 0, torch.float32, "none", [], "")
    return q_items, score


def _topk_worker(args) -> dict:
    from rodpo_kernels import topk_scores
    from rodpo_kernels.topk_scoring import cpu

    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    users = _randn(args.users, args.dim, dtype, args.device, gen)
    items = _randn(args.items, args.dim, dtype, args.device, gen)
    tile = 1 << 14

    def matmul_tiled(precision: str):
        """The floor of the chunked path: its matmuls alone (items-major, into one buffer)."""
        def run():
            scores = torch.empty(tile, args.users, dtype=dtype, device=args.device)
            with cpu.matmul_precision(precision):
                for lo in range(0, args.items, tile):
                    rows = items[lo:lo + tile]
                    torch.mm(rows, users.T, out=scores[:rows.shape[0]])
            return scores
        return run

    def matmul_tiled_int8():
        """The int8 floor: the same tiles through :func:`int8_tile_gemm` on a table quantized
        beforehand (untimed; the best case for an int8 path)."""
        q_items, score = int8_tile_gemm(items, users, tile)

        def run():
            for lo in range(0, args.items, tile):
                scores = score(q_items[lo:lo + tile])
            return scores
        return run

    paths = {
        "naive": lambda: tuple((users @ items.T).topk(args.k, dim=1)),
        "fast": lambda: tuple(topk_scores(users, items, args.k)),
        "fast_fp32": lambda: tuple(topk_scores(users, items, args.k, compute_dtype=torch.float32)),
        "fast_torch_select": lambda: tuple(topk_scores(users, items, args.k)),
        "matmul": lambda: (users @ items.T)[:, :1].clone(),
        "matmul_tiled": matmul_tiled("ieee"),
        "matmul_tiled_bf16": matmul_tiled("bf16"),
    }
    cpu.NATIVE_SELECT = args.path != "fast_torch_select"  # its tiles' candidates by torch ops
    if args.path == "matmul_tiled_int8":  # quantizing the table is untimed set-up: this path only
        paths["matmul_tiled_int8"] = matmul_tiled_int8()
    out = _measure(paths[args.path], args.device, args.repeats)
    if args.path in ("naive", *FAST_PATHS):
        scores, ids = out["result"]
        torch.save({"scores": scores.float().cpu(), "ids": ids.cpu()}, args.save)
    if args.path in FAST_PATHS:  # exactness against fp32 scores, first 16 users (after timing)
        exact = (users[:16].float() @ items.float().T).topk(args.k, dim=1)
        ref = {"scores": exact.values.cpu(), "ids": exact.indices.cpu()}
        mine = {"scores": scores[:16].float().cpu(), "ids": ids[:16].cpu()}
        out["fp32_check_16_users"] = _compare_ids(ref, mine)
    if args.path == "fast" and args.device == "cpu":
        out["compute"] = str(cpu.compute_dtype_for(items, None)).removeprefix("torch.")
    out.pop("result")
    out["gflops"] = 2 * args.users * args.items * args.dim / out["best_s"] / 1e9
    return out


def _dpo_worker(args) -> dict:
    from rodpo_kernels import dpo_loss

    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    h = _randn(args.users, args.dim, dtype, args.device, gen).requires_grad_()
    h_ref = _randn(args.users, args.dim, dtype, args.device, gen)
    items = _randn(args.items, args.dim, dtype, args.device, gen).requires_grad_()
    ref_items = _randn(args.items, args.dim, dtype, args.device, gen)
    pos = torch.randint(0, args.items, (args.users,), generator=gen).to(args.device)
    neg = torch.randint(0, args.items, (args.users, args.neg), generator=gen).to(args.device)
    backend = "reference" if args.path == "reference" else "auto"

    def step():
        h.grad = items.grad = None
        out = dpo_loss(h, h_ref, items, pos, neg, 0.1, ref_items=ref_items,
                       variant="sdpo" if args.neg > 1 else "pairwise", backend=backend)
        out.loss.backward()
        return out.loss.item()

    out = _measure(step, args.device, args.repeats)
    out["loss"] = out.pop("result")
    return out


def _run_paths(args, paths, extra: list[str]) -> dict[str, dict]:
    """Each path in a fresh interpreter; returns its JSON report."""
    results = {}
    for path in paths:
        cmd = [sys.executable, "-m", "rodpo_kernels.bench", args.cmd, "--worker", path, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results[path] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _print_table(title: str, results: dict[str, dict], skipped: dict[str, str]) -> None:
    print(f"\n{title}")
    print("| path | best s | median s | peak extra MiB | GFLOP/s | time / baseline | mem / baseline |")
    print("|---|---|---|---|---|---|---|")
    base = next((r for r in results.values() if "best_s" in r), None)
    for name, r in results.items():
        if "best_s" not in r:
            print(f"| {name} | failed: {r.get('error')} | | | | | |")
            continue
        gflops = f"{r['gflops']:.1f}" if "gflops" in r else "-"
        t_ratio = r["best_s"] / base["best_s"]
        m_ratio = r["peak_bytes"] / max(base["peak_bytes"], 1)
        print(f"| {name} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['peak_bytes'] / 2**20:.0f} "
              f"| {gflops} | {t_ratio:.3f} | {m_ratio:.3f} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} | | | | | |")


def _compare_ids(a: dict, b: dict, atol: float = 1e-4) -> str:
    """Exact-id agreement of two top-K results, and whether differences are fp32 ties."""
    same = (a["ids"] == b["ids"]).float().mean().item()
    close = torch.allclose(a["scores"], b["scores"], atol=atol, rtol=1e-5)
    sets = all(set(x.tolist()) == set(y.tolist()) for x, y in zip(a["ids"], b["ids"]))
    return (f"ids equal (position-wise): {same:.6f}; id sets equal per user: {sets}; "
            f"scores allclose(atol={atol}): {close}")


def bench_topk(args) -> None:
    for n_items in args.items_list:
        extra = ["--device", args.device, "--dtype", args.dtype, "--users", str(args.users),
                 "--dim", str(args.dim), "--k", str(args.k), "--repeats", str(args.repeats),
                 "--items", str(n_items)]
        naive_bytes = args.users * n_items * getattr(torch, args.dtype).itemsize
        paths, skipped = list(TOPK_PATHS), {}
        if naive_bytes > args.max_naive_gib * 2**30:
            why = (f"the [B, N] score matrix alone needs {naive_bytes / 2**30:.1f} GiB "
                   f"> --max-naive-gib {args.max_naive_gib}")
            skipped = {"naive": why, "matmul": why}
        if args.device == "cuda":
            skipped |= {"fast_fp32": "compute_dtype is a CPU-path option",
                        "fast_torch_select": "the CPU path's fallback selection",
                        **{p: "a oneDNN CPU mode" for p in ONEDNN_PATHS}}
        elif args.dtype != "float32":
            skipped |= {p: f"the items are {args.dtype} already" for p in ONEDNN_PATHS}
        paths = [p for p in paths if p not in skipped]
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for path in paths:
                save = os.path.join(tmp, f"{path}.pt")
                results.update(_run_paths(args, [path], extra + ["--save", save]))
            title = (f"top-K scoring, {args.device}: B={args.users} N={n_items:,} d={args.dim} "
                     f"K={args.k} {args.dtype}")
            _print_table(title, results, skipped)
            if results.get("fast", {}).get("compute") == "bfloat16":
                print("\nfast: tiles scored in bf16 (oneDNN's bf16 mode rounds the operands inside "
                      "each tile matmul, within the timed call; no bf16 copy of the table is "
                      "kept), candidates re-scored in fp32; fast_fp32: compute_dtype=float32")
            elif "compute" in results.get("fast", {}):
                print(f"\nfast: tiles scored in {results['fast']['compute']} (no native bf16)")
            if "fast_torch_select" in results:
                print("fast_torch_select: fast with its tiles' candidates selected by torch ops "
                      "(the fallback where select.cpp cannot be built) instead of select.cpp")
            for fast in (p for p in FAST_PATHS if "best_s" in results.get(p, {})):
                if "naive" in paths and "best_s" in results["naive"]:
                    a, b = (torch.load(os.path.join(tmp, f"{p}.pt")) for p in ("naive", fast))
                    note = "" if args.dtype == "float32" else " (naive scores in low precision)"
                    print(f"{fast} vs naive{note}: {_compare_ids(a, b)}")
                print(f"{fast} vs fp32 scores: {results[fast]['fp32_check_16_users']}")


def bench_dpo(args) -> None:
    for n_neg in args.neg_list:
        extra = ["--device", args.device, "--dtype", args.dtype, "--users", str(args.users),
                 "--dim", str(args.dim), "--items", str(args.items_list[0]),
                 "--neg", str(n_neg), "--repeats", str(args.repeats)]
        results = _run_paths(args, DPO_PATHS, extra)
        title = (f"DPO loss forward+backward, {args.device}: B={args.users} M={n_neg} "
                 f"d={args.dim} N={args.items_list[0]:,} {args.dtype}")
        _print_table(title, results, {})
        losses = {k: r.get("loss") for k, r in results.items()}
        print(f"\nloss per path: {losses}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=["topk", "dpo"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", dest="items_list", type=int, nargs="+", default=None)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--neg", dest="neg_list", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-naive-gib", type=float, default=4.0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cmd == "topk":
        args.users = args.users or 256
        args.items_list = args.items_list or [1_000_000, 10_000_000]
    else:
        args.users = args.users or 4096
        args.items_list = args.items_list or [1_000_000]
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{args.cmd} on cuda: skipped, no CUDA device available")
        return
    if args.worker:
        args.path, args.items, args.neg = args.worker, args.items_list[0], args.neg_list[0]
        report = (_topk_worker if args.cmd == "topk" else _dpo_worker)(args)
        print(json.dumps(report))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    (bench_topk if args.cmd == "topk" else bench_dpo)(args)


if __name__ == "__main__":
    main()
