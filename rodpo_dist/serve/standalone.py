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
        """(top-k raw item ids, scores) per history of raw ids, the history excluded; unknown ids raise KeyError."""
        ids = [[self.index[str(raw)] for raw in history] for history in histories]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    model = ExportedModel(args.folder)
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    for start in range(0, len(requests), args.batch_size):
        batch = requests[start:start + args.batch_size]
        for request, (items, scores) in zip(batch, model.recommend([r["history"] for r in batch], args.k)):
            print(json.dumps({"user": request.get("user"), "items": items, "scores": scores}))


if __name__ == "__main__":
    main()
