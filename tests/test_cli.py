"""The `rodpo` command end to end on a tiny synthetic catalog (the README's stage commands)."""

from pathlib import Path

from rodpo_dist.cli import main

TINY = ["data.synthetic.num_items=150", "data.synthetic.num_users=100", "data.synthetic.num_clusters=6",
        "data.synthetic.max_seq_len=10", "model.hidden=16", "model.heads=1", "model.max_len=8",
        "pretrain.epochs=1", "align.epochs=1", "pool.k=10", "runtime.progress=false"]


def test_prepare_stats_pretrain_align_evaluate(tmp_path, capsys):
    common = ["--config", "configs/demo.yaml", *TINY, f"data.prepared_dir={tmp_path}/data",
              f"runtime.run_dir={tmp_path}/run"]
    assert main(["data", "prepare", *common]) == 0
    assert main(["data", "stats", f"{tmp_path}/data"]) == 0
    assert "users                   100" in capsys.readouterr().out
    assert main(["pretrain", *common]) == 0
    assert main(["align", *common, "--init", f"{tmp_path}/run/pretrain/best"]) == 0
    assert main(["evaluate", *common, "--checkpoint", f"{tmp_path}/run/align-rodpo/best"]) == 0
    assert "| test |" in capsys.readouterr().out


def test_bad_config_exits_2_with_every_problem(capsys):
    assert main(["pretrain", "--config", "configs/demo.yaml", "model.hiden=3", "align.beta=-1"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "did you mean model.hidden?" in err and "align.beta: must be > 0" in err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    code = main(["align", "--config", "configs/demo.yaml", "--init", f"{tmp_path}/nope"])
    assert code == 2 and f"init: checkpoint {tmp_path}/nope does not exist" in capsys.readouterr().err


def test_evaluate_reads_the_run_config_and_verify_checks_the_shards(tmp_path, capsys):
    common = ["--config", "configs/demo.yaml", *TINY, f"data.prepared_dir={tmp_path}/data",
              f"runtime.run_dir={tmp_path}/run"]
    assert main(["data", "prepare", *common]) == 0
    assert main(["pretrain", *common]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", f"{tmp_path}/run/pretrain/best", "--splits", "test"]) == 0
    assert "| test |" in capsys.readouterr().out
    assert main(["data", "verify", f"{tmp_path}/data"]) == 0
    assert "matches its sha256" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", f"{tmp_path}/nothing"]) == 1
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", f"{tmp_path}/run/pretrain"]) == 1  # the run folder, not a checkpoint
    assert (f"checkpoint {tmp_path}/run/pretrain has no model.safetensors (a run folder: its validation-selected "
            f"checkpoint is {tmp_path}/run/pretrain/best)") in capsys.readouterr().err
    assert main(["pretrain", *common]) == 1  # the folder holds a run: neither resumed nor overwritten
    assert "already holds a run" in capsys.readouterr().err


def test_sweep_records_every_point_on_validation_only(tmp_path, capsys):
    import json

    common = ["--config", "configs/demo.yaml", *TINY, f"data.prepared_dir={tmp_path}/data",
              f"runtime.run_dir={tmp_path}/runs", "align.num_negatives=2"]
    out = tmp_path / "sweep"
    assert main(["sweep", *common, "--grid", "align.beta=0.5", "--methods", "ce", "rodpo", "--out", str(out)]) == 0
    entries = json.loads((out / "sweep.json").read_text())
    assert [(e["method"], e["overrides"]) for e in entries] == [
        ("ce", []), ("rodpo", []), ("ce", ["align.beta=0.5"]), ("rodpo", ["align.beta=0.5"])]
    assert all("test" not in e and "ndcg@5" in e["valid"] and "ndcg@5" in e["valid_last"] for e in entries)
    assert len({e["run_dir"] for e in entries}) == 4 and "| rodpo | align.beta=0.5 |" in (out / "sweep.md").read_text()
    # running it again finds every run (same settings, same folders) and adds nothing: no step is trained
    # again, no checkpoint rewritten, and the entries are the same
    runs = [Path(e["run_dir"]) for e in entries] + list(Path(entries[0]["run_dir"]).parent.glob("backbone-*"))
    assert len(runs) == 5

    def trained(folder):
        """The training and validation records (with their times), and the checkpoint files with theirs."""
        lines = [r for r in (folder / "metrics.jsonl").read_text().splitlines()
                 if json.loads(r)["kind"] in ("train", "valid", "pool")]
        return lines, {p: p.stat().st_mtime_ns for p in folder.glob("*/*.safetensors")}

    before = {run: trained(run) for run in runs}
    assert all(lines and files for lines, files in before.values())
    assert main(["sweep", *common, "--grid", "align.beta=0.5", "--methods", "ce", "rodpo", "--out", str(out)]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert [{k: v for k, v in e.items() if k != "command"} for e in again] == [
        {k: v for k, v in e.items() if k != "command"} for e in entries]
    assert {run: trained(run) for run in runs} == before


def test_an_interrupt_ends_with_the_way_to_resume_and_no_traceback(monkeypatch, capsys):
    import rodpo_dist.data.prepare as preparation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preparation, "ensure_prepared", interrupted)
    assert main(["pretrain", "--config", "configs/demo.yaml"]) == 130
    assert capsys.readouterr().err == ("rodpo: interrupted; a training run continues from its last checkpoint "
                                       "with --resume auto\n")
