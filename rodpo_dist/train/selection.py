"""Checkpoint selection on validation only (the best goes to `best`), and the final report of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from rodpo_dist.config import Config
from rodpo_dist.data.dataset import PreparedDataset, load_dataset
from rodpo_dist.eval.evaluate import evaluate, markdown_table, metric_columns, save_ranks, write_report
from rodpo_dist.eval.dislikes import DISLIKE_K, dislike_metric, dislike_rates
from rodpo_dist.eval.truth import liked_ndcg
from rodpo_dist.model import SASRec, make_model
from rodpo_dist.model.weights import load_weights
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.checkpoint import TrainState
from rodpo_dist.train.run_log import RunLog

RANKS_FILE = "ranks.npz"
DISLIKES_FILE = "dislikes.npz"
"""Per-user dislike rates of the selected checkpoint (datasets with observed rejections), and with
`last_` keys those of the weights the run ended with."""
RANKS_LAST_FILE = "ranks_last.npz"
"""Per-user target ranks of the weights an alignment run ended with (datasets with observed rejections)."""


def track_best(state: TrainState, metrics: dict[str, float], metric: str, log: RunLog,
               checkpoint: Callable[..., None]) -> bool:
    """Record validation `metrics`; save `best` when `metric` improves. Returns whether it did."""
    log.log(state.step, {"epoch": state.epoch, **metrics}, kind="valid")
    if metrics[metric] <= state.best_metric:
        return False
    state.best_metric, state.best_step = metrics[metric], state.step
    checkpoint(name="best")
    return True


def evaluate_splits(model: SASRec, data: PreparedDataset, cfg: Config, rt: Runtime,
                    splits: tuple[str, ...] = ("valid", "test"), ranks_to: Path | None = None,
                    users: int = 0) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of `model` on each split (one item table for all; collective over ranks),
    over every user; validation over a fixed sample of `users` when given (`Contexts.sample`).

    With `ranks_to`, rank 0 also saves every user's target rank per split there (`eval.save_ranks`).
    """
    table = model.item_encoder.item_table(cfg.eval.item_chunk)
    results, ranks = {}, {}
    for split in splits:
        contexts = getattr(data, split)
        contexts = contexts.sample(users) if split == "valid" else contexts
        results[split], r = evaluate(model, table, contexts, ks=cfg.eval.ks, max_len=cfg.model.max_len,
                                     batch_size=cfg.eval.batch_size, rt=rt)
        ranks[split] = (contexts.users, r)
    if ranks_to is not None and rt.is_main:
        save_ranks(ranks_to, ranks)
    return results


def report_best(model: SASRec, run_dir: Path, data: PreparedDataset, cfg: Config, rt: Runtime, log: RunLog,
                step: int, label: str, extra: dict[str, Any] | None = None,
                last: bool = False) -> dict[str, dict[str, float]]:
    """Load `best`, evaluate it on valid and test (ranks saved; with a ground truth also `liked_ndcg@k`
    on test), log and write `report.{json,md}` (`extra["stop_reason"]`, if any, below the table). With `last`, the weights the run ended with are
    evaluated first too (`valid_last`, `test_last`: what the run did, whatever the selection kept)."""
    splits = ("valid", "test") if cfg.eval.report_test else ("valid",)
    with_dislikes = data.rejections is not None
    # with observed rejections the ended weights' ranks and dislike rates are kept too (paired intervals)
    ended = evaluate_splits(model, data, cfg, rt, splits, users=cfg.eval.valid_users,
                            ranks_to=run_dir / RANKS_LAST_FILE if with_dislikes else None) if last else {}
    ended_dislikes = _dislikes(model, data, cfg, rt, splits, "last_") if last and with_dislikes else ({}, {})
    for split, metrics in ended_dislikes[0].items():
        ended[split] |= metrics
    load_weights(run_dir / "best", model)
    results = evaluate_splits(model, data, cfg, rt, splits, ranks_to=run_dir / RANKS_FILE, users=cfg.eval.valid_users)
    if data.truth is not None and cfg.eval.report_test:
        table = model.item_encoder.item_table(cfg.eval.item_chunk)
        liked = liked_ndcg(model, table, data.test, data.truth, ks=cfg.eval.ks, max_len=cfg.model.max_len,
                           batch_size=cfg.eval.batch_size, rt=rt)
        results["test"] |= {f"liked_ndcg@{k}": v for k, v in liked.items()}
    if with_dislikes:  # the dislike rate of the selected model on held-out rejections
        metrics_by_split, arrays = _dislikes(model, data, cfg, rt, splits)
        for split, metrics in metrics_by_split.items():
            results[split] |= metrics
        if rt.is_main:
            np.savez(run_dir / DISLIKES_FILE, **arrays, **ended_dislikes[1])
    results |= {f"{split}_last": metrics for split, metrics in ended.items()}
    if rt.is_main:
        log.log(step, {f"{s}/{k}": v for s, m in results.items() for k, v in m.items()} | (extra or {}), kind="final")
        write_report(run_dir / "report", {f"{label} ({s})": m for s, m in results.items()}, cfg.eval.ks,
                     note=(extra or {}).get("stop_reason", ""))
    log.close()
    return results


def _dislikes(model: SASRec, data: PreparedDataset, cfg: Config, rt: Runtime, splits: tuple[str, ...],
              prefix: str = "") -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """(`dislike_hr@10` per split, the per-user rates as `<prefix><split>_users` / `_rates` arrays)."""
    table = model.item_encoder.item_table(cfg.eval.item_chunk)
    out, arrays = {}, {}
    for split in splits:
        contexts = getattr(data, split)
        rejected = data.rejections.heldout_lists(contexts.users, data.manifest.num_users)
        users, rates = dislike_rates(model, table, contexts, rejected, k=DISLIKE_K, max_len=cfg.model.max_len,
                                     batch_size=cfg.eval.batch_size, rt=rt)
        out[split] = dislike_metric(rates)
        arrays[f"{prefix}{split}_users"], arrays[f"{prefix}{split}_rates"] = users, rates
    return out, arrays


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, splits: list[str]) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of a saved checkpoint on `splits`; prints the Markdown table."""
    rt = Runtime.create(cfg.runtime.device)
    data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    model = make_model(cfg, data, rt.device)
    load_weights(checkpoint, model)
    results = evaluate_splits(model, data, cfg, rt, tuple(splits))
    if data.rejections is not None:  # observed rejections: the held-out ones' dislike rate too
        for split, metrics in _dislikes(model, data, cfg, rt, tuple(splits))[0].items():
            results[split] |= metrics
    print(markdown_table(results, metric_columns(results, cfg.eval.ks)))
    return results
