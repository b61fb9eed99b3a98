"""Write `rodpo recommend` requests from a prepared dataset's held-out users: each user's history
before its target, in raw item ids (a smoke test of serving with real histories).

  python tools/held_out_requests.py data_cache/million --split test --count 1000 --out requests.jsonl
"""

from __future__ import annotations

import argparse
import json

from rodpo_dist.data import load_split
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.serve.ids import ItemIds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", help="a prepared dataset folder")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--count", type=int, default=1000, help="the first COUNT users of the split")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    split = load_split(args.prepared, args.split)
    ids = ItemIds.load(args.prepared, load_manifest(args.prepared).num_items)
    with open(args.out, "w") as f:
        for user, seq in list(zip(split.users, split.sequences))[:args.count]:
            f.write(json.dumps({"user": int(user), "history": ids.to_raw(seq)}) + "\n")


if __name__ == "__main__":
    main()
