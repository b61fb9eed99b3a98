"""SASRec backbone (Kang & McAuley, 2018) over an `ItemEncoder`, with optional MoE feed-forward blocks.

Block layout follows the reference implementation (pmixer/SASRec.pytorch):
    q = LN(x); x = q + Attn(q, x, x); h = LN(x); x = h + FFN(h); x *= non-padding
then a final LayerNorm. Attention is causal and also masks padding keys. Input item vectors are not
scaled by sqrt(hidden); instead the positional embedding starts at the ID embedding's scale (unit
norm). With torch's default N(0, 1) init it was sqrt(hidden) times larger, drowned the item signal
and left the ID-only model near chance (Toys validation NDCG@5 0.0047 at epoch 8, against 0.0425 at
epoch 10 now; docs/backbone_variants.md).
Sequences are LEFT-padded with 0, so positions are counted back from the most recent item, which
always gets position `max_len` whatever the padded length. Scores are dot products with the same
ItemEncoder's vectors (tied input/output item embeddings).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rodpo_dist.config import ModelConfig, MoEConfig
from rodpo_dist.model.feedforward import FeedForward
from rodpo_dist.model.item_encoder import ItemEncoder
from rodpo_dist.model.moe import SparseMoE


class SASRecOutput(NamedTuple):
    hidden: torch.Tensor
    """[B, L, hidden]; zeros at padding positions."""
    aux_loss: torch.Tensor
    """Sum of the MoE load-balancing losses of this forward (0 without MoE); add `aux_weight * aux_loss`."""


class SelfAttention(nn.Module):
    """Multi-head attention with queries from `query` and keys/values from `context`."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, query: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = query.shape
        q = self.q(query).view(batch, length, self.heads, -1).transpose(1, 2)
        k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.kv(context).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, length, hidden))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: MoEConfig | None) -> None:
        super().__init__()
        ffn_hidden = cfg.ffn_mult * cfg.hidden
        self.attn_norm = nn.LayerNorm(cfg.hidden)
        self.attn = SelfAttention(cfg.hidden, cfg.heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.hidden)
        self.ffn = (SparseMoE(cfg.hidden, ffn_hidden, moe, cfg.dropout) if moe is not None
                    else FeedForward(cfg.hidden, ffn_hidden, cfg.dropout))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.attn_norm(x)
        x = q + self.dropout(self.attn(q, x, allowed))
        h = self.ffn_norm(x)
        if isinstance(self.ffn, SparseMoE):
            y, aux_loss = self.ffn(h)
        else:
            y, aux_loss = self.ffn(h), h.new_zeros(())
        return (h + self.dropout(y)) * keep, aux_loss


class SASRec(nn.Module):
    """Causal transformer over item sequences [B, L] (L <= max_len, left-padded with 0)."""

    def __init__(self, item_encoder: ItemEncoder, cfg: ModelConfig, moe: MoEConfig) -> None:
        super().__init__()
        if cfg.hidden != item_encoder.hidden:
            raise ValueError(f"model.hidden ({cfg.hidden}) != item encoder hidden ({item_encoder.hidden})")
        self.item_encoder = item_encoder
        self.max_len = cfg.max_len
        self.position = nn.Embedding(cfg.max_len + 1, cfg.hidden, padding_idx=0)
        nn.init.normal_(self.position.weight, std=cfg.hidden ** -0.5)  # the ID embedding's scale
        self.position.weight.data[0] = 0
        self.dropout = nn.Dropout(cfg.dropout)
        ffn_moe = moe if moe.enabled and moe.placement in ("ffn", "both") else None
        self.blocks = nn.ModuleList(Block(cfg, ffn_moe) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        # DeepSpeed-MoE exchanges tokens in every call: ranks must make the same number of calls
        self.length_groups = 1 if moe.enabled and moe.backend == "deepspeed" else cfg.length_groups

    def forward(self, seq: torch.Tensor) -> SASRecOutput:
        """Hidden states of seq [B, L]. With `model.length_groups` > 1 the rows run as that many groups
        of similar length, each padded only to its own longest row: the same states as one padded
        pass (left padding is masked), with far fewer padded positions. The MoE balance loss is
        then the row-weighted mean of the groups' losses."""
        batch, length = seq.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds model.max_len {self.max_len}")
        if self.length_groups <= 1 or batch < 2 * self.length_groups:
            return self._padded_forward(seq)
        lengths = (seq != 0).sum(1)
        order = torch.argsort(lengths, stable=True)
        parts, aux_loss = [], seq.new_zeros((), dtype=torch.float32)
        for rows in order.chunk(self.length_groups):
            width = max(1, int(lengths[rows].max()))
            out = self._padded_forward(seq[rows, length - width:])
            parts.append(F.pad(out.hidden, (0, 0, length - width, 0)))
            aux_loss = aux_loss + out.aux_loss * (len(rows) / batch)
        return SASRecOutput(torch.cat(parts)[torch.argsort(order)], aux_loss)

    def _padded_forward(self, seq: torch.Tensor) -> SASRecOutput:
        batch, length = seq.shape
        keep = (seq != 0).unsqueeze(-1)
        x, aux_loss = self.item_encoder.encode_with_aux(seq)
        positions = torch.arange(self.max_len - length + 1, self.max_len + 1, device=seq.device)
        x = self.dropout(x + self.position(positions * (seq != 0))) * keep
        allowed = self._attention_mask(seq)
        for block in self.blocks:
            x, block_aux = block(x, allowed, keep)
            aux_loss = aux_loss + block_aux
        return SASRecOutput(self.norm(x) * keep, aux_loss)

    @staticmethod
    def _attention_mask(seq: torch.Tensor) -> torch.Tensor:
        """[B, 1, L, L] bool: causal, real keys only; a padding query sees itself (avoids empty rows)."""
        length = seq.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=seq.device)
        return (causal & ((seq != 0)[:, None, :] | diagonal)).unsqueeze(1)

    def user_state(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, hidden]: the hidden state at the last (most recent) position; zeros for an all-padding row."""
        return self(seq).hidden[:, -1]
