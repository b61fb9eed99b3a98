"""Position-wise feed-forward network: the dense transformer FFN and the MoE expert."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Module):
    """`Linear(hidden, ffn_hidden) -> GELU -> Dropout -> Linear(ffn_hidden, hidden)`."""

    def __init__(self, hidden: int, ffn_hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn_hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.w2 = nn.Linear(ffn_hidden, hidden)

    def reset_parameters(self) -> None:
        self.w1.reset_parameters()
        self.w2.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(self.act(self.w1(x))))
