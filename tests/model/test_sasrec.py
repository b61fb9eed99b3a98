import pytest
import torch

from rodpo_dist.config import Config, ModelConfig, MoEConfig
from rodpo_dist.model import ItemEncoder, ModalitySpec, SASRec, SparseMoE, build_model, optimizer_param_groups
from rodpo_dist.train.losses import chunked_cross_entropy

N = 20
MODEL = ModelConfig(hidden=16, layers=2, heads=2, max_len=8, dropout=0.0)


def _model(moe: MoEConfig = MoEConfig(), modalities=("text",)) -> SASRec:
    torch.manual_seed(0)
    feats = {"text": torch.randn(N + 1, 6)}
    feats["text"][0] = 0
    specs = {"text": ModalitySpec("dense", 6, "float32")}
    encoder = ItemEncoder(N, MODEL.hidden, {m: specs[m] for m in modalities}, {m: feats[m] for m in modalities})
    return SASRec(encoder, MODEL, moe).eval()


SEQ = torch.tensor([[0, 0, 0, 3, 7, 1], [5, 6, 7, 8, 9, 10]])


def test_shapes_padding_and_user_state():
    model = _model()
    out = model(SEQ)
    assert out.hidden.shape == (2, 6, MODEL.hidden)
    assert torch.all(out.hidden[SEQ == 0] == 0)
    assert out.aux_loss == 0
    torch.testing.assert_close(model.user_state(SEQ), out.hidden[:, -1])


def test_causal():
    model = _model()
    changed = SEQ.clone()
    changed[:, -1] = 2
    torch.testing.assert_close(model(changed).hidden[:, :-1], model(SEQ).hidden[:, :-1])


def test_left_padding_does_not_change_the_user_state():
    model = _model()
    padded = torch.cat([torch.zeros(2, 2, dtype=torch.long), SEQ], dim=1)
    torch.testing.assert_close(model.user_state(padded), model.user_state(SEQ))


def test_all_padding_row_gives_zero_state():
    model = _model()
    assert torch.all(model.user_state(torch.zeros(1, 4, dtype=torch.long)) == 0)


def test_position_and_id_embeddings_start_at_the_same_scale():
    """A default N(0, 1) positional table (norm ~sqrt(hidden)) drowned the ID vectors (norm ~1)."""
    torch.manual_seed(0)
    model = SASRec(ItemEncoder(1000, 64, {}), ModelConfig(hidden=64, layers=1, heads=1, max_len=50), MoEConfig())
    ids = model.item_encoder.id_embedding.weight[1:].norm(dim=1).mean()
    positions = model.position.weight[1:].norm(dim=1).mean()
    assert 0.8 < positions / ids < 1.25
    assert torch.all(model.position.weight[0] == 0)


def test_too_long_sequence_is_rejected():
    with pytest.raises(ValueError, match="max_len"):
        _model()(torch.ones(1, MODEL.max_len + 1, dtype=torch.long))


@pytest.mark.parametrize("placement", ["ffn", "fusion", "both"])
def test_moe_placements_report_aux_loss(placement):
    cfg = Config(model=MODEL, moe=MoEConfig(enabled=True, num_experts=2, placement=placement))
    model = build_model(cfg, {}, {}, N)
    out = model(SEQ)
    assert out.aux_loss > 0
    out.hidden.sum().add(out.aux_loss).backward()


def test_build_model_from_config():
    cfg = Config(model=MODEL, moe=MoEConfig(enabled=True, num_experts=2, placement="both"))
    feats = {"attr": torch.randint(0, 5, (N + 1, 2))}
    model = build_model(cfg, {"attr": ModalitySpec("bag", 2, "int64", vocab_size=5)}, feats, N)
    assert model.item_encoder.fusion_moe is not None
    assert all(isinstance(b.ffn, SparseMoE) for b in model.blocks)
    assert model(SEQ).hidden.shape == (2, 6, MODEL.hidden)


@pytest.mark.parametrize("moe", [MoEConfig(), MoEConfig(enabled=True, num_experts=2, placement="both")])
def test_learns_next_item_on_cycles(moe):
    """Sequences i, i+1, ... (mod N): full-softmax CE falls and the next item is predicted."""
    model = _model(moe).train()
    opt = torch.optim.AdamW(optimizer_param_groups(model, 0.0), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        seq = (torch.randint(0, N, (16, 1), generator=g) + torch.arange(MODEL.max_len + 1)) % N + 1
        out = model(seq[:, :-1])
        loss = chunked_cross_entropy(out.hidden, seq[:, 1:], model.item_encoder, chunk=7, num_items=N)
        opt.zero_grad()
        (loss + 0.01 * out.aux_loss).backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
    model.eval()
    seq = torch.arange(1, MODEL.max_len + 1)[None] + torch.arange(N)[:, None]
    seq = (seq - 1) % N + 1
    scores = model.user_state(seq) @ model.item_encoder.item_table(8)[1:].t()
    accuracy = (scores.argmax(1) + 1 == seq[:, -1] % N + 1).float().mean()
    assert accuracy >= 0.9


def test_length_groups_give_the_states_and_gradients_of_one_padded_pass():
    torch.manual_seed(0)
    grouped = SASRec(ItemEncoder(30, 16, {}), ModelConfig(hidden=16, layers=2, heads=2, max_len=12, dropout=0.0,
                                                         length_groups=3), MoEConfig())
    plain = SASRec(ItemEncoder(30, 16, {}), ModelConfig(hidden=16, layers=2, heads=2, max_len=12, dropout=0.0,
                                                       length_groups=1), MoEConfig())
    plain.load_state_dict(grouped.state_dict())
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(1, 31, (11, 12), generator=gen)
    for row, n in enumerate([0, 1, 2, 12, 3, 5, 1, 7, 12, 4, 2]):  # left-padded rows of mixed lengths
        seq[row, : 12 - n] = 0
    a, b = grouped(seq).hidden, plain(seq).hidden
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(grouped.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
