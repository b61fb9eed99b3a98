"""`docs/results.md`-style reports, generated from the records and the comparisons only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rodpo_dist.study.records import load_records
from rodpo_dist.study.stats import comparisons
from rodpo_dist.train.false_negatives import bin_names
from rodpo_dist.train.run_log import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLE_METRICS = ["hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10"]
METHOD_ORDER = ("backbone", "ce", "random", "hard", "rodpo", "sdpo", "observed", "mixed")
TARGET_GAIN = 5.0  # % test NDCG@5 over the backbone that RoDPO is asked to reach
COMPARISONS_FILE = "comparisons.json"
# Published SASRec test (NDCG@5, NDCG@10), full ranking, leave-one-out (the S3-Rec paper's protocol)
PUBLISHED_SASREC = {"Beauty": (0.0249, 0.0318), "Sports_and_Outdoors": (0.0154, 0.0192),
                    "Toys_and_Games": (0.0306, 0.0374)}


def _find(entries: list[dict[str, Any]], **match: str) -> dict[str, Any] | None:
    return next((e for e in entries if all(e[k] == v for k, v in match.items())), None)


def interval(entry: dict[str, Any] | None) -> str:
    """`+1.23% [+0.10, +2.40]`, in bold when significant (interval above 0); `—` when missing."""
    if entry is None:
        return "—"
    text = f"{entry['rel_change']:+.2f}% [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}]"
    return f"**{text}**" if entry["significant"] else text


def results_table(records: list[dict[str, Any]], entries: list[dict[str, Any]], dataset: str) -> str:
    """Test metrics mean ± std over seeds per variant and method, NDCG@5 change vs backbone and vs ce."""
    head = ["variant", "method", "seeds", *TABLE_METRICS, "NDCG@5 vs backbone [95% CI]", "NDCG@5 vs ce [95% CI]",
            "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [r for r in records if r["dataset"] == dataset]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for method in METHOD_ORDER:
            rs = [r for r in rows if (r["variant"], r["method"]) == (variant, method)]
            if not rs:
                continue
            cells = [variant, method, str(len(rs))]
            cells += [f"{np.mean([r['test'][k] for r in rs]):.4f} ± {np.std([r['test'][k] for r in rs]):.4f}"
                      for k in TABLE_METRICS]
            for baseline in ("backbone", "ce"):
                cells.append(interval(_find(entries, dataset=dataset, variant=variant, method=method,
                                            baseline=baseline, metric="ndcg@5")))
            cells.append(f"{np.mean([r['wall_time_s'] for r in rs]):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_check(entries: list[dict[str, Any]], dataset: str) -> str:
    """Per variant: does RoDPO reach +5% test NDCG@5 over the backbone with significant leads over ce,
    hard and random (paired 95% intervals above 0)?"""
    lines = []
    for variant in dict.fromkeys(e["variant"] for e in entries if e["dataset"] == dataset):
        get = {b: _find(entries, dataset=dataset, variant=variant, method="rodpo", baseline=b, metric="ndcg@5")
               for b in ("backbone", "ce", "hard", "random")}
        if get["backbone"] is None:
            continue
        gain_ok = get["backbone"]["rel_change"] >= TARGET_GAIN
        leads = {b: e["significant"] for b, e in get.items() if b != "backbone" and e is not None}
        met = gain_ok and len(leads) == 3 and all(leads.values())
        lead_text = ", ".join(f"vs {b} {interval(e)}" for b, e in get.items() if b != "backbone" and e is not None)
        lines.append(f"- {variant}: RoDPO {interval(get['backbone'])} test NDCG@5 over the backbone; {lead_text or 'no baselines'}. "
                     f"Target (>= +{TARGET_GAIN:g}% and significant leads over ce, hard and random): "
                     f"**{'met' if met else 'not met'}**.")
    return "\n".join(lines)


def false_negative_table(records: list[dict[str, Any]], dataset: str) -> str:
    """Synthetic data: false-negative rate of every step's negatives, overall and by pool rank, the
    pool's own rate by rank (the premise), and how each method ranks liked unobserved items."""
    rows = [r for r in records if r["dataset"] == dataset and "false_negative_rate" in r.get("false_negatives", {})]
    if not rows:  # real data: no ground truth, so no rates (the held-out table stands in)
        return ""
    k = rows[0]["hyperparameters"]["pool"]["k"]
    bins = bin_names(k)
    head = ["variant", "method", "negatives: all", *[f"rank {b}" for b in bins], "pool itself: " + ", ".join(bins),
            "liked_ndcg@10 (vs backbone)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    backbone = {(r["variant"], r["seed"]): r for r in records if r["dataset"] == dataset and r["method"] == "backbone"}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for method in METHOD_ORDER:
            rs = [r for r in rows if (r["variant"], r["method"]) == (variant, method)]
            if not rs:
                continue

            def mean(key: str, rs=rs) -> str:
                vals = [r["false_negatives"][key] for r in rs if key in r["false_negatives"]]
                return f"{np.mean(vals):.3f}" if vals else "—"

            pool = ", ".join(mean(f"pool_false_negative_rate/{b}") for b in bins)
            liked = [r["test"].get("liked_ndcg@10") for r in rs]
            base = [backbone[(variant, r["seed"])]["test"].get("liked_ndcg@10") for r in rs if (variant, r["seed"]) in backbone]
            liked_text = "—"
            if None not in liked and base and None not in base:
                liked_text = f"{np.mean(liked):.4f} ({100 * (np.mean(liked) / np.mean(base) - 1):+.2f}%)"
            lines.append("| " + " | ".join([variant, method, mean("false_negative_rate"),
                                            *[mean(f"false_negative_rate/{b}") for b in bins],
                                            pool if "—" not in pool else "—", liked_text]) + " |")
    return "\n".join(lines)


def held_out_table(records: list[dict[str, Any]], dataset: str) -> str:
    """Real data: the share of contexts whose candidate pool holds the user's held-out next item (the
    validation target), by the pool rank it sits at: false negatives that every pool strategy sees."""
    rows = [r for r in records if r["dataset"] == dataset and "pool_holds_held_out" in r.get("false_negatives", {})]
    if not rows:
        return ""
    k = rows[0]["hyperparameters"]["pool"]["k"]
    bins = bin_names(k)
    lines = ["| variant | method | pool holds it (any rank) | " + " | ".join(f"rank {b}" for b in bins) + " |",
             "|" + "---|" * (3 + len(bins))]
    for variant, method in dict.fromkeys((r["variant"], r["method"]) for r in rows):
        rs = [r["false_negatives"] for r in rows if (r["variant"], r["method"]) == (variant, method)]
        cells = [f"{np.mean([r.get(key, np.nan) for r in rs]):.3f}"
                 for key in ["pool_holds_held_out", *(f"pool_holds_held_out/{b}" for b in bins)]]
        lines.append(f"| {variant} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dislike_table(records: list[dict[str, Any]], entries: list[dict[str, Any]], dataset: str) -> str:
    """Datasets with observed rejections: test NDCG@10 and the dislike rate (`dislike_hr@10`, the share of
    each user's held-out rejected items in its top 10, lower is better) per method, of the selected
    checkpoint and of the weights each alignment run ended with (`last:`), with paired intervals."""
    rows = [r for r in records if r["dataset"] == dataset and "dislike_hr@10" in r["test"]]
    if not rows:
        return ""
    head = ["variant", "method", "seeds", "NDCG@10", "vs ce [95% CI]", "dislike_hr@10", "vs backbone [95% CI]",
            "vs ce [95% CI]", "vs rodpo [95% CI]", "last weights: NDCG@10", "vs ce [95% CI]", "dislike_hr@10",
            "vs backbone [95% CI]", "vs ce [95% CI]", "vs rodpo [95% CI]", "observed share of negatives"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for method in METHOD_ORDER:
            rs = [r for r in rows if (r["variant"], r["method"]) == (variant, method)]
            if not rs:
                continue

            def stat(key: str, split: str = "test", rs=rs) -> str:
                vals = [r[split][key] for r in rs if key in r.get(split, {})]
                return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) == len(rs) else "—"

            def versus(baseline: str, metric: str, method=method, variant=variant) -> str:
                return interval(_find(entries, dataset=dataset, variant=variant, method=method, baseline=baseline,
                                      metric=metric))

            share = [r["false_negatives"]["observed_negative_share"] for r in rs
                     if "observed_negative_share" in r.get("false_negatives", {})]
            lines.append("| " + " | ".join([
                variant, method, str(len(rs)), stat("ndcg@10"), versus("ce", "ndcg@10"), stat("dislike_hr@10"),
                versus("backbone", "dislike_hr@10"), versus("ce", "dislike_hr@10"), versus("rodpo", "dislike_hr@10"),
                stat("ndcg@10", "test_last"), versus("ce", "last:ndcg@10"), stat("dislike_hr@10", "test_last"),
                versus("backbone", "last:dislike_hr@10"), versus("ce", "last:dislike_hr@10"),
                versus("rodpo", "last:dislike_hr@10"), f"{np.mean(share):.3f}" if share else "—"]) + " |")
    users = rows[0]["test"].get("dislike_users")
    return "\n".join(lines) + (f"\n\nUsers with held-out rejections: {users:.0f}." if users is not None else "")


def final_weights_table(records: list[dict[str, Any]], dataset: str) -> str:
    """Alignment runs: NDCG@5 of the weights each run ended with (not selected), beside the selected
    checkpoint's, as changes of the mean over seeds against the backbone's: what the method did."""
    rows = [r for r in records if r["dataset"] == dataset and "test_last" in r]
    if not rows:
        return ""
    backbone = {(r["variant"], r["seed"]): r for r in records if r["dataset"] == dataset and r["method"] == "backbone"}
    lines = ["| variant | method | seeds | valid NDCG@5: selected, last (vs backbone) | test NDCG@5: selected, last (vs backbone) |",
             "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for method in METHOD_ORDER:
            rs = [r for r in rows if (r["variant"], r["method"]) == (variant, method) and (variant, r["seed"]) in backbone]
            if not rs:
                continue
            cells = []
            for split in ("valid", "test"):
                base = np.mean([backbone[(variant, r["seed"])][split]["ndcg@5"] for r in rs])
                chosen, last = (np.mean([r[key]["ndcg@5"] for r in rs]) for key in (split, f"{split}_last"))
                cells.append(f"{chosen:.4f} ({100 * (chosen / base - 1):+.2f}%), {last:.4f} ({100 * (last / base - 1):+.2f}%)")
            lines.append(f"| {variant} | {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versus_published(records: list[dict[str, Any]], dataset: str) -> str:
    ndcg5, ndcg10 = PUBLISHED_SASREC[dataset]
    parts = []
    for variant in dict.fromkeys(r["variant"] for r in records if r["dataset"] == dataset):
        rs = [r["test"] for r in records if (r["dataset"], r["variant"], r["method"]) == (dataset, variant, "backbone")]
        if rs:
            ours5, ours10 = np.mean([t["ndcg@5"] for t in rs]), np.mean([t["ndcg@10"] for t in rs])
            parts.append(f"{variant} backbone NDCG@5 {ours5:.4f} ({100 * (ours5 / ndcg5 - 1):+.1f}%), "
                         f"NDCG@10 {ours10:.4f} ({100 * (ours10 / ndcg10 - 1):+.1f}%)")
    return f"Published SASRec: test NDCG@5 {ndcg5} / NDCG@10 {ndcg10}. " + "; ".join(parts) + "."


def write_results(out: Path) -> Path:
    """`<out>/comparisons.json` and `<out>.md` from `<out>/records.json` (and the ranks beside it)."""
    records = load_records(out)
    entries = comparisons(records, out)
    (out / COMPARISONS_FILE).write_text(json.dumps(entries, indent=1) + "\n")
    lines = [f"# Results (generated from `{out.name}/records.json` by `rodpo study`; do not edit by hand)", "",
             "Test metrics, mean ± std over seeds; checkpoints selected on validation only. Changes are of the "
             "mean over seeds with a paired bootstrap 95% interval over users pooled across seeds "
             f"(`{out.name}/{COMPARISONS_FILE}`); **bold**: the interval lies above 0.", ""]
    for dataset in sorted({r["dataset"] for r in records}):
        rows = [r for r in records if r["dataset"] == dataset]
        scale = (f" Catalog: {rows[0]['num_users']:,} users, {rows[0]['num_items']:,} items, "
                 f"{rows[0]['num_interactions']:,} interactions." if "num_items" in rows[0] else "")
        lines += [f"## {dataset}", "", f"Selection metric: {rows[0]['selection_metric']}.{scale}", "",
                  results_table(records, entries, dataset), ""]
        check = target_check(entries, dataset)
        if check:
            lines += [check, "", "What was tried towards the target: `docs/alignment_tuning.md`.", ""]
        dislikes = dislike_table(records, entries, dataset)
        if dislikes:
            lines += ["Observed rejections: `dislike_hr@10` is the share of each user's held-out rejected items "
                      "(made at or after its validation target, never trained on) that the selected model ranks in "
                      "its top 10 on test, averaged over the users that have one; lower is better, and **bold** "
                      "marks an interval below 0 (a significant drop; for NDCG@10, above 0). `observed` and "
                      "`mixed` are rodpo with `align.rejected` observed / mixed. Left: the checkpoint selected on "
                      "validation; right: the weights each run ended with (against the backbone's selected "
                      "checkpoint and the other methods' last weights).", "", dislikes, ""]
        last = final_weights_table(records, dataset)
        if last:
            lines += ["The selected checkpoint may be the step-0 backbone (it competes for best); the weights each "
                      "alignment run ended with show what the method itself did:", "", last, ""]
        fn = false_negative_table(records, dataset)
        if fn:
            lines += ["False negatives (known on the synthetic catalog): the share of each method's negatives "
                      "that the user actually likes, over every step, by the pool rank they came from; the "
                      "pool's own share at each rank over all its rows; and `liked_ndcg@10`, how high the "
                      "selected model ranks the liked items the user never interacted with.", "", fn, ""]
        held = held_out_table(records, dataset)
        if held:
            lines += ["The user's held-out next item (its validation target) in the candidate pool, averaged over "
                      "the pool refreshes: a negative for every pool strategy that the user does choose next.", "",
                      held, ""]
        if dataset in PUBLISHED_SASREC:
            lines += [_versus_published(records, dataset), ""]
        lines += ["Hyper-parameters (first record of each method; all in the JSON):", ""]
        for variant, method in dict.fromkeys((r["variant"], r["method"]) for r in rows):
            hyper = next(r for r in rows if (r["variant"], r["method"]) == (variant, method))["hyperparameters"]
            keys = ("model", "pretrain") if method == "backbone" else ("align", "pool")
            lines.append(f"- {variant} {method}: " + "; ".join(f"{k}: {json.dumps(hyper[k])}" for k in keys if k in hyper))
        lines += ["", "Commands:", "", *[f"- `{c}`" for c in sorted({r["command"] for r in rows})], ""]
    path = out.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def plot_training(run_dirs: dict[str, Path], path: Path) -> Figure:
    """Validation NDCG@5 and train reward accuracy over alignment steps, one line per method, in
    the same colour in both panels (the `ce` control has no reward accuracy). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (method, run) in enumerate(run_dirs.items()):
        valid, train = read_metrics(run, "valid"), [r for r in read_metrics(run, "train") if "accuracy" in r]
        ax1.plot([r["step"] for r in valid], [r["ndcg@5"] for r in valid], marker="o", label=method, color=f"C{i}")
        if train:
            ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label=method, color=f"C{i}")
    ax1.set(title="validation NDCG@5", xlabel="alignment step")
    ax2.set(title="reward accuracy (train)", xlabel="alignment step")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
