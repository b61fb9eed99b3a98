"""Study records, paired bootstrap statistics and the generated report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rodpo_dist.study.records import load_records, ranks_path, save_records
from rodpo_dist.study.report import (false_negative_table, final_weights_table, held_out_table, plot_training,
                                     results_table, target_check, write_results)
from rodpo_dist.study.stats import comparisons, interval, paired_bootstrap, per_user


def test_per_user_metrics_from_ranks_by_hand():
    ranks = np.array([0, 1, 4, 5, -1])
    np.testing.assert_allclose(per_user(ranks, "hr@5"), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(per_user(ranks, "ndcg@5"), [1, 1 / np.log2(3), 1 / np.log2(6), 0, 0])
    np.testing.assert_allclose(per_user(ranks, "mrr@5"), [1, 0.5, 0.2, 0, 0])


def test_bootstrap_of_an_exact_doubling_is_a_point():
    base = [np.linspace(0.1, 1.0, 50), np.linspace(0.2, 0.5, 30)]
    change, lo, hi = paired_bootstrap([2 * b for b in base], base, samples=300)
    assert change == pytest.approx(100.0) and lo == pytest.approx(100.0) and hi == pytest.approx(100.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    """Baseline 1 for every user, method 1 +- d (half each): the change is 0 and, by the CLT, its
    95% interval is +-1.96 * 100 * d / sqrt(n)."""
    n, d = 4000, 0.5
    rng = np.random.default_rng(1)
    method = 1 + d * rng.permutation(np.repeat([1.0, -1.0], n // 2))
    change, lo, hi = paired_bootstrap([method], [np.ones(n)], samples=2000)
    half = 1.96 * 100 * d / np.sqrt(n)
    assert change == pytest.approx(0.0, abs=1e-9)
    assert lo == pytest.approx(-half, rel=0.1) and hi == pytest.approx(half, rel=0.1)


def _write(out, records, ranks):
    for r in records:
        path = out / ranks_path(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        users = np.arange(1, len(ranks[(r["method"], r["seed"])]) + 1, dtype=np.int32)
        rk = ranks[(r["method"], r["seed"])].astype(np.int16)
        np.savez_compressed(path, valid_users=users, valid_ranks=rk, test_users=users, test_ranks=rk)
    save_records(out, records)


def _rec(method, seed, ndcg5):
    metrics = {k: 0.1 for k in ("hr@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10")} | {"ndcg@5": ndcg5}
    return {"dataset": "Toy", "variant": "id+text", "method": method, "seed": seed, "valid": metrics, "test": metrics,
            "false_negatives": {}, "wall_time_s": 10.0, "command": "rodpo study --config x.yaml",
            "selection_metric": "ndcg@5", "hyperparameters": {"model": {}, "align": {}, "pool": {"k": 10}}}


@pytest.mark.parametrize("change, lo, hi, lower_is_better, significant", [
    (0.05, 0.01, 0.09, False, True), (0.05, -0.01, 0.11, False, False), (-0.05, -0.09, -0.01, False, False),
    (-0.05, -0.09, -0.01, True, True), (-0.05, -0.11, 0.01, True, False), (0.05, 0.01, 0.09, True, False),
])
def test_a_change_is_significant_only_when_its_whole_interval_is_on_the_better_side(change, lo, hi,
                                                                                  lower_is_better, significant):
    entry = interval(change, lo, hi, lower_is_better)
    assert entry["significant"] is significant
    assert (entry["rel_change"], entry["ci_low"], entry["ci_high"]) == (change, lo, hi)
    assert entry.get("lower_is_better", False) is lower_is_better


def test_records_merge_by_dataset_variant_method_seed(tmp_path):
    save_records(tmp_path, [_rec("backbone", 0, 0.1), _rec("rodpo", 0, 0.2)])
    save_records(tmp_path, [_rec("rodpo", 0, 0.3)])
    records = load_records(tmp_path)
    assert len(records) == 2 and next(r for r in records if r["method"] == "rodpo")["test"]["ndcg@5"] == 0.3


def test_comparisons_pair_users_across_seeds_and_the_report_marks_significance(tmp_path):
    n = 400
    rng = np.random.default_rng(0)
    base = {s: rng.integers(-1, 8, size=n) for s in (0, 1)}
    better = {s: np.where(b > 0, b - 1, b) for s, b in base.items()}  # every hit moves up one rank
    ranks = {("backbone", s): base[s] for s in base} | {("rodpo", s): better[s] for s in base} | {
        ("ce", s): base[s] for s in base} | {("hard", s): base[s] for s in base} | {("random", s): base[s] for s in base}
    records = [_rec(m, s, per_user(ranks[(m, s)], "ndcg@5").mean()) for m, s in ranks]
    _write(tmp_path, records, ranks)
    entries = comparisons(load_records(tmp_path), tmp_path)
    e = next(e for e in entries if (e["method"], e["baseline"], e["metric"]) == ("rodpo", "backbone", "ndcg@5"))
    pooled_m = np.concatenate([per_user(better[s], "ndcg@5") for s in (0, 1)])
    pooled_b = np.concatenate([per_user(base[s], "ndcg@5") for s in (0, 1)])
    assert e["rel_change"] == pytest.approx(100 * (pooled_m.mean() / pooled_b.mean() - 1), abs=1e-3)
    assert e["seeds"] == [0, 1] and e["significant"] and e["ci_low"] > 0
    same = next(e for e in entries if (e["method"], e["baseline"], e["metric"]) == ("ce", "backbone", "mrr@5"))
    assert same["rel_change"] == 0 and not same["significant"]
    assert not any(e["method"] == "backbone" for e in entries)

    write_results(tmp_path)
    saved = json.loads((tmp_path / "comparisons.json").read_text())
    assert saved == json.loads(json.dumps(entries))
    md = (tmp_path.with_suffix(".md")).read_text()
    assert f"**{e['rel_change']:+.2f}% [{e['ci_low']:+.2f}, {e['ci_high']:+.2f}]**" in md
    change = e["rel_change"]
    assert ("**met**" in target_check(entries, "Toy")) == (change >= 5.0)
    rows = results_table(load_records(tmp_path), entries, "Toy").splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == ["backbone", "ce", "random", "hard", "rodpo"]


def test_final_weights_table_shows_what_the_run_ended_with_against_the_backbone():
    backbone, rodpo = _rec("backbone", 0, 0.1), _rec("rodpo", 0, 0.1)  # the selection kept step 0
    rodpo |= {"valid_last": {"ndcg@5": 0.09}, "test_last": {"ndcg@5": 0.105}}
    row = final_weights_table([backbone, rodpo], "Toy").splitlines()[2]
    assert row == "| id+text | rodpo | 1 | 0.1000 (+0.00%), 0.0900 (-10.00%) | 0.1000 (+0.00%), 0.1050 (+5.00%) |"
    assert final_weights_table([backbone], "Toy") == ""


def test_real_data_gets_the_held_out_table_and_no_false_negative_rates():
    rodpo = _rec("rodpo", 0, 0.1)
    rodpo["false_negatives"] = {"pool_holds_held_out": 0.2, **{f"pool_holds_held_out/{b}": 0.05 for b in ("1", "2-5", "6-10")}}
    assert false_negative_table([_rec("backbone", 0, 0.1), rodpo], "Toy") == ""
    assert held_out_table([rodpo], "Toy").splitlines()[2] == "| id+text | rodpo | 0.200 | 0.050 | 0.050 | 0.050 |"
    rodpo["false_negatives"] |= {"false_negative_rate": 0.4}
    assert "| id+text | rodpo | 0.400 |" in false_negative_table([rodpo], "Toy")


def test_target_needs_five_percent_and_significant_leads_over_ce_hard_and_random():
    def entry(baseline, change, lo):
        return {"dataset": "Toy", "variant": "v", "method": "rodpo", "baseline": baseline, "metric": "ndcg@5",
                "rel_change": change, "ci_low": lo, "ci_high": change + 1, "significant": lo > 0}

    good = [entry("backbone", 6.0, 4.0), entry("ce", 2.0, 0.5), entry("hard", 3.0, 1.0), entry("random", 3.0, 1.0)]
    assert "**met**" in target_check(good, "Toy")
    assert "**not met**" in target_check([entry("backbone", 4.0, 2.0), *good[1:]], "Toy")  # +4% < +5%
    assert "**not met**" in target_check([good[0], entry("ce", 1.0, -0.2), *good[2:]], "Toy")  # lead over ce not significant
    assert "**not met**" in target_check(good[:3], "Toy")  # no random baseline: not shown


def test_training_plot_gives_each_method_one_colour_in_both_panels(tmp_path):
    runs = {}
    for method in ("ce", "random", "rodpo"):  # ce logs no reward accuracy
        rows = [{"kind": "valid", "step": s, "ndcg@5": 0.03} for s in (0, 10)]
        rows += [] if method == "ce" else [{"kind": "train", "step": s, "accuracy": 0.6} for s in (5, 10)]
        (tmp_path / method).mkdir()
        (tmp_path / method / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        runs[method] = tmp_path / method
    fig = plot_training(runs, tmp_path / "plot.png")
    valid, accuracy = ({line.get_label(): line.get_color() for line in ax.lines} for ax in fig.axes)
    assert list(valid) == ["ce", "random", "rodpo"] and list(accuracy) == ["random", "rodpo"]
    assert all(accuracy[m] == valid[m] for m in accuracy) and len(set(valid.values())) == 3
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_sweep_points_one_factor_at_a_time_or_the_full_grid():
    from rodpo_dist.study.runner import grid_points

    assert grid_points(["align.beta=0.1,1", "align.lr=1e-3"], "one-at-a-time") == [
        [], ["align.beta=0.1"], ["align.beta=1"], ["align.lr=1e-3"]]
    assert grid_points(["align.beta=0.1,1", "align.lr=1e-3,1e-2"], "grid") == [
        ["align.beta=0.1", "align.lr=1e-3"], ["align.beta=0.1", "align.lr=1e-2"],
        ["align.beta=1", "align.lr=1e-3"], ["align.beta=1", "align.lr=1e-2"]]
    with pytest.raises(ValueError, match="expected key.sub=v1,v2"):
        grid_points(["align.beta"], "grid")


def test_study_plan_names_folders_by_settings_and_builds_variant_backbones():
    from rodpo_dist.config import load_config
    from rodpo_dist.study.records import variant_name
    from rodpo_dist.study.runner import study_plan

    cfg = load_config("configs/demo.yaml", ["study.variants={moe: [moe.enabled=true]}", "study.variant_methods=[rodpo, hard]"])
    plan = study_plan(cfg, [0, 1], ["ce", "rodpo"])
    assert [r.method for r in plan] == ["backbone", "ce", "rodpo"] * 2 + ["backbone", "rodpo"] * 2
    folders = [r.folder for r in plan]
    assert len(set(folders)) == len(folders)  # no two runs share a folder
    assert all(f.parent.name in ("seed0", "seed1") and f.name.startswith(r.method + "-") for f, r in zip(folders, plan))
    moe_backbone = plan[6]
    assert moe_backbone.cfg.moe.enabled and plan[7].cfg.init == str(moe_backbone.folder / "best")
    again = study_plan(cfg, [0], ["rodpo"])
    assert again[1].folder == plan[2].folder  # the same settings find the same folder
    other = study_plan(load_config("configs/demo.yaml", ["align.beta=0.5"]), [0], ["rodpo"])
    assert other[0].folder == plan[0].folder and other[1].folder != plan[2].folder  # same backbone, new run
    moe_only = study_plan(cfg, [1], ["ce", "rodpo"], variants=["moe"])
    assert [(r.method, r.folder) for r in moe_only] == [(r.method, r.folder) for r in plan[8:]]
    with pytest.raises(ValueError, match=r"unknown \['dense'\]"):
        study_plan(cfg, [0], ["rodpo"], variants=["dense"])
    own = load_config("configs/demo.yaml", ['study.variants={moe: [moe.enabled=true, "study.variant_methods=[hard]"]}'])
    assert [r.method for r in study_plan(own, [0], ["ce", "hard"], variants=["moe"])] == ["backbone", "hard"]
    sampled = load_config("configs/demo.yaml", ["study.variants={neg8: [pretrain.loss=sampled, pretrain.num_sampled=8]}"])
    parts = "id+text+image+attr"
    assert [variant_name(r.cfg) for r in study_plan(sampled, [0], ["ce"])] == [parts] * 2 + [f"{parts}+sampled8"] * 2
    dpo_only = load_config("configs/demo.yaml", ["study.variants={plain: [align.ce_weight=0]}"])
    assert [variant_name(r.cfg) for r in study_plan(dpo_only, [0], ["ce"])] == [parts] * 2 + [f"{parts}+dpo_only"] * 2
    with pytest.raises(ValueError, match=re.escape(f"'base' and 'deeper' have the same backbone parts ('{parts}')")):
        study_plan(load_config("configs/demo.yaml", ["study.variants={deeper: [model.layers=3]}"]), [0], [])
    with pytest.raises(Exception, match="moe.top_k"):
        study_plan(load_config("configs/demo.yaml", ["study.variants={moe: [moe.enabled=true, moe.top_k=3]}"]), [0], [])


def test_a_study_checks_every_variants_data_before_any_training(tmp_path, monkeypatch):
    from rodpo_dist.config import load_config
    from rodpo_dist.data import DataError
    from rodpo_dist.study import runner

    tiny = ["data.synthetic.num_items=120", "data.synthetic.num_users=60", "data.synthetic.num_clusters=4",
            "data.synthetic.max_seq_len=10", f"data.prepared_dir={tmp_path / 'data'}", f"runtime.run_dir={tmp_path / 'runs'}", "runtime.progress=false"]
    monkeypatch.setattr(runner, "execute", lambda run: pytest.fail(f"{run.method} trained before every data check"))
    changed = load_config("configs/demo.yaml", [*tiny, 'study.variants={text: ["data.modalities=[text]", '
                                                       '"data.synthetic.num_items=90"]}'])
    with pytest.raises(DataError, match=r"data\.synthetic\.num_items: 90, prepared with 120"):
        runner.run_study(changed, [0], ["ce"], tmp_path / "out")
    own = load_config("configs/demo.yaml", [*tiny, 'study.variants={text: ["data.modalities=[text]", '
                                                   f'"data.synthetic.num_items=90", "data.prepared_dir={tmp_path / "d90"}"]}}'])
    with pytest.raises(pytest.fail.Exception, match="trained before every data check"):
        runner.run_study(own, [0], ["ce"], tmp_path / "out")
    assert (tmp_path / "d90" / "manifest.json").is_file()  # a variant's own folder is prepared up front
