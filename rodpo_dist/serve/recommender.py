"""Top-K recommendations from a trained model, in the source's item ids.

Histories are scored exactly as evaluation scores them (`rodpo_dist.eval.catalog.top_items`: the
catalog-scoring op over the precomputed item table, batches of similar length, the whole history
excluded, its last `max_len` items as the model input), so for the same histories the top items
are evaluation's ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rodpo_dist.config import Config, saved_config
from rodpo_dist.data.batching import sorted_batches
from rodpo_dist.data.contexts import Contexts
from rodpo_dist.data.loader import load_item_features
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.eval.catalog import ScoringBatch, top_items
from rodpo_dist.model import build_model
from rodpo_dist.model.weights import load_weights
from rodpo_dist.runtime import Runtime
from rodpo_dist.serve.ids import ItemIds, RawId

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request; the message starts with where it came from (`input.jsonl:7: ...`, `history 3: ...`)."""


class Recommendation(NamedTuple):
    items: list[RawId]
    """The top-K items, best first, in the source's ids."""
    scores: list[float]


class Recommender:
    """Scores histories of raw item ids against the whole catalog with a trained model.

    `model` maps left-padded id sequences [B, L <= max_len] to `.hidden` [B, L, d] and has an
    `item_encoder.item_table(chunk)`; the table is computed once here.
    """

    def __init__(self, model: torch.nn.Module, item_ids: ItemIds, *, max_len: int, batch_size: int = 256,
                 item_chunk: int = 65536, rt: Runtime | None = None) -> None:
        self.model = model.eval()
        self.item_ids = item_ids
        self.max_len = max_len
        self.batch_size = batch_size
        self.rt = rt or Runtime(next(model.parameters()).device)
        self.item_table = model.item_encoder.item_table(item_chunk)
        if self.item_table.shape[0] != item_ids.num_items + 1:
            raise ValueError(f"the model has {self.item_table.shape[0] - 1} items, the id map {item_ids.num_items}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: Config | None = None) -> Recommender:
        """The model of checkpoint `path` with its prepared dataset's item features and ids.

        `config` defaults to the one saved with the checkpoint (`saved_config`); its `runtime.device`,
        `eval.batch_size` and `eval.item_chunk` apply.
        """
        cfg = config or saved_config(path)
        cfg = replace(cfg, moe=replace(cfg.moe, ep_size=1))  # one process holds every expert
        rt = Runtime.create(cfg.runtime.device)
        root = Path(cfg.data.prepared_dir)
        manifest = load_manifest(root)
        features = load_item_features(root, cfg.data.modalities)
        modalities = {m: manifest.modalities[m] for m in features}
        model = build_model(cfg, modalities, features, manifest.num_items).to(rt.device)
        load_weights(path, model)
        return cls(model, ItemIds.load(root, manifest.num_items), max_len=cfg.model.max_len,
                   batch_size=cfg.eval.batch_size, item_chunk=cfg.eval.item_chunk, rt=rt)

    def recommend(self, histories: Sequence[Iterable[RawId]], k: int, *,
                  skip_unknown: bool = False) -> list[Recommendation]:
        """The top `k` items of each history (raw ids, oldest first), none of its own items.

        Unknown item ids are a `RequestError`, or with `skip_unknown` a logged warning and skipped (a
        history left with no known item gets no recommendation: empty lists).
        """
        self.check_k(k)
        warn = log.warning if skip_unknown else None
        return self.ranked([self.encode(h, f"history {i}", k, warn) for i, h in enumerate(histories)], k)

    def ranked(self, histories: Sequence[np.ndarray], k: int) -> list[Recommendation]:
        """The top `k` items of each history of internal ids (`encode`); an empty history gets none."""
        known = [i for i, h in enumerate(histories) if len(h)]
        out = [Recommendation([], [])] * len(histories)
        if known:
            top_ids, top_scores = self.top_k([histories[i] for i in known], k)
            for i, row, scores in zip(known, top_ids, top_scores):
                out[i] = Recommendation(self.item_ids.to_raw(row), scores.tolist())
        return out

    def check_k(self, k: int) -> None:
        if k < 1:
            raise RequestError(f"k must be >= 1, got {k}")
        if k > self.item_ids.num_items:
            raise RequestError(f"k={k} is larger than the catalog ({self.item_ids.num_items} items)")

    def encode(self, history: Any, where: str, k: int, warn: Callable[[str], Any] | None = None) -> np.ndarray:
        """Internal ids of one history of raw ids; `where` names it in errors.

        An unknown item id is an error, or with `warn` reported to it and skipped; a history with no
        known item left is then empty (no recommendation), reported too.
        """
        if isinstance(history, (str, bytes, dict)) or not isinstance(history, Iterable):
            raise RequestError(f"{where}: the history must be a list of item ids, got {type(history).__name__}")
        ids, seen = [], 0
        for raw in history:
            seen += 1
            item = self.item_ids.internal(raw)
            if item is not None:
                ids.append(item)
            elif warn is not None:
                warn(f"{where}: unknown item id {raw!r} skipped")
            else:
                raise RequestError(f"{where}: unknown item id {raw!r}")
        if not ids and seen and warn is not None:
            warn(f"{where}: no known item id in the history: no recommendation")
            return np.zeros(0, dtype=np.int64)
        if not ids:
            raise RequestError(f"{where}: empty history" + (" (every item id was unknown)" if seen else ""))
        free = self.item_ids.num_items - len(set(ids))
        if free < k:
            raise RequestError(f"{where}: k={k} but only {free} catalog items are not in the history")
        return np.asarray(ids, dtype=np.int64)

    def top_k(self, histories: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(internal ids [n, k], fp32 scores [n, k]) of the best items of each history of internal ids."""
        contexts = Contexts(np.arange(len(histories)), list(histories), np.zeros(len(histories), dtype=np.int64))

        def batches():
            for index in sorted_batches(contexts.lengths(), self.batch_size):
                seq, exclude, _ = contexts.batch(index, self.max_len)
                yield ScoringBatch(seq, exclude, meta=index)

        ids = np.empty((len(histories), k), dtype=np.int64)
        scores = np.empty((len(histories), k), dtype=np.float32)
        for batch, top in top_items(self.model, self.item_table, k, batches(), self.rt):
            ids[batch.meta], scores[batch.meta] = top.ids.cpu().numpy(), top.scores.cpu().numpy()
        return ids, scores
