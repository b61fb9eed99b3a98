"""`prepare`: a data source -> WebDataset shards + manifest, atomically; `stats`: a summary table.

Folder layout: `{train,valid,test}-NNNNNN.tar` (one sample per user: `seq.npy` int32, `meta.json`
`{"user", "target"}`), `items-NNNNNN.tar` (one sample per block of consecutive item ids: `ids.npy`
int64 and one `<modality>.npy` per modality), optional `truth.npz` (synthetic ground truth) and
`id_maps.json` (raw ids of users/items 1..U / 1..N), optional `rejections.npz` (observed rejections,
`rejections.Rejections`), and `manifest.json`, written last.
The folder is built beside the target under a hidden temporary name and renamed into place only
when complete, so a failed run leaves nothing that looks like a prepared dataset.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rodpo_dist.config import Config, DataConfig, flatten
from rodpo_dist.config.validate import MISSING_SUFFIX
from rodpo_dist.data.catalog import CatalogSpec, interactions_spec, load_catalog
from rodpo_dist.data.errors import DataError
from rodpo_dist.data.features import (Modality, as_dtype, bags, dense_by_raw_id, dense_from_npy, ids_file,
                                      text_modality)
from rodpo_dist.data.manifest import ITEMS, MANIFEST_FILE, Manifest, ShardInfo, load_manifest
from rodpo_dist.data.recbole import recbole_spec
from rodpo_dist.data.rejections import REJECTIONS_FILE
from rodpo_dist.data.shards import json_bytes, npy_bytes, sha256_file, write_shard
from rodpo_dist.data.sources import (Interactions, read_s3rec_attributes, read_s3rec_items, read_s3rec_sequences,
                                     s3rec_paths)
from rodpo_dist.data.split import SPLITS, split_samples
from rodpo_dist.data.synthetic import TRUTH_FILE, SyntheticCatalog

ID_MAPS_FILE = "id_maps.json"
RESERVED_MEMBERS = ("ids", "seq", "meta")


@dataclasses.dataclass
class _Loaded:
    """A source read into memory: interactions, lazy modality factories, files to add, provenance."""

    data: Interactions
    modalities: dict[str, Callable[[], Modality]]
    paths: dict[str, str]
    write_extra: Callable[[Path], None] = lambda _: None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Counts of the source's own steps (interactions with unknown items, below min_rating)."""


def _load_synthetic(cfg: DataConfig, progress: bool) -> _Loaded:
    catalog = SyntheticCatalog(cfg.synthetic)
    data = catalog.interactions(progress=progress)
    built = catalog.modalities()
    return _Loaded(data, {name: (lambda m=m: m) for name, m in built.items()}, {}, catalog.truth.save)


def _load_s3rec(cfg: DataConfig, progress: bool) -> _Loaded:
    paths = s3rec_paths(cfg.path, cfg.name)
    data = read_s3rec_sequences(paths["sequences"])
    factories = {"attr": lambda: bags(read_s3rec_attributes(paths["attributes"], data.num_items))}
    if paths["items"].is_file():
        data.item_ids, texts = read_s3rec_items(paths["items"], data.num_items)
        factories["text"] = lambda: text_modality(texts, cfg.text_encoder, progress=progress)
    return _Loaded(data, factories, {k: str(v) for k, v in paths.items()})


def _load_catalog(spec: CatalogSpec, cfg: DataConfig, progress: bool) -> _Loaded:
    data, factories, stats = load_catalog(spec, cfg, progress)
    paths = {"interactions": str(spec.interactions), **({"items": str(spec.table.path)} if spec.table else {})}
    return _Loaded(data, factories, paths, stats=stats)


_SOURCES = {"synthetic": _load_synthetic, "s3rec": _load_s3rec,
            "interactions": lambda cfg, progress: _load_catalog(interactions_spec(cfg), cfg, progress),
            "recbole": lambda cfg, progress: _load_catalog(recbole_spec(cfg), cfg, progress)}


def _feature_file(path: str, data: Interactions) -> Modality:
    """A `data.feature_files` entry: keyed by raw item id when its id file is beside it, else by row."""
    if ids_file(path).is_file():
        if data.item_ids is None:
            raise DataError(ids_file(path), "raw item ids need a source that has them (not the synthetic catalog)")
        return dense_by_raw_id(path, data.item_ids)
    return dense_from_npy(path, data.num_items)


def _resolve_modalities(cfg: DataConfig, loaded: _Loaded) -> dict[str, Modality]:
    """The modalities of `data.modalities`, each followed by its missing indicator when some item lacks it."""
    available = {**loaded.modalities, **{name: (lambda p=p: _feature_file(p, loaded.data))
                                         for name, p in cfg.feature_files.items()}}
    out = {}
    for name in cfg.modalities:
        if name in RESERVED_MEMBERS or name.endswith(MISSING_SUFFIX):
            raise DataError("data.modalities", f"{name!r} is reserved for a shard member or a missing indicator; "
                            "rename the modality")
        if name not in available:
            raise DataError(cfg.path or cfg.source, f"modality {name!r} is not available for source "
                            f"{cfg.source!r}; available: {', '.join(available) or '(none)'} "
                            "(add dense ones with data.feature_files, or item table columns with data.items)")
        out[name] = as_dtype(available[name](), cfg.feature_dtype)
        indicator = out[name].indicator()
        if indicator is not None:
            out[name + MISSING_SUFFIX] = indicator
    return out


def _write_sequences(data: Interactions, split: str, out: Path, per_shard: int, progress: bool) -> list[ShardInfo]:
    shards = []
    samples = split_samples(data, split)
    bar = tqdm(total=data.num_users, desc=f"{split} shards", unit="user", disable=not progress)
    for index, first in enumerate(range(1, data.num_users + 1, per_shard)):
        count = min(per_shard, data.num_users + 1 - first)
        name = f"{split}-{index:06d}.tar"

        def chunk(count: int = count):
            for _ in range(count):
                user, seq, target = next(samples)
                bar.update()
                yield {"__key__": f"{user:09d}", "seq.npy": npy_bytes(seq.astype(np.int32)),
                       "meta.json": json_bytes({"user": user, "target": target})}

        shards.append(ShardInfo(name, count, write_shard(out / name, chunk())))
    bar.close()
    return shards


def _write_items(modalities: dict[str, Modality], num_items: int, out: Path, per_shard: int, block: int,
                 progress: bool) -> list[ShardInfo]:
    shards = []
    bar = tqdm(total=num_items, desc="item shards", unit="item", disable=not progress)
    for index, first in enumerate(range(1, num_items + 1, per_shard)):
        stop = min(first + per_shard, num_items + 1)
        name = f"{ITEMS}-{index:06d}.tar"

        def blocks(first: int = first, stop: int = stop):
            for a in range(first, stop, block):
                b = min(a + block, stop)
                bar.update(b - a)
                yield {"__key__": f"{a:09d}", "ids.npy": npy_bytes(np.arange(a, b, dtype=np.int64)),
                       **{f"{m}.npy": npy_bytes(mod.rows(a, b)) for m, mod in modalities.items()}}

        shards.append(ShardInfo(name, stop - first, write_shard(out / name, blocks())))
    bar.close()
    return shards


def _stats(data: Interactions, modalities: dict[str, Modality], extra: dict[str, Any]) -> dict[str, Any]:
    lengths = data.lengths
    coverage = {m: round(mod.coverage(), 6) for m, mod in modalities.items() if not m.endswith(MISSING_SUFFIX)}
    return {"avg_seq_len": round(float(lengths.mean()), 3), "min_seq_len": int(lengths.min()),
            "max_seq_len": int(lengths.max()),
            "sparsity": round(1.0 - len(data.items) / (data.num_users * data.num_items), 6),
            "top1pct_share": _top_share(data.items, data.num_items, 0.01),
            "coverage": coverage, **extra}


def _top_share(items: np.ndarray, num_items: int, fraction: float) -> float:
    """The share of interactions on the most interacted `fraction` of the catalog (popularity skew)."""
    counts = np.sort(np.bincount(items, minlength=num_items + 1)[1:])[::-1]
    return round(float(counts[:max(1, round(fraction * num_items))].sum() / max(len(items), 1)), 6)


def _build(cfg: DataConfig, out: Path, progress: bool) -> Manifest:
    loaded = _SOURCES[cfg.source](cfg, progress)
    data = loaded.data
    modalities = _resolve_modalities(cfg, loaded)
    shards = {split: _write_sequences(data, split, out, cfg.users_per_shard, progress) for split in SPLITS}
    shards[ITEMS] = _write_items(modalities, data.num_items, out, cfg.items_per_shard, cfg.item_block_size, progress)
    loaded.write_extra(out)
    if data.user_ids is not None or data.item_ids is not None:
        (out / ID_MAPS_FILE).write_text(json.dumps({"users": data.user_ids, "items": data.item_ids}))
    if data.rejections is not None:
        data.rejections.save(out)
        loaded.stats.setdefault("rejections", {}).update(data.rejections.stats())
    files = {p.name: sha256_file(p) for p in (out / TRUTH_FILE, out / ID_MAPS_FILE, out / REJECTIONS_FILE)
             if p.is_file()}
    manifest = Manifest(
        name=cfg.name or (Path(cfg.path).stem if cfg.path else cfg.source),
        source={"type": cfg.source, "paths": loaded.paths, "config": dataclasses.asdict(cfg)},
        num_users=data.num_users, num_items=data.num_items, num_interactions=len(data.items),
        modalities={m: mod.spec for m, mod in modalities.items()}, shards=shards,
        item_block_size=cfg.item_block_size, stats=_stats(data, modalities, loaded.stats), files=files)
    manifest.save(out)
    return manifest


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` folder to `out`, replacing a previously prepared dataset there."""
    if not out.exists():
        tmp.rename(out)
        return
    if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise DataError(out, "exists and is not a prepared dataset; refusing to replace it")
    old = out.with_name(f".{out.name}.old-{tmp.name}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)


def prepare(cfg: DataConfig, out_dir: str | Path, *, progress: bool = True) -> Manifest:
    """Turn `cfg`'s source into shards + manifest in `out_dir` (atomically; see module docstring)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _build(cfg, tmp, progress)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def stats(directory: str | Path) -> str:
    """A plain-text table describing a prepared dataset."""
    m = load_manifest(directory)
    rows = [("name", m.name), ("source", m.source["type"]), ("users", f"{m.num_users:,}"),
            ("items", f"{m.num_items:,}"), ("interactions", f"{m.num_interactions:,}"),
            ("seq length avg/min/max", f"{m.stats['avg_seq_len']:.2f} / {m.stats['min_seq_len']} / "
                                       f"{m.stats['max_seq_len']}"),
            ("sparsity", f"{m.stats['sparsity']:.4%}")]
    if "top1pct_share" in m.stats:
        rows.append(("popularity", f"the top 1% of items hold {m.stats['top1pct_share']:.1%} of interactions"))
    coverage = m.stats.get("coverage", {})
    for name, spec in m.modalities.items():
        extra = f", vocab {spec.vocab_size}" if spec.kind == "bag" else ""
        if name in coverage:
            extra += f"; {coverage[name]:.1%} of items have it"
        rows.append((f"modality {name}", f"{spec.kind} {spec.dtype} [{spec.dim}]{extra}"))
    if "unknown_item_interactions" in m.stats:
        unknown = m.stats["unknown_item_interactions"]
        rows.append(("interactions, item not in table", f"{unknown['count']:,} ({unknown['policy']})"))
    if "below_min_rating" in m.stats:
        rows.append((f"interactions rated < {m.source['config']['min_rating']}", f"{m.stats['below_min_rating']:,} "
                                                                                 "(left out)"))
    if "rejections" in m.stats:
        r = m.stats["rejections"]
        rows.append(("observed rejections", f"{r['train']:,} for training ({r['users_with_train']:,} users), "
                                            f"{r['heldout']:,} held out ({r['users_with_heldout']:,} users)"))
    for group, shards in m.shards.items():
        rows.append((f"{group} shards", f"{len(shards)} ({sum(s.count for s in shards):,} records)"))
    rows.append(("created", m.created))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# data settings that say how a prepared dataset is read or laid out, not what it holds (and `modalities`,
# which may be any subset of the prepared ones)
LAYOUT_ONLY = ("prepared_dir", "read_chunk_rows", "users_per_shard", "items_per_shard", "item_block_size",
               "shuffle_buffer", "length_window", "num_workers", "modalities")
# the settings each source never reads (prefixes of flattened keys)
_FILE_ONLY = ("columns.", "items.", "min_rating", "max_dislike_rating", "dislike_events", "min_user_items",
              "min_item_users")
IGNORED_BY_SOURCE = {"synthetic": ("path", "name", "text_encoder", *_FILE_ONLY), "s3rec": ("synthetic.", *_FILE_ONLY),
                     "interactions": ("synthetic.",), "recbole": ("synthetic.",)}
# the settings only one modality reads
MODALITY_OF = {"text_encoder": "text", "items.text": "text", "items.attributes": "attr", "items.separator": "attr"}
PATHS = ("path", "items.path", "feature_files.")


def _unused(key: str, cfg: DataConfig) -> bool:
    """Whether `key` (flattened, under data.) cannot change the dataset `cfg` reads."""
    if key.startswith(LAYOUT_ONLY + IGNORED_BY_SOURCE[cfg.source]):
        return True
    if key.startswith(("feature_files.", "items.vectors.")):
        return key.rsplit(".", 1)[1] not in cfg.modalities
    return key in MODALITY_OF and MODALITY_OF[key] not in cfg.modalities


def _same(key: str, a: Any, b: Any) -> bool:
    """Equal settings; paths are equal when they name the same file from here."""
    if a == b:
        return True
    is_path = key.startswith(PATHS) and isinstance(a, str) and isinstance(b, str) and a and b
    return bool(is_path) and Path(a).resolve() == Path(b).resolve()


def prepared_mismatch(cfg: DataConfig, directory: str | Path) -> list[str]:
    """The data settings of `cfg` that the dataset prepared in `directory` was built without (empty: it fits).

    Every setting that decides what `cfg`'s source and modalities read must equal the one the dataset
    was prepared with (a setting missing on either side counts at its default); `data.modalities` may
    be a subset of the prepared ones; how the dataset is read or laid out may differ."""
    saved_cfg = load_manifest(directory).source["config"]
    saved, now, defaults = (flatten(c) for c in (saved_cfg, dataclasses.asdict(cfg), dataclasses.asdict(DataConfig())))
    problems = []
    for key in sorted(saved.keys() | now.keys()):
        a, b = now.get(key, defaults.get(key)), saved.get(key, defaults.get(key))
        if not _unused(key, cfg) and not _same(key, a, b):
            problems.append(f"data.{key}: {a!r}, prepared with {b!r}")
    if absent := [m for m in cfg.modalities if m not in saved_cfg.get("modalities", [])]:
        problems.append(f"data.modalities: {', '.join(absent)} not prepared (prepared: {saved_cfg.get('modalities')})")
    return problems


def ensure_prepared(cfg: Config, progress: bool | None = None) -> None:
    """Prepare `data.prepared_dir` when it holds no dataset (with progress bars unless `progress` or
    `runtime.progress` is false); refuse one prepared from other data settings (`prepared_mismatch`)."""
    directory = Path(cfg.data.prepared_dir)
    if not (directory / MANIFEST_FILE).is_file():
        prepare(cfg.data, directory, progress=cfg.runtime.progress if progress is None else progress)
    elif problems := prepared_mismatch(cfg.data, directory):
        raise DataError(directory, "holds a dataset prepared from other data settings: " + "; ".join(problems)
                        + ". Prepare it again (`rodpo data prepare --config ...` with the same settings) or point "
                          "data.prepared_dir at another folder")
