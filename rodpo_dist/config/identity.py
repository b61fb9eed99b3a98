"""Run identity: a hash of the settings that decide what a run computes.

Runtime-only fields (where a run writes, how it reports, which launcher engine, how big the
evaluation batches are, and the `study` section) are left out, so a run can be resumed with another log interval or on
another machine, but never with another learning rate, seed, dataset or loss.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from rodpo_dist.config.sections import Config

RUNTIME_ONLY = frozenset({
    "runtime.run_dir", "runtime.run_name", "runtime.device", "runtime.engine", "runtime.deepspeed_config",
    "runtime.log_every", "runtime.checkpoint_every", "runtime.keep_checkpoints", "runtime.progress",
    "runtime.dist_timeout_s", "eval.batch_size", "eval.item_chunk", "eval.report_test", "model.length_groups", "pretrain.item_chunk",
    "data.read_chunk_rows",
})
RUNTIME_ONLY_SECTIONS = ("study.",)
# fields added after runs were recorded (2026-12-04): left out while at their defaults, so those runs
# keep their hash (a field added later joins this set)
ADDED_LATER = frozenset({
    "align.ce_loss", "align.observed_scope", "align.observed_share", "align.rejected", "data.columns.event", "data.columns.item",
    "data.columns.rating", "data.columns.timestamp", "data.columns.user", "data.items.attributes", "data.items.id",
    "data.items.path", "data.items.separator", "data.items.text", "data.items.unknown", "data.items.vectors",
    "data.dislike_events", "data.max_dislike_rating", "data.min_rating", "data.synthetic.dislike_rate", "data.synthetic.popularity",
    "data.synthetic.zipf_exponent", "eval.valid_users", "model.sparse_item_table", "pool.index", "pool.ivf_lists",
    "pool.ivf_probe", "pool.scope", "pretrain.popularity_power", "pretrain.sampling",
})
# what one stage never reads: pretraining ignores the alignment settings, and an alignment run's
# backbone is identified by `init`, not by the settings that trained it
OTHER_STAGE = {"pretrain": ("align.", "pool.", "init"), "align": ("pretrain.",)}
# ...except the pretraining loss an alignment's CE reuses under `align.ce_loss: pretrain`
CE_FROM_PRETRAIN = ("pretrain.loss", "pretrain.num_sampled", "pretrain.sampling", "pretrain.popularity_power")


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
    flat, defaults = flatten(tree), _defaults()
    keep = CE_FROM_PRETRAIN if tree.get("stage") == "align" and flat.get("align.ce_loss") == "pretrain" else ()
    return {k: v for k, v in flat.items() if k not in RUNTIME_ONLY and (k in keep or not k.startswith(skip))
            and not (k in ADDED_LATER and v == defaults.get(k))}


@functools.cache
def _defaults() -> dict[str, Any]:
    return flatten(Config().to_dict())


def config_hash(cfg: Config | dict[str, Any], length: int = 12) -> str:
    """A short stable hash of `identity_fields(cfg)`."""
    text = json.dumps(identity_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def differing_keys(saved: Config | dict[str, Any], new: Config | dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, new value)} for every identity field that differs (absent = None)."""
    a, b = identity_fields(saved), identity_fields(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
