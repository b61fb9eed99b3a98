"""Ranking metrics (HR, NDCG, MRR at K) from the rank of each user's target.

Rank is 0-based and pessimistic on ties: an item scoring exactly as high as the target counts as
ranked above it, so a model that scores everything alike earns nothing.
"""

from __future__ import annotations

import torch

MISS = torch.iinfo(torch.int64).max


def target_ranks(top_ids: torch.Tensor, top_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target from its user's sorted top-L list; `MISS` when not in the list.

    `top_ids`/`top_scores`: [B, L] sorted by descending score (id -1 for padding); `targets`: [B].
    The rank is exact when below L - 1 (items tied with the target past the list could only push
    it further down), so score with L = max(ks) + 1 to get exact metrics up to max(ks).
    """
    hit = top_ids == targets[:, None]
    target_score = torch.where(hit, top_scores, torch.full_like(top_scores, float("-inf"))).amax(dim=1)
    ahead = ((top_scores >= target_score[:, None]) & ~hit & (top_ids >= 0)).sum(dim=1)
    return torch.where(hit.any(dim=1), ahead, torch.full_like(ahead, MISS))


def ranking_metrics(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR@k over users for each k (ranks from `target_ranks`)."""
    out: dict[str, float] = {}
    r = ranks.to(torch.float64)
    for k in ks:
        inside = ranks < k
        out[f"hr@{k}"] = inside.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(inside, 1.0 / torch.log2(r + 2.0), 0.0).mean().item()
        out[f"mrr@{k}"] = torch.where(inside, 1.0 / (r + 1.0), 0.0).mean().item()
    return out
