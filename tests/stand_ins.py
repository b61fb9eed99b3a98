"""Stand-in models for scoring tests (importable from every test folder: tests/ is on sys.path)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Output(NamedTuple):
    hidden: torch.Tensor
    aux_loss: torch.Tensor


class PrefixMean(torch.nn.Module):
    """State at each position = mean of the item vectors up to it (causal, padding ignored)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, seq: torch.Tensor) -> Output:
        mask = (seq > 0).float()[..., None]
        sums = (self.table[seq] * mask).cumsum(1)
        return Output(sums / mask.cumsum(1).clamp_min(1), torch.zeros(()))

    def user_state(self, seq: torch.Tensor) -> torch.Tensor:
        return self(seq).hidden[:, -1]
