"""The study and the sweep: which runs, in which folders, and their records.

Study: for each backbone variant (the config as given, plus `study.variants`) and seed, one
backbone is pretrained and every method of `study.methods` (variants: `study.variant_methods`)
is aligned from it. Every run folder is `<run_dir>/seed<s>/<method>-<hash of its settings>`, so
a run with the same settings is found again and reused (`--resume auto`: a finished run is only
re-evaluated), and runs with other settings never share a folder. All configs are built and
validated before the first run starts.

Sweep: one backbone per seed, then alignment runs over a grid of overrides (one factor at a time
from the config, or the full product), recorded with their validation metrics only.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rodpo_dist.config import Config, apply_override, config_from_dict, config_hash, parse_override
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.study.records import copy_ranks, dataset_name, make_record, save_records, variant_name
from rodpo_dist.study.report import (dislike_table, false_negative_table, final_weights_table, plot_training,
                                     results_table, write_results)
from rodpo_dist.train.run_dir import run_folder
from rodpo_dist.train.run_log import read_metrics


@dataclass
class PlannedRun:
    cfg: Config
    method: str
    """`backbone` or an alignment strategy."""

    @property
    def folder(self) -> Path:
        return run_folder(self.cfg)


def with_overrides(cfg: Config, overrides: list[str], source: str) -> Config:
    """`cfg` with `key.sub=value` overrides applied, validated as a whole."""
    raw = copy.deepcopy(cfg.to_dict())
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return config_from_dict(raw, source)


def _named(cfg: Config, method: str, seed: int, **sections: dict[str, Any]) -> Config:
    """A copy of `cfg` for one run (`stage`/`init` or section fields replaced), named by its hash."""
    out = cfg
    for section, values in sections.items():
        out = (dataclasses.replace(out, **{section: values}) if section in ("stage", "init") else
               dataclasses.replace(out, **{section: dataclasses.replace(getattr(out, section), **values)}))
    out = dataclasses.replace(out, runtime=dataclasses.replace(out.runtime, seed=seed,
                                                               run_dir=f"{cfg.runtime.run_dir}/seed{seed}"))
    name = f"{method}-{config_hash(out, 8)}"
    return dataclasses.replace(out, runtime=dataclasses.replace(out.runtime, run_name=name))


def backbone_run(cfg: Config, seed: int) -> PlannedRun:
    return PlannedRun(_named(cfg, "backbone", seed, stage="pretrain", init=""), "backbone")


METHOD_ALIGN = {"observed": {"strategy": "rodpo", "rejected": "observed"},
                "mixed": {"strategy": "rodpo", "rejected": "mixed"}}
"""Study methods that are a strategy plus other alignment settings; every other method is the strategy
of its name with the pool's own negatives (`align.rejected: pool`)."""


def align_run(cfg: Config, backbone: PlannedRun, method: str) -> PlannedRun:
    init = str(backbone.folder / "best")
    settings = METHOD_ALIGN.get(method, {"strategy": method, "rejected": "pool"})
    return PlannedRun(_named(cfg, method, backbone.cfg.runtime.seed, stage="align", init=init,
                             align=settings), method)


BASE_VARIANT = "base"


def study_plan(cfg: Config, seeds: list[int], methods: list[str], variants: list[str] | None = None) -> list[PlannedRun]:
    """Every run of the study in order (each backbone before the methods aligned from it); a variant
    runs its `study.variant_methods` (the config's, unless its overrides set their own) that are
    among `methods`. `variants` keeps only the named ones (`base`: the config as given; default: all).
    Variants whose records would share a name (`records.variant_name`) are refused."""
    known = [BASE_VARIANT, *cfg.study.variants]
    unknown = [v for v in variants or [] if v not in known]
    if unknown:
        raise ValueError(f"study --variants: unknown {unknown}; this config has {known}")
    base = dataclasses.replace(cfg, stage="pretrain", init="")
    planned = {BASE_VARIANT: (base, methods)}
    for name, overrides in cfg.study.variants.items():
        variant_cfg = with_overrides(base, overrides, f"study.variants.{name}")
        planned[name] = (variant_cfg, [m for m in variant_cfg.study.variant_methods if m in methods])
    names: dict[str, str] = {}
    for name, (variant_cfg, _) in planned.items():
        shown = variant_name(variant_cfg)
        if shown in names:  # their records would replace each other
            raise ValueError(f"study variants {names[shown]!r} and {name!r} have the same backbone parts "
                             f"({shown!r}): give one of them its own (records.variant_name)")
        names[shown] = name
    plan = []
    for variant_cfg, variant_methods in (planned[v] for v in known if variants is None or v in variants):
        for seed in seeds:
            backbone = backbone_run(variant_cfg, seed)
            plan += [backbone, *(align_run(variant_cfg, backbone, m) for m in variant_methods)]
    return plan


def execute(run: PlannedRun) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Run (or resume, or re-evaluate a finished) run; returns its results and its final log record."""
    from rodpo_dist.train.recipe import run_stage

    result = run_stage(run.cfg, resume="auto")
    final = read_metrics(run.folder, "final")[-1]
    return result, final


def command_line() -> str:
    return " ".join(["rodpo", *(shlex.quote(a) for a in sys.argv[1:])])


def run_study(cfg: Config, seeds: list[int], methods: list[str], out: str | Path,
              variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the study; merge its records into `<out>/records.json`, write `<out>.md`, comparisons and a plot."""
    from rodpo_dist.data.prepare import ensure_prepared

    out = Path(out)
    plan = study_plan(cfg, seeds, methods, variants)
    for run in plan:  # before any training: a variant may read other data (its own settings or prepared_dir)
        ensure_prepared(run.cfg)
    records, command = [], command_line()
    for run in plan:
        manifest = load_manifest(run.cfg.data.prepared_dir)
        catalog = {"num_users": manifest.num_users, "num_items": manifest.num_items,
                   "num_interactions": manifest.num_interactions}
        result, final = execute(run)
        record = make_record(run.cfg, run.method, result, final, final.get("wall_time_s", 0.0), command, run.folder,
                             catalog)
        copy_ranks(run.folder, out, record)
        records.append(record)
        save_records(out, records)  # after every run: an interrupted study keeps what it finished
    write_results(out)
    first = {r.method: r.folder for r in plan if r.method != "backbone" and r.cfg.runtime.seed == seeds[0]
             and variant_name(r.cfg) == variant_name(cfg)}
    if first:
        plot_training(first, out / f"{dataset_name(cfg)}_training.png")
    from rodpo_dist.study.records import load_records
    from rodpo_dist.study.stats import comparisons

    all_records = load_records(out)
    name = dataset_name(cfg)
    entries = comparisons(all_records, out)
    print(results_table(all_records, entries, name))
    for title, table in (("Observed rejections (dislike_hr@10: lower is better):", dislike_table(all_records, entries, name)),
                         ("Weights each alignment run ended with:", final_weights_table(all_records, name)),
                         ("False negatives among each method's negatives, every step, by pool rank:",
                          false_negative_table(all_records, name))):
        if table:
            print(f"\n{title}\n{table}")
    print(f"\nReport: {out.with_suffix('.md')}")
    return records


def run_demo(cfg: Config) -> None:
    """Synthetic catalog -> pretrain -> every method -> results table, intervals and plot (one seed)."""
    run_study(cfg, seeds=[cfg.runtime.seed], methods=list(cfg.study.methods),
              out=Path(cfg.runtime.run_dir) / "results")


def grid_points(grid: list[str], mode: str) -> list[list[str]]:
    """Override lists of the sweep: `key=v1,v2` entries, one factor at a time (the config's own value
    first, as the base point) or their full product."""
    factors = []
    for entry in grid:
        key, _, values = entry.partition("=")
        if not key or not values:
            raise ValueError(f"--grid {entry!r}: expected key.sub=v1,v2,...")
        factors.append([f"{key}={v}" for v in values.split(",")])
    if mode == "grid":
        return [list(p) for p in itertools.product(*factors)]
    return [[]] + [[point] for values in factors for point in values]


def run_sweep(cfg: Config, grid: list[str], mode: str, methods: list[str], seed: int, out: str | Path) -> Path:
    """Alignment runs over the grid from the seed's backbone, validation only; `<out>/sweep.json` keeps every point."""
    from rodpo_dist.data.prepare import ensure_prepared

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(cfg, stage="pretrain", init="")
    base = dataclasses.replace(base, eval=dataclasses.replace(base.eval, report_test=False))
    points = [(overrides, with_overrides(base, overrides, f"sweep point {overrides}")) for overrides in grid_points(grid, mode)]
    for config in (cfg, *(point for _, point in points)):  # a point that changes data.* must find its own dataset
        ensure_prepared(config)
    backbone = backbone_run(base, seed)
    backbone_valid = execute(backbone)[0]["valid"]
    path = out / "sweep.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    for overrides, point in points:
        for method in methods:
            run = align_run(point, backbone, method)
            result = execute(run)[0]
            entry = {"dataset": dataset_name(cfg), "variant": variant_name(point), "seed": seed, "method": method,
                     "overrides": overrides, "config_hash": config_hash(run.cfg), "backbone_valid": backbone_valid,
                     "valid": result["valid"], "valid_last": result["valid_last"], "best_step": _best_step(run.folder),
                     "run_dir": str(run.folder), "command": command_line()}
            entries = [e for e in entries if e["config_hash"] != entry["config_hash"]] + [entry]
            path.write_text(json.dumps(entries, indent=1) + "\n")
    md = out / "sweep.md"
    md.write_text(sweep_table(entries, cfg.eval.metric) + "\n")
    print(md.read_text())
    return path


def _best_step(folder: Path) -> int:
    state = json.loads((folder / "best" / "state.json").read_text())
    return int(state["best_step"])


def sweep_table(entries: list[dict[str, Any]], metric: str) -> str:
    """Markdown: every sweep point's validation metrics and change over its backbone, in run order."""
    head = ["dataset", "seed", "method", "overrides", f"valid {metric}", "vs backbone", "valid ndcg@10", "best step",
            f"last weights: valid {metric} vs backbone"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        base = e["backbone_valid"][metric]
        lines.append("| " + " | ".join([e["dataset"], str(e["seed"]), e["method"], " ".join(e["overrides"]) or "(config)",
                                        f"{e['valid'][metric]:.5f}", f"{100 * (e['valid'][metric] / base - 1):+.2f}%",
                                        f"{e['valid']['ndcg@10']:.5f}", str(e["best_step"]),
                                        f"{100 * (e['valid_last'][metric] / base - 1):+.2f}%"]) + " |")
    return "\n".join(lines)
