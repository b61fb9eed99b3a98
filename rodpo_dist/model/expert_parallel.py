"""One checkpoint layout whatever the expert parallelism: experts under their global index.

With DeepSpeed-MoE and `ep_size` > 1 each rank holds `num_experts / ep_size` experts, named
`...deepspeed_experts.<local>...`; expert `local` of expert-parallel rank `r` is global expert
`r * num_local + local`. `full_state_dict` gathers every expert (a collective over the expert
group: call it on all ranks) and names them globally, so a checkpoint saved with any `ep_size`
loads into a model built with any other, including a single-process one (`load_full_state_dict`
keeps the slice a rank owns).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

_EXPERT = re.compile(r"^(.*\.deepspeed_experts\.)(\d+)(\..+)$")


class _Layer(NamedTuple):
    ep_size: int
    ep_rank: int
    num_local: int
    group: Any


def _parallel_layers(model: nn.Module) -> dict[str, _Layer]:
    """Prefix of each expert-parallel DeepSpeed-MoE expert list -> its layout on this rank."""
    if not any(".deepspeed_experts." in name for name, _ in model.named_parameters()):
        return {}
    from deepspeed.moe.layer import MoE
    from deepspeed.utils import groups

    return {f"{name}.deepspeed_moe.experts.deepspeed_experts.": _Layer(
                module.ep_size, groups._get_expert_parallel_rank(module.expert_group_name),
                module.num_local_experts, groups._get_expert_parallel_group(module.expert_group_name))
            for name, module in model.named_modules() if isinstance(module, MoE) and module.ep_size > 1}


def join_expert_groups(model: nn.Module, attach: bool = False) -> None:
    """Create (or join) the expert-parallel process groups of the model's MoE layers now (a collective).

    `deepspeed.initialize` does this for the model it wraps, but a checkpoint is loaded (by local
    expert index) before that. `attach=True` also hands the groups to the layers, for a model no
    engine will wrap (the frozen reference policy); DeepSpeed refuses to attach them twice.
    A model without DeepSpeed-MoE layers returns at once (DeepSpeed need not be installed).
    """
    if not any(".deepspeed_experts." in name for name, _ in model.named_parameters()):
        return
    from deepspeed.moe.layer import MoE
    from deepspeed.utils import groups

    layers = [m for m in model.modules() if isinstance(m, MoE) and m.ep_size > 1]
    if not layers:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend())  # wraps the running process group
    for layer in layers:
        if attach:
            layer.set_deepspeed_parallelism()
        elif layer.expert_group_name not in groups._get_expert_parallel_group_dict():
            groups._create_expert_and_data_parallel(layer.ep_size)


def _expert_key(key: str, layers: dict[str, _Layer]) -> tuple[_Layer, str, int, str] | None:
    """(layer, prefix, expert index, suffix) of an expert-parallel entry; None for any other entry."""
    match = _EXPERT.match(key)
    if match is None or match.group(1) not in layers:
        return None
    return layers[match.group(1)], match.group(1), int(match.group(2)), match.group(3)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every expert present under its global index (collective when ep > 1)."""
    layers = _parallel_layers(model)
    full = {}
    for key, value in model.state_dict().items():
        expert = _expert_key(key, layers)
        if expert is None:
            full[key] = value.detach()
            continue
        layer, prefix, local, suffix = expert
        parts = [torch.empty_like(value) for _ in range(layer.ep_size)]
        dist.all_gather(parts, value.detach().contiguous(), group=layer.group)
        for r, part in enumerate(parts):
            full[f"{prefix}{r * layer.num_local + local}{suffix}"] = part
    return full


def local_state_dict(model: nn.Module, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a global-index state dict that this rank's model holds, under its local names."""
    layers = _parallel_layers(model)
    local = {}
    for key, value in full.items():
        expert = _expert_key(key, layers)
        if expert is None:
            local[key] = value
            continue
        layer, prefix, index, suffix = expert
        index -= layer.ep_rank * layer.num_local
        if 0 <= index < layer.num_local:
            local[f"{prefix}{index}{suffix}"] = value
    return local
