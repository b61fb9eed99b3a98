"""False-negative accounting on data with a known ground truth (the synthetic catalog).

Every negative of every step is checked against the truth (is it an item the user likes?), and
counted overall and by the pool rank it was drawn from (1, 2-5, 6-20, 21-K; "random" for negatives
not drawn from a pool). The pool's own rate per rank bin, measured at each refresh over all its
rows, tests the premise that the top of the pool is often a liked item.
"""

from __future__ import annotations

import numpy as np
import torch

from rodpo_dist.data import GroundTruth

RANK_BINS = ((1, 1), (2, 5), (6, 20), (21, None))  # 1-based, inclusive; None: up to K


def bin_names(k: int) -> list[str]:
    """Names of the rank bins a pool of size k has: "1", "2-5", "6-20", "21-k" (cut at k)."""
    names = []
    for lo, hi in RANK_BINS:
        top = min(hi or k, k)
        if lo <= k:
            names.append(str(lo) if lo == top else f"{lo}-{top}")
    return names


def bin_of(ranks: np.ndarray) -> np.ndarray:
    """Bin index of 0-based pool ranks; len(RANK_BINS) for NOT_FROM_POOL (-1)."""
    edges = np.array([lo for lo, _ in RANK_BINS[1:]]) - 1
    return np.where(ranks < 0, len(RANK_BINS), np.searchsorted(edges, ranks, side="right"))


class FalseNegativeCounter:
    """Counts of (negatives, false negatives) per rank bin, plus the not-from-pool bin; a tensor
    [len(RANK_BINS) + 1, 2] so ranks can sum it and checkpoints can hold it."""

    def __init__(self) -> None:
        self.counts = torch.zeros(len(RANK_BINS) + 1, 2, dtype=torch.float64)

    def add(self, truth: GroundTruth, users: np.ndarray, negatives: np.ndarray, ranks: np.ndarray) -> None:
        relevant = truth.is_relevant(users, negatives)
        bins = bin_of(ranks).ravel()
        np.add.at(self.counts.numpy(), (bins, 0), 1.0)
        np.add.at(self.counts.numpy(), (bins, 1), relevant.ravel().astype(np.float64))

    @staticmethod
    def rates(counts: torch.Tensor, k: int) -> dict[str, float]:
        """{"false_negative_rate": overall, "false_negative_rate/<bin>": per bin used} of `counts`."""
        total = counts.sum(0)
        out = {"false_negative_rate": float(total[1] / total[0]) if total[0] else float("nan")}
        names = [*bin_names(k), *[None] * (len(RANK_BINS) - len(bin_names(k))), "random"]  # a row per bin
        for name, (n, hits) in zip(names, counts.tolist()):
            if n and name is not None:
                out[f"false_negative_rate/{name}"] = hits / n
        return out


def pool_rates(truth: GroundTruth, users: np.ndarray, pool_ids: torch.Tensor) -> dict[str, float]:
    """Share of liked items at each rank bin of the pool over all its rows (empty slots ignored)."""
    ids = pool_ids.numpy().astype(np.int64)
    relevant = truth.is_relevant(users, np.maximum(ids, 0)) & (ids > 0)
    filled = ids > 0
    k, out = ids.shape[1], {}
    for name, (lo, hi) in zip(bin_names(k), RANK_BINS):
        cols = slice(lo - 1, min(hi or k, k))
        n = filled[:, cols].sum()
        if n:
            out[f"pool_false_negative_rate/{name}"] = float(relevant[:, cols].sum() / n)
    return out


def held_out_rates(pool_ids: torch.Tensor, held_out: np.ndarray) -> dict[str, float]:
    """Real data's visible false negatives: the share of contexts whose pool holds the user's held-out
    next item (the validation target, which training never sees), overall and by the rank bin it sits in.

    `held_out` [C] is each context's user's validation target. Such an item is a negative to every
    pool strategy, yet the user does interact with it next."""
    hit = pool_ids.numpy() == held_out[:, None]
    k, out = hit.shape[1], {"pool_holds_held_out": float(hit.any(1).mean())}
    for name, (lo, hi) in zip(bin_names(k), RANK_BINS):
        out[f"pool_holds_held_out/{name}"] = float(hit[:, lo - 1:min(hi or k, k)].any(1).mean())
    return out
