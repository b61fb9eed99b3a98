"""The benchmark study: the pretrained backbone vs alignment with random / hard / rodpo / sdpo
negatives, over seeds, checkpoints selected on validation only, reported on test.

Every run adds one JSON record (dataset, model variant, method, seed, metrics, false-negative
rate, wall time, command, hyper-parameters) to `<out>/records.json`; `docs/results.md`-style tables and the PNG
plots are generated from those records, so anyone can re-check them.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.config import Config
from rodpo_dist.train.run_log import read_metrics

TABLE_METRICS = ["hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10"]
TARGET_GAIN = 5.0  # % test NDCG@5 over the backbone that RoDPO is asked to reach
# Published SASRec test (NDCG@5, NDCG@10), full ranking, leave-one-out (the S3-Rec paper's protocol)
PUBLISHED_SASREC = {"Beauty": (0.0249, 0.0318), "Sports_and_Outdoors": (0.0154, 0.0192),
                    "Toys_and_Games": (0.0306, 0.0374)}


def _with(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `cfg` with fields replaced per section, e.g. `_with(cfg, runtime={"seed": 1})`."""
    out = cfg
    for section, values in sections.items():
        if section in ("stage", "init"):
            out = dataclasses.replace(out, **{section: values})
        else:
            out = dataclasses.replace(out, **{section: dataclasses.replace(getattr(out, section), **values)})
    return out


def dataset_name(cfg: Config) -> str:
    return cfg.data.name or cfg.data.source


def variant(record: dict[str, Any]) -> str:
    """The backbone variant of a record: its modalities, and the MoE placement when it has one."""
    moe = record["hyperparameters"]["moe"]
    name = "+".join(["id", *record["modalities"]])
    return f"{name}+moe({moe['placement']})" if moe["enabled"] else name


def ensure_prepared(cfg: Config) -> None:
    from rodpo_dist.data.prepare import prepare

    if not (Path(cfg.data.prepared_dir) / "manifest.json").is_file():
        prepare(cfg.data, cfg.data.prepared_dir, progress=cfg.runtime.progress)


def _fn_rate(run_dir: Path) -> float | None:
    rows = [r["false_negative_rate"] for r in read_metrics(run_dir, "train") if "false_negative_rate" in r]
    return float(np.mean(rows)) if rows else None


def run_study(cfg: Config, seeds: list[int], strategies: list[str], out: str | Path,
              sdpo_negatives: int = 4) -> list[dict[str, Any]]:
    """Run backbone + each strategy for each seed; append records and write table and plots to `out`.

    `sdpo` uses `sdpo_negatives` negatives per positive (softmax DPO needs several); the other
    strategies use `align.num_negatives`.
    """
    from rodpo_dist.train.align import align
    from rodpo_dist.train.pretrain import pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_prepared(cfg)
    command = " ".join(["rodpo", *(shlex.quote(a) for a in sys.argv[1:])])
    records = []
    for seed in seeds:
        base = _with(cfg, runtime={"seed": seed, "run_dir": f"{cfg.runtime.run_dir}/seed{seed}"})
        tic = time.time()
        result = pretrain(_with(base, stage="pretrain"), resume="auto")
        records.append(_record(base, "backbone", seed, result, time.time() - tic, command, None))
        init = f"{base.runtime.run_dir}/pretrain/best"
        for strategy in strategies:
            m = sdpo_negatives if strategy == "sdpo" else cfg.align.num_negatives
            run = _with(base, stage="align", init=init, align={"strategy": strategy, "num_negatives": m})
            tic = time.time()
            result = align(run, resume="auto")
            records.append(_record(run, strategy, seed, result, time.time() - tic, command,
                                   _fn_rate(Path(run.runtime.run_dir) / f"align-{strategy}")))
    save_records(out / "records.json", records)
    name = dataset_name(cfg)
    if strategies:
        plot_training(cfg.runtime.run_dir, seeds, strategies, out / f"{name}_training.png")
    write_results_md(out)
    print(results_table(load_records(out / "records.json"), name))
    return records


def write_results_md(out: Path) -> Path:
    """`<out>.md`: one table per dataset from `<out>/records.json`, with the commands that made them."""
    records = load_records(out / "records.json")
    lines = [f"# Results (generated from `{out.name}/records.json` by `rodpo study`; do not edit by hand)", ""]
    for name in sorted({r["dataset"] for r in records}):
        rows = [r for r in records if r["dataset"] == name]
        lines += [f"## {name}", "", "Test metrics, mean ± std over seeds; checkpoints selected on validation "
                  f"({rows[0]['selection_metric']}).", "",
                  results_table(records, name), ""]
        check = target_check(records, name)
        if check:
            lines += [check, "", "Other settings tried towards the target: `docs/alignment_tuning.md`.", ""]
        if name in PUBLISHED_SASREC:
            lines += [_versus_published(rows, name), ""]
        lines += ["Hyper-parameters (first record of each method; all in the JSON):", ""]
        for name, method in dict.fromkeys((variant(r), r["method"]) for r in rows):
            hyper = next(r for r in rows if r["method"] == method and variant(r) == name)["hyperparameters"]
            keys = ("model", "pretrain") if method == "backbone" else ("align", "pool")
            lines.append(f"- {name} {method}: " + "; ".join(f"{k}: {json.dumps(hyper[k])}" for k in keys if k in hyper))
        lines += ["", "Commands:", ""]
        lines += [f"- `{c}`" for c in sorted({r["command"] for r in rows})]
        lines += [""]
    path = out.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def _versus_published(rows: list[dict[str, Any]], dataset: str) -> str:
    ndcg5, ndcg10 = PUBLISHED_SASREC[dataset]
    parts = []
    for name in dict.fromkeys(variant(r) for r in rows if r["method"] == "backbone"):
        rs = [r["test"] for r in rows if r["method"] == "backbone" and variant(r) == name]
        ours5, ours10 = np.mean([t["ndcg@5"] for t in rs]), np.mean([t["ndcg@10"] for t in rs])
        parts.append(f"{name} backbone NDCG@5 {ours5:.4f} ({100 * (ours5 / ndcg5 - 1):+.1f}%), "
                     f"NDCG@10 {ours10:.4f} ({100 * (ours10 / ndcg10 - 1):+.1f}%)")
    return (f"Published SASRec: test NDCG@5 {ndcg5} / NDCG@10 {ndcg10}. " + "; ".join(parts) + ".")


def _record(cfg: Config, method: str, seed: int, result: dict[str, dict[str, float]], seconds: float,
            command: str, fn_rate: float | None) -> dict[str, Any]:
    hyper = {"model": dataclasses.asdict(cfg.model), "moe": dataclasses.asdict(cfg.moe)}
    hyper |= {"pretrain": dataclasses.asdict(cfg.pretrain)} if method == "backbone" else {
        "align": dataclasses.asdict(cfg.align), "pool": dataclasses.asdict(cfg.pool)}
    return {"dataset": dataset_name(cfg), "method": method, "seed": seed, "valid": result["valid"],
            "test": result["test"], "false_negative_rate": fn_rate, "wall_time_s": round(seconds, 1),
            "command": command, "modalities": cfg.data.modalities, "selection_metric": cfg.eval.metric,
            "hyperparameters": hyper}


def load_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else []


def save_records(path: str | Path, new: list[dict[str, Any]]) -> None:
    """Merge `new` into the records file; a (dataset, variant, method, seed) already there is replaced."""
    key = lambda r: (r["dataset"], variant(r), r["method"], r["seed"])  # noqa: E731
    merged = {key(r): r for r in load_records(path)} | {key(r): r for r in new}
    Path(path).write_text(json.dumps(sorted(merged.values(), key=key), indent=1) + "\n")


def change_vs_backbone(of_variant: list[dict[str, Any]], method: str) -> float:
    """% change of `method`'s mean test NDCG@5 over the backbone's (records of one variant); nan if either is missing."""
    def mean(m: str) -> float:
        return float(np.mean([r["test"]["ndcg@5"] for r in of_variant if r["method"] == m] or [np.nan]))
    return 100 * (mean(method) / mean("backbone") - 1)


def target_check(records: list[dict[str, Any]], dataset: str) -> str:
    """Markdown lines: per variant, whether RoDPO meets the study's target (>= +5% test NDCG@5 over the
    backbone, mean over seeds, and ahead of DPO with random and with hard negatives)."""
    rows = [r for r in records if r["dataset"] == dataset]
    lines = []
    for name in dict.fromkeys(variant(r) for r in rows):
        of_variant = [r for r in rows if variant(r) == name]
        change = {m: change_vs_backbone(of_variant, m) for m in ("rodpo", "random", "hard")}
        if any(np.isnan(c) for c in change.values()):
            continue
        seeds = sum(r["method"] == "rodpo" for r in of_variant)
        met = change["rodpo"] >= TARGET_GAIN and change["rodpo"] > max(change["random"], change["hard"])
        lines.append(f"- {name}: RoDPO {change['rodpo']:+.2f}% test NDCG@5 over the backbone ({seeds} seeds), "
                     f"random {change['random']:+.2f}%, hard {change['hard']:+.2f}%: target "
                     f"(>= +{TARGET_GAIN:g}% and ahead of both) **{'met' if met else 'not met'}**.")
    return "\n".join(lines)


def results_table(records: list[dict[str, Any]], dataset: str) -> str:
    """Markdown: test metrics mean ± std over seeds per variant and method, change vs that variant's backbone."""
    rows = [r for r in records if r["dataset"] == dataset]
    head = ["variant", "method", "seeds", *TABLE_METRICS, "NDCG@5 vs backbone", "false-neg. rate", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(variant(r) for r in rows):
        of_variant = [r for r in rows if variant(r) == name]
        for m in ("backbone", "random", "hard", "rodpo", "sdpo"):
            rs = [r for r in of_variant if r["method"] == m]
            if not rs:
                continue
            cells = [name, m, str(len(rs))]
            for k in TABLE_METRICS:
                vals = [r["test"][k] for r in rs]
                cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}")
            cells.append("—" if m == "backbone" else f"{change_vs_backbone(of_variant, m):+.2f}%")
            fns = [r["false_negative_rate"] for r in rs if r.get("false_negative_rate") is not None]
            cells.append(f"{np.mean(fns):.3f}" if fns else "—")
            cells.append(f"{np.mean([r['wall_time_s'] for r in rs]):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_training(run_root: str, seeds: list[int], strategies: list[str], path: Path) -> None:
    """Validation NDCG@5 and train reward accuracy over alignment steps, one line per strategy (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for strategy in strategies:
        run = Path(run_root) / f"seed{seeds[0]}" / f"align-{strategy}"
        valid = read_metrics(run, "valid")
        train = read_metrics(run, "train")
        ax1.plot([r["step"] for r in valid], [r["ndcg@5"] for r in valid], marker="o", label=strategy)
        ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label=strategy)
    ax1.set(title="validation NDCG@5", xlabel="alignment step")
    ax2.set(title="reward accuracy (train)", xlabel="alignment step")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(cfg: Config) -> None:
    """Synthetic catalog -> pretrain -> random / hard / rodpo / sdpo alignment -> results table."""
    run_study(cfg, seeds=[cfg.runtime.seed], strategies=["random", "hard", "rodpo", "sdpo"],
              out=Path(cfg.runtime.run_dir) / "results")
