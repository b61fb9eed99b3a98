"""`tools/held_out_requests.py`: a prepared split's held-out users as `rodpo recommend` requests."""

import json
import subprocess
import sys
from pathlib import Path

from rodpo_dist.data import load_split

TOOL = Path(__file__).resolve().parents[2] / "tools" / "held_out_requests.py"


def test_requests_are_the_users_histories_before_their_targets(small_dir, tmp_path):
    out = tmp_path / "requests.jsonl"
    subprocess.run([sys.executable, str(TOOL), str(small_dir), "--split", "valid", "--count", "7", "--out", str(out)],
                   check=True)
    requests = [json.loads(line) for line in out.read_text().splitlines()]
    valid = load_split(small_dir, "valid")
    assert len(requests) == 7
    for request, user, seq in zip(requests, valid.users, valid.sequences):  # raw ids = internal ids here
        assert request == {"user": int(user), "history": seq.tolist()}
