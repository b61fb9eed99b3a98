"""Study statistics of the dislike rate (issue 25): paired intervals where lower is better, for the
selected checkpoints and for the weights each run ended with."""

from __future__ import annotations

import numpy as np
import pytest

from rodpo_dist.study.records import dislikes_path, load_records, ranks_path, save_records
from rodpo_dist.study.report import dislike_table
from rodpo_dist.study.stats import comparisons


def _rec(method, seed):
    metrics = {"hr@5": 0.1, "ndcg@5": 0.1, "mrr@5": 0.1, "hr@10": 0.1, "ndcg@10": 0.1, "mrr@10": 0.1,
               "dislike_hr@10": 0.2, "dislike_users": 300}
    return {"dataset": "Toy", "variant": "id", "method": method, "seed": seed, "valid": metrics, "test": metrics,
            **({"valid_last": metrics, "test_last": metrics} if method != "backbone" else {}),
            "false_negatives": {}, "wall_time_s": 1.0, "command": "rodpo study", "selection_metric": "ndcg@10",
            "hyperparameters": {}}


def test_dislike_entries_are_paired_and_significant_when_lower(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    users = np.arange(1, n + 1, dtype=np.int32)
    base_rates = {s: rng.uniform(0.1, 0.5, n) for s in (0, 1)}
    rates = {"backbone": base_rates, "ce": base_rates, "observed": {s: r * 0.7 for s, r in base_rates.items()}}
    last = {"ce": {s: r * 1.1 for s, r in base_rates.items()}, "observed": {s: r * 0.5 for s, r in base_rates.items()}}
    ranks = rng.integers(-1, 12, n).astype(np.int16)
    records = []
    for method in rates:
        for seed in (0, 1):
            r = _rec(method, seed)
            records.append(r)
            path = tmp_path / ranks_path(r)
            path.parent.mkdir(parents=True, exist_ok=True)
            split = {"valid_users": users, "valid_ranks": ranks, "test_users": users, "test_ranks": ranks}
            np.savez_compressed(path, **split)
            arrays = {"valid_users": users, "valid_rates": rates[method][seed], "test_users": users,
                      "test_rates": rates[method][seed]}
            if method in last:
                np.savez_compressed(tmp_path / ranks_path(r, last=True), **split)
                arrays |= {"last_valid_users": users, "last_valid_rates": last[method][seed],
                           "last_test_users": users, "last_test_rates": last[method][seed]}
            np.savez_compressed(tmp_path / dislikes_path(r), **arrays)
    save_records(tmp_path, records)
    entries = comparisons(load_records(tmp_path), tmp_path)

    def find(method, baseline, metric):
        return next(e for e in entries if (e["method"], e["baseline"], e["metric"]) == (method, baseline, metric))

    e = find("observed", "ce", "dislike_hr@10")
    assert e["rel_change"] == pytest.approx(-30.0, abs=1e-6) and e["significant"] and e["lower_is_better"]
    assert e["ci_high"] < 0 and e["seeds"] == [0, 1]
    same = find("ce", "backbone", "dislike_hr@10")
    assert same["rel_change"] == 0 and not same["significant"]
    worse = find("ce", "backbone", "last:dislike_hr@10")  # ce's last weights against the backbone's selected
    assert worse["rel_change"] == pytest.approx(10.0, abs=1e-6) and not worse["significant"]
    assert find("observed", "ce", "last:dislike_hr@10")["rel_change"] == pytest.approx(100 * (0.5 / 1.1 - 1), abs=1e-3)
    assert find("observed", "ce", "last:ndcg@10")["rel_change"] == 0
    table = dislike_table(load_records(tmp_path), entries, "Toy")
    row = next(line for line in table.splitlines() if line.startswith("| id | observed "))
    assert "**-30.00%" in row
