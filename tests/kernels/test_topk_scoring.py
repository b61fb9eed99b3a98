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
from rodpo_kernels.topk_scoring import _resolve, cpu, native
from rodpo_kernels.topk_scoring import triton as triton_topk
from rodpo_kernels.topk_scoring.common import UNIT_ROUNDOFF, error_bound

# the Triton backend runs on CUDA when the interpreter is off (kernels/gpu_check.sh)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
ATOL = 1e-4
BACKENDS = ["cpu", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def tiled_scan(monkeypatch) -> None:
    """Send every CPU call to the tiled scan, however small (see `cpu.scores_densely`)."""
    monkeypatch.setattr(cpu, "DENSE_MAX_ITEMS", 0)
    monkeypatch.setattr(cpu, "DENSE_MAX_SCORES", 0)


SELECTIONS = ["compiled", "torch_ops"]  # cpu.py's two ways of selecting a tile's candidates


def use_selection(monkeypatch, selection: str) -> None:
    """Select tile candidates with the compiled selection (select.cpp, which must build here) or
    with the torch-op fallback (hosts without a C++ compiler)."""
    if selection == "compiled":
        assert native.tile_candidates() is not None, "the compiled selection did not build"
    monkeypatch.setattr(cpu, "NATIVE_SELECT", selection == "compiled")


@pytest.fixture(params=["small_chunks", "small_chunks-torch_ops", "mid_chunks",
                        "mid_chunks-torch_ops", "default_chunks"])
def chunking(request, monkeypatch):
    """Small chunks make every test walk many tiles, overflow and retry, and (CPU) split the
    catalogue into blocks, their tiles too small to raise a floor; mid chunks (CPU) are large enough for oneDNN's
    bf16 mode to engage; both use the tiled scan (its candidates selected by the compiled
    selection, or by torch ops: ``-torch_ops``), while default chunks score these small
    catalogues with the dense path (`cpu.scores_densely`)."""
    chunks, _, selection = request.param.partition("-")
    if chunks != "default_chunks":
        tiled_scan(monkeypatch)
        use_selection(monkeypatch, selection or "compiled")
    if chunks == "small_chunks":
        monkeypatch.setattr(cpu, "TILE_ELEMENTS", 64)
        monkeypatch.setattr(cpu, "FANOUT", 2)
        monkeypatch.setattr(triton_topk, "CAP_SLACK", 3)
    if chunks == "mid_chunks":
        monkeypatch.setattr(cpu, "TILE_ELEMENTS", 2048)
        monkeypatch.setattr(cpu, "FANOUT", 4)
    if chunks != "default_chunks":
        monkeypatch.setattr(cpu, "MIN_TILE_ROWS", 1)
        monkeypatch.setattr(cpu, "CAP_SLACK", 3)
        monkeypatch.setattr(cpu, "MIN_SHARD", 64)  # blocks of users or items, one per thread
        monkeypatch.setattr(cpu, "MIN_BLOCK_USERS", 2)
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


@pytest.mark.parametrize("n_users, n_items", [(0, 50), (3, 0)])
def test_no_users_or_no_items(n_users, n_items):
    out = topk_scores(torch.zeros(n_users, 32), torch.ones(n_items, 32), 4, backend="cpu")
    assert out.scores.shape == out.ids.shape == (n_users, 4) and (out.ids == -1).all()


def test_auto_never_picks_triton_on_cpu():
    assert _resolve("auto", torch.zeros(1)) == "cpu"


def test_rejects_bad_arguments():
    users, items = random_inputs(2, 5, 4, torch.float32)
    with pytest.raises(ValueError):
        topk_scores(users, items, 0)
    with pytest.raises(TypeError):
        topk_scores(users.bfloat16(), items, 2)


# --- the CPU path scoring in bf16 (oneDNN's bf16 mode) and re-scoring in fp32 ---------------------

BF16 = torch.bfloat16
TIE_CASES = ["near_ties", "ulp_ties", "duplicates", "ascending"]


def tie_inputs(case: str, n_users: int, n_items: int, dim: int, seed: int = 0):
    """fp32 users and items whose scores bf16 cannot rank (all within its resolution), with:
    near_ties: distinct fp32 scores ~1e-4 apart; ulp_ties: pairs of rows one fp32 ulp apart;
    duplicates: rows repeated 3 times (exact ties); ascending: scores increasing along the rows
    for every user (each tile beats all the previous ones)."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=g)
    center = torch.randn(1, dim, generator=g)
    if case == "ascending":
        users, center = users.abs(), center.abs()
        return users, center * (1 + 1e-3 * torch.arange(n_items)[:, None] / n_items)
    items = center + 1e-3 * torch.randn(n_items, dim, generator=g)
    if case == "ulp_ties":
        items[1::2] = items[::2][: n_items // 2]
        items[1::2, 0] = torch.nextafter(items[1::2, 0], torch.tensor(float("inf")))
    if case == "duplicates":
        items = items[torch.arange(n_items) // 3]
    return users, items


def same_id_sets(a: TopK, b: TopK) -> bool:
    return all(set(x.tolist()) == set(y.tolist()) for x, y in zip(a.ids, b.ids))


def assert_no_better_item_missed(out: TopK, users, items, exclude, tol: float = 1e-5) -> None:
    """Against the full fp32 score matrix: no non-excluded, non-returned item scores more than
    ``tol`` above the worst returned one (ids and scores are checked by assert_topk_matches)."""
    scores = users @ items.T
    rows, cols = (exclude >= 0).nonzero(as_tuple=True)
    scores[rows, exclude[rows, cols]] = float("-inf")
    for b in range(scores.shape[0]):
        ids = out.ids[b][out.ids[b] >= 0]
        worst = scores[b, ids].min() if ids.numel() else float("inf")
        scores[b, ids] = float("-inf")
        assert scores[b].max() <= worst + tol


@pytest.mark.parametrize("case", TIE_CASES)
@pytest.mark.parametrize("n_users, n_items, k",
                         [(1, 203, 37), (5, 203, 300), (6, 1000, 50), (4, 2000, 5)])
def test_bf16_scoring_is_exact_on_ties_and_near_ties(case, n_users, n_items, k, chunking):
    """Scores far below bf16 resolution apart, straddling the K boundary (the clusters hold every
    item), with exclusions, B=1, K > N and N not a multiple of any tile: the bf16-scored path
    must return the fp32 top-K; plain bf16 scoring must not (or the inputs test nothing)."""
    users, items = tie_inputs(case, n_users, n_items, 24)
    exclude = torch.randint(-1, n_items, (n_users, 7), generator=torch.Generator().manual_seed(2))
    ref = topk_scores(users, items, k, exclude, backend="reference")
    out = topk_scores(users, items, k, exclude, backend="cpu", compute_dtype=BF16)
    assert_topk_matches(out, ref, users, items)
    assert_no_better_item_missed(out, users, items, exclude)
    if case in ("near_ties", "ascending") and k < n_items:
        bf16 = topk_scores(users.bfloat16(), items.bfloat16(), k, exclude, backend="reference")
        assert not same_id_sets(bf16, ref) and same_id_sets(out, ref)
    again = topk_scores(users, items, k, exclude, backend="cpu", compute_dtype=BF16)
    assert torch.equal(again.ids, out.ids) and torch.equal(again.scores, out.scores)


def bf16_mode_rounds() -> bool:
    """Whether oneDNN's bf16 matmul mode rounds fp32 operands to bf16 on this CPU. With AMX it does;
    on a CPU with AVX512-BF16 but no AMX it was seen running a faster fp32 kernel instead, whose
    scores equal strict fp32 (then the bf16 path is exact with a margin it does not need)."""
    x = torch.full((64, 64), 1 + 0.99 * 2.0**-8)  # rounds to 1.0 in bf16: 64 instead of 64.5
    with cpu.matmul_precision("bf16"):
        y = torch.mm(x, x.T)
    return bool((y.double() - x.double() @ x.double().T).abs().max() > 0.1)


def test_bf16_path_scores_tiles_in_bf16(monkeypatch):
    """The bf16 CPU path (the default where the CPU has native bf16, asked for here so that it runs
    on every CPU) scores its tiles in oneDNN's bf16 mode (where the mode rounds: errors far above
    fp32 rounding; where it does not: fp32-level errors), within the bound, then returns exact fp32
    scores."""
    tiled_scan(monkeypatch)  # the tiled scan
    users, items = tie_inputs("near_ties", 8, 600, 32)
    errors = []
    score_tile = cpu._score_tile

    def spy(users32, items, lo, hi, buf, excluded):
        scores = score_tile(users32, items, lo, hi, buf, excluded)
        exact = items[lo:hi].double() @ users32.double().T
        errors.append((scores[: hi - lo].double() - exact).abs().amax(0))
        return scores

    monkeypatch.setattr(cpu, "_score_tile", spy)
    out = topk_scores(users, items, 20, compute_dtype=BF16)
    assert_topk_matches(out, topk_scores(users, items, 20, backend="reference"), users, items)
    err = torch.stack(errors).amax(0)
    if bf16_mode_rounds():
        assert (err > 1e-3).all(), "tiles were scored in fp32"
    else:
        assert (err <= 1e-3).all()
    assert (err <= cpu.bf16_margin(users, items).double()).all()


@pytest.mark.parametrize("dim", [24, 64, 512])  # oneDNN's bf16 mode stays fp32 up to 16
@pytest.mark.parametrize("offset", [0.99, 1.9])
def test_bf16_margin_holds_for_bf16_mode(dim, offset):
    """The bound of the bf16 tile scores (fp32 operands rounded inside the matmul), on parallel
    vectors of entries ``offset`` half bf16 spacings above a power of 2: 0.99 rounds every entry
    down by almost the unit roundoff (the errors add up: the bound must be tight); 1.9 rounds up
    by 0.1 under round-to-nearest, but down by 1.9 under truncation (the bound would not hold)."""
    g = torch.Generator().manual_seed(dim)

    def entries(rows: int) -> torch.Tensor:
        scale = 2.0 ** torch.randint(-2, 3, (rows, 1), generator=g)
        return (1 + offset * 2.0**-8) * scale.expand(rows, dim)

    users, items = entries(16), entries(2000)
    buf = torch.empty(2048, 16)
    no_exclusions = (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    with cpu.matmul_precision("bf16"):
        approx = cpu._score_tile(users, items, 0, 2000, buf, no_exclusions)[:2000]
    err = (approx.double() - items.double() @ users.double().T).abs().amax(0)
    bound = cpu.bf16_margin(users, items).double()
    assert (err <= bound).all()
    if offset < 1 and bf16_mode_rounds():
        assert (err > 0.9 * bound).all(), "bound is needlessly loose (or tiles not in bf16)"


def emulate_bf16_mode(monkeypatch) -> None:
    """Tile matmuls on operands rounded to bf16 (products exact in fp32, fp32 accumulation), as
    oneDNN's bf16 mode does where it rounds (AMX); hosts where it does not round still test this."""
    score_tile = cpu._score_tile

    def rounded(users32, items, *args):
        return score_tile(users32.bfloat16().float(), items.bfloat16().float(), *args)

    monkeypatch.setattr(cpu, "_score_tile", rounded)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("rounding", ["emulated", "onednn"])
@pytest.mark.parametrize("floor", [True, False])
def test_bf16_errors_of_both_signs_near_the_bound(floor, rounding, selection, monkeypatch):
    """Operands rounded to bf16 all downwards on 16 coordinates and all upwards on the other 16:
    items A (on the first) lose 2 unit roundoffs, items B (on the others) gain 2, so B outranks
    the truly better A in bf16 by 1.3 error bounds. The group-maxima floor (B in 10 of the 160
    groups of 4 of one tile, so the K-th group maximum is B's score; or, in tiles of 8 items, too
    few groups for a floor: the chunk pruning) must keep 2 bounds below the K-th bf16 score, not 1;
    the compiled selection's gate likewise."""
    tiled_scan(monkeypatch)
    use_selection(monkeypatch, selection)
    monkeypatch.setattr(cpu, "FANOUT", 2)
    if not floor:
        monkeypatch.setattr(cpu, "TILE_ELEMENTS", 40)
        monkeypatch.setattr(cpu, "MIN_TILE_ROWS", 1)
    if rounding == "emulated":
        emulate_bf16_mode(monkeypatch)
    half = 2.0**-8  # half the bf16 spacing in [1, 2)
    down, up = torch.full((16,), 1 + 0.99 * half), torch.full((16,), 1 + 1.01 * half)
    users = torch.cat([down, up]) * torch.tensor([1.0, 2.0, 4.0, 0.5, 0.25])[:, None]
    items = torch.zeros(640, 32)
    a_rows, b_rows = torch.arange(600, 608), torch.arange(10) * 17 + 3  # B in 10 groups (rows % 160)
    items[a_rows, :16] = down
    items[b_rows, 16:] = torch.cat([up[:15], torch.tensor([255 / 256])])  # exact in bf16
    bf16 = topk_scores(users.bfloat16(), items.bfloat16(), 8, backend="reference")
    assert not torch.isin(bf16.ids, a_rows).any(), "inputs must defeat plain bf16 scoring"
    out = topk_scores(users, items, 8, backend="cpu", compute_dtype=BF16)
    assert (torch.sort(out.ids, 1).values == a_rows).all()
    assert_topk_matches(out, topk_scores(users, items, 8, backend="reference"), users, items)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("compute", [torch.float32, BF16])
def test_items_tied_with_the_floor_are_kept(compute, selection, monkeypatch):
    """K groups whose maxima tie exactly at the K-th group maximum, every other item far below:
    the top-k is exactly those K items, so the floor (or the compiled selection's gate) must sit
    below the tie, not on it."""
    tiled_scan(monkeypatch)
    use_selection(monkeypatch, selection)
    monkeypatch.setattr(cpu, "FANOUT", 2)  # one tile of 640 rows: 160 groups of 4 (rows % 160)
    users = torch.ones(3, 8)
    items = torch.full((640, 8), -1.0)
    tied = torch.arange(8) * 19 + 1  # 8 distinct groups
    items[tied] = 0.5
    out = topk_scores(users, items, 8, backend="cpu", compute_dtype=compute)
    assert (torch.sort(out.ids, 1).values == tied).all()
    assert (out.scores == 4.0).all()


@pytest.mark.parametrize("threads", [1, 4])
def test_grid_of_user_and_item_blocks(threads, monkeypatch):
    """One block, or 2 user blocks x 2 item blocks (with exclusions in each), one thread each."""
    monkeypatch.setattr(cpu, "MIN_SHARD", 64)
    monkeypatch.setattr(cpu, "MIN_BLOCK_USERS", 2)
    users, items = tie_inputs("near_ties", 5, 700, 24)
    exclude = torch.randint(-1, 700, (5, 40), generator=torch.Generator().manual_seed(4))
    expected = {1: ([range(5)], [range(700)]),
                4: ([range(2), range(2, 5)], [range(350), range(350, 700)])}
    assert cpu._grid(5, 700, threads) == expected[threads]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = topk_scores(users, items, 30, exclude, id_offset=3, backend="cpu", compute_dtype=BF16)
    finally:
        torch.set_num_threads(previous)
    ref = topk_scores(users, items, 30, exclude, id_offset=3, backend="reference")
    assert same_id_sets(out, ref)
    assert_topk_matches(out, ref, users, items, id_offset=3)


def test_compute_dtype_default_and_checks(monkeypatch):
    tiled_scan(monkeypatch)  # the tiled scan
    items = torch.zeros(3, 4)
    expected = BF16 if cpu.native_bf16() else torch.float32
    assert cpu.compute_dtype_for(items, None) == expected
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    assert cpu.compute_dtype_for(items, None) == torch.float32
    assert cpu.compute_dtype_for(items, BF16) == BF16
    with pytest.raises(ValueError):
        topk_scores(items, items, 2, backend="cpu", compute_dtype=torch.float16)
    with pytest.raises(ValueError):
        topk_scores(items, items, 2, backend="reference", compute_dtype=BF16)


def test_fp32_compute_overrides_and_restores_global_precision(monkeypatch):
    tiled_scan(monkeypatch)  # the tiled scan
    """``compute_dtype=float32`` is exact even when oneDNN's fp32 ops are globally set to bf16,
    and the setting is restored afterwards."""
    users, items = tie_inputs("near_ties", 6, 1000, 24)
    ref = topk_scores(users, items, 50, backend="reference")
    mkldnn = torch.backends.mkldnn
    previous, mkldnn.fp32_precision = mkldnn.fp32_precision, "bf16"
    try:
        out = topk_scores(users, items, 50, backend="cpu", compute_dtype=torch.float32)
    finally:
        mkldnn.fp32_precision = previous
    assert mkldnn.matmul.fp32_precision == previous, "matmul precision not restored (to inherit)"
    assert same_id_sets(out, ref)
    assert_topk_matches(out, ref, users, items)


def test_small_calls_are_scored_densely_and_exactly(monkeypatch):
    """Small catalogues, or few users on a large one, are scored in blocks of users against the
    whole table; larger calls go to the tiled scan."""
    monkeypatch.setattr(cpu, "DENSE_MAX_ITEMS", 50)
    monkeypatch.setattr(cpu, "DENSE_MAX_SCORES", 13 * 97)
    assert cpu.scores_densely(1, 10**6) is False and cpu.scores_densely(14, 97) is False
    assert cpu.scores_densely(10**6, 50) and cpu.scores_densely(13, 97)
    calls = []
    monkeypatch.setattr(cpu, "DENSE_BLOCK_SCORES", 300)  # several user blocks
    original = cpu.dense_topk_rows
    monkeypatch.setattr(cpu, "dense_topk_rows", lambda *a: calls.append(1) or original(*a))
    g = torch.Generator().manual_seed(4)
    users, items = torch.randn(13, 5, generator=g), torch.randn(97, 5, generator=g)
    items[40] = items[41]  # an exact tie
    exclude = torch.randint(-1, 97, (13, 9), generator=g)
    out = run(users, items, 10, exclude, id_offset=3, backend="cpu")
    ref = run(users, items, 10, exclude, id_offset=3, backend="reference")
    assert calls and torch.allclose(out.scores, ref.scores, atol=1e-6)
    assert_topk_matches(out, ref, users, items, id_offset=3)
    more = run(users[:2], items[:4], 6, backend="cpu")  # k beyond the catalogue: -inf / -1 padding
    assert (more.ids[:, 4:] == -1).all() and torch.isinf(more.scores[:, 4:]).all()
