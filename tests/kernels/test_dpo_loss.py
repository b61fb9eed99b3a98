"""Fused DPO loss: the PyTorch path and the Triton kernel (interpreter on CPU) against the
autograd reference, hand-computed values and float64 gradcheck.

Tolerances: all backends compute in fp32 after loading rows, so loss/metrics/grad_h agree to
1e-5 (fp32) for every input dtype; item gradients are returned in the table's dtype, so bf16/fp16
tables are compared at that dtype's resolution (the reference also accumulates in it).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rodpo_kernels import DPOOutput, dpo_loss

# the Triton backend runs on CUDA when the interpreter is off (kernels/gpu_check.sh)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
BACKENDS = ["cpu", "triton"]
ITEM_GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def make_inputs(n_rows, n_items, dim, n_neg, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_rows, dim, generator=g).to(dtype).requires_grad_()
    h_ref = torch.randn(n_rows, dim, generator=g).to(dtype)
    items = (torch.randn(n_items, dim, generator=g) * 0.5).to(dtype).requires_grad_()
    ref_items = torch.randn(n_items, dim, generator=g).to(dtype)
    pos = torch.randint(0, n_items, (n_rows,), generator=g)
    neg = torch.randint(0, n_items, (n_rows, n_neg), generator=g)
    return h, h_ref, items, ref_items, pos, neg


def to(x, device):
    return tuple(to(t, device) for t in x) if isinstance(x, tuple) else (
        x.to(device) if isinstance(x, torch.Tensor) else x)


def run(backend, h, items, h_ref, pos, neg, beta, **kwargs):
    """Loss output plus the gradients of ``h`` and ``items`` (Triton on DEVICE), on CPU."""
    device = DEVICE if backend == "triton" else "cpu"
    h, items = (t.detach().to(device).requires_grad_() for t in (h, items))
    args = to((h_ref, pos, neg), device)
    out = dpo_loss(h, args[0], items, *args[1:], beta, backend=backend,
                   **{k: to(v, device) for k, v in kwargs.items()})
    out.loss.backward()
    return DPOOutput(*to(tuple(out), "cpu")), h.grad.cpu(), items.grad.cpu()


def assert_same(out, ref, item_tol):
    (o, gh, gi), (r, rgh, rgi) = out, ref
    for name in ("loss", "margins", "chosen_rewards", "rejected_rewards"):
        torch.testing.assert_close(getattr(o, name), getattr(r, name), atol=1e-5, rtol=1e-5,
                                   msg=name)
    clear = (r.margins.reshape(len(r.accuracy), -1).abs() > 1e-4).all(1)  # no sign ties
    torch.testing.assert_close(o.accuracy[clear], r.accuracy[clear])
    torch.testing.assert_close(gh, rgh, atol=1e-5, rtol=1e-5)
    scale = rgi.abs().max().float().item()  # + a floor for rows whose terms cancel to ~0
    torch.testing.assert_close(gi.float(), rgi.float(), atol=item_tol * scale + 5e-7, rtol=item_tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant,n_neg", [("pairwise", 1), ("mean", 5), ("sdpo", 5)])
@pytest.mark.parametrize("ref_mode", ["ref_items", "ref_scores", "shared_table"])
def test_matches_reference(backend, dtype, variant, n_neg, ref_mode):
    h, h_ref, items, ref_items, pos, neg = make_inputs(7, 23, 19, n_neg, dtype)
    neg[0, -1] = pos[0]  # a row both positive and negative
    kwargs = {"variant": variant, "label_smoothing": 0.1}
    if ref_mode == "ref_items":
        kwargs["ref_items"] = ref_items
    elif ref_mode == "ref_scores":
        g = torch.Generator().manual_seed(5)
        kwargs["ref_scores"] = (torch.randn(7, generator=g), torch.randn(7, n_neg, generator=g))
    ref = run("reference", h, items, h_ref, pos, neg, 0.6, **kwargs)
    out = run(backend, h, items, h_ref, pos, neg, 0.6, **kwargs)
    assert_same(out, ref, ITEM_GRAD_TOL[dtype])
    untouched = torch.ones(23, dtype=torch.bool)
    untouched[pos] = untouched[neg.flatten()] = False
    assert (out[2][untouched] == 0).all() and out[2].shape == items.shape


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("variant", ["mean", "sdpo"])
def test_gradcheck_float64(backend, variant):
    h, h_ref, items, ref_items, pos, neg = make_inputs(3, 6, 4, 3, torch.float64)
    neg[1] = torch.tensor([2, 2, 5])

    def loss(h, items):
        return dpo_loss(h, h_ref, items, pos, neg, 0.8, ref_items=ref_items, variant=variant,
                        label_smoothing=0.2, backend=backend).loss

    assert torch.autograd.gradcheck(loss, (h, items))


def logsigmoid(x):
    return -math.log1p(math.exp(-x))


def test_hand_computed_values():
    """d = 1: s(i) = h * item_i, so every quantity can be written down by hand."""
    h = torch.tensor([[2.0]])
    items = torch.tensor([[0.5], [1.5], [-1.0], [0.25]])
    ref_scores = (torch.tensor([0.2]), torch.tensor([[0.1, -0.3]]))
    pos, neg, beta, ls = torch.tensor([0]), torch.tensor([[1, 2]]), 0.5, 0.1
    # margins: (2*0.5 - 0.2) - (2*1.5 - 0.1) = -2.1 ; (2*0.5 - 0.2) - (2*-1 + 0.3) = 2.5
    z = [beta * -2.1, beta * 2.5]
    mean = sum(-(1 - ls) * logsigmoid(x) - ls * logsigmoid(-x) for x in z) / 2
    x = -math.log(math.exp(-z[0]) + math.exp(-z[1]))
    sdpo = -(1 - ls) * logsigmoid(x) - ls * logsigmoid(-x)
    for backend in ["reference", *BACKENDS]:
        for variant, expected in [("mean", mean), ("sdpo", sdpo)]:
            out, _, _ = run(backend, h, items, None, pos, neg, beta, ref_scores=ref_scores,
                            variant=variant, label_smoothing=ls)
            assert out.loss.item() == pytest.approx(expected, rel=1e-6), (backend, variant)
            assert out.margins[0].tolist() == pytest.approx(z, rel=1e-6)
            assert out.chosen_rewards.item() == pytest.approx(beta * 0.8)
            assert out.rejected_rewards[0].tolist() == pytest.approx([beta * 2.9, beta * -1.7])
            assert out.accuracy.item() == 0.5


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_duplicate_negatives_accumulate(backend):
    """pos = neg = row 1 twice: dL/ditems[1] = (dL/ds_pos + 2 dL/ds_neg) * h, by hand."""
    h = torch.tensor([[1.0, -2.0]])
    items = torch.tensor([[0.0, 0.0], [0.3, 0.1], [1.0, 1.0]])
    pos, neg, beta = torch.tensor([2]), torch.tensor([[1, 1]]), 2.0
    _, _, grad_items = run(backend, h, items, None, pos, neg, beta,
                           ref_scores=(torch.zeros(1), torch.zeros(1, 2)))
    margin = (1.0 - 2.0) - (0.3 - 0.2)  # s(2) - s(1)
    dz = -(1 / (1 + math.exp(beta * margin))) / 2  # d mean(-logsig(z_j)) / dz_j, per j
    coef_neg = -beta * dz  # dL/ds_neg per occurrence
    expected = torch.tensor([[0.0, 0.0], [2 * coef_neg, -4 * coef_neg],
                             [-2 * coef_neg, 4 * coef_neg]])
    torch.testing.assert_close(grad_items, expected)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("ls", [0.0, 0.25])
def test_sdpo_with_one_negative_is_pairwise(backend, ls):
    h, h_ref, items, _, pos, neg = make_inputs(6, 11, 5, 1)
    pair = run(backend, h, items, h_ref, pos, neg, 0.3, variant="pairwise", label_smoothing=ls)
    sdpo = run(backend, h, items, h_ref, pos, neg, 0.3, variant="sdpo", label_smoothing=ls)
    assert_same(sdpo, pair, 1e-5)


def test_label_smoothing_value():
    """Margin 1 (beta 2): the conservative mix of both directions, 1-D ``neg`` gives [B]."""
    h, items = torch.ones(1, 1), torch.tensor([[1.0], [0.0]])
    scores = (torch.zeros(1), torch.zeros(1, 1))
    for backend in ["reference", *BACKENDS]:
        out, _, _ = run(backend, h, items, None, torch.tensor([0]), torch.tensor([1]), 2.0,
                        ref_scores=scores, label_smoothing=0.3)
        expected = -0.7 * logsigmoid(2.0) - 0.3 * logsigmoid(-2.0)
        assert out.loss.item() == pytest.approx(expected, rel=1e-6)
        assert out.margins.shape == (1,)


@settings(max_examples=10, deadline=None)
@given(
    n_rows=st.integers(1, 9), n_items=st.integers(1, 30), dim=st.integers(1, 33),
    n_neg=st.integers(1, 9), variant=st.sampled_from(["mean", "sdpo"]),
    backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16),
)
def test_random_shapes(n_rows, n_items, dim, n_neg, variant, backend, seed):
    h, h_ref, items, ref_items, pos, neg = make_inputs(n_rows, n_items, dim, n_neg, seed=seed)
    kwargs = {"ref_items": ref_items, "variant": variant}
    ref = run("reference", h, items, h_ref, pos, neg, 1.3, **kwargs)
    assert_same(run(backend, h, items, h_ref, pos, neg, 1.3, **kwargs), ref, 1e-5)


def test_rejects_bad_arguments():
    h, h_ref, items, _, pos, neg = make_inputs(2, 5, 3, 2)
    with pytest.raises(ValueError):
        dpo_loss(h, h_ref, items, pos, neg, 1.0, variant="pairwise")
    with pytest.raises(ValueError):
        dpo_loss(h, h_ref, items, pos, neg, 1.0, variant="ipo")


def test_auto_never_picks_triton_on_cpu():
    from rodpo_kernels.dpo_loss import _resolve

    assert _resolve("auto", torch.zeros(1)) == "cpu"


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("variant,n_neg", [("pairwise", 1), ("sdpo", 4)])
def test_a_constant_per_context_leaves_the_loss_unchanged(backend, variant, n_neg):
    """DPO sees only differences of one context's scores: adding c_b to every policy score of
    context b (an extra coordinate: h_b gets c_b, every item 1) or to every reference score changes nothing."""
    h, h_ref, items, _, pos, neg = make_inputs(6, 17, 5, n_neg)
    g = torch.Generator().manual_seed(9)
    ref_scores = (torch.randn(6, generator=g), torch.randn(6, n_neg, generator=g))
    base = run(backend, h, items, None, pos, neg, 0.7, ref_scores=ref_scores, variant=variant)
    c = torch.randn(6, 1, generator=g) * 3
    h_shift = torch.cat([h.detach(), c], 1)
    items_shift = torch.cat([items.detach(), torch.ones(17, 1)], 1)
    policy = run(backend, h_shift, items_shift, None, pos, neg, 0.7, ref_scores=ref_scores, variant=variant)
    reference = run(backend, h, items, None, pos, neg, 0.7, variant=variant,
                    ref_scores=(ref_scores[0] + c[:, 0], ref_scores[1] + c))
    for shifted in (policy, reference):
        torch.testing.assert_close(shifted[0].loss, base[0].loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shifted[0].margins, base[0].margins, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy[1][:, :5], base[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_no_gradient_reaches_the_reference(backend):
    h, h_ref, items, ref_items, pos, neg = make_inputs(5, 11, 4, 2)
    h_ref.requires_grad_()
    ref_items.requires_grad_()
    dpo_loss(h, h_ref, items, pos, neg, 0.5, ref_items=ref_items, variant="mean", backend=backend).loss.backward()
    assert h_ref.grad is None and ref_items.grad is None and h.grad is not None and items.grad is not None


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_swapping_chosen_and_rejected_flips_the_margin(backend):
    h, h_ref, items, ref_items, pos, neg = make_inputs(6, 13, 4, 1)
    kwargs = {"ref_items": ref_items, "variant": "pairwise"}
    a = run(backend, h, items, h_ref, pos, neg, 0.9, **kwargs)[0]
    b = run(backend, h, items, h_ref, neg[:, 0], pos[:, None], 0.9, **kwargs)[0]
    torch.testing.assert_close(b.margins, -a.margins, atol=1e-6, rtol=0)
    # -log sig(x) - (-log sig(-x)) = -x: the two losses differ by the mean margin
    torch.testing.assert_close(a.loss - b.loss, -a.margins.mean(), atol=1e-5, rtol=0)
