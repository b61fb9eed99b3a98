#!/usr/bin/env python
"""Mutation check: deliberate bugs, one at a time; each must make at least one of its tests fail.

Every mutation replaces one piece of source text (found exactly the expected number of times) in a
temporary copy of the checkout (tracked files and untracked ones git does not ignore; the checkout
itself is never touched), then runs only the tests that target it, with the copy first on the import
path (`PYTHONPATH`). Outcomes:

  caught     the tests fail: the bug is seen
  SURVIVED   the tests pass: no test checks this claim
  error      the text to replace is not there (the code moved: update the mutation), or pytest could
             not run the tests (collection error, timeout)

A baseline first runs every targeted test on the unmutated copy (they must pass) and checks that
`rodpo_dist` is imported from the copy. `rodpo_kernels` comes from the checkout's editable install
(no mutation touches `kernels/`, and its compiled top-K selection stays in its usual build cache).

  python tools/mutations.py            # every mutation (about 5 min on 2 idle cores)
  python tools/mutations.py --ci       # the fixed subset `make test` runs after the suite, no baseline
  python tools/mutations.py --only sdpo-drawn-as-hard double-gradient
  python tools/mutations.py --list

Exit status 0 when the baseline passes and every mutation run is caught. docs/testing.md holds the
list and the last full result.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    count: int = 1
    """How many times `old` occurs (every occurrence is replaced)."""
    ci: bool = False
    """Part of the subset `make test` runs: the core claims whose tests take seconds."""


RECIPES = "tests/train/test_recipes.py"
ALIGN_GRADIENT = f"{RECIPES}::test_the_alignment_gradient_is_that_of_the_written_loss"
MUTATIONS = [
    # ---------------------------------------------------------------- the core claims (issue 27)
    Mutation("double-gradient", "every gradient doubled (the step's loss scaled by 2)",
             "rodpo_dist/train/recipe.py", "scale = self.rt.world_size / self.units_per_step",
             "scale = 2 * self.rt.world_size / self.units_per_step",
             (f"{RECIPES}::test_the_gradient_is_that_of_the_loss_normalised_by_the_epochs_mean_targets_per_step",), ci=True),
    Mutation("sum-over-ranks", "gradients summed over ranks instead of averaged (plain engine)",
             "rodpo_dist/train/engine.py", "return grad / world_size", "return grad",
             ("tests/launch/test_data_parallel.py::test_two_ranks_equal_one_rank_with_the_same_global_batch"
              "[torchrun-plain]",)),
    Mutation("resume-from-epoch-start", "no checkpoint at a preemption: the run resumes from the end-of-epoch one",
             "rodpo_dist/train/recipe.py",
             "preemption.requested(rt):\n                    self.checkpoint()\n",
             "preemption.requested(rt):\n                    pass\n",
             (f"{RECIPES}::test_resumed_run_equals_uninterrupted_run",), ci=True),
    Mutation("sdpo-drawn-as-hard", "S-DPO takes the deterministic top of the pool",
             "rodpo_dist/train/negatives.py", 'if strategy == "hard":', 'if strategy in ("hard", "sdpo"):',
             ("tests/train/test_negatives.py",), ci=True),
    Mutation("history-item-recommended", "recommend lets each history's oldest item back into its top K",
             "rodpo_dist/serve/recommender.py", "yield ScoringBatch(seq, exclude, meta=index)",
             "yield ScoringBatch(seq, exclude[:, 1:], meta=index)",
             ("tests/serve/test_recommender.py", "tests/serve/test_jsonl.py"), ci=True),
    Mutation("no-logq", "sampled softmax without the logQ correction",
             "rodpo_dist/train/losses.py", " - torch.log(num_sampled * q.to(hidden.device)[sampled])", "",
             ("tests/train/test_losses.py",), ci=True),
    Mutation("prefix-only-exclusion", "a training context excludes only its prefix (not the whole sequence) "
             "from negatives and the pool", "rodpo_dist/data/contexts.py",
             "exclude = padded_ids([self.sequences[i] for i in index])[torch.as_tensor(rows)]",
             "exclude = padded_ids([self.sequences[i][:len(self.sequences[i]) - 1 - b] "
             "for i, b in zip(index[rows], back)])",
             ("tests/train/test_pool.py", "tests/data/test_contexts.py"), ci=True),
    Mutation("pickle-checkpoint", "checkpoints loaded with pickle (weights_only=False)",
             "rodpo_dist/train/checkpoint.py", "weights_only=True,", "weights_only=False,",
             ("tests/train/test_checkpoint.py",), count=2, ci=True),
    # ---------------------------------------------------------------- the other findings
    Mutation("gradient-scaled-by-accumulation", "each micro-batch's gradient multiplied by grad_accum",
             "rodpo_dist/train/pretrain.py", "self.engine.backward(ce_sum * scale + ",
             "self.engine.backward(ce_sum * scale * micro_batches + ",
             (f"{RECIPES}::test_gradient_accumulation_equals_a_bigger_batch",)),
    Mutation("usr1-ignored", "SIGUSR1 is not turned into a checkpoint", "rodpo_dist/runtime.py",
             "signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)", "signals: tuple[int, ...] = (signal.SIGTERM,)",
             ("tests/launch/test_faults.py::test_a_signal_checkpoints_and_resume_equals_an_uninterrupted_run"
              "[pretrain-plain-usr1-rank1]",)),
    Mutation("signal-not-shared", "a signal stops only the rank that got it (the flag is not all-reduced)",
             "rodpo_dist/runtime.py", "            dist.all_reduce(flag, op=dist.ReduceOp.MAX)\n",
             "            pass\n",
             ("tests/launch/test_faults.py::test_a_signal_checkpoints_and_resume_equals_an_uninterrupted_run"
              "[pretrain-plain-usr1-rank1]",)),
    Mutation("prepare-ignores-config-dir", "`rodpo data prepare` without --out has no output folder",
             "rodpo_dist/cli.py", "out = args.out or cfg.data.prepared_dir", "out = args.out",
             ("tests/test_configs_run_as_written.py",)),
    Mutation("report-last-as-best", "the report gives the last weights' metrics as those of `best`",
             "rodpo_dist/train/selection.py", '    load_weights(run_dir / "best", model)\n', "",
             (f"{RECIPES}::test_alignment_runs_logs_and_refreshes_on_schedule",)),
    Mutation("liked-counted-as-unliked", "the false-negative counter counts the negatives the user does not like",
             "rodpo_dist/train/false_negatives.py", "(bins, 1), relevant.ravel()", "(bins, 1), (~relevant).ravel()",
             (f"{RECIPES}::test_alignment_runs_logs_and_refreshes_on_schedule",)),
    Mutation("truth-without-item-bias", "the synthetic truth's relevance ignores the item bias",
             "rodpo_dist/data/synthetic.py", ".sum(-1) + self.item_bias[items]", ".sum(-1)",
             ("tests/data/test_synthetic.py::"
              "test_false_negative_rate_is_the_share_of_negatives_the_user_likes_by_definition",)),
    Mutation("sweep-retrains", "a sweep trains every finished run again",
             "rodpo_dist/study/runner.py", 'result = run_stage(run.cfg, resume="auto")',
             "result = run_stage(run.cfg, overwrite=True)",
             ("tests/test_cli.py::test_sweep_records_every_point_on_validation_only",)),
    Mutation("recommend-first-chunk-only", "recommend writes the first chunk of requests only",
             "rodpo_dist/serve/jsonl.py", "while chunk := list(islice(requests, CHUNK)):",
             "if chunk := list(islice(requests, CHUNK)):",
             ("tests/serve/test_jsonl.py::test_requests_stream_in_chunks_in_input_order",)),
    Mutation("data-imports-model", "the data layer imports the model layer (relative import)",
             "rodpo_dist/data/batching.py", "\ndef padding_share(",
             "\ndef _model_layer():\n    from ..model import sasrec\n    return sasrec\n\n\ndef padding_share(",
             ("tests/test_layers.py",)),
    Mutation("subpackage-left-out", "a subpackage is left out of the built wheel", "setup.py",
             'find_packages(include=["rodpo_dist", "rodpo_dist.*"])',
             'find_packages(include=["rodpo_dist", "rodpo_dist.*"], exclude=["rodpo_dist.study"])',
             ("tests/test_packaging.py",)),
    # ---------------------------------------------------------------- added 2026-12-05
    Mutation("sparse-rows-summed", "the sparse item table's row gradients summed over ranks instead of averaged",
             "rodpo_dist/train/engine.py", "                                            world_size)",
             "                                            1)",
             ("tests/launch/test_data_parallel.py::test_two_ranks_equal_one_rank_with_the_sparse_item_table",)),
    Mutation("jit-pool-no-epoch-refresh", "the just-in-time pool is not refreshed when a new epoch starts",
             "rodpo_dist/train/align.py", "refresh_epoch = (pool.refresh_each_epoch or upcoming) and",
             "refresh_epoch = pool.refresh_each_epoch and",
             ("tests/train/test_scale_paths.py::test_every_batch_draws_from_contexts_its_latest_just_in_time"
              "_refresh_scored",)),
    Mutation("stale-prepared-data", "a dataset prepared from other data settings is reused",
             "rodpo_dist/data/prepare.py", "elif problems := prepared_mismatch(cfg.data, directory):",
             "elif problems := []:",
             ("tests/data/test_prepare.py", "tests/test_study.py::test_a_study_checks_every_variants_data_before_any"
                                            "_training")),
    Mutation("rejection-tie-before-positive", "a rejection at a positive's time counts as before it (the validation "
                                              "target's time leaks into training)",
             "rodpo_dist/data/rejections.py", "order = np.lexsort((is_rejection, all_times, all_users))",
             "order = np.lexsort((-is_rejection, all_times, all_users))",
             ("tests/data/test_rejections.py",)),
    # ---------------------------------------------------------------- a review's survivors (2026-12-06)
    Mutation("sdpo-scored-as-mean", "strategy sdpo trains with the mean pairwise DPO loss, not S-DPO's",
             "rodpo_dist/train/align.py", 'self.variant = "sdpo" if a.strategy == "sdpo" else',
             'self.variant = "mean" if a.strategy == "sdpo" else', (ALIGN_GRADIENT,), ci=True),
    Mutation("align-ignores-ce-weight", "the anchoring CE gets weight 1 whatever align.ce_weight",
             "rodpo_dist/train/align.py", '(1.0 if a.strategy == "ce" else a.ce_weight) * ce', "ce",
             (ALIGN_GRADIENT,), ci=True),
    Mutation("align-ignores-label-smoothing", "align.label_smoothing never reaches the loss",
             "rodpo_dist/train/align.py", "label_smoothing=a.label_smoothing)", "label_smoothing=0.0)",
             (ALIGN_GRADIENT,)),
    Mutation("align-normalised-per-sequence", "the alignment loss is divided by the mean sequences per step, "
                                              "not contexts", "rodpo_dist/train/align.py",
             "steps_per_epoch(per_rank, a), len(self.contexts))",
             "steps_per_epoch(per_rank, a), self.contexts.num_sequences)", (ALIGN_GRADIENT,)),
    Mutation("pool-from-reference", "pool.source=policy scores the pool with the frozen reference",
             "rodpo_dist/train/align.py", 'if self.cfg.pool.source == "policy":', "if False:",
             (f"{RECIPES}::test_the_pool_is_the_top_k_under_its_configured_source",)),
    Mutation("trdpo-reference-never-moves", "the TR-DPO soft update mixes the reference with itself",
             "rodpo_dist/train/align.py", "ref.mul_(1 - alpha).add_(new.detach(), alpha=alpha)",
             "ref.mul_(1 - alpha).add_(ref.detach(), alpha=alpha)",
             (f"{RECIPES}::test_the_trdpo_update_moves_the_reference_toward_the_policy",)),
    Mutation("align-uses-heldout-rejections", "alignment draws observed rejections from the held-out (future) ones",
             "rodpo_dist/train/align.py", "rejections.by_user(self.data.manifest.num_users, heldout=False)",
             "rejections.by_user(self.data.manifest.num_users, heldout=True)",
             (f"{RECIPES}::test_alignment_draws_observed_rejections_from_the_training_ones_only",)),
    Mutation("dislike-metric-on-training-rejections", "dislike_hr@10 is scored on the training rejections",
             "rodpo_dist/data/rejections.py", "offsets, items, _ = self.by_user(num_users, heldout=True)",
             "offsets, items, _ = self.by_user(num_users, heldout=False)", ("tests/data/test_rejections.py",)),
    Mutation("moe-aux-times-accumulation", "pretraining's MoE aux loss counted once per micro-batch (x grad_accum)",
             "rodpo_dist/train/pretrain.py", "self.cfg.moe.aux_weight * aux / micro_batches",
             "self.cfg.moe.aux_weight * aux",
             (f"{RECIPES}::test_the_gradient_is_that_of_the_loss_normalised_by_the_epochs_mean_targets_per_step",)),
    Mutation("standalone-padding-recommendable", "the exported standalone scorer can recommend row 0 (padding)",
             "rodpo_dist/serve/standalone.py", '        scores[:, 0] = float("-inf")\n', "",
             ("tests/serve/test_export.py::test_the_exported_scorer_ranks_the_whole_catalog_without_padding",)),
    Mutation("time-ties-reverse-file-order", "interactions at the same time are ordered against the file",
             "rodpo_dist/data/events.py", "order = np.lexsort((events.time, u))",
             "order = np.lexsort((-np.arange(len(u)), events.time, u))", ("tests/data/test_events.py",)),
    Mutation("verify-skips-listed-files", "`rodpo data verify` checks the shards but not the files beside them",
             "rodpo_dist/data/manifest.py", "for name, digest in listed + list(manifest.files.items()):",
             "for name, digest in listed:", ("tests/data/test_bad_shards.py",)),
    Mutation("verify-skips-item-shards", "`rodpo data verify` checks the split shards only",
             "rodpo_dist/data/manifest.py", "for group in SHARD_GROUPS for s in manifest.shards[group]]",
             "for group in SPLITS for s in manifest.shards[group]]", ("tests/data/test_bad_shards.py",)),
    Mutation("mismatch-saved-key-no-default", "a setting a dataset predates counts as changed",
             "rodpo_dist/data/prepare.py", "saved.get(key, defaults.get(key))", "saved.get(key)",
             ("tests/data/test_prepare.py",)),
    Mutation("mismatch-unprepared-modality", "a modality the dataset was not prepared with is accepted",
             "rodpo_dist/data/prepare.py",
             'if absent := [m for m in cfg.modalities if m not in saved_cfg.get("modalities", [])]:',
             "if absent := []:", ("tests/data/test_prepare.py",)),
    Mutation("significant-by-point-estimate", "a change counts as significant by its sign, not its interval",
             "rodpo_dist/study/stats.py", '"significant": hi < 0 if lower_is_better else lo > 0}',
             '"significant": change < 0 if lower_is_better else change > 0}', ("tests/test_study.py",)),
    Mutation("moe-eval-at-train-capacity", "evaluation drops tokens at the training capacity factor",
             "rodpo_dist/model/moe.py", "factor = self.capacity_factor if self.training else self.eval_capacity_factor",
             "factor = self.capacity_factor", ("tests/model/test_moe.py",)),
    Mutation("warmup-starts-at-zero", "the first warm-up step has learning rate 0",
             "rodpo_dist/train/optim.py", "return (step + 1) / warmup", "return step / warmup",
             ("tests/train/test_optim.py",)),
    Mutation("decay-ignores-warmup", "the decay runs over all steps, warm-up included",
             "rodpo_dist/train/optim.py", "progress = min(1.0, (step - warmup) / max(1, total - warmup))",
             "progress = min(1.0, step / max(1, total))", ("tests/train/test_optim.py",)),
    Mutation("rule-drop-tokens-with-ep", "the config accepts token dropping with expert parallelism",
             "rodpo_dist/config/validate.py", "_need(problems, not moe.drop_tokens,", "_need(problems, True,",
             ("tests/test_config.py",)),
    Mutation("rule-sparse-needs-id-table", "the config accepts a sparse item table without an ID table",
             "rodpo_dist/config/validate.py", '_need(problems, cfg.model.use_id_embedding, "model.sparse_item_table needs',
             '_need(problems, True, "model.sparse_item_table needs', ("tests/test_config.py",)),
    Mutation("valid-sample-applied-to-test", "eval.valid_users samples the test users too",
             "rodpo_dist/train/selection.py", 'contexts = contexts.sample(users) if split == "valid" else contexts',
             "contexts = contexts.sample(users)",
             (f"{RECIPES}::test_a_validation_sample_leaves_the_test_split_whole",)),
    Mutation("window-batches-shortest-first", "a window's batches are served shortest first",
             "rodpo_dist/data/batching.py",
             "return [batches[i] for i in rng.permutation(len(batches))] if window > 1 else batches",
             "return batches", ("tests/data/test_batching.py",)),
    Mutation("recbole-anomaly-left-on", "importing RecBole leaves autograd anomaly detection on",
             "benchmarks/bench_peers.py", "    torch.autograd.set_detect_anomaly(False)\n", "",
             ("tests/data/test_recbole_export.py::test_recbole_own_dataset_reproduces_the_split",)),
]

IGNORED = shutil.ignore_patterns(".git", ".venv", "runs", "data_cache", "build", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis")


def copy_checkout(dest: Path) -> None:
    """The files a clean clone holds (git: tracked + untracked-not-ignored), else the tree minus build outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=IGNORED, symlinks=True)
        return
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def environment(tree: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                         "TOKENIZERS_PARALLELISM": "false", "TRITON_INTERPRET": "1"}


def pytest(tree: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """("passed" | "failed" | "error", seconds, first failure or the output's tail)."""
    tic = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider",
                               "--basetemp", str(tree.parent / "pytest"), *tests],
                              cwd=tree, env=environment(tree), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", time.monotonic() - tic, f"timed out after {timeout} s"
    seconds = time.monotonic() - tic
    if done.returncode == 0:
        return "passed", seconds, ""
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
    if done.returncode == 1 and failed:
        return "failed", seconds, failed[0]
    return "error", seconds, f"pytest exit {done.returncode}: " + " | ".join(done.stdout.strip().splitlines()[-3:])


def apply(tree: Path, m: Mutation) -> str | None:
    """Mutate the copy; returns the original text (None: `old` is not there `count` times)."""
    path = tree / m.path
    text = path.read_text() if path.is_file() else ""
    if text.count(m.old) != m.count:
        return None
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true",
                        help="only the CI subset, without the baseline (make test has just run the suite)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the targeted tests")
    parser.add_argument("--whole-files", action="store_true",
                        help="run the whole test file of each target (e.g. to try an older suite, whose test names differ)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if (not args.ci or m.ci) and (not args.only or m.name in args.only)]
    unknown = set(args.only or []) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s) {sorted(unknown)}; known: {[m.name for m in MUTATIONS]}")
    if args.list:
        for m in chosen:
            print(f"{m.name:32} {'ci ' if m.ci else '   '} {m.path}: {m.bug}\n{'':36} tests: {' '.join(m.tests)}")
        return 0

    started, bad = time.monotonic(), 0
    with tempfile.TemporaryDirectory(prefix="rodpo-mutations-") as tmp:
        tree = Path(tmp) / "tree"
        copy_checkout(tree)
        where = subprocess.run([sys.executable, "-c", "import rodpo_dist; print(rodpo_dist.__file__)"], cwd=tmp,
                               env=environment(tree), capture_output=True, text=True)
        if not where.stdout.strip().startswith(str(tree)):
            print(f"error: rodpo_dist is not imported from the copy ({where.stdout.strip() or where.stderr[-500:]})")
            return 1
        print(f"{len(chosen)} mutation(s) on a copy of {REPO} ({tree})")
        targets = {m.name: list(dict.fromkeys(t.split("::")[0] if args.whole_files else t for t in m.tests))
                   for m in chosen}
        if not (args.no_baseline or args.ci):
            tests = list(dict.fromkeys(t for m in chosen for t in targets[m.name]))
            outcome, seconds, detail = pytest(tree, tests, args.timeout)
            print(f"{'baseline (no mutation)':32} {'passed' if outcome == 'passed' else 'FAILED':9} {seconds:6.1f} s"
                  f"  {len(tests)} test target(s) {detail}", flush=True)
            if outcome != "passed":
                return 1
        for m in chosen:
            original = apply(tree, m)
            if original is None:
                outcome, seconds, detail = "error", 0.0, f"{m.path}: the text to replace is not there {m.count} time(s)"
            else:
                try:
                    outcome, seconds, detail = pytest(tree, targets[m.name], args.timeout)
                finally:
                    (tree / m.path).write_text(original)
            shown = {"failed": "caught", "passed": "SURVIVED", "error": "error"}[outcome]
            bad += shown != "caught"
            print(f"{m.name:32} {shown:9} {seconds:6.1f} s  {detail}", flush=True)
    print(f"{len(chosen) - bad}/{len(chosen)} caught in {time.monotonic() - started:.0f} s")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
