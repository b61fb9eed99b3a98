"""Model layer: item encoder, sparse MoE, SASRec backbone."""

from __future__ import annotations

import torch

from rodpo_dist.config import Config
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.model.item_encoder import ItemEncoder
from rodpo_dist.model.moe import SparseMoE, optimizer_param_groups
from rodpo_dist.model.sasrec import SASRec, SASRecOutput

__all__ = ["ItemEncoder", "ModalitySpec", "SASRec", "SASRecOutput", "SparseMoE", "build_model",
           "optimizer_param_groups"]


def build_model(cfg: Config, modalities: dict[str, ModalitySpec], features: dict[str, torch.Tensor],
                num_items: int) -> SASRec:
    """SASRec over an ItemEncoder of the given modalities, with MoE where `cfg.moe` places it.

    From a prepared dataset: `build_model(cfg, {m: manifest.modalities[m] for m in features}, features,
    manifest.num_items)` with `features = load_item_features(dir, cfg.data.modalities)`.
    """
    moe = cfg.moe
    fusion_moe = moe if moe.enabled and moe.placement in ("fusion", "both") else None
    encoder = ItemEncoder(num_items, cfg.model.hidden, modalities, features, cfg.model.use_id_embedding,
                          fusion_moe, cfg.model.dropout)
    return SASRec(encoder, cfg.model, moe)
