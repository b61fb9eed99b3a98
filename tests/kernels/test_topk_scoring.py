"""Top-K pool scoring: the chunked PyTorch path and the Triton kernel (interpreter on CPU) against
the materialising reference.

Tolerances: scores are fp32 for every input dtype (low-precision candidates are re-scored in
fp32), so they must match the reference to fp32 rounding (``atol=1e-4`` at |score| <= ~50). Ids
must agree wherever scores are not tied within that tolerance.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rodpo_kernels import Exclusion, TopK, merge_topk, topk_scores
from rodpo_kernels.topk_scoring import _resolve, cpu
from rodpo_kernels.topk_scoring import triton as triton_topk
from rodpo_kernels.topk_scoring.common import UNIT_ROUNDOFF, error_bound

# the Triton backend runs on CUDA when the interpreter is off (kernels/gpu_check.sh)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
ATOL = 1e-4
BACKENDS = ["cpu", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=["small_chunks", "default_chunks"])
def chunking(request, monkeypatch):
    """Small chunks make every test walk many tiles, overflow and retry (Triton)."""
    if request.param == "small_chunks":
        monkeypatch.setattr(cpu, "TILE_ELEMENTS", 64)
        monkeypatch.setattr(cpu, "GROUP", 8)
        monkeypatch.setattr(triton_topk, "CAP_SLACK", 3)
    return request.param


def run(users, items, k, exclude=None, id_offset=0, backend="reference") -> TopK:
    """``topk_scores`` with the Triton backend on DEVICE, everything else on CPU."""
    device = DEVICE if backend == "triton" else "cpu"
    out = topk_scores(users.to(device), items.to(device), k, exclude, id_offset, backend=backend)
    return TopK(out.scores.cpu(), out.ids.cpu())


def assert_topk_matches(out: TopK, ref: TopK, users: torch.Tensor, items: torch.Tensor,
                        id_offset: int = 0) -> None:
    """Equal up to exact ties: scores close, -inf/-1 padding equal, each id scores what it
    claims, no id repeated, id sets equal above the K-th score (+ tolerance)."""
    assert out.scores.dtype == torch.float32 and out.ids.dtype == torch.int64
    assert out.scores.shape == ref.scores.shape == out.ids.shape
    pad = ref.scores == float("-inf")
    assert torch.equal(out.scores == float("-inf"), pad)
    assert torch.equal(out.ids == -1, pad)
    torch.testing.assert_close(out.scores[~pad], ref.scores[~pad], atol=ATOL, rtol=1e-5)
    exact = users.float() @ items.float().T
    for b in range(out.ids.shape[0]):
        ids = out.ids[b][~pad[b]]
        assert ids.unique().numel() == ids.numel()
        torch.testing.assert_close(exact[b, ids - id_offset], out.scores[b][~pad[b]],
                                   atol=ATOL, rtol=1e-5)
        if ids.numel():
            kth = ref.scores[b][~pad[b]][-1]
            clear = ref.scores[b] > kth + 2 * ATOL
            assert set(ref.ids[b][clear].tolist()) <= set(ids.tolist())


def random_inputs(n_users, n_items, dim, dtype, users_fp32=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=g)
    items = torch.randn(n_items, dim, generator=g).to(dtype)
    return (users if users_fp32 else users.to(dtype)), items


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 37, 300])
def test_matches_reference(backend, dtype, k, chunking):
    users, items = random_inputs(5, 203, 24, dtype, users_fp32=dtype == torch.float32 or k != 37)
    exclude = torch.randint(-1, 215, (5, 9), generator=torch.Generator().manual_seed(1))
    exclude[0, :3] = exclude[0, 3]  # duplicates
    ref = topk_scores(users, items, k, exclude, id_offset=4, backend="reference")
    out = run(users, items, k, exclude, id_offset=4, backend=backend)
    assert_topk_matches(out, ref, users, items, id_offset=4)
    if k == 300:  # more than the items left: padded
        rows = exclude - 4
        left = [203 - rows[b][(rows[b] >= 0) & (rows[b] < 203)].unique().numel() for b in range(5)]
        assert (out.ids >= 0).sum(1).tolist() == left


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_k(backend):
    users, items = random_inputs(3, 1100, 16, torch.float32)
    for k in (1024, 1037):
        ref = topk_scores(users, items, k, backend="reference")
        assert_topk_matches(run(users, items, k, backend=backend), ref, users, items)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_near_ties_are_exact(backend, chunking):
    """Scores that bf16 cannot separate: without fp32 re-scoring the ids would be wrong."""
    g = torch.Generator().manual_seed(3)
    users = torch.randn(4, 32, generator=g) * 3
    items = (torch.randn(1, 32, generator=g) + 0.02 * torch.randn(150, 32, generator=g)).bfloat16()
    ref = topk_scores(users, items, 10, backend="reference")
    low = (users.bfloat16() @ items.T).float().topk(10, dim=1).indices
    assert not torch.equal(low, ref.ids), "inputs must defeat plain bf16 scoring"
    out = run(users, items, 10, backend=backend)
    assert torch.equal(out.ids, ref.ids)
    assert_topk_matches(out, ref, users, items)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_excluded_and_csr_equals_padded(backend, chunking):
    users, items = random_inputs(3, 40, 8, torch.float32)
    padded = torch.full((3, 45), -1, dtype=torch.long)
    padded[0, :40] = torch.arange(40) + 10  # user 0: everything
    padded[1, :5] = torch.tensor([12, 12, 13, -7, 10_000])  # duplicates, out of range
    counts = (padded >= 0).sum(1)
    csr = Exclusion(torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                    padded[padded >= 0])
    ref = topk_scores(users, items, 7, padded, id_offset=10, backend="reference")
    out = run(users, items, 7, padded, id_offset=10, backend=backend)
    out_csr = run(users, items, 7, csr, id_offset=10, backend=backend)
    assert torch.equal(out.ids, out_csr.ids) and torch.equal(out.scores, out_csr.scores)
    assert (out.ids[0] == -1).all() and (out.scores[0] == float("-inf")).all()
    assert not torch.isin(out.ids[1], torch.tensor([12, 13])).any()
    assert_topk_matches(out, ref, users, items, id_offset=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_of_shards_equals_unsharded(backend):
    users, items = random_inputs(4, 130, 12, torch.bfloat16)
    exclude = torch.tensor([[1, 50, 129], [-1, -1, -1], [64, 65, 66], [0, 0, 0]])
    full = run(users, items, 20, exclude, backend=backend)
    bounds = [0, 33, 90, 130]
    parts = [run(users, items[lo:hi], 20, exclude, id_offset=lo, backend=backend)
             for lo, hi in zip(bounds, bounds[1:])]
    merged = merge_topk(parts, 20)
    assert torch.equal(merged.ids, full.ids) and torch.equal(merged.scores, full.scores)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_with_exact_ties(backend, chunking):
    users, items = random_inputs(2, 20, 8, torch.float32)
    items = items.repeat(6, 1)  # every score appears 6 times
    runs = [run(users, items, 15, backend=backend) for _ in range(2)]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert_topk_matches(runs[0], topk_scores(users, items, 15, backend="reference"), users, items)


@settings(max_examples=12, deadline=None)
@given(
    n_users=st.integers(1, 6), n_items=st.integers(1, 150), dim=st.integers(1, 40),
    k=st.integers(1, 60), dtype=st.sampled_from(DTYPES), backend=st.sampled_from(BACKENDS),
    n_excluded=st.integers(0, 10), seed=st.integers(0, 2**16),
)
def test_random_shapes(n_users, n_items, dim, k, dtype, backend, n_excluded, seed):
    users, items = random_inputs(n_users, n_items, dim, dtype, seed=seed)
    g = torch.Generator().manual_seed(seed)
    exclude = torch.randint(-1, n_items, (n_users, n_excluded), generator=g)
    ref = topk_scores(users, items, k, exclude, backend="reference")
    assert_topk_matches(run(users, items, k, exclude, backend=backend), ref, users, items)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [8, 64, 512])
def test_error_bound_holds_for_torch_mm(dtype, dim):
    """The bound assumed by the CPU path for low-precision ``torch.mm`` (fp32 accumulation, one
    output rounding), on all-positive inputs where rounding errors cannot cancel."""
    g = torch.Generator().manual_seed(dim)
    users = torch.rand(16, dim, generator=g) * 4
    items = torch.rand(2000, dim, generator=g).to(dtype)
    approx = (users.to(dtype) @ items.T).float()
    exact = users.double() @ items.double().T
    u = UNIT_ROUNDOFF[dtype]
    bound = error_bound(users, items, users_roundoff=u, items_roundoff=0.0, output_roundoff=u)
    err = (approx.double() - exact).abs().amax(1)
    assert (err <= bound.double()).all()
    assert (err > bound.double() / 20).all(), "bound is needlessly loose"


def test_auto_never_picks_triton_on_cpu():
    assert _resolve("auto", torch.zeros(1)) == "cpu"


def test_rejects_bad_arguments():
    users, items = random_inputs(2, 5, 4, torch.float32)
    with pytest.raises(ValueError):
        topk_scores(users, items, 0)
    with pytest.raises(TypeError):
        topk_scores(users.bfloat16(), items, 2)
