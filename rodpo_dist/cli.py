"""The `rodpo` command: data preparation, pretraining, alignment, evaluation, the study and the demo."""

from __future__ import annotations

import argparse
import sys

from rodpo_dist.config import Config, ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (configs/*.yaml); defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _config(args: argparse.Namespace, *extra: str) -> Config:
    return load_config(args.config, [*args.overrides, *extra])


def _cmd_prepare(args: argparse.Namespace) -> None:
    from rodpo_dist.data.prepare import prepare, stats

    cfg = _config(args)
    out = args.out or cfg.data.prepared_dir
    prepare(cfg.data, out, progress=cfg.runtime.progress)
    print(stats(out))


def _cmd_stats(args: argparse.Namespace) -> None:
    from rodpo_dist.data.prepare import stats

    print(stats(args.dir))


def _cmd_verify(args: argparse.Namespace) -> None:
    from rodpo_dist.data import verify

    manifest = verify(args.dir)
    print(f"{args.dir}: every shard and file matches its sha256 in the manifest ({manifest.name})")


def _run_stage(cfg: Config, args: argparse.Namespace) -> None:
    """Prepare `data.prepared_dir` when it holds no dataset yet, then train the stage."""
    from rodpo_dist.data.prepare import ensure_prepared
    from rodpo_dist.train.recipe import run_stage

    ensure_prepared(cfg)
    run_stage(cfg, resume=args.resume, overwrite=args.overwrite)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    _run_stage(_config(args, "stage=pretrain"), args)


def _cmd_align(args: argparse.Namespace) -> None:
    extra = [f"init={args.init}"] if args.init else []
    _run_stage(_config(args, "stage=align", *extra), args)


def _checkpoint_config(args: argparse.Namespace) -> Config:
    """`--config` when given, else the config saved with the checkpoint; overrides applied."""
    from rodpo_dist.config import saved_config

    return _config(args) if args.config else saved_config(args.checkpoint, args.overrides)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from rodpo_dist.train.selection import evaluate_checkpoint

    evaluate_checkpoint(_checkpoint_config(args), args.checkpoint, splits=args.splits)


def _cmd_recommend(args: argparse.Namespace) -> None:
    from rodpo_dist.serve import Recommender, recommend_file

    cfg = _checkpoint_config(args)
    count = recommend_file(Recommender.from_checkpoint(args.checkpoint, cfg), args.input, args.out, args.k,
                           skip_unknown=args.skip_unknown, progress=cfg.runtime.progress)
    print(f"{args.out}: the top {args.k} items of {count} histories")


def _cmd_export(args: argparse.Namespace) -> None:
    from rodpo_dist.serve import export_checkpoint

    card = export_checkpoint(args.checkpoint, args.out, _checkpoint_config(args))
    print(f"{args.out}: {card['dataset']['name']} model, test " +
          ", ".join(f"{k} {v:.4f}" for k, v in card["metrics"]["test"].items() if k.startswith("ndcg")))


def _cmd_demo(args: argparse.Namespace) -> None:
    from rodpo_dist.study.runner import run_demo

    run_demo(_config(args))


def _cmd_study(args: argparse.Namespace) -> None:
    from rodpo_dist.study.records import dataset_name
    from rodpo_dist.study.runner import run_study

    cfg = _config(args)
    out = args.out or f"runs/study/{dataset_name(cfg)}"
    methods = cfg.study.methods if args.methods is None else args.methods
    run_study(cfg, seeds=args.seeds or cfg.study.seeds, methods=methods, out=out, variants=args.variants)


def _cmd_sweep(args: argparse.Namespace) -> None:
    from rodpo_dist.study.records import dataset_name
    from rodpo_dist.study.runner import run_sweep

    cfg = _config(args)
    out = args.out or f"runs/sweep/{dataset_name(cfg)}"
    run_sweep(cfg, args.grid, args.mode, args.methods or [cfg.align.strategy], args.seed, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rodpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare or inspect a dataset").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="turn a source into WebDataset shards + manifest")
    _add_config_args(p)
    p.add_argument("--out", help="output folder (default: data.prepared_dir)")
    p.set_defaults(func=_cmd_prepare)
    p = data.add_parser("stats", help="print the statistics of a prepared dataset")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_stats)
    p = data.add_parser("verify", help="check every shard and file of a prepared dataset against its checksum")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_verify)

    for name, func, helptext in (("pretrain", _cmd_pretrain, "next-item pretraining (the reference policy)"),
                                 ("align", _cmd_align, "DPO / RoDPO alignment from a pretrained checkpoint")):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--resume", default=None, help="'auto' (latest checkpoint in the run dir) or a checkpoint path")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in the run folder")
        if name == "align":
            p.add_argument("--init", help="pretrained checkpoint (overrides `init`)")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="full-ranking evaluation of a checkpoint (reads its run's config)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("recommend", help="top-K items for JSON-lines histories (reads the run's config)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help='JSON lines {"user": ..., "history": [raw item ids, oldest first]}')
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", required=True, help='JSON lines {"user": ..., "items": [raw item ids], "scores": [...]}')
    p.add_argument("--skip-unknown", action="store_true", help="warn about unknown item ids and skip them")
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("export", help="a self-contained folder (torch.export program, item table, id map, card)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="a new folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="synthetic catalog -> pretrain -> RoDPO -> evaluation table")
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)

    methods = ["ce", "random", "hard", "rodpo", "sdpo", "observed", "mixed"]  # observed / mixed: rodpo with align.rejected
    p = sub.add_parser("study", help="backbone vs ce / random / hard / rodpo / sdpo over seeds, paired statistics")
    _add_config_args(p)
    p.add_argument("--seeds", nargs="+", type=int, help="default: study.seeds")
    p.add_argument("--methods", nargs="*", choices=methods,
                   help="default: study.methods; given without names: the backbones only")
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help="only these backbone variants: 'base' (the config as given) or names in study.variants "
                        "(default: all)")
    p.add_argument("--out", help="records, comparisons, table and plot (default: runs/study/<dataset>; "
                                 "the committed results: docs/results)")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("sweep", help="alignment over a grid of overrides from one backbone, validation only")
    _add_config_args(p)
    p.add_argument("--grid", action="append", required=True, metavar="key.sub=v1,v2",
                   help="a factor and its values (repeatable)")
    p.add_argument("--mode", choices=["one-at-a-time", "grid"], default="one-at-a-time",
                   help="vary one factor at a time from the config, or run the full product")
    p.add_argument("--methods", nargs="+", choices=methods, help="default: align.strategy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="sweep.json and sweep.md (default: runs/sweep/<dataset>)")
    p.set_defaults(func=_cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: collect them here
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except ConfigError as err:
        print(f"rodpo: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f"rodpo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rodpo: interrupted; a training run continues from its last checkpoint with --resume auto",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
