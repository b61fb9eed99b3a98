"""The large-catalog paths: sparse item-table gradients with lazy AdamW, the sampled softmax's proposal,
the just-in-time pool, the validation user sample and the heavy-tailed synthetic popularity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rodpo_dist.config import load_config
from rodpo_dist.config.sections import SyntheticConfig
from rodpo_dist.data import Contexts
from rodpo_dist.data.prepare import prepare
from rodpo_dist.data.synthetic import SyntheticCatalog
from rodpo_dist.model import ItemEncoder
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.align import align
from rodpo_dist.train.engine import clip_grad_norm
from rodpo_dist.train.losses import sampled_softmax_loss, sampling_distribution
from rodpo_dist.train.optim import LazyAdamW
from rodpo_dist.train.pool import CandidatePool
from rodpo_dist.train.pretrain import pretrain
from rodpo_dist.train.run_log import read_metrics
from stand_ins import PrefixMean
from train.test_pool import _contexts
from train.test_recipes import StopAt

CPU = Runtime(torch.device("cpu"))


def _adam_pair(sparse: bool):
    torch.manual_seed(0)
    table = torch.randn(50, 4)
    return (torch.nn.Embedding(50, 4, sparse=sparse, _weight=table.clone()),
            torch.nn.Embedding(50, 4, _weight=table.clone()))


def test_lazy_adamw_is_adamw_on_dense_parameters():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = LazyAdamW(a.parameters(), lr=0.05, weight_decay=0.1), torch.optim.AdamW(b.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(4):
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lazy_adamw_updates_exactly_the_rows_a_sparse_gradient_holds():
    lazy, dense = _adam_pair(sparse=True)
    before = lazy.weight.detach().clone()
    opt_lazy = LazyAdamW(lazy.parameters(), lr=0.1, weight_decay=0.01)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=0.1, weight_decay=0.01)
    rows = torch.tensor([3, 7, 7, 20])  # a duplicate row accumulates
    for _ in range(3):  # the same rows every step: lazy Adam equals Adam on them
        for emb, opt in ((lazy, opt_lazy), (dense, opt_dense)):
            opt.zero_grad()
            emb(rows).sum(1).pow(2).sum().backward()
            opt.step()
    assert lazy.weight.grad is None or lazy.weight.grad.is_sparse
    touched = torch.tensor([3, 7, 20])
    torch.testing.assert_close(lazy.weight[touched], dense.weight[touched], rtol=1e-6, atol=1e-7)
    others = torch.ones(50, dtype=torch.bool)
    others[touched] = False
    assert torch.equal(lazy.weight[others], before[others])  # untouched rows: no update, no weight decay
    assert not opt_lazy.state[lazy.weight]["exp_avg"][others].any()


def test_clip_grad_norm_counts_sparse_rows_once_and_scales_them():
    sparse, dense = _adam_pair(sparse=True)
    rows = torch.tensor([1, 1, 4])
    for emb in (sparse, dense):
        emb(rows).sum().mul(3.0).backward()
    norm = clip_grad_norm([sparse.weight], 0.5)
    ref = torch.nn.utils.clip_grad_norm_([dense.weight], 0.5)
    torch.testing.assert_close(norm, ref)
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)


def test_sampled_loss_gradient_reaches_only_the_gathered_rows():
    n, d = 300, 8
    encoder = ItemEncoder(n, d, {}, sparse_table=True)
    hidden = torch.randn(4, 3, d, requires_grad=True)
    targets = torch.tensor([[5, 6, 0], [7, 0, 0], [9, 10, 11], [12, 13, 14]])
    q = sampling_distribution(torch.zeros(n + 1), "uniform", 1.0)
    gen = torch.Generator().manual_seed(1)
    loss = sampled_softmax_loss(hidden, targets, encoder, 16, q, generator=gen, num_items=n)
    loss.backward()
    grad = encoder.id_embedding.weight.grad
    assert grad.is_sparse
    sampled = torch.multinomial(q, 16, replacement=True, generator=torch.Generator().manual_seed(1))
    expected = set(targets[targets > 0].tolist()) | set(sampled.tolist())
    assert set(grad.coalesce().indices()[0].tolist()) == expected
    # the same loss as the dense table: sparse gradients change the storage, not the values
    dense = ItemEncoder(n, d, {})
    dense.load_state_dict(encoder.state_dict())
    ref = sampled_softmax_loss(hidden, targets, dense, 16, q, generator=torch.Generator().manual_seed(1), num_items=n)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad.to_dense(), dense.id_embedding.weight.grad)


def test_popularity_proposal_and_its_logq_correction():
    counts = torch.tensor([0, 3, 0, 15])  # id 0 is padding
    q = sampling_distribution(counts, "popularity", 0.5)
    raw = torch.tensor([0.0, 2.0, 1.0, 4.0])  # sqrt(count + 1)
    torch.testing.assert_close(q, raw / raw.sum())
    # every draw is item 3 (q = 4/7): the logit of a negative is corrected by -log(num_sampled * q)
    hidden, table = torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 0], [2.0, 0], [0, 0], [0.5, 0]])
    only3 = torch.tensor([0.0, 0.0, 0.0, 1.0])
    loss = sampled_softmax_loss(hidden, torch.tensor([1]), table, 2, only3)
    expected = -2.0 + np.log(np.exp(2.0) + 2 * np.exp(0.5 - np.log(2 * 1.0)))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="unknown sampling"):
        sampling_distribution(counts, "zipf", 1.0)


def test_just_in_time_refresh_equals_the_full_refresh_on_its_contexts():
    table = torch.randn(98, 8, generator=torch.Generator().manual_seed(0))
    ctx, model = _contexts("all"), PrefixMean(table)
    full, jit = CandidatePool(ctx, 11), CandidatePool(ctx, 11)
    full.refresh(model, table, step=0, batch_size=8, rt=CPU)
    upcoming = np.array([30, 2, 17, 5])
    jit.refresh(model, table, step=0, batch_size=3, rt=CPU, sequences=upcoming)
    rows = np.concatenate([np.arange(ctx.offsets[i], ctx.offsets[i + 1]) for i in upcoming])
    assert torch.equal(jit.ids[rows], full.ids[rows])
    # Same rows, same weights; the two refreshes score in batches of 3 and 8 contexts, and the matmul's
    # blocking may then differ in the last bit on some CPUs (4.8e-7 on an AMD EPYC): equal to fp32 rounding.
    torch.testing.assert_close(jit.scores[rows], full.scores[rows], rtol=1e-6, atol=1e-6)
    others = np.setdiff1d(np.arange(len(ctx)), rows)
    assert (jit.ids[others] == -1).all()  # nothing else was scored


def test_every_batch_draws_from_contexts_its_latest_just_in_time_refresh_scored(tmp_path, monkeypatch):
    """pool.scope=upcoming over 2 epochs of 8 steps with refreshes every 3 steps (and no
    pool.refresh_each_epoch: the new epoch's first batch must still be scored): the pool rows each
    step reads were all scored by the latest refresh, never left over from an earlier one."""
    tiny = [*TINY, f"data.prepared_dir={tmp_path}/data", f"runtime.run_dir={tmp_path}/runs", "pretrain.epochs=1"]
    base = load_config(None, tiny)
    prepare(base.data, base.data.prepared_dir, progress=False)
    pretrain(base)
    cfg = load_config(None, [*tiny, "stage=align", f"init={tmp_path}/runs/pretrain/best", "align.epochs=2",
                             "pool.refresh_steps=3", "pool.refresh_each_epoch=false"])
    events: list[tuple[str, set[int]]] = []
    refresh, rows = CandidatePool.refresh, CandidatePool.rows

    def recording_refresh(pool, *args, sequences=None, **kwargs):
        seqs = range(pool.contexts.num_sequences) if sequences is None else sequences
        events.append(("refresh", {r for i in seqs for r in range(pool.contexts.offsets[i], pool.contexts.offsets[i + 1])}))
        return refresh(pool, *args, sequences=sequences, **kwargs)

    def recording_rows(pool, context_ids):
        events.append(("rows", set(context_ids.tolist())))
        return rows(pool, context_ids)

    monkeypatch.setattr(CandidatePool, "refresh", recording_refresh)
    monkeypatch.setattr(CandidatePool, "rows", recording_rows)
    align(cfg)
    refreshes = [i for i, (kind, _) in enumerate(events) if kind == "refresh"]
    reads = [i for i, (kind, _) in enumerate(events) if kind == "rows"]
    assert refreshes[0] < reads[0] and len(refreshes) >= 6 and len(reads) >= 12
    for i in reads:
        latest = max(r for r in refreshes if r < i)
        assert events[i][1] <= events[latest][1], f"read {i} uses contexts the refresh at event {latest} did not score"
    assert max(len(events[r][1]) for r in refreshes) < sum(len(events[i][1]) for i in reads) / 2  # each a part


def test_validation_sample_is_fixed_and_a_subset():
    rng = np.random.default_rng(0)
    contexts = Contexts(np.arange(1, 101), [rng.integers(1, 50, 4) for _ in range(100)], np.arange(100))
    a, b = contexts.sample(10), contexts.sample(10)
    assert len(a) == 10 and np.array_equal(a.users, b.users) and np.all(np.diff(a.users) > 0)
    assert contexts.sample(0) is contexts and contexts.sample(500) is contexts


def test_zipf_popularity_is_heavy_tailed_and_deterministic():
    def top_share(cfg):
        items = SyntheticCatalog(cfg).interactions().items
        counts = np.sort(np.bincount(items, minlength=cfg.num_items + 1)[1:])[::-1]
        return counts[: cfg.num_items // 100].sum() / counts.sum(), items

    base = dict(num_items=5000, num_users=600, seed=2)
    normal, _ = top_share(SyntheticConfig(**base))
    zipf, items = top_share(SyntheticConfig(**base, popularity="zipf"))
    assert zipf > 1.5 * normal  # 0.13 vs 0.07 here; 0.43 vs 0.09 at 100k items
    assert np.array_equal(items, top_share(SyntheticConfig(**base, popularity="zipf"))[1])


TINY = ["data.synthetic.num_items=300", "data.synthetic.num_users=120", "data.synthetic.num_clusters=6",
        "data.synthetic.max_seq_len=10", "data.synthetic.popularity=zipf", "model.hidden=16", "model.heads=1",
        "model.max_len=8", "model.sparse_item_table=true", "pretrain.loss=sampled", "pretrain.num_sampled=32",
        "pretrain.sampling=popularity", "pretrain.batch_size=32", "pretrain.epochs=2", "pretrain.warmup_steps=2",
        "align.batch_size=16", "align.epochs=1", "align.strategy=rodpo", "align.ce_weight=1.0", "align.ce_loss=pretrain",
        "pool.k=10", "pool.refresh_steps=2", "pool.scope=upcoming", "eval.batch_size=64", "eval.valid_users=50",
        "runtime.progress=false", "runtime.log_every=1", "runtime.seed=5"]


def test_large_catalog_recipe_runs_and_the_upcoming_pool_resumes_exactly(tmp_path):
    def cfg(run, *extra):
        return load_config(None, [*TINY, f"data.prepared_dir={tmp_path}/data", f"runtime.run_dir={tmp_path}/{run}", *extra])

    base = cfg("base")
    prepare(base.data, base.data.prepared_dir, progress=False)
    backbone = pretrain(base)
    assert 0 <= backbone["test"]["ndcg@10"] <= 1
    init = f"{tmp_path}/base/pretrain/best"
    full = align(cfg("full", "stage=align", f"init={init}"))
    cut = cfg("cut", "stage=align", f"init={init}")
    assert align(cut, preemption=StopAt(3)) == {}  # step 3: one step after the step-2 refresh
    assert align(cut, resume="auto") == full
    pools = [r for r in read_metrics(tmp_path / "full" / "align-rodpo", "pool")]
    assert pools and all(r["contexts"] < 120 for r in pools)  # each refresh scored only the upcoming contexts

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "align-rodpo", "train")]

    assert losses("cut") == losses("full")


def test_ivf_pool_finds_most_of_the_exact_top_k():
    """On a clustered catalog (5,000 items, 16-d) the IVF pool (lists 4 sqrt(N) = 283, 16 probed) holds at
    least 90% of each context's exact top-K (the floor), and never an excluded item."""
    from rodpo_dist.train.item_index import ItemIndex

    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(40, 16, generator=gen)
    table = torch.cat([torch.zeros(1, 16), centers[torch.randint(0, 40, (5000,), generator=gen)]
                       + 0.3 * torch.randn(5000, 16, generator=gen)])
    ctx, model = _contexts("all", n_users=60, n_items=5000), PrefixMean(table)
    exact, approx = CandidatePool(ctx, 50), CandidatePool(ctx, 50, {"lists": 0, "probe": 16, "seed": 0})
    exact.refresh(model, table, step=0, batch_size=16, rt=CPU)
    approx.refresh(model, table, step=0, batch_size=16, rt=CPU)
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / 50 for a, e in zip(approx.ids, exact.ids)])
    assert recall >= 0.9, recall
    for s in range(ctx.num_sequences):
        rows = approx.ids[ctx.offsets[s]:ctx.offsets[s + 1]]
        assert not np.isin(rows.numpy(), ctx.sequences[s]).any()


def test_ivf_with_more_lists_than_items_uses_one_list_per_item():
    """pool.ivf_lists is validated before the catalog is known: an index asked for more lists than
    items makes one per item, and with every list probed its top-K is the exact one."""
    from rodpo_dist.train.item_index import ItemIndex

    table = torch.cat([torch.zeros(1, 8), torch.randn(30, 8, generator=torch.Generator().manual_seed(1))])
    index = ItemIndex(table, lists=1000, probe=1000)
    assert index.lists == 30
    states = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    top = index.topk(states, 4, exclude=torch.full((5, 1), -1))
    assert torch.equal(top.ids, (states @ table[1:].T).topk(4).indices + 1)


def test_ivf_without_faiss_is_refused_up_front(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(ValueError, match=r"pool.index: ivf needs the package faiss-cpu"):
        load_config(None, ["pool.index=ivf"])


def test_alignment_with_the_ivf_pool_resumes_exactly(tmp_path):
    def cfg(run, *extra):
        return load_config(None, [*TINY, f"data.prepared_dir={tmp_path}/data", f"runtime.run_dir={tmp_path}/{run}",
                                  "pool.index=ivf", "pool.ivf_lists=8", "pool.ivf_probe=2", *extra])

    base = cfg("base", "pretrain.epochs=1")
    prepare(base.data, base.data.prepared_dir, progress=False)
    pretrain(base)
    init = f"{tmp_path}/base/pretrain/best"
    full = align(cfg("full", "stage=align", f"init={init}"))
    cut = cfg("cut", "stage=align", f"init={init}")
    assert align(cut, preemption=StopAt(4)) == {}
    assert align(cut, resume="auto") == full


def test_draws_beyond_multinomials_limit_follow_q():
    """Catalogs over 2^24 items (torch.multinomial's limit) are sampled by inverse transform."""
    from rodpo_dist.train.losses import _draw

    q = torch.zeros(2**24 + 11)
    q[[3, 2**24 + 5]] = torch.tensor([0.25, 0.75])
    draws = _draw(q, 4000, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 2**24 + 5}
    assert abs((draws == 3).float().mean().item() - 0.25) < 0.03
