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


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from rodpo_dist.train.pretrain import pretrain

    pretrain(_config(args, "stage=pretrain"), resume=args.resume)


def _cmd_align(args: argparse.Namespace) -> None:
    from rodpo_dist.train.align import align

    extra = [f"init={args.init}"] if args.init else []
    align(_config(args, "stage=align", *extra), resume=args.resume)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from rodpo_dist.train.selection import evaluate_checkpoint

    evaluate_checkpoint(_config(args), args.checkpoint, splits=args.splits)


def _cmd_demo(args: argparse.Namespace) -> None:
    from rodpo_dist.study import run_demo

    run_demo(_config(args))


def _cmd_study(args: argparse.Namespace) -> None:
    from rodpo_dist.study import run_study

    run_study(_config(args), seeds=args.seeds, strategies=args.strategies, out=args.out,
              sdpo_negatives=args.sdpo_negatives)


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

    for name, func, helptext in (("pretrain", _cmd_pretrain, "next-item pretraining (the reference policy)"),
                                 ("align", _cmd_align, "DPO / RoDPO alignment from a pretrained checkpoint")):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--resume", default=None, help="'auto' (latest checkpoint in the run dir) or a checkpoint path")
        if name == "align":
            p.add_argument("--init", help="pretrained checkpoint (overrides `init`)")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="full-ranking evaluation of a checkpoint")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="synthetic catalog -> pretrain -> RoDPO -> evaluation table")
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("study", help="backbone vs random / hard / rodpo / sdpo negatives over seeds")
    _add_config_args(p)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--strategies", nargs="*", default=["random", "hard", "rodpo", "sdpo"],
                   choices=["random", "hard", "rodpo", "sdpo"])
    p.add_argument("--out", default="docs/results", help="folder for the JSON records, table and plots")
    p.add_argument("--sdpo-negatives", type=int, default=4, help="negatives per positive for sdpo")
    p.set_defaults(func=_cmd_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"rodpo: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"rodpo: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
