"""Plain PyTorch top-K scoring: materialises the [B, N] fp32 score matrix (tests only)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import NEG_INF, ExcludeArg, TopK, exclusion_pairs


def topk_scores_reference(
    users: Tensor, items: Tensor, k: int, exclude: ExcludeArg = None, id_offset: int = 0
) -> TopK:
    """``topk(users.float() @ items.float().T)`` with excluded ids masked and -inf/-1 padding."""
    scores = users.float() @ items.float().T
    user_idx, ids = exclusion_pairs(exclude, users.shape[0])
    rows = ids.to(scores.device) - id_offset
    keep = (rows >= 0) & (rows < items.shape[0])
    scores[user_idx.to(scores.device)[keep], rows[keep]] = NEG_INF
    if scores.shape[1] < k:
        scores = torch.nn.functional.pad(scores, (0, k - scores.shape[1]), value=NEG_INF)
    top, idx = scores.topk(k, dim=1)
    ids = torch.where(top == NEG_INF, -1, idx + id_offset)
    return TopK(top, ids)
