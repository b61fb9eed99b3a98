import pytest

from rodpo_dist.config import ConfigError, load_config


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.model.hidden == 64 and cfg.align.strategy == "rodpo"


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(None, ["model.hidden=32", "data.modalities=[text]", "align.beta=0.5", "moe.enabled=true"])
    assert cfg.model.hidden == 32 and cfg.data.modalities == ["text"] and cfg.align.beta == 0.5 and cfg.moe.enabled


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.hiden=3", "model.layers=x", "align.strategy=rodp", "pretrain.lr=-1",
                           "data.modalities=[text,imag]", "moe.enabled=true", "moe.top_k=3",
                           "init=/nonexistent/ckpt", "eval.metric=ndcg10"])
    text = str(err.value)
    assert "8 problem(s)" in text
    assert "model.hiden: unknown key (did you mean model.hidden?)" in text
    assert "model.layers: expected int, got str 'x'" in text
    assert "align.strategy: 'rodp' is not one of 'ce', 'random', 'hard', 'rodpo', 'sdpo' (did you mean 'rodpo'?)" in text
    assert "pretrain.lr: must be > 0, got -1.0" in text
    assert "data.modalities[1]: unknown modality 'imag' (did you mean 'image'?)" in text
    assert "moe.top_k: must be 1 or 2, got 3" in text
    assert "init: checkpoint /nonexistent/ckpt does not exist" in text
    assert "eval.metric: expected hr@K, ndcg@K or mrr@K, got 'ndcg10'" in text


def test_cross_field_rules():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.hidden=30", "model.heads=4", "moe.enabled=true", "moe.ep_size=2",
                           "data.source=s3rec"])
    text = str(err.value)
    assert "model.hidden (30) must be divisible by model.heads (4)" in text
    assert "moe.ep_size > 1 needs moe.backend: deepspeed" in text
    assert "data.path: required for data.source='s3rec'" in text
    assert "data.name: required for data.source='s3rec'" in text


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    section = tmp_path / "section.yaml"
    section.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model: expected a section"):
        load_config(section)


def test_shipped_configs_load_and_open_with_their_command(tmp_path):
    from pathlib import Path

    import yaml

    for path in sorted(Path("configs").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# Run: "), f"{path} must open with the command that runs it"
        if "amazon" in path.read_text() and not Path("../shared/data/amazon").is_dir():
            continue
        data = yaml.safe_load(path.read_text()).get("data") or {}
        stand_in = []
        if data.get("path") and not Path(data["path"]).exists():
            # data the repository may not ship (MovieLens: its licence): an empty stand-in, every other check runs
            (tmp_path / f"{data.get('name', '')}.inter").write_text("user_id:token\titem_id:token\n")
            stand_in = [f"data.path={tmp_path}"]
        load_config(path, stand_in)


def test_exponent_floats_that_yaml_reads_as_strings_are_accepted():
    cfg = load_config(None, ["align.lr=2e-5", "pretrain.lr=1E-3"])
    assert cfg.align.lr == 2e-5 and cfg.pretrain.lr == 1e-3
    with pytest.raises(ConfigError, match="align.lr: expected float"):
        load_config(None, ["align.lr=fast"])


def _problems(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(None, list(overrides))
    return str(err.value)


def test_the_selection_metric_must_be_computed():
    assert "eval.metric: ndcg@50 is not computed: its K (50) is not in eval.ks [5, 10, 20]" in _problems("eval.metric=ndcg@50")
    assert load_config(None, ["eval.metric=mrr@20"]).eval.metric == "mrr@20"


def test_the_pool_must_hold_the_negatives_a_strategy_draws():
    assert "align.num_negatives (8) exceeds the pool entries it can draw from: pool.k (5)" in _problems(
        "pool.k=5", "align.num_negatives=8", "align.strategy=hard")
    text = _problems("pool.k=10", "align.num_negatives=4", "align.sampling=window", "align.window_start=8")
    assert "pool.k (10) - align.window_start (8)" in text
    assert "align.window_start (12) must be < pool.k (10)" in _problems(
        "pool.k=10", "align.sampling=window", "align.window_start=12")
    assert load_config(None, ["pool.k=5", "align.num_negatives=8", "align.strategy=random"]).pool.k == 5  # no pool


def test_stage_align_needs_a_checkpoint_and_moe_needs_enough_experts():
    assert "init: the align stage needs a pretrained checkpoint" in _problems("stage=align")
    assert "moe.top_k (2) exceeds moe.num_experts (1)" in _problems("moe.enabled=true", "moe.num_experts=1")
    assert "model.use_id_embedding=false needs at least one entry in data.modalities" in _problems(
        "model.use_id_embedding=false", "data.modalities=[]")


def test_s3rec_dataset_file_must_exist(tmp_path):
    (tmp_path / "Beauty.txt").write_text("1 1 2 3\n")
    assert load_config(None, ["data.source=s3rec", f"data.path={tmp_path}", "data.name=Beauty"]).data.name == "Beauty"
    assert f"data.name: {tmp_path}/Beuty.txt does not exist" in _problems(
        "data.source=s3rec", f"data.path={tmp_path}", "data.name=Beuty")


def test_deepspeed_json_must_agree_with_the_yaml(tmp_path):
    import json

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": "auto"}))
    text = _problems("runtime.engine=deepspeed", f"runtime.deepspeed_config={path}", "pretrain.batch_size=16")
    assert "sets train_micro_batch_size_per_gpu=8 but the pretrain section says 16" in text
    path.write_text("{not json")
    assert "is not valid JSON" in _problems("runtime.engine=deepspeed", f"runtime.deepspeed_config={path}")


def test_study_section_is_checked():
    text = _problems("study.methods=[rodpo,dpo]", "study.variants={moe: [moe.enabled]}")
    assert "study.methods: unknown method 'dpo'" in text
    assert "study.variants.moe: expected key.sub=value overrides, got 'moe.enabled'" in text


def test_runs_recorded_before_fields_were_added_keep_their_hash():
    """Fields added later are left out of the identity at their defaults: these are the default config's
    hashes as of commit a9029a6, so runs recorded then are found again."""
    import dataclasses

    from rodpo_dist.config import Config, config_hash

    assert config_hash(Config()) == "ae9159e96950"
    assert config_hash(dataclasses.replace(Config(), stage="align")) == "288cdf694ba4"


def test_an_alignments_identity_holds_the_pretraining_loss_its_ce_reuses():
    import dataclasses

    from rodpo_dist.config import Config, config_hash

    def align(ce_loss, loss):
        c = Config()
        return dataclasses.replace(c, stage="align", align=dataclasses.replace(c.align, ce_loss=ce_loss),
                                   pretrain=dataclasses.replace(c.pretrain, loss=loss))

    assert config_hash(align("pretrain", "full")) != config_hash(align("pretrain", "sampled"))
    assert config_hash(align("full", "full")) == config_hash(align("full", "sampled"))  # the full CE ignores it


EP = ["moe.enabled=true", "moe.ep_size=2", "moe.num_experts=4"]


@pytest.mark.parametrize("settings, message, fix", [
    (["model.sparse_item_table=true", "model.use_id_embedding=false", "data.modalities=[text]"],
     "model.sparse_item_table needs model.use_id_embedding", ["model.use_id_embedding=true"]),
    (["model.sparse_item_table=true", "runtime.engine=deepspeed"],
     "model.sparse_item_table: runtime.engine=deepspeed reduces dense gradients only", ["runtime.engine=plain"]),
    ([*EP, "moe.num_experts=3"], "moe.num_experts (3) must be divisible by moe.ep_size (2)", ["moe.num_experts=4"]),
    ([*EP, "moe.backend=torch"], "moe.ep_size > 1 needs moe.backend: deepspeed", ["moe.backend=deepspeed"]),
    ([*EP, "moe.drop_tokens=true"], "moe.drop_tokens: must be false with moe.ep_size > 1", ["moe.drop_tokens=false"]),
    ([*EP, "runtime.engine=plain"], "moe.ep_size=2 (expert parallelism) needs runtime.engine=deepspeed",
     ["runtime.engine=deepspeed"]),
])
def test_each_model_rule_names_its_fields_and_passes_once_fixed(settings, message, fix):
    def problems(*overrides: str) -> list[str]:
        try:
            load_config(None, list(overrides))
        except ConfigError as err:
            return err.problems
        return []

    assert any(p.startswith(message) for p in problems(*settings))
    assert not any(p.startswith(message) for p in problems(*settings, *fix))
