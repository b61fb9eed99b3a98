"""End-to-end recipe invariances on a tiny synthetic catalog: exact resume, accumulation = bigger batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rodpo_dist.config import load_config
from rodpo_dist.data.prepare import prepare
from rodpo_dist.train.pretrain import pretrain

TINY = ["data.synthetic.num_items=200", "data.synthetic.num_users=160", "data.synthetic.num_clusters=8",
        "data.synthetic.max_seq_len=12", "model.hidden=16", "model.heads=1", "model.max_len=10",
        "pretrain.batch_size=32", "pretrain.warmup_steps=2", "pretrain.item_chunk=64", "eval.batch_size=64",
        "runtime.progress=false", "runtime.log_every=1", "runtime.seed=3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cfg = load_config(None, [*TINY, f"data.prepared_dir={root}/data"])
    prepare(cfg.data, cfg.data.prepared_dir, progress=False)
    return root


def _cfg(dataset, run, *extra):
    return load_config(None, [*TINY, f"data.prepared_dir={dataset}/data", f"runtime.run_dir={dataset}/{run}", *extra])


def _weights(run_dir):
    return load_file(str(run_dir / "pretrain" / "best" / "model.safetensors"))


class StopAt:
    """A preemption that arrives just before optimizer step `step` completes."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def requested(self, rt) -> bool:
        self.calls += 1
        return self.calls == self.step


def test_resumed_run_equals_uninterrupted_run(dataset):
    full = pretrain(_cfg(dataset, "full", "pretrain.epochs=2"))
    cut = _cfg(dataset, "cut", "pretrain.epochs=2")
    assert pretrain(cut, preemption=StopAt(7)) == {}  # mid-epoch 2 (5 steps per epoch)
    resumed = pretrain(cut, resume="auto")
    assert resumed == full
    from rodpo_dist.train.run_log import read_metrics

    # it resumed from the checkpoint the preemption wrote, inside the epoch: not from the end of epoch 1
    assert_resumed_inside_an_epoch(dataset / "cut" / "pretrain", step=7, epoch=1, batch_in_epoch=2)

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(dataset / run / "pretrain", "train")]

    assert losses("cut") == losses("full")  # the log of the resumed run reads as one run
    a, b = _weights(dataset / "full"), _weights(dataset / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def assert_resumed_inside_an_epoch(run, step: int, epoch: int, batch_in_epoch: int) -> None:
    """The resumed run's `resumed_from` event names checkpoint `step`, saved `batch_in_epoch` (> 0) steps
    into `epoch`: the mid-epoch data position is what the resumed run continued from."""
    import json

    from rodpo_dist.train.run_log import read_metrics

    [event] = [r for r in read_metrics(run, "event") if "resumed_from" in r]
    assert event["resumed_from"] == str(run / f"ckpt-{step:08d}") and event["step"] == step
    saved = json.loads((run / f"ckpt-{step:08d}" / "state.json").read_text())
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (step, epoch, batch_in_epoch)
    assert batch_in_epoch > 0


def _grad_norms(run) -> list[float]:
    from rodpo_dist.train.run_log import read_metrics

    return [r["grad_norm"] for r in read_metrics(run / "pretrain", "train")]


def test_gradient_accumulation_equals_a_bigger_batch(dataset):
    big = _cfg(dataset, "big", "pretrain.epochs=1", "pretrain.batch_size=64", "model.dropout=0.0")
    acc = _cfg(dataset, "acc", "pretrain.epochs=1", "pretrain.batch_size=32", "pretrain.grad_accum=2",
               "model.dropout=0.0")
    pretrain(big)
    pretrain(acc)
    a, b = _weights(dataset / "big"), _weights(dataset / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-4)  # fp32 summation order, through Adam
    # clipping (at 1.0) and Adam hide a constant factor from the weights: the pre-clip norms of every step must match
    norms = _grad_norms(dataset / "big")
    assert len(norms) == 3 and min(norms) > 1.0  # 160 sequences / 64; every step was clipped
    torch.testing.assert_close(_grad_norms(dataset / "acc"), norms, rtol=1e-5, atol=0)


@pytest.mark.parametrize("accum, moe", [(1, False), (2, False), (2, True)])
def test_the_gradient_is_that_of_the_loss_normalised_by_the_epochs_mean_targets_per_step(dataset, accum, moe):
    """Step 1's logged pre-clip gradient norm equals the norm of d/dw [next-item CE summed over step 1's
    sequences / the epoch's mean targets per step + moe.aux_weight x the mean MoE aux loss of its
    micro-batches], computed here at the same initial weights from the epoch's batches (recipe
    docstring). Any constant factor on either term is seen (the weights hide it)."""
    from rodpo_dist.train.losses import next_item_loss
    from rodpo_dist.train.pretrain import Pretraining, target_count

    name = f"scale{accum}{'moe' if moe else ''}"
    extra = ["moe.enabled=true", "moe.aux_weight=1.0"] if moe else []  # torch backend, no noise, no dropping
    cfg = _cfg(dataset, name, "pretrain.epochs=1", f"pretrain.batch_size={64 // accum}",
               f"pretrain.grad_accum={accum}", "model.dropout=0.0", *extra)
    recipe = Pretraining(cfg)  # seeded as the run: the same initial weights
    steps = [[micro for micro in group] for group in recipe.epoch_groups(0)]
    targets = sum(target_count(micro) for group in steps for micro in group)
    assert len(steps) == 3 and len(steps[0]) == accum
    model = recipe.model.train()
    ce, aux = zip(*(next_item_loss(model, micro, cfg) for micro in steps[0]))
    assert (sum(float(a.detach()) for a in aux) > 0) == moe
    loss = sum(ce) / (targets / len(steps)) + cfg.moe.aux_weight * sum(aux) / accum
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
    pretrain(cfg)
    assert _grad_norms(dataset / name)[0] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("settings, reason", [
    # lr 1e-12 leaves the fp32 weights as they are: the second validation is no better, patience 1 stops
    (["pretrain.epochs=50", "pretrain.patience=1", "pretrain.lr=1e-12"],
     "Stopped early after epoch 2 of at most 50: 1 validations without a better ndcg@5."),
    (["pretrain.epochs=1", "pretrain.patience=1"], "Hit the cap of 1 epochs before 1 validations in a row without "
                                                   "a better ndcg@5 (the last 0 did not improve"),
])
def test_the_report_says_whether_pretraining_stopped_early_or_hit_the_cap(dataset, settings, reason):
    from rodpo_dist.train.run_log import read_metrics

    cfg = _cfg(dataset, f"stop-{settings[0]}", *settings)
    pretrain(cfg)
    final = read_metrics(dataset / f"stop-{settings[0]}" / "pretrain", "final")[-1]
    assert final["stop_reason"].startswith(reason)
    assert final["epochs"] == (2 if "early" in reason.lower() else 1)
    assert reason in (dataset / f"stop-{settings[0]}" / "pretrain" / "report.md").read_text()


def test_missing_dataset_is_named(tmp_path):
    cfg = load_config(None, [*TINY, f"data.prepared_dir={tmp_path}/nothing", f"runtime.run_dir={tmp_path}/run"])
    with pytest.raises(FileNotFoundError, match="no prepared dataset at .*nothing"):
        pretrain(cfg)


@pytest.fixture(scope="module")
def backbone(dataset):
    """A briefly pretrained backbone (one epoch): the reference policy of the alignment tests."""
    cfg = _cfg(dataset, "backbone", "pretrain.epochs=1")
    pretrain(cfg)
    return dataset / "backbone" / "pretrain" / "best"


ALIGN = ["stage=align", "align.epochs=2", "align.batch_size=32", "align.lr=0.002", "align.beta=1.0",
         "align.warmup_steps=1", "pool.k=20", "pool.refresh_steps=3", "pool.refresh_each_epoch=false"]
DPO_STATS = {"loss", "margin", "accuracy", "chosen_reward", "rejected_reward", "logp_chosen", "logp_chosen_ref"}


@pytest.mark.parametrize("strategy", ["ce", "random", "hard", "rodpo", "sdpo"])
def test_alignment_runs_logs_and_refreshes_on_schedule(dataset, backbone, strategy):
    from rodpo_dist.train.align import align
    from rodpo_dist.train.run_log import read_metrics

    m = 3
    cfg = _cfg(dataset, f"al-{strategy}", *ALIGN, f"init={backbone}", f"align.strategy={strategy}",
               f"align.num_negatives={m}", "align.ce_weight=0.5")
    result = align(cfg)
    run = dataset / f"al-{strategy}" / f"align-{strategy}"
    train = read_metrics(run, "train")
    assert len(train) == 10  # 160 sequences / 32 per step x 2 epochs
    assert ({"loss", "ce", "logp_chosen"} if strategy == "ce" else DPO_STATS | {"ce"}) <= set(train[0])
    pool_steps = [r["step"] for r in read_metrics(run, "pool")]
    assert pool_steps == ([0, 3, 6, 9] if strategy in ("hard", "rodpo", "sdpo") else [])
    final = read_metrics(run, "final")[-1]
    if strategy != "ce":  # every step's negatives are checked against the truth, not only logged steps
        assert final["negatives_checked"] == 160 * m * 2
        check_false_negative_rates(final, strategy, m, dataset / "data")
    assert set(result) == {"valid", "test", "valid_last", "test_last"}
    assert result["test"] == pytest.approx(evaluate_best(cfg, run / "best"), abs=1e-9)


def check_false_negative_rates(final: dict, strategy: str, m: int, data) -> None:
    """The logged false-negative rates against what each strategy's draws must give."""
    import numpy as np

    from rodpo_dist.data import GroundTruth, load_split

    rate = final["false_negative_rate"]
    bins = {k.split("/")[1]: v for k, v in final.items() if k.startswith("false_negative_rate/")}
    if strategy == "random":  # uniform over the items outside the user's sequence: the truth's share of liked ones
        truth, train = GroundTruth.load(data), load_split(data, "train")
        items = np.arange(1, 201)
        shares = [truth.is_relevant(np.array([u]), items[None])[0][~np.isin(items, s)].mean()
                  for u, s in zip(train.users, train.sequences) if len(s) >= 2]
        expected, n = float(np.mean(shares)), final["negatives_checked"]
        assert list(bins) == ["random"] and 0 < expected < 1
        assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / n)  # binomial, 4 standard errors
    elif strategy == "hard":  # the pool's top m = 3: one negative of rank 1 and two of ranks 2-3 per context
        assert list(bins) == ["1", "2-5"]
        assert rate == pytest.approx((bins["1"] + (m - 1) * bins["2-5"]) / m)
    else:  # drawn over the whole pool (k = 20), not only its top
        assert "6-20" in bins and min(bins.values()) <= rate <= max(bins.values())


def evaluate_best(cfg, best) -> dict[str, float]:
    """Test metrics of checkpoint `best`, liked-but-unobserved NDCG included, evaluated here."""
    from rodpo_dist.data.dataset import load_dataset
    from rodpo_dist.eval.truth import liked_ndcg
    from rodpo_dist.model import make_model
    from rodpo_dist.model.weights import load_weights
    from rodpo_dist.runtime import Runtime
    from rodpo_dist.train.selection import evaluate_splits

    rt, data = Runtime(torch.device("cpu")), load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    model = make_model(cfg, data, rt.device)
    load_weights(best, model)
    metrics = evaluate_splits(model, data, cfg, rt, ("test",))["test"]
    table = model.item_encoder.item_table(cfg.eval.item_chunk)
    liked = liked_ndcg(model, table, data.test, data.truth, ks=cfg.eval.ks, max_len=cfg.model.max_len,
                       batch_size=cfg.eval.batch_size, rt=rt)
    return metrics | {f"liked_ndcg@{k}": v for k, v in liked.items()}


@pytest.mark.parametrize("extra", [["align.strategy=rodpo"],
                                   ["align.strategy=sdpo", "align.positions=all", "align.num_negatives=2",
                                    "align.sampling=window", "align.window_start=2", "align.reference_update_every=2",
                                    "align.ce_weight=0.3"]])
def test_alignment_resume_equals_uninterrupted(dataset, backbone, extra):
    from rodpo_dist.train.align import align
    from rodpo_dist.train.run_log import read_metrics

    args = [*ALIGN, f"init={backbone}", *extra]
    name = extra[0].split("=")[1] + str(len(extra))
    full = align(_cfg(dataset, f"al-full-{name}", *args))
    cut = _cfg(dataset, f"al-cut-{name}", *args)
    assert align(cut, preemption=StopAt(7)) == {}
    assert align(cut, resume="auto") == full
    assert_resumed_inside_an_epoch(dataset / f"al-cut-{name}" / f"align-{extra[0].split('=')[1]}", step=7, epoch=1,
                                   batch_in_epoch=2)

    def rows(run, kind):
        return [{k: v for k, v in r.items() if k not in ("time", "seq_per_s", "wall_time_s", "peak_rss_mb",
                                                         "pool_refresh_s")}
                for r in read_metrics(dataset / run / f"align-{extra[0].split('=')[1]}", kind)]

    assert rows(f"al-cut-{name}", "train") == rows(f"al-full-{name}", "train")
    assert rows(f"al-cut-{name}", "final") [-1] == rows(f"al-full-{name}", "final")[-1]  # false negatives too


def test_the_step_zero_policy_competes_for_best(dataset, backbone):
    """An alignment that only hurts (a huge lr) keeps the backbone itself as `best`."""
    import json

    from rodpo_dist.train.align import align

    align(_cfg(dataset, "al-hurt", *ALIGN, f"init={backbone}", "align.strategy=random", "align.lr=5.0",
               "align.warmup_steps=0", "align.epochs=1"))
    best = dataset / "al-hurt" / "align-random" / "best"
    assert json.loads((best / "state.json").read_text())["best_step"] == 0
    a, b = load_file(str(best / "model.safetensors")), load_file(str(backbone / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_run_folder_belongs_to_one_config(dataset, backbone):
    from rodpo_dist.train.align import align
    from rodpo_dist.train.run_dir import RunDirError

    args = [*ALIGN, f"init={backbone}", "align.strategy=random", "align.epochs=1"]
    align(_cfg(dataset, "al-id", *args))
    with pytest.raises(RunDirError, match=r"align\.beta: 1\.0 -> 0\.5"):
        align(_cfg(dataset, "al-id", *args, "align.beta=0.5"), resume="auto")
    with pytest.raises(RunDirError, match="already holds a run"):
        align(_cfg(dataset, "al-id", *args))
    # runtime-only fields do not change the identity: a finished run resumes (and is re-evaluated)
    again = align(_cfg(dataset, "al-id", *args, "runtime.log_every=7", "eval.batch_size=16"), resume="auto")
    replaced = align(_cfg(dataset, "al-id", *args, "align.beta=0.5"), overwrite=True)
    assert set(again) == set(replaced) == {"valid", "test", "valid_last", "test_last"}


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout_makes_the_first_rewards_exactly_zero(dataset, backbone, disable):
    """Step 1's rewards are computed before any update: policy = reference, so without dropout every
    margin is 0 and the DPO loss is log 2; with dropout (0.5 here) they are noise around 0."""
    import math

    from rodpo_dist.train.align import align
    from rodpo_dist.train.run_log import read_metrics

    run = f"al-dropout-{disable}"
    align(_cfg(dataset, run, *ALIGN, f"init={backbone}", "align.strategy=random", "align.epochs=1",
               "model.dropout=0.5", f"align.disable_dropout={str(disable).lower()}"))
    first = read_metrics(dataset / run / "align-random", "train")[0]
    assert first["step"] == 1
    if disable:
        assert first["margin"] == pytest.approx(0.0, abs=1e-6)
        assert first["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
        assert first["logp_chosen"] == pytest.approx(first["logp_chosen_ref"], abs=1e-5)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert first["loss"] > math.log(2) + 1e-3  # -log sigmoid is convex: noise around 0 raises its mean


def _train_items(data_dir) -> dict[int, list[int]]:
    from rodpo_dist.data import load_split

    train = load_split(data_dir, "train")
    return {int(u): s.tolist() for u, s in zip(train.users, train.sequences)}


def _top_k_outside_training(scores: torch.Tensor, users: torch.Tensor, train_items: dict, k: int) -> torch.Tensor:
    """[C, k] brute-force top-k item ids of each context's catalog scores [C, N+1], padding and the
    user's training items excluded."""
    masked = scores.detach().clone()
    masked[:, 0] = float("-inf")
    for row, user in enumerate(users.tolist()):
        masked[row, train_items[user]] = float("-inf")
    return masked.topk(k, dim=1).indices


def _context_scores(model, b) -> torch.Tensor:
    """[C, N+1] scores over the catalog of each context's state, differentiable in the model."""
    table = model.item_encoder(torch.arange(model.item_encoder.num_items + 1))
    return model(b.seq).hidden[b.rows, b.cols] @ table.T


@pytest.mark.parametrize("strategy, extra", [("rodpo", ["align.label_smoothing=0.2"]),
                                             ("sdpo", ["align.grad_accum=2", "align.batch_size=16"])])
def test_the_alignment_gradient_is_that_of_the_written_loss(dataset, backbone, strategy, extra):
    """Step 1's logged pre-clip gradient norm equals the norm of d/dw of the loss written out here from
    the method: per context, with reward margins z_j = beta * ((s(i+) - s_ref(i+)) - (s(i-_j) - s_ref(i-_j))),
    DPO's mean over the negatives of -(1 - ls) log sigmoid(z_j) - ls log sigmoid(-z_j) (rodpo, label
    smoothing ls) or S-DPO's -log sigmoid(-logsumexp_j(-z_j)), plus ce_weight x the full-softmax
    next-item CE; summed over step 1's contexts (every position) and divided by the epoch's mean
    contexts per step. With num_negatives = pool.k the negatives are the whole pool, whatever the
    draw: the brute-force top-k of the catalog under the initial policy, the user's training items
    excluded. Any factor on either term, the wrong variant or a pool scored wrongly is seen."""
    import torch.nn.functional as F

    from rodpo_dist.model import make_model
    from rodpo_dist.model.weights import load_weights
    from rodpo_dist.train.align import Alignment, align
    from rodpo_dist.train.run_log import read_metrics

    beta, ls, ce_weight, k = 0.7, 0.2 if strategy == "rodpo" else 0.0, 0.3, 4
    run = f"al-grad-{strategy}"
    cfg = _cfg(dataset, run, *ALIGN, f"init={backbone}", f"align.strategy={strategy}", "align.positions=all",
               f"align.num_negatives={k}", f"pool.k={k}", f"align.beta={beta}", f"align.ce_weight={ce_weight}",
               "model.dropout=0.0", *extra)
    recipe = Alignment(cfg)  # the policy at its initial weights (the backbone), and the epoch's batches
    groups = list(recipe.epoch_groups(0))
    per_step = len(recipe.contexts) / len(groups)
    assert len(recipe.contexts) > recipe.contexts.num_sequences  # every position: contexts != sequences
    reference = make_model(cfg, recipe.data, torch.device("cpu"))
    load_weights(backbone, reference)
    reference.eval()
    train_items = _train_items(dataset / "data")
    policy = recipe.model.train()
    loss = 0.0
    for micro in groups[0]:
        b = recipe.contexts.batch(micro)
        s = _context_scores(policy, b)
        with torch.no_grad():
            s_ref = _context_scores(reference, b)
        neg = _top_k_outside_training(s, b.users, train_items, k)
        ids = torch.cat([b.targets[:, None], neg], dim=1)
        reward = beta * (s.gather(1, ids) - s_ref.gather(1, ids))
        z = reward[:, :1] - reward[:, 1:]
        if strategy == "sdpo":
            dpo = -F.logsigmoid(-torch.logsumexp(-z, dim=1))
        else:
            dpo = (-(1 - ls) * F.logsigmoid(z) - ls * F.logsigmoid(-z)).mean(1)
        ce = torch.logsumexp(s[:, 1:], dim=1) - s.gather(1, b.targets[:, None])[:, 0]
        loss = loss + (dpo + ce_weight * ce).sum()
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss / per_step, params, allow_unused=True)
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
    align(cfg)
    first = read_metrics(dataset / run / f"align-{strategy}", "train")[0]
    assert first["step"] == 1
    assert first["grad_norm"] == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("source", ["policy", "reference"])
def test_the_pool_is_the_top_k_under_its_configured_source(dataset, backbone, source):
    """After the policy has moved away from the reference, a refresh holds each context's brute-force
    top-k under `pool.source`'s model (the user's training items excluded), not the other's."""
    from rodpo_dist.train.align import Alignment

    k = 5
    recipe = Alignment(_cfg(dataset, f"al-source-{source}", *ALIGN, f"init={backbone}", "align.strategy=rodpo",
                            f"pool.k={k}", f"pool.source={source}", "model.dropout=0.0"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in recipe.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    recipe.pool.refresh(*recipe.pool_scorer(), step=0, batch_size=64, rt=recipe.rt)
    b = recipe.contexts.batch(torch.arange(recipe.contexts.num_sequences).numpy())
    train_items = _train_items(dataset / "data")
    expected = {}
    with torch.no_grad():
        for name, model in (("policy", recipe.model.eval()), ("reference", recipe.reference)):
            expected[name] = _top_k_outside_training(_context_scores(model, b), b.users, train_items, k).sort(1).values
    held = torch.as_tensor(recipe.pool.ids)[b.context_ids].long().sort(1).values
    other = "reference" if source == "policy" else "policy"
    assert (expected[source] != expected[other]).any(1).float().mean() > 0.5  # the two pools differ
    assert torch.equal(held, expected[source])


def test_the_trdpo_update_moves_the_reference_toward_the_policy(dataset, backbone):
    """ref <- alpha * policy + (1 - alpha) * ref for every weight, and the cached reference item table follows."""
    from rodpo_dist.train.align import Alignment

    alpha = 0.25
    recipe = Alignment(_cfg(dataset, "al-trdpo-unit", *ALIGN, f"init={backbone}", "align.strategy=rodpo",
                            "align.reference_update_every=1", f"align.reference_update_alpha={alpha}"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in recipe.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    before = {name: p.clone() for name, p in recipe.reference.named_parameters()}
    policy = dict(recipe.model.named_parameters())
    recipe._update_reference()
    for name, p in recipe.reference.named_parameters():
        torch.testing.assert_close(p, alpha * policy[name] + (1 - alpha) * before[name])
    torch.testing.assert_close(recipe.ref_table, recipe.reference.item_encoder.item_table(64))
    assert not torch.allclose(recipe.ref_table, recipe.model.item_encoder.item_table(64))


def test_alignment_draws_observed_rejections_from_the_training_ones_only(tmp_path, capsys):
    """With `align.rejected: observed`, each context's usable rejections are its own user's training
    rejections (never a held-out one, which the dislike metrics score: in the report and `evaluate`)."""
    from rodpo_dist.train.align import Alignment
    from rodpo_dist.train.selection import evaluate_checkpoint

    args = [*TINY, "data.synthetic.dislike_rate=0.3", f"data.prepared_dir={tmp_path}/data",
            f"runtime.run_dir={tmp_path}/runs"]
    cfg = load_config(None, [*args, "pretrain.epochs=1"])
    prepare(cfg.data, cfg.data.prepared_dir, progress=False)
    reported = pretrain(cfg)
    assert "| dislike_hr@10 |" in (tmp_path / "runs" / "pretrain" / "report.md").read_text()
    capsys.readouterr()
    evaluated = evaluate_checkpoint(cfg, tmp_path / "runs" / "pretrain" / "best", ["test"])
    assert evaluated["test"]["dislike_hr@10"] == reported["test"]["dislike_hr@10"]
    assert "| dislike_hr@10 |" in capsys.readouterr().out
    recipe = Alignment(load_config(None, [*args, *ALIGN, f"init={tmp_path}/runs/pretrain/best",
                                          "align.strategy=rodpo", "align.rejected=observed"]))
    assert recipe.run_dir.name == "align-rodpo-observed"  # beside, not in, a plain rodpo run's folder
    assert recipe.label == "rodpo-observed"  # its report's rows
    rej = recipe.data.rejections
    pairs = {h: set(zip(rej.users[rej.heldout == h].tolist(), rej.items[rej.heldout == h].tolist()))
             for h in (False, True)}
    assert len(pairs[False]) > 20 and len(pairs[True]) > 5
    usable = set()
    for c, user in enumerate(recipe.context_users.tolist()):
        start, count = int(recipe.ctx_rej_start[c]), int(recipe.ctx_rej_available[c])
        usable |= {(user, int(i)) for i in recipe.rej_items[start:start + count]}
    assert usable == pairs[False]


def test_a_non_finite_loss_stops_the_run_before_its_update(dataset, monkeypatch):
    """A NaN loss at step 3 ends the run with an error naming the step, before the update: every
    checkpoint written holds finite weights, and the run resumes from the last one."""
    import rodpo_dist.train.pretrain as pretraining

    real, calls = pretraining.next_item_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        ce, aux = real(*args, **kwargs)
        return (ce * float("nan") if len(calls) == 3 else ce), aux

    monkeypatch.setattr(pretraining, "next_item_loss", poisoned)
    cfg = _cfg(dataset, "nan", "pretrain.epochs=1", "runtime.checkpoint_every=1")
    with pytest.raises(FloatingPointError, match=r"not finite at step 3 \(epoch 1\) on 1 rank\(s\)"):
        pretrain(cfg)
    saved = sorted((dataset / "nan" / "pretrain").glob("ckpt-*/model.safetensors"))
    assert [p.parent.name for p in saved][-1] == "ckpt-00000002"
    assert all(torch.isfinite(w).all() for p in saved for w in load_file(str(p)).values())
    monkeypatch.setattr(pretraining, "next_item_loss", real)
    assert set(pretrain(cfg, resume="auto")) >= {"valid", "test"}


def test_an_init_checkpoint_of_another_model_shape_names_the_differing_settings(dataset, backbone):
    from rodpo_dist.model.weights import CheckpointError
    from rodpo_dist.train.align import Alignment

    with pytest.raises(CheckpointError, match=r"does not fit the model: .*Its model settings differ from this "
                                              r"config's: model\.hidden: 16 \(checkpoint\) vs 32 \(here\)\. .*"
                                              r"\(overrides: model\.hidden=16\)"):
        Alignment(_cfg(dataset, "al-shape", *ALIGN, f"init={backbone}", "model.hidden=32"))


def test_an_epoch_ending_on_a_validation_step_validates_once(dataset, backbone):
    from rodpo_dist.train.align import align
    from rodpo_dist.train.run_log import read_metrics

    align(_cfg(dataset, "al-evals", *ALIGN, f"init={backbone}", "align.strategy=random", "align.eval_every_steps=5"))
    assert [r["step"] for r in read_metrics(dataset / "al-evals" / "align-random", "valid")] == [0, 5, 10]


def test_a_validation_sample_leaves_the_test_split_whole(dataset, backbone, tmp_path):
    """`eval.valid_users` samples validation users only: the test metrics and ranks cover every user."""
    import numpy as np

    from rodpo_dist.data.dataset import load_dataset
    from rodpo_dist.model import make_model
    from rodpo_dist.model.weights import load_weights
    from rodpo_dist.runtime import Runtime
    from rodpo_dist.train.selection import evaluate_splits

    cfg = _cfg(dataset, "valid-sample")
    rt, data = Runtime(torch.device("cpu")), load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    model = make_model(cfg, data, rt.device)
    load_weights(backbone, model)
    sampled = evaluate_splits(model, data, cfg, rt, ranks_to=tmp_path / "ranks.npz", users=20)
    ranks = np.load(tmp_path / "ranks.npz")
    assert len(ranks["valid_users"]) == 20 < len(data.valid.users)
    assert sorted(ranks["test_users"].tolist()) == sorted(data.test.users.tolist())
    assert sampled["test"] == evaluate_splits(model, data, cfg, rt, ("test",))["test"]
