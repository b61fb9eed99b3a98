"""Negative selection: one switch, the same training loop.

- `random`: uniform over the catalog minus the user's known positives (its training sequence).
- `hard`:   the deterministic top-M of the candidate pool (the hardest negatives; what RoDPO argues
            against, since the top unobserved items are often false negatives).
- `rodpo`:  M items drawn without replacement from the pool, redrawn at every step: uniform over
            the pool, a softmax over the pool scores with a temperature, or uniform over the pool
            ranks (s, K] (`window`: the s most likely false negatives are never drawn).
- `sdpo`:   drawn like `rodpo`, scored with the multi-negative softmax-DPO loss.

Pool strategies also return each negative's 0-based rank in its pool row.

Observed rejections (`align.rejected`): `observed_slots` says how many of a context's M slots hold
one of its user's observed rejections (true negatives), `draw_observed` draws them and `mix_observed`
puts them in place of the strategy's negatives (the rest, and contexts without any, keep those).
"""

from __future__ import annotations

import numpy as np
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


OBSERVED_SOURCES = ("pool", "observed", "mixed")


def observed_per_context(contexts, offsets: np.ndarray, position: np.ndarray,
                         scope: str) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) per training context of its user's usable observed rejections in the flat list of
    the training ones (`Rejections.by_user(..., heldout=False)`: CSR `offsets` over users, `position`
    sorted within each user): every one (`train`), or those made before the context's target
    (`before`: position, the positives at or before the rejection, <= the target's index)."""
    c = contexts
    starts, available = np.zeros(len(c), np.int64), np.zeros(len(c), np.int64)
    for i, user in enumerate(c.users.tolist()):
        lo, hi = offsets[user - 1], offsets[user]
        rows = slice(c.offsets[i], c.offsets[i + 1])
        starts[rows] = lo
        if scope == "train":
            available[rows] = hi - lo
        elif scope == "before":
            target_index = len(c.sequences[i]) - 1 - c.steps_back[rows]
            available[rows] = np.searchsorted(position[lo:hi], target_index, side="right")
        else:
            raise ValueError(f"align.observed_scope: unknown {scope!r}; expected train or before")
    return starts, available


def observed_slots(available: torch.Tensor, m: int, rejected: str, share: float,
                   generator: torch.Generator) -> torch.Tensor:
    """[C] how many of each context's m negative slots hold an observed rejection: 0 with `pool` or
    without any available; m with `observed`; with `mixed`, floor(share * m) plus one more with
    probability frac(share * m), so a context with any available holds share * m of them on average
    (the rest of its slots are the pool's)."""
    if rejected == "pool":
        return torch.zeros_like(available)
    if rejected == "observed":
        count = torch.full_like(available, m)
    elif rejected == "mixed":
        whole, frac = divmod(share * m, 1.0)
        extra = (torch.rand(available.shape, generator=generator) < frac).long() if frac > 0 else 0
        count = torch.full_like(available, int(whole)) + extra
    else:
        raise ValueError(f"align.rejected: unknown {rejected!r}; expected one of {', '.join(OBSERVED_SOURCES)}")
    return torch.where(available > 0, count, torch.zeros_like(count))


def draw_observed(items: torch.Tensor, starts: torch.Tensor, available: torch.Tensor, m: int,
                  generator: torch.Generator) -> torch.Tensor:
    """[C, m] observed rejections per context: uniform without replacement from its `available`
    entries `items[starts[c]:starts[c] + available[c]]` (cycling through a random order when there are
    fewer than m); rows without any are 0."""
    width = max(int(available.max()) if len(available) else 0, 1)
    keys = torch.rand(len(available), width, generator=generator)
    keys[torch.arange(width)[None, :] >= available[:, None]] = 2.0  # past the row's entries: never first
    order = keys.argsort(dim=1)
    slot = torch.arange(m)[None, :] % available.clamp_min(1)[:, None]
    picks = order.gather(1, slot.clamp_max(width - 1))
    out = items[(starts[:, None] + picks).clamp_max(max(len(items) - 1, 0))] if len(items) else \
        torch.zeros(len(available), m, dtype=torch.long)
    return torch.where(available[:, None] > 0, out, torch.zeros_like(out))


def mix_observed(negatives: torch.Tensor, ranks: torch.Tensor, observed: torch.Tensor,
                 count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first count[c] slots of each row of `negatives` [C, m] replaced by `observed` [C, m] (their
    pool rank set to NOT_FROM_POOL); the other slots keep the strategy's negatives."""
    take = torch.arange(negatives.shape[1])[None, :] < count[:, None]
    return torch.where(take, observed, negatives), torch.where(take, torch.full_like(ranks, NOT_FROM_POOL), ranks)
