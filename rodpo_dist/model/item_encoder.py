"""Item encoder: ID embedding plus projected content modalities, fused into one item vector.

Item ids run 1..N; id 0 is padding and always encodes to the zero vector. Callers scoring a
catalog must exclude id 0 as a candidate (row 0 of `item_table` is a zero row, not an item).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from rodpo_dist.config import MoEConfig
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.model.moe import SparseMoE


def _check_feature(name: str, spec: ModalitySpec, feature: torch.Tensor, num_items: int) -> None:
    rows = num_items + 1
    if spec.kind not in ("dense", "bag"):
        raise ValueError(f"modality {name!r}: unknown kind {spec.kind!r} (expected 'dense' or 'bag')")
    dense = spec.kind == "dense"
    if feature.shape != (rows, spec.dim) or feature.is_floating_point() != dense:
        raise ValueError(f"feature {name!r}: expected a {'float' if dense else 'integer'} [{rows}, {spec.dim}] "
                         f"tensor, got {feature.dtype} {list(feature.shape)}")
    if not dense and (feature.min() < 0 or feature.max() >= spec.vocab_size):
        raise ValueError(f"feature {name!r}: attribute ids must be in [0, vocab_size={spec.vocab_size}), "
                         f"got [{int(feature.min())}, {int(feature.max())}]")


class ItemEncoder(nn.Module):
    """Maps item ids to `hidden`-d vectors.

    `modalities` are the data layer's specs (`rodpo_dist.data.features.ModalitySpec`): a dense feature
    is a float [N+1, dim] tensor, a bag an integer [N+1, dim] tensor of attribute ids < vocab_size
    (0 = pad). Parts: an ID embedding (if `use_id_embedding`; std hidden**-0.5 so initial scores stay
    small), `Linear(dim, hidden)` per dense modality, a mean of attribute embeddings (pads ignored) per
    bag modality. Fusion: the sum of the parts, or with `fusion_moe` the concatenation plus a SparseMoE
    over it (residual), projected to `hidden`. The same vectors are the transformer's inputs and the
    output table it scores against, so no normalisation or dropout here: SASRec drops out its inputs
    itself (a LayerNorm'd table gave logits near +-hidden and a slow start: NDCG@5 after one Beauty
    epoch 0.0003 vs 0.0056 without). Feature tables are non-persistent buffers: checkpoints do
    not hold them, the dataset provides them. `sparse_table`: the ID embedding's gradient is sparse
    over the rows a step used (see `train.optim.LazyAdamW`), for catalogs of millions of items.
    """

    def __init__(self, num_items: int, hidden: int, modalities: dict[str, ModalitySpec],
                 features: dict[str, torch.Tensor] | None = None, use_id_embedding: bool = True,
                 fusion_moe: MoEConfig | None = None, dropout: float = 0.0, sparse_table: bool = False) -> None:
        super().__init__()
        features = features or {}
        if set(features) != set(modalities):
            raise ValueError(f"features {sorted(features)} do not match modalities {sorted(modalities)}")
        if not modalities and not use_id_embedding:
            raise ValueError("an item encoder needs the ID embedding or at least one content modality")
        self.num_items = num_items
        self.hidden = hidden
        self.modalities = dict(modalities)
        self.id_embedding = (nn.Embedding(num_items + 1, hidden, padding_idx=0, sparse=sparse_table)
                             if use_id_embedding else None)
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=hidden ** -0.5)
            self.id_embedding.weight.data[0] = 0
        self.projections = nn.ModuleDict()
        for name, spec in modalities.items():
            _check_feature(name, spec, features[name], num_items)
            self.register_buffer(f"feature_{name}", features[name], persistent=False)
            self.projections[name] = (nn.Linear(spec.dim, hidden)
                                      if spec.kind == "dense" else
                                      nn.EmbeddingBag(spec.vocab_size, hidden, mode="mean", padding_idx=0))
        num_parts = len(modalities) + int(use_id_embedding)
        self.fusion_moe = (SparseMoE(num_parts * hidden, num_parts * hidden, fusion_moe, dropout)
                           if fusion_moe is not None else None)
        self.fusion_out = nn.Linear(num_parts * hidden, hidden) if fusion_moe is not None else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> item vectors [..., hidden]; id 0 -> zeros."""
        return self.encode_with_aux(ids)[0]

    def encode_with_aux(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `forward`, also returning the fusion MoE's aux loss (0 without one).

        Padding ids are not encoded (nor routed through the MoE): their rows are exact zeros.
        """
        flat = ids.reshape(-1)
        (real,) = torch.nonzero(flat, as_tuple=True)
        vectors, aux_loss = self._fuse(flat[real])
        out = vectors.new_zeros(flat.shape[0], self.hidden).index_copy(0, real, vectors)
        return out.view(*ids.shape, self.hidden), aux_loss

    def _fuse(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self.id_embedding(ids)] if self.id_embedding is not None else []
        parts += [proj(self._rows(name, ids)) for name, proj in self.projections.items()]
        aux_loss = parts[0].new_zeros(())
        if self.fusion_moe is None:
            x = torch.stack(parts).sum(0)
        else:
            x = torch.cat(parts, dim=-1)
            routed, aux_loss = self.fusion_moe(x)
            x = self.fusion_out(x + routed)
        return x, aux_loss

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        rows = getattr(self, f"feature_{name}")[ids]
        return rows.to(self._dtype) if rows.is_floating_point() else rows  # e.g. fp16 storage

    def iter_item_table(self, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start_id, vectors of ids start_id..start_id+len-1) over ids 0..N.

        Eval mode (no dropout, no gating noise) and no gradients; the module's mode is restored when
        the iteration ends. With a dropping fusion MoE the vectors depend on the chunk's composition
        (capacity is per call).
        """
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, self.num_items + 1, chunk):
                    ids = torch.arange(start, min(start + chunk, self.num_items + 1), device=device)
                    yield start, self(ids)
        finally:
            self.train(was_training)

    def item_table(self, chunk: int) -> torch.Tensor:
        """All item vectors [N+1, hidden] (row 0 = padding = zeros), computed `chunk` ids at a time."""
        return torch.cat([block for _, block in self.iter_item_table(chunk)])
