"""Training engines: how a recipe backpropagates, synchronises gradients and steps the optimizer.

One interface for the three `runtime.engine` values, so the recipes read the same for all:

  plain       torch.distributed by hand: gradients averaged over ranks with all-reduce.
  accelerate  Hugging Face Accelerate runs `backward` and clipping and averages the gradients
              (`accelerator.reduce`); the process group comes from the launcher's environment as
              for the others. The model is not wrapped in DDP on purpose: experts may get no
              token on a rank, and the tied item table is used outside `forward` (chunked softmax,
              DPO item lookups), which DDP's bucketed hooks do not tolerate.
  deepspeed   `deepspeed.initialize` with a ZeRO-1/2 JSON (`runtime.deepspeed_config`, see
              configs/deepspeed/); required for DeepSpeed-MoE expert parallelism (`moe.ep_size` > 1),
              whose expert gradients are reduced over the expert-data-parallel group only. Runs with
              `managed_gradient_accumulation: false`: every `step()` is an accumulation boundary.
              Training forwards go through `DeepSpeedEngine.forward` (`engine.trainee`: it resets
              ZeRO's per-pass state and hooks the backward prologue); the recipes run the same
              number of forward/backward passes on every rank, as ZeRO-2 and the expert all-to-all
              require.

`engine.trainee` is what a training forward calls (attribute access reaches the model either way).
Every engine's loss is the recipe's already-normalised loss (global token or sample counts), so
`backward` never rescales it. `state_dict()` is what rank 0 saves for everyone; `rank_state_dict()`
what each rank saves for itself (DeepSpeed's ZeRO optimizer partitions). A run resumes with the
engine that saved it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from rodpo_dist.config import RuntimeConfig
from rodpo_dist.runtime import Runtime

Scheduler = torch.optim.lr_scheduler.LRScheduler


@dataclass
class StepSettings:
    """The optimisation settings an engine needs (DeepSpeed writes them into its JSON config)."""

    micro_batch: int
    grad_accum: int
    grad_clip: float
    bf16: bool


def sparse_row_params(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """Parameters whose gradient is sparse over rows (`nn.Embedding(sparse=True)`: the item table)."""
    return {m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}


def _empty_row_grad(param: torch.Tensor) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long, device=param.device),
                                   param.new_zeros(0, *param.shape[1:]), param.shape)


def _mean_row_grad(grad: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean of a sparse row gradient over ranks: all-gather of each rank's (rows, values), so the
    volume is the rows the ranks used, never the table."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
    width = int(max(counts))
    padded_rows = torch.zeros(width, dtype=torch.long, device=rows.device)
    padded_values = values.new_zeros(width, *values.shape[1:])
    padded_rows[:len(rows)], padded_values[:len(rows)] = rows, values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world_size)]
    all_values = [torch.empty_like(padded_values) for _ in range(world_size)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    rows = torch.cat([r[:int(n)] for r, n in zip(all_rows, counts)])
    values = torch.cat([v[:int(n)] for v, n in zip(all_values, counts)]) / world_size
    return torch.sparse_coo_tensor(rows[None], values, grad.shape).coalesce()


def _average_gradients(model: torch.nn.Module, world_size: int,
                       reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Mean of every gradient over ranks; a parameter unused on this rank contributes zeros.
    Sparse row gradients (the item table under `model.sparse_item_table`) are gathered by row."""
    if world_size == 1:
        return
    row_params = sparse_row_params(model)
    for param in model.parameters():
        if param.requires_grad:
            if param in row_params:
                param.grad = _mean_row_grad(param.grad if param.grad is not None else _empty_row_grad(param),
                                            world_size)
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.copy_(reduce(param.grad))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` (L2) that also takes sparse row gradients (coalesced: each row counts once)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.stack([(g.values() if g.is_sparse else g).float().pow(2).sum() for g in grads]).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad * coef if p.grad.is_sparse else p.grad.mul_(coef)
    return total


class TorchEngine:
    """The `plain` and `accelerate` engines: a torch optimizer and scheduler, explicit gradient sync."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Scheduler,
                 rt: Runtime, grad_clip: float, accelerator: Any = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.rt, self.grad_clip, self.accelerator = rt, grad_clip, accelerator
        self.trainee = model

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def step(self) -> float:
        """Synchronise gradients, clip (0: off), step optimizer and schedule; returns the grad norm."""
        if self.accelerator is not None:
            _average_gradients(self.model, self.rt.world_size,
                               lambda g: self.accelerator.reduce(g, reduction="mean"))
            clip = clip_grad_norm if sparse_row_params(self.model) else self.accelerator.clip_grad_norm_
            norm = clip(list(self.model.parameters()), self.grad_clip or float("inf"))
        else:
            _average_gradients(self.model, self.rt.world_size, _mean_all_reduce(self.rt.world_size))
            norm = clip_grad_norm(list(self.model.parameters()), self.grad_clip or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def rank_state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, shared: dict[str, Any], rank_local: dict[str, Any]) -> None:
        if "optimizer" not in shared:
            raise ValueError("the checkpoint holds no torch optimizer state: it was saved by the deepspeed "
                             "engine; resume it with runtime.engine=deepspeed")
        self.optimizer.load_state_dict(shared["optimizer"])
        self.scheduler.load_state_dict(shared["scheduler"])


def _mean_all_reduce(world_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reduce(grad: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(grad)
        return grad / world_size
    return reduce


# ZeRO optimizer state entries that are Python objects, not tensors: left out of the saved state so
# that loading needs no unpickling (`weights_only=True`); DeepSpeed restores them from its defaults
# (for fp16 that restarts the dynamic loss scale; fp32 and bf16, the CPU options, have none).
_ZERO_OBJECT_KEYS = ("loss_scaler", "zero_stage", "param_slice_mappings")


class DeepSpeedEngine:
    """`deepspeed.initialize` around the model, the recipe's torch optimizer and its scheduler."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Scheduler,
                 rt: Runtime, settings: StepSettings, config_path: str) -> None:
        import deepspeed

        config = deepspeed_config(config_path, settings, rt.world_size)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=config)
        self.scheduler = scheduler
        self.trainee = self.engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "global_steps": self.engine.global_steps}

    def rank_state_dict(self) -> dict[str, Any]:
        state = self.engine.optimizer.state_dict()
        return {"zero": {k: v for k, v in state.items() if k not in _ZERO_OBJECT_KEYS}}

    def load_state_dict(self, shared: dict[str, Any], rank_local: dict[str, Any]) -> None:
        if "zero" not in rank_local:
            raise ValueError("the checkpoint has no DeepSpeed ZeRO optimizer state for this rank: it was saved "
                             "by another engine or another number of ranks; resume it as it was saved")
        # a rigid (non-elastic) ZeRO checkpoint: DeepSpeed reads only the entry at this rank's
        # data-parallel index, which for every index is this rank's own partition
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.engine.optimizer.load_state_dict([rank_local["zero"]] * world, load_optimizer_states=True,
                                              load_from_fp32_weights=True)
        self.scheduler.load_state_dict(shared["scheduler"])
        self.engine.global_steps = shared["global_steps"]


def deepspeed_config(path: str, settings: StepSettings, world_size: int) -> dict[str, Any]:
    """The JSON at `path` with every "auto" value filled from the recipe's settings."""
    config = json.loads(Path(path).read_text())
    auto = {"train_micro_batch_size_per_gpu": settings.micro_batch,
            "gradient_accumulation_steps": settings.grad_accum,
            "train_batch_size": settings.micro_batch * settings.grad_accum * world_size,
            "gradient_clipping": settings.grad_clip}
    for key, value in auto.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    if config.get("bf16", {}).get("enabled") == "auto":
        config["bf16"]["enabled"] = settings.bf16
    config["managed_gradient_accumulation"] = False  # the recipe calls step() once per optimizer step
    config.setdefault("zero_optimization", {})["elastic_checkpoint"] = False  # per-rank partitions as saved
    config.setdefault("zero_allow_untested_optimizer", True)  # the recipe's torch AdamW
    return config


Engine = TorchEngine | DeepSpeedEngine


def build_engine(runtime: RuntimeConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Scheduler, rt: Runtime, settings: StepSettings) -> Engine:
    """The engine named by `runtime.engine` (the process group is already up: `runtime.init_distributed`)."""
    if runtime.engine == "deepspeed":
        return DeepSpeedEngine(model, optimizer, scheduler, rt, settings, runtime.deepspeed_config)
    accelerator = None
    if runtime.engine == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=rt.device.type == "cpu")
    return TorchEngine(model, optimizer, scheduler, rt, settings.grad_clip, accelerator)
