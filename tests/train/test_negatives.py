import pytest
import torch

from rodpo_dist.train.negatives import NOT_FROM_POOL, select_negatives


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


POOL_IDS = torch.tensor([[5, 9, 2, 7, -1, -1], [3, 4, 8, 6, 1, 10]])
POOL_SCORES = torch.tensor([[4.0, 3.0, 2.0, 1.0, float("-inf"), float("-inf")],
                            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
EXCLUDE = torch.tensor([[1, 3, -1], [2, 5, 7]])


def _draw(strategy, pool_ids=POOL_IDS, pool_scores=POOL_SCORES, exclude=EXCLUDE, m=1, sampling="uniform",
          temperature=1.0, window_start=0, seed=0):
    """(ids, pool ranks) of `select_negatives`."""
    return select_negatives(strategy, pool_ids=pool_ids, pool_scores=pool_scores, exclude=exclude, num_items=12,
                            m=m, sampling=sampling, temperature=temperature, window_start=window_start,
                            generator=_gen(seed))


def _select(strategy, **kwargs):
    return _draw(strategy, **kwargs)[0]


def test_hard_takes_the_deterministic_top_of_the_pool():
    ids, ranks = _draw("hard", m=2)
    assert ids.tolist() == [[5, 9], [3, 4]] and ranks.tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="fewer than align.num_negatives"):
        _select("hard", m=5)


def test_random_never_draws_excluded_items_and_covers_the_rest():
    neg, ranks = _draw("random", pool_ids=None, pool_scores=None, exclude=EXCLUDE.repeat(500, 1), m=4)
    assert (ranks == NOT_FROM_POOL).all()
    for row, excl in zip(neg.view(500, 2, 4).unbind(1), EXCLUDE):
        drawn = set(row.flatten().tolist())
        assert drawn == set(range(1, 13)) - set(excl.tolist())


def test_rodpo_draws_only_valid_pool_members_without_replacement():
    neg, ranks = _draw("rodpo", m=3)
    assert torch.equal(POOL_IDS.gather(1, ranks), neg)  # the ranks say where each came from
    for row, pool in zip(neg, POOL_IDS):
        assert len(set(row.tolist())) == 3
        assert set(row.tolist()) <= set(pool[pool >= 0].tolist())


def test_rodpo_uniform_is_uniform_over_the_pool():
    """Chi-square test: 4000 single draws over the 4 valid members of row 0."""
    ids = POOL_IDS[:1].repeat(4000, 1)
    neg = _select("rodpo", pool_ids=ids, pool_scores=POOL_SCORES[:1].repeat(4000, 1), exclude=EXCLUDE[:1], seed=1)
    counts = torch.stack([(neg == i).sum() for i in (5, 9, 2, 7)]).double()
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum().item()
    assert chi2 < 16.27  # p = 0.001 with 3 degrees of freedom


def test_rodpo_softmax_follows_the_tempered_scores():
    n = 20000
    neg = _select("rodpo", pool_ids=POOL_IDS[:1].repeat(n, 1), pool_scores=POOL_SCORES[:1].repeat(n, 1),
                  exclude=EXCLUDE[:1], sampling="softmax", temperature=2.0, seed=2)
    expected = torch.softmax(torch.tensor([4.0, 3.0, 2.0, 1.0]) / 2.0, dim=0)
    observed = torch.stack([(neg == i).double().mean() for i in (5, 9, 2, 7)])
    assert torch.allclose(observed, expected.double(), atol=0.015)


@pytest.mark.parametrize("sampling, window_start", [("uniform", 0), ("softmax", 0), ("window", 2)])
def test_sdpo_draws_exactly_as_rodpo_does(sampling, window_start):
    """S-DPO's negatives are RoDPO's (module docstring): the same draws from the same generator state, for
    every sampling rule; only the loss differs."""
    n = 300
    rows = dict(pool_ids=POOL_IDS.repeat(n, 1), pool_scores=POOL_SCORES.repeat(n, 1), exclude=EXCLUDE.repeat(n, 1),
                m=2, sampling=sampling, window_start=window_start, seed=4)
    (s_ids, s_ranks), (r_ids, r_ranks) = _draw("sdpo", **rows), _draw("rodpo", **rows)
    assert torch.equal(s_ids, r_ids) and torch.equal(s_ranks, r_ranks)
    assert torch.equal(POOL_IDS.repeat(n, 1).gather(1, s_ranks), s_ids)


def test_sdpo_is_uniform_over_the_pool_and_redrawn_each_call():
    """Not the deterministic top of the pool: single draws over row 0's 4 valid members are uniform
    (chi-square, p = 0.001), and another generator state gives other draws."""
    ids = POOL_IDS[:1].repeat(4000, 1)
    neg, ranks = _draw("sdpo", pool_ids=ids, pool_scores=POOL_SCORES[:1].repeat(4000, 1), exclude=EXCLUDE[:1], seed=1)
    counts = torch.stack([(neg == i).sum() for i in (5, 9, 2, 7)]).double()
    assert ((counts - 1000.0) ** 2 / 1000.0).sum().item() < 16.27
    assert set(ranks.flatten().tolist()) == {0, 1, 2, 3}
    a, b = _select("sdpo", m=2, seed=0), _select("sdpo", m=2, seed=0)
    assert torch.equal(a, b)  # a draw follows the generator
    draws = {tuple(_select("sdpo", m=1, seed=s)[:, 0].tolist()) for s in range(20)}
    assert len(draws) > 1


def test_short_pool_repeats_and_empty_pool_raises():
    neg = _select("rodpo", m=6)
    assert set(neg[0].tolist()) <= {5, 9, 2, 7}
    empty = (torch.full((1, 3), -1), torch.full((1, 3), float("-inf")))
    with pytest.raises(ValueError, match="no candidate left"):
        _draw("rodpo", pool_ids=empty[0], pool_scores=empty[1], exclude=EXCLUDE[:1])


def test_window_never_draws_the_top_ranks_and_is_uniform_over_the_rest():
    n = 6000
    ids, ranks = _draw("rodpo", pool_ids=POOL_IDS[1:].repeat(n, 1), pool_scores=POOL_SCORES[1:].repeat(n, 1),
                       exclude=EXCLUDE[1:], sampling="window", window_start=2, seed=3)
    assert ranks.min() == 2  # pool ranks 1 and 2 (0-based 0, 1) are skipped
    counts = torch.stack([(ids == i).sum() for i in (8, 6, 1, 10)]).double()
    chi2 = ((counts - n / 4) ** 2 / (n / 4)).sum().item()
    assert chi2 < 16.27  # p = 0.001 with 3 degrees of freedom


def test_window_on_a_row_shorter_than_the_window_falls_back_to_its_candidates():
    ids, _ = _draw("rodpo", sampling="window", window_start=4, m=1)
    assert ids[0].item() in {5, 9, 2, 7}  # row 0 has 4 candidates: none past rank 4
    assert ids[1].item() in {1, 10}
