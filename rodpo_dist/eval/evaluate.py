"""Full-ranking evaluation: every item is ranked for each user, the user's history excluded.

Scoring goes through the pool-scoring op (`rodpo_kernels.topk_scores`, via `catalog.top_items`),
so the users x items score matrix is never formed; only the top `max(ks) + 1` items per user are
kept. Users are scored in batches of similar history length (little padding) and their ranks put
back in input order. With several ranks each one scores its slice of the catalog and the lists
are merged (`catalog.catalog_topk`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rodpo_dist.data.batching import sorted_batches
from rodpo_dist.data.contexts import Contexts
from rodpo_dist.eval.catalog import ScoringBatch, top_items
from rodpo_dist.eval.metrics import ranking_metrics, target_ranks
from rodpo_dist.runtime import Runtime


def rank_targets(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, *, max_len: int,
                 list_len: int, batch_size: int, rt: Runtime) -> torch.Tensor:
    """0-based pessimistic rank of each context's target, in context order (see `metrics.target_ranks`)."""
    def batches():
        for index in sorted_batches(contexts.lengths(), batch_size):
            seq, exclude, targets = contexts.batch(index, max_len)
            yield ScoringBatch(seq, exclude, meta=(torch.as_tensor(index), targets))

    ranks = torch.empty(len(contexts), dtype=torch.long)
    for batch, top in top_items(model, item_table, list_len, batches(), rt):
        index, targets = batch.meta
        ranks[index] = target_ranks(top.ids.cpu(), top.scores.cpu(), targets)
    return ranks


def evaluate(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, *, ks: list[int],
             max_len: int, batch_size: int, rt: Runtime) -> tuple[dict[str, float], torch.Tensor]:
    """(HR/NDCG/MRR at each k in `ks` averaged over the contexts, per-context ranks); a collective."""
    ranks = rank_targets(model, item_table, contexts, max_len=max_len, list_len=max(ks) + 1,
                         batch_size=batch_size, rt=rt)
    return ranking_metrics(ranks, ks), ranks


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Rows (name -> metrics) as a Markdown table over `columns` (a metric a row lacks: blank)."""
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" if c in metrics else "" for c in columns) + " |")
    return "\n".join(lines)


def metric_columns(results: dict[str, dict[str, float]], ks: list[int]) -> list[str]:
    """The table's columns: HR / NDCG / MRR at each K, then the dislike rates any row has."""
    dislikes = sorted({m for metrics in results.values() for m in metrics if m.startswith("dislike_hr@")})
    return [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")] + dislikes


def write_report(path: str | Path, results: dict[str, dict[str, float]], ks: list[int], note: str = "") -> None:
    """`<path>.json` with every number and `<path>.md` with the table (and `note` below it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    path.with_suffix(".md").write_text(markdown_table(results, metric_columns(results, ks)) + "\n"
                                       + (f"\n{note}\n" if note else ""))


def save_ranks(path: str | Path, ranks: dict[str, tuple[np.ndarray, torch.Tensor]]) -> None:
    """`ranks.npz`: per split, the users (`<split>_users`) and their target's rank (`<split>_ranks`,
    int64, `metrics.MISS` when past the scored list), for paired comparisons between runs."""
    arrays = {}
    for split, (users, r) in ranks.items():
        arrays[f"{split}_users"], arrays[f"{split}_ranks"] = np.asarray(users), r.numpy()
    np.savez(path, **arrays)
