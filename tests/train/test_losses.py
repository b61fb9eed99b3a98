import math

import pytest
import torch
import torch.nn.functional as F

from rodpo_dist.config import Config, ModelConfig
from rodpo_dist.model import build_model
from rodpo_dist.train.losses import chunked_cross_entropy, next_item_loss, sampled_softmax_loss

N, D = 13, 5


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(9, D, generator=g)
    table = torch.randn(N + 1, D, generator=g)
    targets = torch.randint(1, N + 1, (9,), generator=g)
    targets[[2, 5]] = 0  # padding positions
    return hidden, table, targets


def _grads(loss_fn, hidden, table):
    hidden, table = hidden.clone().requires_grad_(), table.clone().requires_grad_()
    loss = loss_fn(hidden, table)
    loss.backward()
    return loss, hidden.grad, table.grad


def _reference(hidden, table, targets):
    real = targets != 0
    return F.cross_entropy(hidden[real] @ table[1:].t(), targets[real] - 1)


@pytest.mark.parametrize("chunk", [1, 4, 5, N, N + 7])
def test_chunked_matches_full_cross_entropy(chunk):
    hidden, table, targets = _data()
    expected = _grads(lambda h, t: _reference(h, t, targets), hidden, table)
    got = _grads(lambda h, t: chunked_cross_entropy(h, targets, t, chunk), hidden, table)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert torch.all(got[2][0] == 0)  # padding row: not a class, no gradient


def test_chunked_with_callable_items_reaches_its_parameters():
    hidden, table, targets = _data(1)
    proj = torch.nn.Linear(D, D)
    chunked = chunked_cross_entropy(hidden, targets, lambda ids: proj(table[ids]), chunk=4, num_items=N)
    (g_chunked,) = torch.autograd.grad(chunked, proj.weight)
    full = _reference(hidden, proj(table), targets)
    (g_full,) = torch.autograd.grad(full, proj.weight)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunked, g_full)
    with pytest.raises(ValueError, match="num_items"):
        chunked_cross_entropy(hidden, targets, lambda ids: table[ids], chunk=4)


def test_chunked_accepts_batched_shapes_and_padding_class():
    hidden, table, targets = _data(2)
    batched = chunked_cross_entropy(hidden.view(3, 3, D), targets.view(3, 3), table, chunk=3)
    torch.testing.assert_close(batched, chunked_cross_entropy(hidden, targets, table, chunk=3))
    real = targets != 0
    with_pad = chunked_cross_entropy(hidden, targets, table, chunk=3, exclude_padding=False)
    torch.testing.assert_close(with_pad, F.cross_entropy(hidden[real] @ table.t(), targets[real]))


def test_all_padding_targets_give_zero_loss():
    hidden, table, _ = _data()
    hidden.requires_grad_()
    loss = chunked_cross_entropy(hidden, torch.zeros(9, dtype=torch.long), table, chunk=4)
    loss.backward()
    assert loss.item() == 0 and torch.all(hidden.grad == 0)


def test_sampled_softmax_by_hand():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    q = torch.tensor([0.0, 0.0, 1.0, 0.0])  # every sample is item 2, corrected by -log(2 * 1)
    # row 0 (target 1): -2 + log(e^2 + 2 * e^0 / 2) = log(1 + e^-2); row 1 (target 2): every sample is a hit -> 0
    loss = sampled_softmax_loss(hidden, torch.tensor([1, 2]), table, num_sampled=2, q=q)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)) / 2, abs=1e-6)


def test_sampled_softmax_uniform_q_is_plain_softmax_over_the_samples():
    hidden, table, targets = _data(3)
    q = torch.full((N + 1,), 1.0 / N)
    q[0] = 0
    loss = sampled_softmax_loss(hidden, targets, table, num_sampled=N, q=q, generator=torch.Generator().manual_seed(7))
    sampled = torch.multinomial(q, N, replacement=True, generator=torch.Generator().manual_seed(7))
    rows = []
    for h, t in zip(hidden, targets):  # log(N * 1/N) = 0: no correction
        if t == 0:
            continue
        negatives = table[sampled[sampled != t]] @ h
        rows.append(torch.logsumexp(torch.cat([(table[t] @ h)[None], negatives]), 0) - table[t] @ h)
    torch.testing.assert_close(loss, torch.stack(rows).mean())


def test_sampled_softmax_tends_to_full_softmax():
    hidden, table, targets = _data(4)
    q = torch.rand(N + 1, generator=torch.Generator().manual_seed(0)) + 0.2
    q[0] = 0
    q /= q.sum()
    loss = sampled_softmax_loss(hidden, targets, table, num_sampled=50_000, q=q,
                                generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(_reference(hidden, table, targets).item(), rel=0.02)


def test_sampled_softmax_rejects_a_bad_q():
    hidden, table, targets = _data()
    with pytest.raises(ValueError, match="q"):
        sampled_softmax_loss(hidden, targets, table, 4, torch.full((N + 1,), 1.0 / (N + 1)))


def test_chunked_keeps_no_logits_for_backward():
    """Autograd keeps the inputs (the table: N x d) and [T] statistics, never the T x N logits (recomputed)."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(8, 2, generator=g, requires_grad=True)
    table = torch.randn(2001, 2, generator=g, requires_grad=True)
    targets = torch.randint(1, 2001, (8,), generator=g)
    saved = {}  # distinct tensors autograd holds on to

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = chunked_cross_entropy(hidden, targets, table, chunk=16)
    loss.backward()
    assert sum(saved.values()) < 2001 * 2 + 8 * 2 * 4  # table, hidden and a few [T] vectors: no 8 x 2000 logits


def test_next_item_loss_sums_over_targets_with_history():
    cfg = Config(model=ModelConfig(hidden=8, layers=1, heads=1, max_len=5, dropout=0.0))
    torch.manual_seed(0)
    model = build_model(cfg, {}, {}, N).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6], [2, 3, 4, 5, 6]])  # item 3 of row 0 has no history
    hidden = model(seq[:, :-1]).hidden[targets != 0]
    table = model.item_encoder.item_table(4)
    expected = F.cross_entropy(hidden @ table[1:].t(), targets[targets != 0] - 1, reduction="sum")
    ce, aux = next_item_loss(model, seq, cfg)
    torch.testing.assert_close(ce, expected)
    assert aux == 0
    cfg.pretrain.loss, cfg.pretrain.num_sampled = "sampled", 20_000
    sampled, _ = next_item_loss(model, seq, cfg)
    assert sampled.item() == pytest.approx(expected.item(), rel=0.05)
