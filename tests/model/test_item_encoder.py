import pytest
import torch

from rodpo_dist.config import MoEConfig
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.model.item_encoder import ItemEncoder

N, H = 11, 8
SPECS = {"text": ModalitySpec("dense", 6, "float32"), "image": ModalitySpec("dense", 5, "float32"),
         "attr": ModalitySpec("bag", 3, "int64", vocab_size=7)}


def _features() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = {"text": torch.randn(N + 1, 6, generator=g), "image": torch.randn(N + 1, 5, generator=g),
             "attr": torch.randint(0, 7, (N + 1, 3), generator=g)}
    for f in feats.values():
        f[0] = 0
    return feats


def _encoder(names=("text", "image", "attr"), use_id=True, fusion_moe=None) -> ItemEncoder:
    torch.manual_seed(0)
    feats = _features()
    return ItemEncoder(N, H, {n: SPECS[n] for n in names}, {n: feats[n] for n in names}, use_id, fusion_moe).eval()


@pytest.mark.parametrize("names,use_id", [((), True), (("text",), True), (("attr",), False),
                                          (("text", "image", "attr"), False), (("text", "image", "attr"), True)])
def test_any_subset_of_modalities(names, use_id):
    enc = _encoder(names, use_id)
    ids = torch.tensor([[0, 3, 5], [0, 0, 11]])
    out = enc(ids)
    assert out.shape == (2, 3, H)
    assert torch.all(out[ids == 0] == 0)
    assert torch.all(out[ids != 0].norm(dim=-1) > 0)


def test_item_table_matches_forward_for_any_chunk():
    enc = _encoder()
    full = enc(torch.arange(N + 1))
    for chunk in (1, 4, N + 1, 100):
        torch.testing.assert_close(enc.item_table(chunk), full)
    starts = [start for start, _ in enc.iter_item_table(5)]
    assert starts == [0, 5, 10]
    assert not enc.item_table(4).requires_grad


def test_item_table_is_computed_in_eval_mode():
    enc = _encoder(fusion_moe=MoEConfig(enabled=True, num_experts=2, top_k=2, placement="fusion",
                                        noisy_gating=True))
    expected = enc(torch.arange(N + 1))  # _encoder returns it in eval mode: no gating noise
    enc.train()
    torch.testing.assert_close(enc.item_table(4), expected)
    assert enc.training


def test_bag_is_mean_of_attribute_embeddings_ignoring_pads():
    feats = {"attr": torch.tensor([[0, 0, 0], [1, 2, 0], [3, 0, 0]])}
    enc = ItemEncoder(2, H, {"attr": ModalitySpec("bag", 3, "int64", vocab_size=4)}, feats, use_id_embedding=False)
    weight = enc.projections["attr"].weight
    bags = enc.projections["attr"](feats["attr"][1:])
    torch.testing.assert_close(bags, torch.stack([(weight[1] + weight[2]) / 2, weight[3]]))


def test_features_are_not_in_the_checkpoint():
    enc = _encoder()
    assert not any(k.startswith("feature_") for k in enc.state_dict())
    fresh = _encoder()
    torch.nn.init.normal_(fresh.id_embedding.weight)
    fresh.load_state_dict(enc.state_dict())
    torch.testing.assert_close(fresh.item_table(4), enc.item_table(4))


def test_fusion_moe_skips_padding_and_returns_aux():
    enc = _encoder(fusion_moe=MoEConfig(enabled=True, num_experts=2, top_k=2, placement="fusion")).train()
    ids = torch.tensor([[0, 0, 1, 2], [0, 4, 5, 6]])
    out, aux = enc.encode_with_aux(ids)
    assert torch.all(out[ids == 0] == 0)
    assert enc.fusion_moe.last_expert_load.sum() == 5 * 2  # 5 real items, 2 routes each
    assert aux > 0
    out.sum().backward()
    assert enc.fusion_moe.gate.weight.grad is not None


def test_fp16_features_are_accepted():
    feats = {"text": torch.randn(N + 1, 6).half()}
    enc = ItemEncoder(N, H, {"text": SPECS["text"]}, feats)
    assert enc(torch.tensor([1, 2])).dtype == torch.float32


@pytest.mark.parametrize("specs,feats,match", [
    ({"text": SPECS["text"]}, {}, "do not match"),
    ({"text": SPECS["text"]}, {"text": torch.zeros(N, 6)}, r"float \[12, 6\]"),
    ({"text": SPECS["text"]}, {"text": torch.zeros(N + 1, 4)}, "float"),
    ({"text": SPECS["text"]}, {"text": torch.zeros(N + 1, 6, dtype=torch.long)}, "float"),
    ({"attr": SPECS["attr"]}, {"attr": torch.zeros(N + 1, 3)}, "integer"),
    ({"attr": SPECS["attr"]}, {"attr": torch.full((N + 1, 3), 7)}, r"\[0, vocab_size=7\)"),
    ({"attr": ModalitySpec("sparse", 3, "int64")}, {"attr": torch.zeros(N + 1, 3, dtype=torch.long)}, "unknown kind"),
    ({}, {}, "needs the ID embedding"),
])
def test_invalid_inputs_are_rejected(specs, feats, match):
    with pytest.raises(ValueError, match=match):
        ItemEncoder(N, H, specs, feats, use_id_embedding=bool(specs))
