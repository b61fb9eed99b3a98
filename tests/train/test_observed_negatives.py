"""`align.rejected`: observed rejections as the rejected items, alone or mixed with the pool's negatives."""

from __future__ import annotations

import pytest
import torch

from rodpo_dist.train.negatives import NOT_FROM_POOL, draw_observed, mix_observed, observed_slots


@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_mixed_sampling_draws_the_configured_share(share):
    g = torch.Generator().manual_seed(0)
    available = torch.full((20_000,), 7)
    available[::4] = 0  # no observed rejection: the pool keeps every slot
    m = 4
    count = observed_slots(available, m, "mixed", share, g)
    assert (count[available == 0] == 0).all()
    drawn = count[available > 0].double() / m
    assert abs(drawn.mean().item() - share) < 0.005
    assert ((count[available > 0] == int(share * m)) | (count[available > 0] == int(share * m) + 1)).all()
    neg, ranks = torch.full((20_000, m), -5), torch.arange(m).expand(20_000, m).clone()
    observed = draw_observed(torch.arange(100, 107), torch.zeros(20_000, dtype=torch.long), available, m, g)
    mixed, mixed_ranks = mix_observed(neg, ranks, observed, count)
    from_observed = mixed >= 100
    assert torch.equal(from_observed.sum(1), count)  # exactly the counted slots, nothing else
    assert abs(from_observed[available > 0].double().mean().item() - share) < 0.005
    assert (mixed_ranks[from_observed] == NOT_FROM_POOL).all() and (mixed_ranks[~from_observed] >= 0).all()


def test_observed_takes_every_slot_and_pool_none():
    g = torch.Generator().manual_seed(1)
    available = torch.tensor([0, 1, 3, 9])
    assert observed_slots(available, 4, "observed", 0.5, g).tolist() == [0, 4, 4, 4]
    assert observed_slots(available, 4, "pool", 0.5, g).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="align.rejected"):
        observed_slots(available, 4, "sometimes", 0.5, g)


def test_observed_draws_come_from_the_rows_own_rejections_without_replacement():
    g = torch.Generator().manual_seed(2)
    items = torch.arange(1, 21)  # user A: rows 0..4 (items 1..5), user B: rows 5..19 (items 6..20)
    starts, available = torch.tensor([0, 5, 5, 0]), torch.tensor([5, 15, 2, 0])
    seen = [set() for _ in range(4)]
    for _ in range(200):
        out = draw_observed(items, starts, available, 4, g)
        assert out[0].unique().numel() == 4 and set(out[0].tolist()) <= {1, 2, 3, 4, 5}
        assert out[1].unique().numel() == 4 and set(out[1].tolist()) <= set(range(6, 21))
        assert set(out[2].tolist()) == {6, 7}  # fewer than m: each of the two, cycled
        assert out[3].tolist() == [0, 0, 0, 0]
        for r in range(3):
            seen[r] |= set(out[r].tolist())
    assert seen[0] == {1, 2, 3, 4, 5} and seen[1] == set(range(6, 21))  # uniform over them: every one drawn
