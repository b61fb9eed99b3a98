"""`rodpo recommend`: JSON-lines requests in, JSON-lines recommendations out, streamed in chunks.

Input lines: `{"user": <any>, "history": [<raw item id>, ...]}` (blank lines skipped). Output
lines, in input order: `{"user": ..., "items": [<raw item id>, ...], "scores": [...]}`. The output
file is written under a temporary name and renamed when complete, so a bad line leaves no output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rodpo_dist.serve.recommender import Recommender, RequestError

CHUNK = 4096
"""Requests scored together (in batches of `Recommender.batch_size`)."""


def read_requests(path: str | Path) -> Iterator[tuple[str, Any, Any]]:
    """(`<path>:<line>`, user, history) per non-blank line; a `RequestError` naming a line that is no request."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RequestError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict) or "history" not in record:
                raise RequestError(f'{where}: expected {{"user": ..., "history": [item ids, ...]}}, '
                                   f"got {line[:80]}")
            yield where, record.get("user"), record["history"]


def recommend_file(recommender: Recommender, input_path: str | Path, out_path: str | Path, k: int, *,
                   skip_unknown: bool = False, progress: bool = True) -> int:
    """Write the top `k` items of every request in `input_path` to `out_path`; returns the request count."""
    recommender.check_k(k)
    warn = (lambda message: tqdm.write(f"warning: {message}", file=sys.stderr)) if skip_unknown else None
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(input_path) as f:
        total = sum(1 for line in f if line.strip())
    count = 0
    requests = read_requests(input_path)
    try:
        with open(tmp, "w") as f, tqdm(total=total, desc="recommend", unit="user", disable=not progress) as bar:
            while chunk := list(islice(requests, CHUNK)):
                histories = [recommender.encode(history, where, k, warn) for where, _, history in chunk]
                for (_, user, _), top in zip(chunk, recommender.ranked(histories, k)):
                    f.write(json.dumps({"user": user, "items": top.items, "scores": top.scores}) + "\n")
                count += len(chunk)
                bar.update(len(chunk))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return count
