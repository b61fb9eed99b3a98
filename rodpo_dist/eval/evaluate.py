"""Full-ranking evaluation: every item is ranked for each user, the user's history excluded.

Scoring goes through the pool-scoring op (`rodpo_kernels.topk_scores`), so the users x items
score matrix is never formed; only the top `max(ks) + 1` items per user are kept. With several
ranks each one scores its slice of the catalog and the lists are merged (`catalog.catalog_topk`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rodpo_dist.data import SplitData
from rodpo_dist.eval.catalog import catalog_topk
from rodpo_dist.eval.metrics import metric_sums, target_ranks
from rodpo_dist.train.runtime import Runtime


@dataclass
class Contexts:
    """User contexts to score: full histories (for exclusion), model inputs and targets."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    @classmethod
    def from_split(cls, split: SplitData) -> Contexts:
        """Validation/test contexts: each user's history and held-out target."""
        return cls(split.users, split.sequences, split.targets)

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, index: Sequence[int], max_len: int,
              exclude_target: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(left-padded model input [b, W <= max_len], exclusions [b, H] padded with -1, targets [b]).

        Exclusions are the whole history (not only the last `max_len` items), plus the target
        when `exclude_target` (the candidate pool must never offer the positive as a negative).
        """
        hist = [self.histories[i] for i in index]
        targets = torch.as_tensor(self.targets[np.asarray(index)], dtype=torch.long)
        seq = torch.zeros(len(hist), max(1, min(max_len, max(len(h) for h in hist))), dtype=torch.long)
        width = max(len(h) for h in hist) + int(exclude_target)
        exclude = torch.full((len(hist), width), -1, dtype=torch.long)
        for row, h in enumerate(hist):
            tail = torch.as_tensor(h[-seq.shape[1]:], dtype=torch.long)
            seq[row, seq.shape[1] - len(tail):] = tail
            exclude[row, : len(h)] = torch.as_tensor(h, dtype=torch.long)
        if exclude_target:
            exclude[:, -1] = targets
        return seq, exclude, targets


@torch.no_grad()
def rank_targets(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, *, max_len: int,
                 list_len: int, batch_size: int, rt: Runtime) -> torch.Tensor:
    """0-based pessimistic rank of each context's target (see `metrics.target_ranks`)."""
    was_training = model.training
    model.eval()
    ranks = []
    items = item_table[1:].to(rt.device)  # row 0 is padding: never a candidate; ids start at 1
    for start in range(0, len(contexts), batch_size):
        seq, excl, targets = contexts.batch(range(start, min(start + batch_size, len(contexts))), max_len)
        users = model.user_state(seq.to(rt.device))
        top = catalog_topk(users.float(), items, list_len, excl.to(rt.device), rt)
        ranks.append(target_ranks(top.ids.cpu(), top.scores.cpu(), targets))
    model.train(was_training)
    return torch.cat(ranks)


def evaluate(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, *, ks: list[int],
             max_len: int, batch_size: int, rt: Runtime) -> dict[str, float]:
    """HR/NDCG/MRR at each k in `ks`, averaged over the contexts (a collective with several ranks)."""
    ranks = rank_targets(model, item_table, contexts, max_len=max_len, list_len=max(ks) + 1,
                         batch_size=batch_size, rt=rt)
    return {name: total / len(contexts) for name, total in metric_sums(ranks, ks).items()}


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Rows (name -> metrics) as a Markdown table over `columns`."""
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def write_report(path: str | Path, results: dict[str, dict[str, float]], ks: list[int]) -> None:
    """`<path>.json` with every number and `<path>.md` with the table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    columns = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    path.with_suffix(".md").write_text(markdown_table(results, columns) + "\n")
