"""Inference cost of the dense backbone and the MoE backbone (4 experts, top-2, FFN blocks), side by side.

Serving goes through `rodpo_dist.serve.Recommender`, as `rodpo recommend` does: raw item ids in,
the user encoder, the catalog top-10 (`rodpo_kernels.topk_scores` over the precomputed item
table, history excluded), raw ids out.
- latency: one history per call (batch 1), p50 / p99 over `--requests` calls; also the encoder
  alone (the forward pass, without the catalog top-K), and the catalog top-K alone (the op, and a
  plain `(u @ items.T).topk` for comparison);
- throughput: users/s in batches of 256.
Catalogs: Beauty's size (12,101 items) and 1,000,000 items. The model is configs/beauty.yaml's
(64-d, 2 layers, 2 heads, max_len 50, ID + text [384] + attribute bag [6 ids of 639]) with random
features (fp16) and untrained weights: the cost does not depend on their values. History lengths
are uniform in 3..50. Dense and MoE calls alternate, so load from other jobs hits both alike.
One torch thread by default (one request per core): on a busy machine two threads made every
small op wait for a descheduled OpenMP thread (batch-1 latency 17x higher for dense, 70x for MoE).

  python benchmarks/bench_inference.py [--requests 200] [--batches 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from rodpo_dist.config import load_config
from rodpo_dist.data.contexts import left_pad
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.model import build_model
from rodpo_dist.serve import ItemIds, Recommender
from rodpo_kernels import topk_scores

CATALOGS = {"Beauty size": 12_101, "1M items": 1_000_000}
MODELS = {"dense": [], "moe": ["moe.enabled=true", "moe.num_experts=4", "moe.top_k=2", "moe.placement=ffn"]}
TEXT_DIM, ATTR_DIM, ATTR_VOCAB = 384, 6, 639  # Beauty's prepared modalities
K, BATCH = 10, 256


def peak_rss_gib() -> float:
    """The process's peak resident memory since the last `reset_peak_rss` (VmHWM)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def recommenders(num_items: int) -> tuple[dict[str, Recommender], float]:
    """A dense and an MoE recommender over one random catalog, and the seconds per item table."""
    gen = torch.Generator().manual_seed(0)
    features = {"text": torch.randn(num_items + 1, TEXT_DIM, generator=gen).half(),
                "attr": torch.randint(1, ATTR_VOCAB, (num_items + 1, ATTR_DIM), generator=gen)}
    for f in features.values():
        f[0] = 0
    modalities = {"text": ModalitySpec("dense", TEXT_DIM, "float16"),
                  "attr": ModalitySpec("bag", ATTR_DIM, "int64", ATTR_VOCAB)}
    ids = ItemIds(num_items, [f"B{i:09d}" for i in range(1, num_items + 1)])  # ASIN-like raw ids
    out, seconds = {}, 0.0
    for name, overrides in MODELS.items():
        cfg = load_config("configs/beauty.yaml", overrides)
        torch.manual_seed(0)
        model = build_model(cfg, modalities, features, num_items)
        tic = time.perf_counter()
        out[name] = Recommender(model, ids, max_len=cfg.model.max_len, batch_size=BATCH)  # computes the table
        seconds += (time.perf_counter() - tic) / len(MODELS)
    return out, seconds


def histories(num_items: int, count: int, rng: np.random.Generator) -> list[list[str]]:
    return [[f"B{i:09d}" for i in rng.choice(num_items, size=n, replace=False) + 1]
            for n in rng.integers(3, 51, size=count)]


def alternate(recs: dict[str, Recommender], calls: list, run) -> dict[str, np.ndarray]:
    """Seconds of `run(rec, call)` per call and model, the models' order alternating call by call."""
    times = {name: [] for name in recs}
    for i, call in enumerate(calls):
        for name in (list(recs) if i % 2 == 0 else list(recs)[::-1]):
            tic = time.perf_counter()
            run(recs[name], call)
            times[name].append(time.perf_counter() - tic)
    return {name: np.array(t) for name, t in times.items()}


def topk_alone(rec: Recommender, requests: int) -> tuple[float, float]:
    """p50 ms at batch 1 of the catalog top-K alone: `topk_scores` and a plain `(u @ items.T).topk`."""
    items, user = rec.item_table[1:], torch.randn(1, rec.item_table.shape[1])
    exclude = torch.arange(1, 21)[None]
    calls = {"op": lambda: topk_scores(user, items, K, exclude=exclude, id_offset=1),
             "plain": lambda: (user @ items.T).topk(K)}
    times = {name: [] for name in calls}
    for _ in range(requests):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - tic)
    return np.median(times["op"]) * 1e3, np.median(times["plain"]) * 1e3


def encode_only(rec: Recommender, history: list[str]) -> None:
    ids = rec.encode(history, "bench", K)
    with torch.no_grad():
        rec.model(left_pad([ids], min(len(ids), rec.max_len))).hidden[:, -1]


def bench(catalog: str, num_items: int, requests: int, batches: int) -> None:
    reset_peak_rss()
    recs, table_s = recommenders(num_items)
    rng = np.random.default_rng(1)
    warm = histories(num_items, 20, rng)
    alternate(recs, warm, lambda rec, h: rec.recommend([h], K))
    alternate(recs, [warm], lambda rec, hs: rec.recommend(hs, K))
    single = alternate(recs, histories(num_items, requests, rng), lambda rec, h: rec.recommend([h], K))
    encoder = alternate(recs, histories(num_items, requests, rng), encode_only)
    batched = alternate(recs, [histories(num_items, BATCH, rng) for _ in range(batches)],
                        lambda rec, hs: rec.recommend(hs, K))
    op_ms, plain_ms = topk_alone(recs["dense"], requests)
    table_mib = recs["dense"].item_table.numel() * 4 / 2**20
    print(f"\n{catalog} ({num_items:,} items): item table {table_mib:.0f} MiB, built in {table_s:.1f} s; "
          f"peak RSS {peak_rss_gib():.2f} GiB with both models loaded")
    print(f"catalog top-{K} alone at batch 1, p50: topk_scores {op_ms:.2f} ms, plain (u @ items.T).topk "
          f"{plain_ms:.2f} ms")
    print("| model | latency p50 (ms) | latency p99 (ms) | encoder-only p50 (ms) | throughput (users/s, batch 256) |")
    print("|---|---|---|---|---|")
    results = {}
    for name in recs:
        r = {"p50": np.percentile(single[name], 50) * 1e3, "p99": np.percentile(single[name], 99) * 1e3,
             "encoder_p50": np.percentile(encoder[name], 50) * 1e3, "users_s": BATCH * batches / batched[name].sum()}
        results[name] = r
        print(f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {r['encoder_p50']:.2f} | {r['users_s']:,.0f} |")
    ratio = {key: results["moe"][key] / results["dense"][key] for key in results["dense"]}
    print(f"| MoE / dense | {ratio['p50']:.2f}x | {ratio['p99']:.2f}x | {ratio['encoder_p50']:.2f}x | "
          f"{ratio['users_s']:.2f}x |")


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="batch-1 calls per model and catalog")
    parser.add_argument("--batches", type=int, default=6, help="batches of 256 per model and catalog")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    tic = time.perf_counter()
    for catalog, num_items in CATALOGS.items():
        bench(catalog, num_items, args.requests, args.batches)
    print(f"\n{time.perf_counter() - tic:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
