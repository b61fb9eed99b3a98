"""Recommendations from a folder written by `rodpo export`, with torch and safetensors only.

`rodpo export` copies this file into the folder. Use it as a script:

    python EXPORT/standalone.py EXPORT --k 10 < requests.jsonl > recommendations.jsonl

(lines `{"user": ..., "history": [raw item ids]}` in, `{"user", "items", "scores"}` out), or as a module:
`ExportedModel("EXPORT").recommend([["B004756YJA", "B0020YLEYK"]], k=10)`. Scoring forms the
[batch, catalog] score matrix: keep batches small for large catalogs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


class ExportedModel:
    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.card = json.loads((folder / "card.json").read_text())
        self.encoder = torch.export.load(folder / "user_encoder.pt2").module()  # [B, L] ids -> [B, d]
        self.items = load_file(folder / "items.safetensors")["items"]  # [N+1, d]; row 0 = padding
        self.raw_ids = json.loads((folder / "id_map.json").read_text())["items"]  # raw id of items 1..N
        self.index = {str(raw): i for i, raw in enumerate(self.raw_ids, 1)}

    def recommend(self, histories: list[list], k: int) -> list[tuple[list, list[float]]]:
        """(top-k raw item ids, scores) per history of raw ids, the history excluded. A bad history (not
        a list, empty, an unknown id, fewer than k items outside it) raises RequestError naming it."""
        return self.top_k([self.encode(h, f"history {i}") for i, h in enumerate(histories)], k)

    def encode(self, history: list, where: str) -> list[int]:
        """Internal ids of a history of raw ids; `where` names it in errors."""
        if not isinstance(history, list):
            raise RequestError(f"{where}: the history must be a list of item ids, got {type(history).__name__}")
        if not history:
            raise RequestError(f"{where}: empty history")
        unknown = [raw for raw in history if str(raw) not in self.index]
        if unknown:
            raise RequestError(f"{where}: unknown item id {unknown[0]!r}")
        return [self.index[str(raw)] for raw in history]

    def top_k(self, ids: list[list[int]], k: int, names: list[str] | None = None) -> list[tuple[list, list[float]]]:
        """(top-k raw item ids, scores) per history of internal ids (`encode`); `names` name them in errors."""
        if k < 1:
            raise RequestError(f"k must be >= 1, got {k}")
        for i, history in enumerate(ids):
            free = len(self.raw_ids) - len(set(history))
            if free < k:
                where = names[i] if names else f"history {i}"
                raise RequestError(f"{where}: k={k} but only {free} catalog items are not in the history")
        width = min(self.card["max_len"], max(len(h) for h in ids))
        seq = torch.zeros(len(ids), width, dtype=torch.long)  # left-padded: the latest item last
        for row, history in zip(seq, ids):
            row[width - min(width, len(history)):] = torch.tensor(history[-width:])
        with torch.no_grad():
            scores = self.encoder(seq) @ self.items.T
        scores[:, 0] = float("-inf")
        for row, history in zip(scores, ids):
            row[history] = float("-inf")
        top = scores.topk(k)
        return [([self.raw_ids[i - 1] for i in row.tolist()], s.tolist()) for row, s in zip(top.indices, top.values)]


class RequestError(ValueError):
    """A bad request; the message starts with where it came from (`line 7: ...`, `history 3: ...`)."""


def read_requests(lines) -> list[tuple[str, dict]]:
    """(`line N`, request) per non-blank line; RequestError naming a line that is no request."""
    requests = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RequestError(f"line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or "history" not in record:
            raise RequestError(f'line {lineno}: expected {{"user": ..., "history": [item ids, ...]}}')
        requests.append((f"line {lineno}", record))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    model = ExportedModel(args.folder)
    try:  # every request is checked before any output
        requests = read_requests(sys.stdin)
        ids = [model.encode(r["history"], where) for where, r in requests]
        names = [where for where, _ in requests]
        results = [top for start in range(0, len(ids), args.batch_size)
                   for top in model.top_k(ids[start:start + args.batch_size], args.k,
                                          names[start:start + args.batch_size])]
    except RequestError as err:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {err}")
    for (_, request), (items, scores) in zip(requests, results):
        print(json.dumps({"user": request.get("user"), "items": items, "scores": scores}))


if __name__ == "__main__":
    main()
