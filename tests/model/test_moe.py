import pytest
import torch
from torch import nn

from rodpo_dist.config import MoEConfig
from rodpo_dist.model.moe import SparseMoE, expert_capacity, optimizer_param_groups, top_k_gating

# 4 tokens, 2 experts. gates = softmax(logits) row-wise, i.e. sigmoid(l0 - l1) for expert 0:
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
GATE0 = torch.tensor([0.8807971, 0.2689414, 0.9525741, 0.7310586])
# first choices [0, 1, 0, 0] -> ce = [3/4, 1/4]; me = mean gates = [0.7083428, 0.2916572]
# aux = E * sum(me * ce) = 2 * (0.7083428 * 0.75 + 0.2916572 * 0.25)
AUX = 1.2083428


def test_top1_gating_by_hand():
    r = top_k_gating(LOGITS, k=1)
    assert r.experts.squeeze(1).tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(r.weights.squeeze(1), torch.tensor([0.8807971, 0.7310586, 0.9525741, 0.7310586]))
    torch.testing.assert_close(r.aux_loss, torch.tensor(AUX))
    assert r.expert_counts.tolist() == [3, 1]


def test_top1_capacity_drops_latest_tokens():
    capacity = expert_capacity(4, 2, k=1, capacity_factor=1.0, min_capacity=0)  # ceil(4 / 2 * 1.0)
    assert capacity == 2
    r = top_k_gating(LOGITS, k=1, capacity=capacity)
    assert r.kept.squeeze(1).tolist() == [True, True, True, False]  # expert 0 queue: tokens 0, 2 | 3 dropped
    torch.testing.assert_close(r.weights.squeeze(1), torch.tensor([0.8807971, 0.7310586, 0.9525741, 0.0]))
    assert r.expert_counts.tolist() == [3, 1]  # counted before dropping
    torch.testing.assert_close(r.aux_loss, torch.tensor(AUX))


def test_top1_noise_changes_choice_not_weight():
    noise = torch.tensor([[0.0, 5.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    r = top_k_gating(LOGITS, k=1, noise=noise)
    assert r.experts.squeeze(1).tolist() == [1, 1, 0, 0]
    assert r.weights[0, 0].item() == pytest.approx(1 - 0.8807971, abs=1e-6)


def test_top2_gating_by_hand():
    r = top_k_gating(LOGITS, k=2)
    assert r.experts.tolist() == [[0, 1], [1, 0], [0, 1], [0, 1]]
    # two experts: the pair of gates already sums to 1
    torch.testing.assert_close(r.weights[:, 0], torch.tensor([0.8807971, 0.7310586, 0.9525741, 0.7310586]))
    torch.testing.assert_close(r.weights.sum(1), torch.ones(4))
    torch.testing.assert_close(r.aux_loss, torch.tensor(AUX))  # first choices only
    assert r.expert_counts.tolist() == [4, 4]


def test_top2_capacity_queues_first_choices_before_second():
    capacity = expert_capacity(4, 2, k=2, capacity_factor=0.5, min_capacity=0)  # ceil(4 / 2 * 0.5 * 2)
    assert capacity == 2
    assert expert_capacity(4, 2, k=2, capacity_factor=0.5, min_capacity=3) == 3
    r = top_k_gating(LOGITS, k=2, capacity=capacity)
    # expert 0 queue: firsts 0, 2, 3 then second 1; expert 1 queue: first 1 then seconds 0, 2, 3
    assert r.kept.tolist() == [[True, True], [True, False], [True, False], [False, False]]
    expected = torch.tensor([[0.8807971, 0.1192029], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # renormalised kept gates
    torch.testing.assert_close(r.weights, expected)


def _cfg(**kw) -> MoEConfig:
    return MoEConfig(**{"enabled": True, "num_experts": 4, "min_capacity": 0, **kw})


def _ds_to_torch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("moe.deepspeed_moe.gate.wg.", "gate.").replace("moe.deepspeed_moe.experts.deepspeed_experts.",
                                                                       "experts."): v for k, v in state.items()}


def _pair(**kw) -> tuple[SparseMoE, SparseMoE]:
    torch.manual_seed(0)
    ds = SparseMoE(8, 16, _cfg(backend="deepspeed", **kw))
    pt = SparseMoE(8, 16, _cfg(backend="torch", **kw))
    pt.load_state_dict(_ds_to_torch(ds.state_dict()))
    return ds, pt


def _run(moe: SparseMoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    y, aux = moe(x)
    (y.square().sum() + aux).backward()
    return y, aux, x.grad, _ds_to_torch({n: p.grad for n, p in moe.named_parameters()})


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("drop_tokens,capacity_factor", [(False, 1.0), (True, 4.0)])
def test_backends_match_without_dropping(k, drop_tokens, capacity_factor):
    ds, pt = _pair(top_k=k, drop_tokens=drop_tokens, capacity_factor=capacity_factor)
    x = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(1))
    y_ds, aux_ds, gx_ds, g_ds = _run(ds, x)
    y_pt, aux_pt, gx_pt, g_pt = _run(pt, x)
    torch.testing.assert_close(y_pt, y_ds)
    torch.testing.assert_close(aux_pt, aux_ds)
    torch.testing.assert_close(gx_pt, gx_ds)
    assert g_pt.keys() == g_ds.keys()
    for name in g_pt:
        torch.testing.assert_close(g_pt[name], g_ds[name], msg=name)
    assert torch.equal(pt.last_expert_load, ds.last_expert_load)
    assert pt.last_expert_load.sum() == 30 * k


def test_backends_match_when_top2_drops_tokens():
    ds, pt = _pair(top_k=2, drop_tokens=True, capacity_factor=0.5)
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    y_ds, aux_ds, gx_ds, _ = _run(ds, x)
    y_pt, aux_pt, gx_pt, _ = _run(pt, x)
    assert (y_pt.abs().sum(1) == 0).any()  # some tokens lost both routes
    torch.testing.assert_close(y_pt, y_ds)
    torch.testing.assert_close(gx_pt, gx_ds)


def test_top1_dropping_keeps_as_many_tokens_as_deepspeed():
    ds, pt = _pair(top_k=1, drop_tokens=True, capacity_factor=0.5)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    y_ds, _ = ds(x)
    y_pt, _ = pt(x)
    capacity = expert_capacity(40, 4, 1, 0.5, 0)
    logits = x @ pt.gate.weight.t()
    kept = torch.zeros(40, dtype=torch.bool)
    for e in range(4):  # torch backend: the first `capacity` tokens routed to each expert
        kept[torch.nonzero(logits.argmax(1) == e).squeeze(1)[:capacity]] = True
    assert torch.equal(y_pt.abs().sum(1) > 0, kept)
    assert (y_ds.abs().sum(1) > 0).sum() == kept.sum()  # DeepSpeed keeps the same number (ties pick which)


@pytest.mark.parametrize("k", [1, 2])
def test_noisy_gating_same_draws_and_training_only(k):
    ds, pt = _pair(top_k=k, noisy_gating=True)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    outs = []
    for moe in (ds, pt):
        torch.manual_seed(5)
        outs.append(moe(x)[0])
    torch.testing.assert_close(outs[1], outs[0])
    clean = SparseMoE(8, 16, _cfg(top_k=k))
    clean.load_state_dict(pt.state_dict())
    assert not torch.allclose(outs[1], clean(x)[0])  # noise changed some choices in training
    for moe in (ds, pt):
        moe.eval()
        torch.testing.assert_close(moe(x)[0], clean(x)[0])  # no noise in eval


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_no_tokens_give_zero_aux_loss(backend):
    y, aux = SparseMoE(8, 16, _cfg(backend=backend))(torch.zeros(0, 8))
    assert y.shape == (0, 8) and aux == 0


def test_experts_are_initialised_independently():
    ds, _ = _pair()
    experts = ds.moe.deepspeed_moe.experts.deepspeed_experts
    assert not torch.equal(experts[0].w1.weight, experts[1].w1.weight)


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_optimizer_param_groups(backend):
    model = nn.Sequential(nn.Linear(8, 8), SparseMoE(8, 16, _cfg(backend=backend)))
    groups = optimizer_param_groups(model, weight_decay=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    for g in groups:
        assert g["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    moe_groups = [g for g in groups if g.get("moe")]
    expert_params = [p for n, p in model.named_parameters() if "experts" in n]
    if backend == "deepspeed":
        assert sorted(id(p) for g in moe_groups for p in g["params"]) == sorted(id(p) for p in expert_params)
    else:
        assert not moe_groups
    torch.optim.AdamW(groups, lr=1e-3)


def test_training_and_evaluation_drop_at_their_own_capacity_factor():
    """With token dropping, training routes at most `capacity_factor` x (tokens / experts) tokens per
    expert, evaluation at most `eval_capacity_factor` x that: here 4 of 64 tokens per expert in
    training (a dropped token's output is 0), and every token in evaluation."""
    torch.manual_seed(0)
    moe = SparseMoE(8, 16, _cfg(top_k=1, drop_tokens=True, capacity_factor=0.25, eval_capacity_factor=4.0,
                                min_capacity=1))
    tokens = torch.randn(64, 8)
    assert expert_capacity(64, 4, 1, 0.25, 1) == 4
    with torch.no_grad():
        routed = {mode: int((moe.train(mode)(tokens)[0] != 0).any(1).sum()) for mode in (True, False)}
    assert routed == {True: 16, False: 64}  # every expert full in training (4 x 4), nothing dropped in evaluation
