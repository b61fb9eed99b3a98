"""Which arithmetic scores a top-K tile fastest on this CPU: ``python benchmarks/bench_tile_gemm.py``.

One items-major tile ``items[T, d] @ users[B, d].T`` (the CPU top-K path's unit of work), single
thread, through every GEMM torch offers on CPU: MKL fp32 (the baseline), bf16 and fp16
``torch.mm``, ``torch._int_mm``, fbgemm's dynamic int8 linear and oneDNN's u8 x s8 GEMM with fp32
output. Prints best-of-``--repeats`` time per tile, GFLOP/s, the ratio to fp32 and the largest
error against fp32 scores, side by side in one run; lower-precision inputs are converted before
timing (the best case for each).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rodpo_kernels.bench import int8_tile_gemm


def _best_ms(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, out


def gemms(items: torch.Tensor, users: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Every CPU GEMM, as a call returning fp32-comparable [T, B] scores."""
    q7, int8_7bit = int8_tile_gemm(items, users, items.shape[0])
    q8, int8_8bit = int8_tile_gemm(items, users, items.shape[0], bits=8)
    w_scale = users.abs().amax(1) / 127
    q_users = (users / w_scale[:, None]).round().to(torch.int8)
    i8_scale = float(items.abs().amax()) / 127
    i8_items = (items / i8_scale).round().to(torch.int8)
    fbgemm = torch.ops.quantized.linear_prepack(torch.quantize_per_channel(
        users, w_scale.double(), torch.zeros(users.shape[0], dtype=torch.long), 0, torch.qint8), None)
    half, bf16 = (items.half(), users.half()), (items.bfloat16(), users.bfloat16())
    return {
        "fp32 torch.mm (MKL)": lambda: items @ users.T,
        "bf16 torch.mm": lambda: (bf16[0] @ bf16[1].T).float(),
        "fp16 torch.mm": lambda: (half[0] @ half[1].T).float(),
        "int8 torch._int_mm": lambda: torch._int_mm(i8_items, q_users.T) * (i8_scale * w_scale),
        "int8 fbgemm dynamic linear": lambda: torch.ops.quantized.linear_dynamic(items, fbgemm, True),
        "u8s8 oneDNN, fp32 out": lambda: int8_7bit(q7),
        "u8s8 oneDNN, fp32 out, 8-bit items (may saturate)": lambda: int8_8bit(q8),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=16384)
    parser.add_argument("--users", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(args.tile, args.dim, generator=gen)
    users = torch.randn(args.users, args.dim, generator=gen)
    exact = items @ users.T
    flop = 2 * args.tile * args.users * args.dim
    print(f"torch {torch.__version__}, 1 thread, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; tile T={args.tile} B={args.users} d={args.dim}")
    print("| GEMM | best ms | GFLOP/s | time / fp32 | max abs error vs fp32 |")
    print("|---|---|---|---|---|")
    base = None
    for name, fn in gemms(items, users).items():
        ms, out = _best_ms(fn, args.repeats)
        base = base or ms
        err = float((out.float() - exact).abs().max())
        print(f"| {name} | {ms:.2f} | {flop / ms / 1e6:.1f} | {ms / base:.2f} | {err:.3g} |")
    print(f"(scores have standard deviation {float(exact.std()):.1f})")


if __name__ == "__main__":
    main()
