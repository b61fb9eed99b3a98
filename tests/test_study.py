from rodpo_dist.study import load_records, results_table, save_records, target_check, write_results_md


def _rec(method, seed, ndcg5, fn=None, modalities=("text",), moe=False):
    test = {k: 0.1 for k in ("hr@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10")} | {"ndcg@5": ndcg5}
    return {"dataset": "Toy", "method": method, "seed": seed, "valid": test, "test": test, "false_negative_rate": fn,
            "wall_time_s": 10.0, "command": "rodpo study --config x.yaml", "modalities": list(modalities),
            "selection_metric": "ndcg@10", "hyperparameters": {"moe": {"enabled": moe, "placement": "ffn"}}}


def test_records_merge_and_table_reports_mean_std_and_relative_change(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    save_records(out / "records.json", [_rec("backbone", 0, 0.10), _rec("backbone", 1, 0.12),
                                        _rec("rodpo", 0, 0.11, 0.2), _rec("rodpo", 1, 0.13, 0.4)])
    save_records(out / "records.json", [_rec("rodpo", 1, 0.12, 0.4)])  # replaces (Toy, rodpo, 1)
    assert len(load_records(out / "records.json")) == 4
    table = results_table(load_records(out / "records.json"), "Toy")
    backbone, rodpo = table.splitlines()[2:]
    assert "| id+text | backbone | 2 | 0.1000 ± 0.0000 | 0.1100 ± 0.0100 |" in backbone
    assert "0.1150 ± 0.0050" in rodpo and "+4.55%" in rodpo and "| 0.300 |" in rodpo
    md = write_results_md(out).read_text()
    assert "## Toy" in md and "`rodpo study --config x.yaml`" in md


def test_variants_are_kept_apart_and_compared_with_their_own_backbone(tmp_path):
    path = tmp_path / "records.json"
    save_records(path, [_rec("backbone", 0, 0.10), _rec("backbone", 0, 0.05, modalities=()),
                        _rec("backbone", 0, 0.20, moe=True), _rec("rodpo", 0, 0.06, modalities=())])
    rows = results_table(load_records(path), "Toy").splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| id", "backbone"], ["| id", "rodpo"], ["| id+text", "backbone"],
                                                  ["| id+text+moe(ffn)", "backbone"]]
    assert "+20.00%" in rows[1]  # 0.06 vs the ID-only backbone's 0.05


def test_target_check_needs_the_gain_and_a_lead_over_random_and_hard():
    def records(rodpo, random, hard):
        return [_rec("backbone", 0, 0.100), _rec("rodpo", 0, rodpo), _rec("random", 0, random), _rec("hard", 0, hard)]

    met = target_check(records(0.106, 0.104, 0.103), "Toy")
    assert "RoDPO +6.00%" in met and "random +4.00%, hard +3.00%" in met and "**met**" in met
    assert "**not met**" in target_check(records(0.104, 0.101, 0.101), "Toy")  # +4% < +5%
    assert "**not met**" in target_check(records(0.106, 0.107, 0.101), "Toy")  # behind random
    assert target_check(records(0.106, 0.104, 0.103)[:2], "Toy") == ""  # no baselines: nothing to check
