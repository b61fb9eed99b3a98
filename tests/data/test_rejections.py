"""Observed rejections (issue 25): stored beside the sequences, never a positive of the same user, and
split so that no rejection made at or after the validation target reaches training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rodpo_dist.config import Config, config_from_dict, config_hash
from rodpo_dist.data import load_split
from rodpo_dist.data.contexts import TrainingContexts
from rodpo_dist.data.prepare import prepare, stats
from rodpo_dist.data.rejections import Rejections, _positions
from rodpo_dist.data.synthetic import GroundTruth
from rodpo_dist.train.negatives import observed_per_context

# u1: positives p1..p6 at t = 10..60 (valid target p5 at 50, test target p6 at 60)
EVENTS = [("u1", f"p{k}", 5, 10 * k) for k in range(1, 7)] + [
    ("u1", "p7", 1, 15),   # before the target p2 (t 20): a training rejection at position 1
    ("u1", "p9", 2, 45),   # before the validation target: training, position 4
    ("u1", "p8", 1, 50),   # the validation target's time: held out (a tie is not "before")
    ("u1", "p10", 1, 55),  # between validation and test target: held out
    ("u1", "p3", 1, 5),    # also a positive of u1 (rated 5 at t 30): never a rejection
    ("u1", "p11", 3, 12),  # rated 3: neither positive nor rejection
] + [(f"u{u}", f"p{(u + k) % 11 + 1}", 4, 100 * u + k) for u in range(2, 7) for k in range(5)] + [
    ("u2", "p1", 1, 300),  # u2's last positive is at t 204: held out
    ("u2", "p99", 1, 150),  # an item no positive keeps: dropped
]


def _prepare(tmp_path, events=EVENTS, **data):
    path = tmp_path / "events.csv"
    path.write_text("user,item,stars,when\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in events))
    cfg = config_from_dict({"data": {"source": "interactions", "path": str(path), "modalities": [],
                                     "columns": {"rating": "stars", "timestamp": "when"}, "min_rating": 4,
                                     "max_dislike_rating": 2, "min_user_items": 3, "min_item_users": 1, **data}}).data
    out = tmp_path / "prepared"
    prepare(cfg, out, progress=False)
    ids = __import__("json").loads((out / "id_maps.json").read_text())
    return out, Rejections.load(out), ids


def _raw(rej: Rejections, ids, heldout: bool, user: str) -> set[str]:
    u = ids["users"].index(user) + 1
    return {ids["items"][i - 1] for i, uu, h in zip(rej.items, rej.users, rej.heldout) if uu == u and h == heldout}


def test_rejections_are_split_at_the_validation_target_and_never_a_positive(tmp_path):
    out, rej, ids = _prepare(tmp_path)
    assert _raw(rej, ids, False, "u1") == {"p7", "p9"}
    assert _raw(rej, ids, True, "u1") == {"p8", "p10"}
    assert _raw(rej, ids, True, "u2") == {"p1"} and not _raw(rej, ids, False, "u2")
    u1 = ids["users"].index("u1") + 1
    positions = {ids["items"][i - 1]: int(p) for i, u, p in zip(rej.items, rej.users, rej.position) if u == u1}
    assert positions == {"p7": 1, "p9": 4, "p8": 5, "p10": 5}
    assert "observed rejections" in stats(out) and "3 for training" not in stats(out)
    # never a positive of the same user: not of its training sequence, nor its validation / test target
    sequences = {u: set(s.tolist()) | {t} for split in ("valid", "test") for sp in [load_split(out, split)]
                 for u, s, t in zip(sp.users.tolist(), sp.sequences, sp.targets.tolist())}
    for split in ("valid", "test"):
        sp = load_split(out, split)
        for u, s, t in zip(sp.users.tolist(), sp.sequences, sp.targets.tolist()):
            sequences[u] = sequences.get(u, set()) | set(s.tolist()) | {t}
    for u, i in zip(rej.users.tolist(), rej.items.tolist()):
        assert i not in sequences[u], (u, i)


def test_the_lists_per_user_hold_that_users_rejections_of_the_split_asked_for(tmp_path):
    """`heldout_lists` (the dislike metrics) gives each user's held-out rejections; `by_user(heldout=False)`
    (what alignment draws from) its training ones."""
    out, rej, ids = _prepare(tmp_path)
    num_users = len(ids["users"])
    u1, u2, u3 = (ids["users"].index(u) + 1 for u in ("u1", "u2", "u3"))

    def raw(items):
        return {ids["items"][i - 1] for i in np.asarray(items).tolist()}

    lists = rej.heldout_lists(np.array([u2, u1, u3]), num_users)
    assert [raw(x) for x in lists] == [{"p1"}, {"p8", "p10"}, set()]
    offsets, items, position = rej.by_user(num_users, heldout=False)
    assert raw(items[offsets[u1 - 1]:offsets[u1]]) == {"p7", "p9"}
    assert position[offsets[u1 - 1]:offsets[u1]].tolist() == [1, 4]  # in order of position
    assert offsets[u2] == offsets[u2 - 1]


def test_no_rejection_at_or_after_a_validation_target_reaches_training(tmp_path):
    rng = np.random.default_rng(3)
    events = [(f"u{u}", f"p{rng.integers(1, 30)}", int(rng.integers(1, 6)), int(t))
              for u in range(40) for t in rng.choice(10_000, size=25, replace=False)]
    out, rej, ids = _prepare(tmp_path, events, min_item_users=1)
    times = {}  # user -> its positives' times in sequence order, from the events (the truth)
    raw_pos = {}
    for u, i, r, t in sorted(events, key=lambda e: (e[0], e[3])):
        if r >= 4 and (u, i) not in raw_pos:
            raw_pos[(u, i)] = t
    valid = load_split(out, "valid")
    for user, target in zip(valid.users.tolist(), valid.targets.tolist()):
        raw_user = ids["users"][user - 1]
        target_time = raw_pos[(raw_user, ids["items"][target - 1])]
        mine = rej.users == user
        assert (rej.times[mine & ~rej.heldout] < target_time).all()
        assert (rej.times[mine & rej.heldout] >= target_time).all()
        times[user] = target_time
    assert (~rej.heldout).sum() > 20 and rej.heldout.sum() > 5
    # what alignment indexes: the training ones only, and with scope `before` those before each target
    contexts = TrainingContexts.from_split(load_split(out, "train"), "all", max_len=50)
    offsets, items, position = rej.by_user(len(ids["users"]), heldout=False)
    heldout_pairs = set(zip(rej.users[rej.heldout].tolist(), rej.items[rej.heldout].tolist()))
    for scope in ("train", "before"):
        starts, available = observed_per_context(contexts, offsets, position, scope)
        users = contexts.context_users()
        for c in range(len(contexts)):
            for k in range(available[c]):
                assert (int(users[c]), int(items[starts[c] + k])) not in heldout_pairs
                assert starts[c] + k < offsets[users[c]]  # within its own user's rows
        if scope == "before":
            for c in range(len(contexts)):
                seq = contexts.offsets.searchsorted(c, side="right") - 1
                target_index = len(contexts.sequences[seq]) - 1 - contexts.steps_back[c]
                usable = position[starts[c]:starts[c] + available[c]]
                assert (usable <= target_index).all()
                assert available[c] == (position[offsets[users[c] - 1]:offsets[users[c]]] <= target_index).sum()


def test_positions_count_the_positives_at_or_before_each_rejection():
    from rodpo_dist.data.sources import Interactions

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, size=50)
    times = np.concatenate([np.sort(rng.integers(0, 20, size=n)) for n in lengths]).astype(np.float64)
    data = Interactions(offsets=np.concatenate([[0], np.cumsum(lengths)]), items=np.ones(lengths.sum(), np.int64),
                        num_items=1, times=times)
    users = rng.integers(1, 51, size=400)
    when = rng.integers(-1, 21, size=400).astype(np.float64)  # ties with positives' times included
    expected = [np.searchsorted(data.times[data.offsets[u - 1]:data.offsets[u]], t, side="right")
                for u, t in zip(users, when)]
    assert _positions(data, users, when).tolist() == [int(e) for e in expected]


def test_synthetic_rejections_are_exposed_unliked_and_never_consumed(data_config, tmp_path):
    out = tmp_path / "syn"
    prepare(data_config(synthetic={"dislike_rate": 0.5}), out, progress=False)
    rej, truth = Rejections.load(out), GroundTruth.load(out)
    assert len(rej) > 100
    assert truth.is_exposed(rej.users, rej.items).all()
    assert not truth.is_relevant(rej.users, rej.items).any()
    test = load_split(out, "test")
    full = {u: set(s.tolist()) | {t} for u, s, t in zip(test.users.tolist(), test.sequences, test.targets.tolist())}
    assert not any(i in full[u] for u, i in zip(rej.users.tolist(), rej.items.tolist()))
    lengths = np.array([len(full[u]) for u in rej.users.tolist()])
    assert (rej.heldout == (rej.position > lengths - 2)).all() and rej.heldout.any() and (~rej.heldout).any()
    # the option leaves the catalog itself as it was
    plain = tmp_path / "plain"
    prepare(data_config(), plain, progress=False)
    assert [s.tolist() for s in load_split(plain, "test").sequences] == [s.tolist() for s in test.sequences]


def test_new_settings_at_their_defaults_keep_every_run_hash():
    base = Config()
    assert config_hash(base) == config_hash(config_from_dict({"align": {"rejected": "pool"},
                                                              "data": {"synthetic": {"dislike_rate": 0.0}}}))
    aligned = dataclasses.replace(base, stage="align")
    observed = dataclasses.replace(aligned, align=dataclasses.replace(aligned.align, rejected="observed"))
    assert config_hash(aligned) != config_hash(observed)


@pytest.mark.parametrize("bad", [{"max_dislike_rating": 4, "min_rating": 4}, {"max_dislike_rating": 2, "source": "synthetic"}])
def test_dislike_settings_are_validated(bad):
    from rodpo_dist.config import ConfigError

    with pytest.raises(ConfigError, match="max_dislike_rating"):
        config_from_dict({"data": {"source": "interactions", "path": ".", **bad}})


def test_event_types_mark_rejections_beside_the_sequence(tmp_path):
    """`data.dislike_events`: events of those types (here `return`, `skip`) are rejections, the rest positives."""
    rows = [(f"u{u}", f"p{(u + k) % 9 + 1}", "purchase", 10 * k) for u in range(5) for k in range(6)]
    rows += [("u0", "p9", "return", 15), ("u0", "p8", "skip", 55), ("u1", "p9", "return", 5)]
    path = tmp_path / "events.csv"
    path.write_text("user,item,kind,when\n" + "".join(f"{u},{i},{e},{t}\n" for u, i, e, t in rows))
    cfg = config_from_dict({"data": {"source": "interactions", "path": str(path), "modalities": [],
                                     "columns": {"event": "kind", "timestamp": "when"},
                                     "dislike_events": ["return", "skip"], "min_user_items": 3,
                                     "min_item_users": 1}}).data
    out = tmp_path / "prepared"
    prepare(cfg, out, progress=False)
    ids = __import__("json").loads((out / "id_maps.json").read_text())
    rej = Rejections.load(out)
    assert _raw(rej, ids, False, "u0") == {"p9"} and _raw(rej, ids, True, "u0") == {"p8"}
    assert _raw(rej, ids, False, "u1") == {"p9"}
    test = load_split(out, "test")
    assert sum(len(s) + 1 for s in test.sequences) == 30  # the returns and skips are not in any sequence
