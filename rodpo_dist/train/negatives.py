"""Negative selection: one switch, the same training loop.

- `random`: uniform over the catalog minus the context's history and target.
- `hard`:   the deterministic top-M of the candidate pool (the hardest negatives; what RoDPO argues
            against, since the top unobserved items are often false negatives).
- `rodpo`:  M items drawn without replacement from the pool, redrawn at every step; uniform over
            the pool, or a softmax over the pool scores with a temperature.
- `sdpo`:   drawn like `rodpo`, scored with the multi-negative softmax-DPO loss.
"""

from __future__ import annotations

import torch


def sample_random(exclude: torch.Tensor, num_items: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """[b, m] ids uniform over 1..num_items, never in the row's `exclude` ids (-1 pads); rejection sampling."""
    b = exclude.shape[0]
    out = torch.randint(1, num_items + 1, (b, m), generator=generator)
    bad = (out[:, :, None] == exclude[:, None, :]).any(-1)
    while bad.any():
        out[bad] = torch.randint(1, num_items + 1, (int(bad.sum()),), generator=generator)
        bad = (out[:, :, None] == exclude[:, None, :]).any(-1)
    return out


def sample_from_pool(pool_ids: torch.Tensor, pool_scores: torch.Tensor, m: int, sampling: str,
                     temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[b, m] ids drawn without replacement from each row's pool (empty slots, id -1, never drawn).

    A row with fewer than m valid entries repeats its valid entries; a row with none raises.
    """
    valid = pool_ids >= 0
    if not valid.any(dim=1).all():
        raise ValueError("candidate pool: a context has no candidate left (every item is in its history)")
    if sampling == "softmax":
        logits = (pool_scores / temperature).masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits, dim=1).clamp_min(1e-12) * valid  # no valid entry underflows to 0
    else:
        weights = valid.float()
    short = valid.sum(dim=1) < m
    picks = torch.empty(pool_ids.shape[0], m, dtype=torch.long)
    if (~short).any():
        picks[~short] = torch.multinomial(weights[~short], m, replacement=False, generator=generator)
    if short.any():
        picks[short] = torch.multinomial(weights[short], m, replacement=True, generator=generator)
    return pool_ids.gather(1, picks)


def select_negatives(strategy: str, *, pool_ids: torch.Tensor | None, pool_scores: torch.Tensor | None,
                     exclude: torch.Tensor, num_items: int, m: int, sampling: str, temperature: float,
                     generator: torch.Generator) -> torch.Tensor:
    """[b, m] negative item ids for a batch of contexts under `strategy`."""
    if strategy == "random":
        return sample_random(exclude, num_items, m, generator)
    if pool_ids is None or pool_scores is None:
        raise ValueError(f"strategy {strategy!r} needs a candidate pool")
    if strategy == "hard":
        if m > pool_ids.shape[1]:
            raise ValueError(f"align.num_negatives ({m}) exceeds pool.k ({pool_ids.shape[1]})")
        hard = pool_ids[:, :m].long()
        if (hard < 0).any():
            raise ValueError("candidate pool: fewer than align.num_negatives candidates left for a context")
        return hard
    if strategy in ("rodpo", "sdpo"):
        return sample_from_pool(pool_ids.long(), pool_scores, m, sampling, temperature, generator)
    raise ValueError(f"unknown negative strategy {strategy!r}")
