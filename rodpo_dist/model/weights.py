"""Reading model weights from a checkpoint folder (`model.safetensors`, experts under global indices)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from rodpo_dist.model.expert_parallel import local_state_dict

WEIGHTS_FILE = "model.safetensors"


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or incomplete; the message names the path."""


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load only the model weights of checkpoint `path` (strict: names and shapes must match)."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        hint = f" (a run folder: its validation-selected checkpoint is {Path(path) / 'best'})" \
            if (Path(path) / "best" / WEIGHTS_FILE).is_file() else ""
        raise CheckpointError(f"checkpoint {path} has no model.safetensors{hint}")
    weights = local_state_dict(model, load_file(str(file)))
    expected = model.state_dict()
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    wrong = [k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"checkpoint {path} does not fit the model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}, other shapes {sorted(wrong)[:5]} "
                              f"(was it trained with another model config?)")
    model.load_state_dict(weights)
