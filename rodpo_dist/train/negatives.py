"""Negative selection: one switch, the same training loop.

- `random`: uniform over the catalog minus the user's known positives (its training sequence).
- `hard`:   the deterministic top-M of the candidate pool (the hardest negatives; what RoDPO argues
            against, since the top unobserved items are often false negatives).
- `rodpo`:  M items drawn without replacement from the pool, redrawn at every step: uniform over
            the pool, a softmax over the pool scores with a temperature, or uniform over the pool
            ranks (s, K] (`window`: the s most likely false negatives are never drawn).
- `sdpo`:   drawn like `rodpo`, scored with the multi-negative softmax-DPO loss.

Pool strategies also return each negative's 0-based rank in its pool row.
"""

from __future__ import annotations

import torch

NOT_FROM_POOL = -1


def sample_random(exclude: torch.Tensor, num_items: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """[b, m] ids uniform over 1..num_items, never in the row's `exclude` ids (-1 pads); rejection sampling."""
    b = exclude.shape[0]
    out = torch.randint(1, num_items + 1, (b, m), generator=generator)
    bad = (out[:, :, None] == exclude[:, None, :]).any(-1)
    while bad.any():
        out[bad] = torch.randint(1, num_items + 1, (int(bad.sum()),), generator=generator)
        bad = (out[:, :, None] == exclude[:, None, :]).any(-1)
    return out


def pool_weights(pool_ids: torch.Tensor, pool_scores: torch.Tensor, sampling: str, temperature: float,
                 window_start: int) -> torch.Tensor:
    """[b, K] sampling weights over each pool row (0 for empty slots and, with `window`, ranks <= s)."""
    valid = pool_ids >= 0
    if not valid.any(dim=1).all():
        raise ValueError("candidate pool: a context has no candidate left (every item is a known positive)")
    if sampling == "softmax":
        logits = (pool_scores / temperature).masked_fill(~valid, float("-inf"))
        return torch.softmax(logits, dim=1).clamp_min(1e-12) * valid  # no valid entry underflows to 0
    weights = valid.float()
    if sampling == "window":
        weights[:, :window_start] = 0.0
        empty = weights.sum(1) == 0  # a short row: fall back to its valid entries
        weights[empty] = valid[empty].float()
    return weights


def sample_from_pool(pool_ids: torch.Tensor, weights: torch.Tensor, m: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """([b, m] ids, [b, m] pool ranks) drawn without replacement with `weights`; a row with fewer
    than m drawable entries draws with replacement."""
    short = (weights > 0).sum(dim=1) < m
    picks = torch.empty(pool_ids.shape[0], m, dtype=torch.long)
    if (~short).any():
        picks[~short] = torch.multinomial(weights[~short], m, replacement=False, generator=generator)
    if short.any():
        picks[short] = torch.multinomial(weights[short], m, replacement=True, generator=generator)
    return pool_ids.gather(1, picks), picks


def select_negatives(strategy: str, *, pool_ids: torch.Tensor | None, pool_scores: torch.Tensor | None,
                     exclude: torch.Tensor, num_items: int, m: int, sampling: str, temperature: float,
                     window_start: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """([b, m] negative item ids, [b, m] their pool ranks or NOT_FROM_POOL) under `strategy`."""
    if strategy == "random":
        ids = sample_random(exclude, num_items, m, generator)
        return ids, torch.full_like(ids, NOT_FROM_POOL)
    if pool_ids is None or pool_scores is None:
        raise ValueError(f"strategy {strategy!r} needs a candidate pool")
    if strategy == "hard":
        if m > pool_ids.shape[1]:
            raise ValueError(f"align.num_negatives ({m}) exceeds pool.k ({pool_ids.shape[1]})")
        hard = pool_ids[:, :m].long()
        if (hard < 0).any():
            raise ValueError("candidate pool: fewer than align.num_negatives candidates left for a context")
        return hard, torch.arange(m).expand_as(hard).clone()
    if strategy in ("rodpo", "sdpo"):
        weights = pool_weights(pool_ids, pool_scores, sampling, temperature, window_start)
        return sample_from_pool(pool_ids.long(), weights, m, generator)
    raise ValueError(f"unknown negative strategy {strategy!r}")
