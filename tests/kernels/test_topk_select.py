"""The compiled tile selection (``kernels/topk_scoring/select.cpp``) against a torch reference.

Its output is fully determined: per user, every row with score > thr and score >= (k-th best such
score) - slack (in double), or every row above thr when fewer than k are; pads -inf / -1; nothing
at all when some user keeps more than cap.
"""

from __future__ import annotations

import pytest
import torch

from rodpo_kernels import topk_scores
from rodpo_kernels.topk_scoring import cpu, native


@pytest.fixture(scope="module")
def select():
    fn = native.tile_candidates()
    assert fn is not None, "the compiled selection did not build"
    return fn


def expected_rows(scores: torch.Tensor, thr: torch.Tensor, slack: torch.Tensor, k: int) -> list[set]:
    """Per user, the rows the selection must return (see the module docstring)."""
    out = []
    for b in range(scores.shape[1]):
        s = scores[:, b]
        above = s > thr[b]
        if above.sum() >= k:
            kth = s[above].topk(k).values[-1].double()
            above &= s.double() >= kth - slack[b].double()
        out.append(set(above.nonzero().flatten().tolist()))
    return out


def check(select, scores, thr, slack, k, row_offset=0) -> None:
    cap = scores.shape[0]
    s_hat, rows = select(scores, thr, slack, k, cap, row_offset)
    n_users = scores.shape[1]
    assert s_hat.shape == rows.shape and s_hat.shape[0] == n_users
    assert s_hat.dtype == torch.float32 and rows.dtype == torch.int64
    expected = expected_rows(scores, thr, slack, k)
    for b, want in enumerate(expected):
        real = rows[b] >= 0
        got = rows[b][real] - row_offset
        assert set(got.tolist()) == want and got.numel() == len(want)  # each row once
        assert torch.equal(s_hat[b][real], scores[got, b])  # the tile's own scores
        assert (s_hat[b][~real] == float("-inf")).all() and (rows[b][~real] == -1).all()
    assert rows.shape[1] == max(len(w) for w in expected)


@pytest.mark.parametrize("n_users", [1, 5, 16, 37])  # lanes: a partial block, one, several + tail
@pytest.mark.parametrize("k", [1, 7, 50])
@pytest.mark.parametrize("bounds", ["none", "thr", "slack", "both"])
def test_matches_reference_on_random_scores(select, n_users, k, bounds):
    g = torch.Generator().manual_seed(n_users * 100 + k)
    scores = torch.randn(700, n_users, generator=g)
    thr = torch.full((n_users,), float("-inf"))
    slack = torch.zeros(n_users)
    if bounds in ("thr", "both"):  # some users above which fewer than k rows lie
        thr = torch.randn(n_users, generator=g).abs() * 1.5
    if bounds in ("slack", "both"):
        slack = torch.rand(n_users, generator=g) * 0.3
    check(select, scores, thr, slack, k, row_offset=1234)


def test_exact_scores_keep_exactly_the_top_k(select):
    """slack 0, distinct scores: the pruning keeps k rows, not a superset."""
    scores = torch.randperm(5000, generator=torch.Generator().manual_seed(0)).float().view(1000, 5)
    s_hat, rows = select(scores, torch.full((5,), float("-inf")), torch.zeros(5), 10, 1000, 0)
    assert rows.shape == (5, 10)
    assert torch.equal(s_hat.sort(1, descending=True).values, scores.T.topk(10).values)


@pytest.mark.parametrize("slack", [0.0, 1.0])
def test_ties_at_the_bound_are_kept(select, slack):
    """Integer scores with many ties at the k-th value and at k-th - slack: all of them stay."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 12, (900, 19), generator=g).float()
    check(select, scores, torch.full((19,), float("-inf")), torch.full((19,), slack), 5)


def test_overflow_returns_nothing(select):
    """More than cap rows tied above the gate for one user: the caller must retry smaller."""
    scores = torch.randn(64, 3)
    scores[:, 1] = 2.0  # 64 ties for user 1
    empty = torch.full((3,), float("-inf"))
    assert select(scores, empty, torch.zeros(3), 4, 63, 0) == []
    assert len(select(scores, empty, torch.zeros(3), 4, 64, 0)) == 2


def test_rejects_bad_input(select):
    scores = torch.randn(8, 4)
    thr, slack = torch.zeros(4), torch.zeros(4)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        select(scores.T, thr, slack, 2, 8, 0)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        select(scores.double(), thr, slack, 2, 8, 0)
    with pytest.raises(RuntimeError, match="one float32 entry per user"):
        select(scores, thr[:3], slack, 2, 8, 0)
    with pytest.raises(RuntimeError, match="1 <= k <= cap"):
        select(scores, thr, slack, 3, 2, 0)


def test_unbuildable_selection_falls_back_to_torch_ops(monkeypatch):
    """No compiler: one warning, None, and the CPU path still returns the exact top-K."""
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(cpu, "DENSE_MAX_ITEMS", 0)  # the tiled scan, whose tiles use the selection
    monkeypatch.setattr(cpu, "DENSE_MAX_SCORES", 0)
    native.tile_candidates.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built.*no C.. compiler"):
            assert native.tile_candidates() is None
        g = torch.Generator().manual_seed(2)
        users, items = torch.randn(6, 16, generator=g), torch.randn(3000, 16, generator=g)
        out = topk_scores(users, items, 20, backend="cpu", compute_dtype=torch.float32)
        ref = topk_scores(users, items, 20, backend="reference")
        assert torch.equal(out.ids.sort(1).values, ref.ids.sort(1).values)
        torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=1e-5)
    finally:
        native.tile_candidates.cache_clear()  # the next caller builds (loads) it again
