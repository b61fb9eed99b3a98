"""Up-front validation: ranges of single fields and every cross-field rule a run would otherwise
discover late. Each rule appends one message naming the fields; all problems are reported at once."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

from rodpo_dist.config.sections import Config

KNOWN_MODALITIES = ("text", "image", "attr")
MISSING_SUFFIX = "_missing"
"""`<modality>_missing`: the indicator modality of items without a value for `<modality>`."""
POOL_STRATEGIES = ("hard", "rodpo", "sdpo")
# DeepSpeed JSON keys filled from the YAML when "auto": (key, what the YAML says)
_DEEPSPEED_FROM_YAML = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


def check(cfg: Config, problems: list[str]) -> None:
    """Append every problem of `cfg` to `problems`."""
    _ranges(cfg, problems)
    _synthetic(cfg, problems)
    _model(cfg, problems)
    _data(cfg, problems)
    _alignment(cfg, problems)
    _evaluation(cfg, problems)
    _runtime(cfg, problems)
    _study(cfg, problems)


class SourceProblem(str):
    """A problem with a training input on disk (data files, the `init` checkpoint): what a saved run's
    config is not checked for when the checkpoint is only evaluated, served or exported."""


def _need(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(msg)


def _need_source(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(SourceProblem(msg))


def _ranges(cfg: Config, problems: list[str]) -> None:
    syn, stages = cfg.data.synthetic, {"pretrain": cfg.pretrain, "align": cfg.align}
    positive_ints = {
        "model.hidden": cfg.model.hidden, "model.layers": cfg.model.layers, "model.heads": cfg.model.heads,
        "model.max_len": cfg.model.max_len, "model.ffn_mult": cfg.model.ffn_mult, "model.length_groups": cfg.model.length_groups,
        "moe.num_experts": cfg.moe.num_experts, "moe.ep_size": cfg.moe.ep_size,
        "pretrain.item_chunk": cfg.pretrain.item_chunk, "pretrain.num_sampled": cfg.pretrain.num_sampled,
        "pretrain.patience": cfg.pretrain.patience, "pretrain.eval_every_epochs": cfg.pretrain.eval_every_epochs,
        "align.num_negatives": cfg.align.num_negatives, "pool.k": cfg.pool.k, "pool.refresh_steps": cfg.pool.refresh_steps,
        "pool.ivf_probe": cfg.pool.ivf_probe,
        "eval.batch_size": cfg.eval.batch_size, "eval.item_chunk": cfg.eval.item_chunk,
        "data.items_per_shard": cfg.data.items_per_shard, "data.users_per_shard": cfg.data.users_per_shard,
        "data.min_user_items": cfg.data.min_user_items, "data.min_item_users": cfg.data.min_item_users,
        "data.shuffle_buffer": cfg.data.shuffle_buffer, "data.length_window": cfg.data.length_window,
        "data.synthetic.num_items": syn.num_items, "data.synthetic.num_users": syn.num_users,
        "data.synthetic.latent_dim": syn.latent_dim, "data.synthetic.num_clusters": syn.num_clusters,
        "data.synthetic.text_dim": syn.text_dim, "data.synthetic.image_dim": syn.image_dim,
        "data.synthetic.num_attributes": syn.num_attributes, "data.synthetic.attributes_per_item": syn.attributes_per_item,
        "data.item_block_size": cfg.data.item_block_size, "runtime.log_every": cfg.runtime.log_every,
        "runtime.checkpoint_every": cfg.runtime.checkpoint_every, "runtime.keep_checkpoints": cfg.runtime.keep_checkpoints,
        **{f"{s}.{f}": getattr(stage, f) for s, stage in stages.items() for f in ("epochs", "batch_size", "grad_accum")},
    }
    for name, value in positive_ints.items():
        _need(problems, value >= 1, f"{name}: must be >= 1, got {value}")
    positive = {"align.beta": cfg.align.beta, "align.temperature": cfg.align.temperature,
                "moe.capacity_factor": cfg.moe.capacity_factor, "moe.eval_capacity_factor": cfg.moe.eval_capacity_factor,
                **{f"{s}.lr": stage.lr for s, stage in stages.items()}}
    for name, value in positive.items():
        _need(problems, value > 0, f"{name}: must be > 0, got {value}")
    non_negative = {"align.ce_weight": cfg.align.ce_weight, "moe.aux_weight": cfg.moe.aux_weight,
                    "moe.min_capacity": cfg.moe.min_capacity, "align.window_start": cfg.align.window_start,
                    "align.eval_every_steps": cfg.align.eval_every_steps, "data.num_workers": cfg.data.num_workers,
                    "align.reference_update_every": cfg.align.reference_update_every,
                    "eval.valid_users": cfg.eval.valid_users, "pool.ivf_lists": cfg.pool.ivf_lists, "pretrain.popularity_power": cfg.pretrain.popularity_power,
                    **{f"{s}.{f}": getattr(stage, f) for s, stage in stages.items()
                       for f in ("weight_decay", "grad_clip", "warmup_steps")}}
    for name, value in non_negative.items():
        _need(problems, value >= 0, f"{name}: must be >= 0, got {value}")
    for name, value in {"model.dropout": cfg.model.dropout, "align.label_smoothing": cfg.align.label_smoothing}.items():
        _need(problems, 0.0 <= value < 1.0, f"{name}: must be in [0, 1), got {value}")
    for name, value in {"data.synthetic.exposure": syn.exposure, "data.synthetic.relevant_share": syn.relevant_share,
                        "align.reference_update_alpha": cfg.align.reference_update_alpha}.items():
        _need(problems, 0.0 < value <= 1.0, f"{name}: must be in (0, 1], got {value}")


def _synthetic(cfg: Config, problems: list[str]) -> None:
    syn = cfg.data.synthetic
    _need(problems, syn.min_seq_len >= 3, f"data.synthetic.min_seq_len: must be >= 3 (leave-one-out), got {syn.min_seq_len}")
    _need(problems, syn.max_seq_len >= syn.min_seq_len,
          f"data.synthetic.max_seq_len ({syn.max_seq_len}) must be >= data.synthetic.min_seq_len ({syn.min_seq_len})")
    _need(problems, syn.num_items * syn.exposure >= 2 * syn.max_seq_len,
          f"data.synthetic: each user sees num_items * exposure = {syn.num_items * syn.exposure:g} items; "
          f"need >= 2 * max_seq_len = {2 * syn.max_seq_len}")
    _need(problems, syn.temperature > 0, f"data.synthetic.temperature: must be > 0, got {syn.temperature}")
    _need(problems, 0.0 <= syn.drift <= 1.0, f"data.synthetic.drift: must be in [0, 1], got {syn.drift}")
    _need(problems, syn.feature_noise >= 0, f"data.synthetic.feature_noise: must be >= 0, got {syn.feature_noise}")
    _need(problems, syn.zipf_exponent > 0, f"data.synthetic.zipf_exponent: must be > 0, got {syn.zipf_exponent}")


def _model(cfg: Config, problems: list[str]) -> None:
    moe = cfg.moe
    if cfg.model.heads >= 1:
        _need(problems, cfg.model.hidden % cfg.model.heads == 0,
              f"model.hidden ({cfg.model.hidden}) must be divisible by model.heads ({cfg.model.heads})")
    _need(problems, cfg.model.use_id_embedding or bool(cfg.data.modalities),
          "model.use_id_embedding=false needs at least one entry in data.modalities (an item must be encoded somehow)")
    if cfg.pool.index == "ivf" and importlib.util.find_spec("faiss") is None:
        problems.append("pool.index: ivf needs the package faiss-cpu, which is not installed "
                        "(pip install faiss-cpu==1.15.1, or pip install 'rodpo-dist[scale]'), or set pool.index: exact")
    if cfg.model.sparse_item_table:
        _need(problems, cfg.model.use_id_embedding, "model.sparse_item_table needs model.use_id_embedding (the table)")
        _need(problems, cfg.runtime.engine != "deepspeed",
              "model.sparse_item_table: runtime.engine=deepspeed reduces dense gradients only; use plain or accelerate")
    if not moe.enabled:
        return
    _need(problems, moe.top_k in (1, 2), f"moe.top_k: must be 1 or 2, got {moe.top_k}")
    _need(problems, moe.top_k <= moe.num_experts, f"moe.top_k ({moe.top_k}) exceeds moe.num_experts ({moe.num_experts})")
    if moe.ep_size >= 1:
        _need(problems, moe.num_experts % moe.ep_size == 0,
              f"moe.num_experts ({moe.num_experts}) must be divisible by moe.ep_size ({moe.ep_size})")
    if moe.ep_size > 1:
        _need(problems, moe.backend == "deepspeed", "moe.ep_size > 1 needs moe.backend: deepspeed")
        _need(problems, not moe.drop_tokens,
              "moe.drop_tokens: must be false with moe.ep_size > 1 (ranks hold batches of different lengths; "
              "only without dropping do they agree on the expert capacity)")
        _need(problems, cfg.runtime.engine == "deepspeed",
              f"moe.ep_size={moe.ep_size} (expert parallelism) needs runtime.engine=deepspeed: only DeepSpeed "
              f"reduces expert gradients over the expert-data-parallel group")


def _data(cfg: Config, problems: list[str]) -> None:
    data = cfg.data
    known = list(KNOWN_MODALITIES) + list(data.feature_files) + list(data.items.vectors)
    for i, m in enumerate(data.modalities):
        _need(problems, not m.endswith(MISSING_SUFFIX),
              f"data.modalities[{i}]: {m!r}: names ending in {MISSING_SUFFIX!r} are the missing indicators")
        if m not in known and data.source != "recbole":  # RecBole vectors are named after NAME.item's columns
            close = difflib.get_close_matches(m, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"data.modalities[{i}]: unknown modality {m!r}{hint}; known: {', '.join(known)}")
    _need(problems, data.source == "synthetic" or bool(data.path), f"data.path: required for data.source={data.source!r}")
    if data.path:
        _need_source(problems, Path(data.path).exists(), f"data.path: {data.path} does not exist")
    _need(problems, data.source != "s3rec" or bool(data.name), "data.name: required for data.source='s3rec' (e.g. Beauty)")
    if data.source == "s3rec" and data.name and Path(data.path).is_dir():
        sequences = Path(data.path) / f"{data.name}.txt"
        _need_source(problems, sequences.is_file(), f"data.name: {sequences} does not exist (S3-Rec sequences of {data.name!r})")
    for name, p in data.feature_files.items():
        _need_source(problems, Path(p).is_file(), f"data.feature_files.{name}: {p} does not exist")
    _need(problems, data.read_chunk_rows >= 1, f"data.read_chunk_rows: must be >= 1, got {data.read_chunk_rows}")
    _item_table(cfg, problems)
    _min_rating(cfg, problems)


def _item_table(cfg: Config, problems: list[str]) -> None:
    data, items = cfg.data, cfg.data.items
    chosen = bool(items.text or items.attributes or items.vectors)
    if data.source == "recbole":
        _need(problems, not items.path, "data.items.path: unused with data.source=recbole (the table is NAME.item)")
        _need(problems, bool(data.name), "data.name: required for data.source='recbole' (NAME.inter, e.g. ml-100k)")
        if data.name and Path(data.path).is_dir():
            inter = Path(data.path) / f"{data.name}.inter"
            _need_source(problems, inter.is_file(), f"data.name: {inter} does not exist (RecBole interactions of {data.name!r})")
        return
    if data.source != "interactions":
        _need(problems, not (items.path or chosen), f"data.items: only for data.source interactions or recbole, "
                                                    f"not {data.source!r}")
        return
    _need(problems, bool(items.path) or not chosen, "data.items.path: required when data.items names text, "
                                                    "attributes or vectors")
    if items.path:
        _need_source(problems, Path(items.path).is_file(), f"data.items.path: {items.path} does not exist")
    for modality, needs in (("text", items.text), ("attr", items.attributes)):
        _need(problems, modality not in data.modalities or bool(needs),
              f"data.modalities: {modality!r} needs data.items.{'text' if modality == 'text' else 'attributes'} "
              f"(the item table's columns) with data.source=interactions")
    for name, value in items.vectors.items():
        if value.endswith(".npy"):
            ids = Path(value).with_suffix(".ids.txt")
            _need_source(problems, Path(value).is_file() and ids.is_file(),
                  f"data.items.vectors.{name}: {value} and its id file {ids} must both exist")


def _min_rating(cfg: Config, problems: list[str]) -> None:
    value = cfg.data.min_rating
    if value is None:
        return
    _need(problems, isinstance(value, (int, float)) and not isinstance(value, bool),
          f"data.min_rating: expected a number, got {value!r}")
    _need(problems, cfg.data.source in ("interactions", "recbole"),
          f"data.min_rating: needs a rating column (data.source interactions or recbole), not {cfg.data.source!r}")


def _dislikes(cfg: Config, problems: list[str]) -> None:
    data, a = cfg.data, cfg.align
    _need(problems, 0.0 <= data.synthetic.dislike_rate <= 1.0,
          f"data.synthetic.dislike_rate: must be in [0, 1], got {data.synthetic.dislike_rate}")
    _need(problems, 0.0 <= a.observed_share <= 1.0, f"align.observed_share: must be in [0, 1], got {a.observed_share}")
    if data.dislike_events:
        _need(problems, data.source in ("interactions", "recbole"),
              f"data.dislike_events: needs an event-type column (data.source interactions or recbole), not {data.source!r}")
        _need(problems, all(isinstance(e, str) and e for e in data.dislike_events),
              f"data.dislike_events: expected event-type names, got {data.dislike_events!r}")
    value = data.max_dislike_rating
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        problems.append(f"data.max_dislike_rating: expected a number, got {value!r}")
        return
    _need(problems, data.source in ("interactions", "recbole"),
          f"data.max_dislike_rating: needs a rating column (data.source interactions or recbole), not {data.source!r}")
    if isinstance(data.min_rating, (int, float)):
        _need(problems, value < data.min_rating,
              f"data.max_dislike_rating ({value}) must be below data.min_rating ({data.min_rating}): an interaction "
              "is a positive or a rejection, never both")


def _alignment(cfg: Config, problems: list[str]) -> None:
    a, k = cfg.align, cfg.pool.k
    _dislikes(cfg, problems)
    if a.strategy in POOL_STRATEGIES:
        drawable = k - (a.window_start if a.sampling == "window" else 0)
        _need(problems, a.num_negatives <= drawable,
              f"align.num_negatives ({a.num_negatives}) exceeds the pool entries it can draw from: pool.k ({k})"
              + (f" - align.window_start ({a.window_start})" if a.sampling == "window" else ""))
    if a.sampling == "window":
        _need(problems, a.window_start < k, f"align.window_start ({a.window_start}) must be < pool.k ({k})")
    if cfg.stage == "align":
        _need(problems, bool(cfg.init), "init: the align stage needs a pretrained checkpoint (--init PATH or `init:`)")
    if cfg.init:
        _need_source(problems, Path(cfg.init).exists(), f"init: checkpoint {cfg.init} does not exist")


def _evaluation(cfg: Config, problems: list[str]) -> None:
    ks = cfg.eval.ks
    _need(problems, bool(ks) and all(k is not None and k >= 1 for k in ks), f"eval.ks: must be positive integers, got {ks}")
    name, _, k = cfg.eval.metric.partition("@")
    if name not in ("hr", "ndcg", "mrr") or not k.isdigit():
        problems.append(f"eval.metric: expected hr@K, ndcg@K or mrr@K, got {cfg.eval.metric!r}")
    elif int(k) not in ks:
        problems.append(f"eval.metric: {cfg.eval.metric} is not computed: its K ({k}) is not in eval.ks {ks}")


def _runtime(cfg: Config, problems: list[str]) -> None:
    rt = cfg.runtime
    _need(problems, rt.engine != "deepspeed" or bool(rt.deepspeed_config),
          "runtime.deepspeed_config: required with runtime.engine=deepspeed (e.g. configs/deepspeed/zero2.json)")
    if not rt.deepspeed_config:
        return
    path = Path(rt.deepspeed_config)
    if not path.is_file():
        problems.append(SourceProblem(f"runtime.deepspeed_config: {path} does not exist"))
        return
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problems.append(f"runtime.deepspeed_config: {path} is not valid JSON: {err}")
        return
    stage = cfg.stage_config
    yaml_values = dict(zip(_DEEPSPEED_FROM_YAML, (stage.batch_size, stage.grad_accum, stage.grad_clip)))
    for key, ours in yaml_values.items():
        theirs = ds.get(key, "auto")
        _need(problems, theirs == "auto" or theirs == ours,
              f"runtime.deepspeed_config: {path} sets {key}={theirs!r} but the {cfg.stage} section says {ours!r}; "
              f"use \"auto\" there (filled from the YAML) or make them agree")


METHODS = ("ce", "random", "hard", "rodpo", "sdpo", "observed", "mixed")
"""Study methods: the strategies, and `observed` / `mixed` (rodpo with `align.rejected` observed / mixed)."""


def _study(cfg: Config, problems: list[str]) -> None:
    st = cfg.study
    for name, methods in {"study.methods": st.methods, "study.variant_methods": st.variant_methods}.items():
        for m in methods:
            _need(problems, m in METHODS, f"{name}: unknown method {m!r}; known: {', '.join(METHODS)}")
    _need(problems, bool(st.seeds), "study.seeds: at least one seed")
    for name, overrides in st.variants.items():
        _need(problems, name not in ("", "default"), f"study.variants: {name!r} is not a usable variant name")
        for o in overrides:
            _need(problems, isinstance(o, str) and "=" in o,
                  f"study.variants.{name}: expected key.sub=value overrides, got {o!r}")
