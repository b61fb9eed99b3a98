"""Model layer: item encoder, sparse MoE, SASRec backbone."""

from __future__ import annotations

import torch

from rodpo_dist.config import Config
from rodpo_dist.data.dataset import PreparedDataset
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.model.expert_parallel import join_expert_groups
from rodpo_dist.model.item_encoder import ItemEncoder
from rodpo_dist.model.moe import SparseMoE, optimizer_param_groups
from rodpo_dist.model.sasrec import SASRec, SASRecOutput

__all__ = ["ItemEncoder", "ModalitySpec", "SASRec", "SASRecOutput", "SparseMoE", "build_model", "make_model",
           "optimizer_param_groups"]


def build_model(cfg: Config, modalities: dict[str, ModalitySpec], features: dict[str, torch.Tensor],
                num_items: int) -> SASRec:
    """SASRec over an ItemEncoder of the given modalities, with MoE where `cfg.moe` places it."""
    moe = cfg.moe
    fusion_moe = moe if moe.enabled and moe.placement in ("fusion", "both") else None
    encoder = ItemEncoder(num_items, cfg.model.hidden, modalities, features, cfg.model.use_id_embedding,
                          fusion_moe, cfg.model.dropout, cfg.model.sparse_item_table)
    return SASRec(encoder, cfg.model, moe)


def make_model(cfg: Config, data: PreparedDataset, device: torch.device) -> SASRec:
    """The model for `data`, its expert-parallel groups joined (so checkpoints can be loaded into it)."""
    modalities = {m: data.manifest.modalities[m] for m in data.features}
    model = build_model(cfg, modalities, data.features, data.manifest.num_items).to(device)
    if cfg.moe.enabled and cfg.moe.ep_size > 1:
        join_expert_groups(model)
    return model
