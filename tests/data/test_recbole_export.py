"""The RecBole export (`rodpo_dist.data.export_recbole`) reads back to the prepared split exactly:
the same sequences and the same valid / test targets, with this package's `data.source: recbole`
reader (RecBole's atomic-file rules: typed header, order by timestamp) and, when RecBole is
installed (`pip install .[peers]`), with RecBole's own Dataset and leave-one-out split."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rodpo_dist.config import config_from_dict
from rodpo_dist.data.catalog import load_catalog
from rodpo_dist.data.export_recbole import HEADER, export_recbole, full_sequences
from rodpo_dist.data.loader import load_split
from rodpo_dist.data.prepare import prepare
from rodpo_dist.data.recbole import recbole_spec
from rodpo_dist.data.split import leave_one_out

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """An S3-Rec catalog of 40 users over 90 items, sequences of 4 to 70 items (RecBole gives a 3-item user no
    validation row) (some longer than a
    max_len of 50), prepared."""
    rng = np.random.default_rng(7)
    num_items = 90
    seqs = [list(rng.permutation(num_items)[:n] + 1) for n in rng.integers(4, 71, size=40)]
    seqs[0] = list(range(1, num_items + 1))  # every item occurs
    folder = tmp_path_factory.mktemp("s3rec")
    (folder / "Tiny.txt").write_text("".join(" ".join(map(str, [u, *s])) + "\n" for u, s in enumerate(seqs, 1)))
    (folder / "Tiny_item2attributes.json").write_text(json.dumps({str(i): [i % 4] for i in range(1, num_items + 1)}))
    out = tmp_path_factory.mktemp("prepared") / "tiny"
    cfg = config_from_dict({"data": {"source": "s3rec", "path": str(folder), "name": "Tiny",
                                     "modalities": ["attr"], "users_per_shard": 16}}).data
    prepare(cfg, out, progress=False)
    return out


def read_back(folder: Path, name: str) -> dict[int, np.ndarray]:
    """User -> sequence, read with `data.source: recbole` (no filtering), in the exported ids."""
    cfg = config_from_dict({"data": {"source": "recbole", "path": str(folder), "name": name,
                                     "min_user_items": 1, "min_item_users": 1}}).data
    data, _, _ = load_catalog(recbole_spec(cfg), cfg, progress=False)
    items = np.array([0, *map(int, data.item_ids)])
    return {int(raw): items[data.sequence(u)] for u, raw in enumerate(data.user_ids, 1)}


def mismatches(prepared: Path, sequences: dict[int, np.ndarray]) -> list[str]:
    """How `sequences` differ from the prepared dataset: users, whole sequences, valid and test targets."""
    problems = []
    splits = {split: load_split(prepared, split) for split in ("valid", "test")}
    expected = full_sequences(prepared)
    if sorted(sequences) != expected.users.tolist():
        problems.append("users differ")
    for user, seq in zip(expected.users, expected.sequences):
        got = sequences.get(int(user))
        if got is None:
            continue
        if not np.array_equal(got, seq):
            problems.append(f"user {user}: sequence differs")
        for split, data in splits.items():
            history, target = leave_one_out(got, split)
            if target != data.targets[user - 1] or not np.array_equal(history, data.sequences[user - 1]):
                problems.append(f"user {user}: {split} target or history differs")
    return problems


def test_export_reads_back_to_the_prepared_split(prepared, tmp_path):
    path = export_recbole(prepared, tmp_path, "Tiny")
    assert path == tmp_path / "Tiny.inter"
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(HEADER)
    expected = full_sequences(prepared)
    assert len(lines) - 1 == sum(len(s) for s in expected.sequences)
    assert max(len(s) for s in expected.sequences) > 50
    assert mismatches(prepared, read_back(tmp_path, "Tiny")) == []


@pytest.mark.parametrize("corruption", ["drop", "shift", "swap_times"])
def test_a_dropped_or_shifted_item_is_caught(prepared, tmp_path, corruption):
    """The read-back comparison is not vacuous: each small corruption of the file fails it."""
    path = export_recbole(prepared, tmp_path, "Tiny")
    header, *rows = path.read_text().splitlines()
    fields = [r.split("\t") for r in rows]
    target = next(i for i in range(1, len(fields)) if fields[i][0] == fields[i - 1][0] == "5")
    if corruption == "drop":
        del fields[target]
    elif corruption == "shift":  # one item replaced by the next id
        fields[target][1] = str(int(fields[target][1]) % 90 + 1)
    else:  # two neighbouring interactions of user 5 exchange their timestamps
        fields[target][2], fields[target - 1][2] = fields[target - 1][2], fields[target][2]
    path.write_text("\n".join([header, *("\t".join(f) for f in fields)]) + "\n")
    assert any(p.startswith("user 5") for p in mismatches(prepared, read_back(tmp_path, "Tiny")))


def test_recbole_own_dataset_reproduces_the_split(prepared, tmp_path, monkeypatch):
    """RecBole's Dataset, leave-one-out (`LS: valid_and_test`, `order: TO`) and SASRec's sequence
    augmentation give every user the prepared valid / test target and history (the check the
    benchmark asserts before training)."""
    pytest.importorskip("recbole")
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_peers", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ into the working directory
    export_recbole(prepared, tmp_path / "atomic" / "Tiny", "Tiny")
    split = bench.recbole_split(tmp_path / "atomic", "Tiny", bench.recbole_settings("defaults", None, 50), seed=0)
    bench.check_split(split, full_sequences(prepared), max_len=50)  # raises on any difference
    checked = bench.split_sequences(split)
    assert sorted(checked["test"]) == list(range(1, 41))
    # RecBole's sine.py turns autograd anomaly detection on at import: off again, for RecBole and the process
    import torch
    assert bench.import_recbole()["SASRec"] and not torch.is_anomaly_enabled()


def test_a_recbole_run_stops_at_its_time_budget_and_the_same_command_continues_it(prepared, tmp_path, monkeypatch):
    """`bench_peers.py --max-seconds`: RecBole stops after the epoch that spends the budget, its result
    marked unfinished (`partial.json`); the same call without the budget continues from that epoch."""
    pytest.importorskip("recbole")
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_peers", bench)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)
    export_recbole(prepared, tmp_path / "atomic" / "Tiny", "Tiny")
    cfg, full, folder = config_from_dict({}), full_sequences(prepared), tmp_path / "defaults"
    run = dict(variant="defaults", cfg=cfg, atomic_root=tmp_path / "atomic", name="Tiny", full=full, folder=folder,
               seed=0, max_epochs=3)
    first = bench.run_recbole(**run, max_seconds=0.0)
    assert not first["finished"] and first["epochs_run"] == 1
    assert (folder / "partial.json").is_file() and not (folder / "result.json").is_file()
    assert bench.run_recbole(**run, train=False) == first  # read as it stands, not evaluated again
    done = bench.run_recbole(**run)
    assert done["finished"] and done["epochs_run"] == 3 and (folder / "result.json").is_file()
    assert done["curve"][0] == first["curve"][0]  # the first epoch was kept, not trained again
    assert bench.run_recbole(**run) == done  # finished: found again
