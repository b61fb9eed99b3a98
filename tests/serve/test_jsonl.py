"""`rodpo recommend`: JSON lines in and out, in raw ids, and every bad input named by its line."""

from __future__ import annotations

import json

import pytest

from rodpo_dist.cli import main
from rodpo_dist.serve import Recommender


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def _recommend(run, tmp_path, lines: list[str], *extra: str) -> tuple[int, list[dict]]:
    requests = _write(tmp_path / "requests.jsonl", lines)
    out = tmp_path / "out.jsonl"
    code = main(["recommend", "--checkpoint", str(run.checkpoint), "--input", str(requests), "--out", str(out),
                 *extra])
    return code, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_recommend_returns_k_raw_items_per_line_outside_the_history(interactions_run, tmp_path):
    histories = [["sku-003", "sku-017"], ["sku-001"], [f"sku-{i:03d}" for i in range(0, 40, 3)]]
    lines = [json.dumps({"user": u, "history": h}) for u, h in zip(["a", 7, None], histories)]
    code, out = _recommend(interactions_run, tmp_path, [lines[0], "", *lines[1:]], "--k", "6")
    assert code == 0 and [r["user"] for r in out] == ["a", 7, None]
    expected = Recommender.from_checkpoint(interactions_run.checkpoint).recommend(histories, 6)
    for r, history, e in zip(out, histories, expected):
        assert len(r["items"]) == 6 and not set(r["items"]) & set(history)
        assert r["items"] == e.items and r["scores"] == pytest.approx(e.scores)


BAD = [
    ('{"user": 1, "history": [1, 2', "malformed JSON (Expecting ',' delimiter at column 29)"),
    ('[1, 2]', 'expected {"user": ..., "history": [item ids, ...]}, got [1, 2]'),
    ('{"user": 1, "history": [3, "B00XYZ"]}', "unknown item id 'B00XYZ'"),
    ('{"user": 1, "history": []}', "empty history"),
]


@pytest.mark.parametrize("line, message", BAD, ids=["json", "not-a-request", "unknown-item", "empty"])
def test_bad_lines_are_named_and_leave_no_output(demo_run, tmp_path, capsys, line, message):
    code, out = _recommend(demo_run, tmp_path, ['{"user": 0, "history": [5, 6]}', line])
    assert code == 1 and out == []
    assert capsys.readouterr().err == f"rodpo: error: {tmp_path / 'requests.jsonl'}:2: {message}\n"


def test_k_larger_than_the_catalog(demo_run, tmp_path, capsys):
    code, out = _recommend(demo_run, tmp_path, ['{"user": 0, "history": [5]}'], "--k", "151")
    assert code == 1 and out == []
    assert "rodpo: error: k=151 is larger than the catalog (150 items)" in capsys.readouterr().err


def test_skip_unknown_warns_and_skips(demo_run, tmp_path, capsys):
    code, out = _recommend(demo_run, tmp_path, ['{"user": 0, "history": [5, "B00XYZ", 6]}',
                                                '{"user": 1, "history": ["B00XYZ"]}'], "--skip-unknown")
    assert code == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'requests.jsonl'}:1: unknown item id 'B00XYZ' skipped\n" in err
    assert f"warning: {tmp_path / 'requests.jsonl'}:2: no known item id in the history: no recommendation\n" in err
    assert out[0]["items"] == Recommender.from_checkpoint(demo_run.checkpoint).recommend([[5, 6]], 10)[0].items
    assert out[1] == {"user": 1, "items": [], "scores": []}  # every request has its line, in input order


def test_requests_stream_in_chunks_in_input_order(demo_run, tmp_path, monkeypatch):
    """A file longer than one chunk (4,096 lines in use, 4 here), blank lines between: every request gets its
    own top K, in input order, as when all histories are scored at once."""
    import numpy as np

    from rodpo_dist.serve import jsonl

    monkeypatch.setattr(jsonl, "CHUNK", 4)
    rng = np.random.default_rng(2)
    histories = [rng.choice(np.arange(1, 151), size=rng.integers(1, 12), replace=False).tolist() for _ in range(11)]
    lines = [json.dumps({"user": f"u{i}", "history": h}) for i, h in enumerate(histories)]
    code, out = _recommend(demo_run, tmp_path, [*lines[:4], "", *lines[4:9], "", "", *lines[9:]], "--k", "5")
    assert code == 0 and [r["user"] for r in out] == [f"u{i}" for i in range(11)]
    expected = Recommender.from_checkpoint(demo_run.checkpoint).recommend(histories, 5)
    assert [r["items"] for r in out] == [e.items for e in expected]
    assert len({tuple(r["items"]) for r in out}) > 1  # the histories get different lists
