"""Run identity: a hash of the settings that decide what a run computes.

Runtime-only fields (where a run writes, how it reports, which launcher engine, how big the
evaluation batches are, and the `study` section) are left out, so a run can be resumed with another log interval or on
another machine, but never with another learning rate, seed, dataset or loss.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rodpo_dist.config.sections import Config

RUNTIME_ONLY = frozenset({
    "runtime.run_dir", "runtime.run_name", "runtime.device", "runtime.engine", "runtime.deepspeed_config",
    "runtime.log_every", "runtime.checkpoint_every", "runtime.keep_checkpoints", "runtime.progress",
    "runtime.dist_timeout_s", "eval.batch_size", "eval.item_chunk", "eval.report_test", "model.length_groups", "pretrain.item_chunk",
})
RUNTIME_ONLY_SECTIONS = ("study.",)
# fields added after runs were recorded: left out while at these defaults, so those runs keep their hash
ABSENT_AT_DEFAULT = {"data.max_dislike_rating": None, "data.synthetic.dislike_rate": 0.0, "align.rejected": "pool",
                     "align.observed_share": 0.5, "align.observed_scope": "train"}
# what one stage never reads: pretraining ignores the alignment settings, and an alignment run's
# backbone is identified by `init`, not by the settings that trained it
OTHER_STAGE = {"pretrain": ("align.", "pool.", "init"), "align": ("pretrain.",)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity_fields(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    """The flattened settings that define a run: all but `RUNTIME_ONLY` and the other stage's sections."""
    tree = cfg.to_dict() if isinstance(cfg, Config) else cfg
    skip = RUNTIME_ONLY_SECTIONS + OTHER_STAGE.get(tree.get("stage", "pretrain"), ())
    return {k: v for k, v in flatten(tree).items() if k not in RUNTIME_ONLY and not k.startswith(skip)
            and not (k in ABSENT_AT_DEFAULT and v == ABSENT_AT_DEFAULT[k])}


def config_hash(cfg: Config | dict[str, Any], length: int = 12) -> str:
    """A short stable hash of `identity_fields(cfg)`."""
    text = json.dumps(identity_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def differing_keys(saved: Config | dict[str, Any], new: Config | dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, new value)} for every identity field that differs (absent = None)."""
    a, b = identity_fields(saved), identity_fields(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
