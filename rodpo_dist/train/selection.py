"""Checkpoint selection on validation only (the best goes to `best`), and the final report of it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rodpo_dist.config import Config
from rodpo_dist.eval.evaluate import evaluate, write_report
from rodpo_dist.model import SASRec
from rodpo_dist.train.checkpoint import TrainState, load_weights
from rodpo_dist.train.run_log import RunLog
from rodpo_dist.train.runtime import Runtime
from rodpo_dist.train.setup import Dataset


def track_best(state: TrainState, metrics: dict[str, float], metric: str, log: RunLog,
               checkpoint: Callable[..., None]) -> bool:
    """Record validation `metrics`; save `best` when `metric` improves. Returns whether it did."""
    log.log(state.step, {"epoch": state.epoch, **metrics}, kind="valid")
    if metrics[metric] <= state.best_metric:
        return False
    state.best_metric, state.best_step = metrics[metric], state.step
    checkpoint(name="best")
    return True


def evaluate_splits(model: SASRec, data: Dataset, cfg: Config, rt: Runtime,
                    splits: tuple[str, ...] = ("valid", "test")) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of `model` on each split (one item table for all; collective over ranks)."""
    table = model.item_encoder.item_table(cfg.eval.item_chunk)
    return {split: evaluate(model, table, getattr(data, split), ks=cfg.eval.ks, max_len=cfg.model.max_len,
                            batch_size=cfg.eval.batch_size, rt=rt) for split in splits}


def report_best(model: SASRec, run_dir: Path, data: Dataset, cfg: Config, rt: Runtime, log: RunLog,
                step: int, label: str) -> dict[str, dict[str, float]]:
    """Load the `best` checkpoint, evaluate it on valid and test, log and write `report.{json,md}`."""
    load_weights(run_dir / "best", model)
    results = evaluate_splits(model, data, cfg, rt)
    if rt.is_main:
        log.log(step, {f"{s}/{k}": v for s, m in results.items() for k, v in m.items()}, kind="final")
        write_report(run_dir / "report", {f"{label} ({s})": m for s, m in results.items()}, cfg.eval.ks)
    log.close()
    return results


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, splits: list[str]) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of a saved checkpoint on `splits`; prints the Markdown table."""
    from rodpo_dist.eval.evaluate import markdown_table
    from rodpo_dist.train.setup import load_dataset, make_model

    rt = Runtime.create(cfg.runtime.device)
    data = load_dataset(cfg)
    model = make_model(cfg, data, rt.device)
    load_weights(checkpoint, model)
    results = evaluate_splits(model, data, cfg, rt, tuple(splits))
    print(markdown_table(results, [f"{m}@{k}" for k in cfg.eval.ks for m in ("hr", "ndcg", "mrr")]))
    return results
