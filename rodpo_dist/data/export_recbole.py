"""A prepared dataset written as RecBole atomic files, so that RecBole (or any tool reading them)
trains and evaluates on exactly the sequences and leave-one-out targets this trainer uses.

`<out>/<NAME>.inter`, tab-separated with RecBole's typed header (the conventions `data.source:
recbole` reads, `rodpo_dist.data.recbole`): `user_id:token`, `item_id:token`, `timestamp:float`.
One row per interaction, users 1..U in order, each user's items in sequence order. The tokens are
the prepared dataset's ids (`id_maps.json` beside it maps them to raw ids). The timestamp is the
row's 0-based position in the file: strictly increasing within every user and never tied, so a
reader that orders by time (RecBole's `eval_args.order: TO`, this package's `data.source:
recbole`) restores every sequence exactly, and leave-one-out over it (last item = test target, the
one before = validation target) gives the prepared split's targets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.loader import load_split
from rodpo_dist.data.manifest import load_manifest

HEADER = ("user_id:token", "item_id:token", "timestamp:float")


@dataclass
class FullSequences:
    """Every user's whole sequence (test history + test target), users 1..U in order."""

    users: np.ndarray
    sequences: list[np.ndarray]


def full_sequences(prepared_dir: str | Path) -> FullSequences:
    """The sequences of a prepared dataset, checked against its validation split."""
    root = Path(prepared_dir)
    test, valid = load_split(root, "test"), load_split(root, "valid")
    sequences = [np.append(h, t) for h, t in zip(test.sequences, test.targets)]
    if not np.array_equal(test.users, valid.users):
        raise DataError(root, "the valid and test splits hold different users")
    for user, seq, hist, target in zip(valid.users, sequences, valid.sequences, valid.targets):
        if len(seq) < 3 or seq[-2] != target or not np.array_equal(seq[:-2], hist):
            raise DataError(root, f"user {user}: the validation split is not the test history minus its last item")
    return FullSequences(test.users, sequences)


def export_recbole(prepared_dir: str | Path, out_dir: str | Path, name: str | None = None) -> Path:
    """Write `<out_dir>/<name>.inter` (name: the manifest's) from `prepared_dir`; returns its path.

    Written to a temporary file and renamed into place, so a reader never sees half a file.
    """
    name = name or load_manifest(prepared_dir).name
    data = full_sequences(prepared_dir)
    out = Path(out_dir) / f"{name}.inter"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    row = 0
    with open(tmp, "w") as f:
        f.write("\t".join(HEADER) + "\n")
        for user, seq in zip(data.users, data.sequences):
            f.writelines(f"{user}\t{item}\t{row + i}\n" for i, item in enumerate(seq.tolist()))
            row += len(seq)
    tmp.replace(out)
    return out
