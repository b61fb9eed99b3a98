"""Paired statistics between methods: per-user metrics from ranks, and a paired bootstrap over users.

Method and baseline are paired by (seed, user): the same user in runs from the same backbone seed.
The relative change is `100 * (mean(method) / mean(baseline) - 1)` over all pairs pooled across
seeds; its 95% interval comes from resampling users with replacement within each seed (a
stratified paired bootstrap), recomputing the pooled change each time, and taking the 2.5 and
97.5 percentiles. A lead is significant when the interval lies above 0; for the dislike rate
(`dislike_hr@10`, per-user shares of held-out rejected items in the top 10, lower is better) when it
lies below 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.study.records import load_dislikes, load_ranks, load_ranks_last, ranks_path

BASELINES = ("backbone", "ce", "random", "hard", "rodpo")
METRICS = ("ndcg@5", "mrr@5", "ndcg@10")
DISLIKE_METRIC = "dislike_hr@10"
"""Lower is better: its entries are `significant` when the interval lies below 0."""


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user value of `metric` (hr@k, ndcg@k, mrr@k) from 0-based ranks (-1: past the list)."""
    name, k = metric.split("@")
    inside = (ranks >= 0) & (ranks < int(k))
    r = np.maximum(ranks, 0).astype(np.float64)
    if name == "hr":
        return inside.astype(np.float64)
    value = 1.0 / np.log2(r + 2.0) if name == "ndcg" else 1.0 / (r + 1.0)
    return np.where(inside, value, 0.0)


def paired_bootstrap(method: list[np.ndarray], baseline: list[np.ndarray], *, samples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(relative change %, 2.5th, 97.5th percentile) of paired per-user values, one array pair per
    stratum (seed), users resampled within each stratum."""
    if any(len(m) != len(b) for m, b in zip(method, baseline)):
        raise ValueError("paired bootstrap needs the same users in method and baseline")
    rng = np.random.default_rng(seed)
    m_sum, b_sum = np.zeros(samples), np.zeros(samples)
    for m, b in zip(method, baseline):
        for lo in range(0, samples, 100):  # 100 resamples at a time: memory O(100 x users)
            idx = rng.integers(0, len(m), size=(min(100, samples - lo), len(m)))
            m_sum[lo:lo + len(idx)] += m[idx].sum(1)
            b_sum[lo:lo + len(idx)] += b[idx].sum(1)
    total_m, total_b = sum(m.sum() for m in method), sum(b.sum() for b in baseline)
    change = 100 * (total_m / total_b - 1)
    boot = 100 * (m_sum / np.maximum(b_sum, 1e-300) - 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(change), float(lo), float(hi)


def interval(change: float, lo: float, hi: float, lower_is_better: bool = False) -> dict[str, Any]:
    """An entry's relative change and 95% interval (rounded), significant when the whole interval is on
    the better side of 0 (above it, or below it for a metric where lower is better)."""
    out = {"rel_change": round(change, 3), "ci_low": round(lo, 3), "ci_high": round(hi, 3),
           "significant": hi < 0 if lower_is_better else lo > 0}
    return out | ({"lower_is_better": True} if lower_is_better else {})


def comparisons(records: list[dict[str, Any]], out: Path, split: str = "test") -> list[dict[str, Any]]:
    """One entry per (dataset, variant, method, baseline, metric) over the seeds both have."""
    by_key = {(r["dataset"], r["variant"], r["method"], r["seed"]): r for r in records}
    entries = []
    for dataset, variant in dict.fromkeys((r["dataset"], r["variant"]) for r in records):
        methods = list(dict.fromkeys(r["method"] for r in records if (r["dataset"], r["variant"]) == (dataset, variant)))
        for method in methods:
            if method == "backbone":
                continue
            for baseline in BASELINES:
                if baseline == method or baseline not in methods:
                    continue
                seeds = sorted(s for (d, v, m, s) in by_key if (d, v, m) == (dataset, variant, method)
                               and (dataset, variant, baseline, s) in by_key)
                if not seeds:
                    continue
                ranks = [(load_ranks(out, by_key[(dataset, variant, method, s)], split),
                          load_ranks(out, by_key[(dataset, variant, baseline, s)], split)) for s in seeds]
                for (mu, _), (bu, _) in ranks:
                    if not np.array_equal(mu, bu):
                        raise ValueError(f"{dataset} {variant}: {method} and {baseline} were evaluated on other users")
                for metric in METRICS:
                    change, lo, hi = paired_bootstrap([per_user(m, metric) for (_, m), _ in ranks],
                                                      [per_user(b, metric) for _, (_, b) in ranks])
                    entries.append({"dataset": dataset, "variant": variant, "method": method, "baseline": baseline,
                                    "metric": metric, "split": split, "seeds": seeds} | interval(change, lo, hi))
                dislikes = [(load_dislikes(out, by_key[(dataset, variant, method, s)], split),
                             load_dislikes(out, by_key[(dataset, variant, baseline, s)], split)) for s in seeds]
                if dislikes and all(m is not None and b is not None for m, b in dislikes):
                    for (mu, _), (bu, _) in dislikes:
                        if not np.array_equal(mu, bu):
                            raise ValueError(f"{dataset} {variant}: {method} and {baseline} dislike rates of other users")
                    change, lo, hi = paired_bootstrap([m for (_, m), _ in dislikes], [b for _, (_, b) in dislikes])
                    entries.append({"dataset": dataset, "variant": variant, "method": method, "baseline": baseline,
                                    "metric": DISLIKE_METRIC, "split": split, "seeds": seeds}
                                   | interval(change, lo, hi, lower_is_better=True))
                entries += _last_weights(out, [by_key[(dataset, variant, method, s)] for s in seeds],
                                         [by_key[(dataset, variant, baseline, s)] for s in seeds], split)
    return entries


LAST_METRICS = ("ndcg@10", DISLIKE_METRIC)
"""Compared for the weights alignment runs ended with too (`last:<metric>`), where the runs kept them."""


def _last_weights(out: Path, method: list[dict[str, Any]], baseline: list[dict[str, Any]],
                  split: str) -> list[dict[str, Any]]:
    """`last:ndcg@10` and `last:dislike_hr@10` entries: the weights each method's runs ended with
    against the baseline's (its selected checkpoint when it is the backbone), paired per seed and user."""
    first, base = method[0], baseline[0]
    entry = {"dataset": first["dataset"], "variant": first["variant"], "method": first["method"],
             "baseline": base["method"], "split": split, "seeds": [r["seed"] for r in method]}
    pick = (lambda r: load_ranks_last(out, r, split)) if base["method"] != "backbone" else \
        (lambda r: load_ranks(out, r, split) if (out / ranks_path(r)).is_file() else None)
    ranks = [(load_ranks_last(out, m, split), pick(b)) for m, b in zip(method, baseline)]
    found = []
    if all(m is not None and b is not None and np.array_equal(m[0], b[0]) for m, b in ranks):
        change, lo, hi = paired_bootstrap([per_user(m[1], "ndcg@10") for m, _ in ranks],
                                          [per_user(b[1], "ndcg@10") for _, b in ranks])
        found.append(entry | {"metric": "last:ndcg@10"} | interval(change, lo, hi))
    last_base = base["method"] != "backbone"
    rates = [(load_dislikes(out, m, split, last=True), load_dislikes(out, b, split, last=last_base))
             for m, b in zip(method, baseline)]
    if all(m is not None and b is not None and np.array_equal(m[0], b[0]) for m, b in rates):
        change, lo, hi = paired_bootstrap([m[1] for m, _ in rates], [b[1] for _, b in rates])
        found.append(entry | {"metric": f"last:{DISLIKE_METRIC}"} | interval(change, lo, hi, lower_is_better=True))
    return found
