"""RecBole's SASRec beside this trainer's backbone: same split, same protocol, same machine (issue 24).

  pip install -e '.[peers]'     # recbole==1.2.1 and the few packages it imports
  OMP_NUM_THREADS=1 python benchmarks/bench_peers.py --config configs/beauty.yaml \
      --results benchmarks/RESULTS_peers.md

One command per dataset. Steps, each cached under `<--out>/<dataset>/` (a rerun skips what finished,
and a killed RecBole training continues from its last finished epoch):

1. The config's prepared leave-one-out split (prepared on demand) is written as RecBole atomic files
   (`rodpo_dist.data.export_recbole`: users and items keep the prepared ids, timestamps keep each
   sequence's order). RecBole reads them with `eval_args: {split: {LS: valid_and_test}, order: TO,
   group_by: user, mode: full}`, no filtering; before any training the benchmark asserts that
   RecBole's train / valid / test rows give every user exactly the prepared targets and histories
   (`check_split`).
2. Our backbone: the config's pretraining run (`<runtime.run_dir>/pretrain`, found again when it
   has finished, else trained here with `rodpo pretrain --config ... --resume auto`).
3. RecBole's SASRec with its CE loss (full softmax), twice: `defaults` (RecBole 1.2.1's SASRec and
   training defaults: 64-d, 2 layers, 2 heads, inner size 256, dropout 0.5, max length 50, Adam lr
   1e-3, batch 2048, up to 300 epochs, early stop after 10 epochs without improvement) and `ours`
   (our model size from the config: hidden, layers, heads, inner size hidden x ffn_mult, dropout,
   max_len; RecBole's training recipe otherwise). Both validate every epoch on NDCG@10 (RecBole's
   default selection metric is MRR@10) and keep the best epoch's weights.
4. Full-ranking test metrics (HR / NDCG / MRR at the config's `eval.ks`) of every model's selected
   weights, computed by one function from each model's scores over the whole catalog, ties counted
   against the target (as `rodpo_dist.eval.metrics`), under both history rules:
   - `masked`: every item of the user's history is removed from the ranking (this trainer's rule,
     `rodpo_dist.eval`); the validation curves of both tools are computed under it.
   - `unmasked`: only padding is removed (RecBole 1.2.1's rule for sequential models: its
     `FullSortEvalDataLoader` passes no history index when `MODEL_TYPE` is sequential).
   RecBole's own evaluator result on test (unmasked rule) is kept beside them as a cross-check.
5. One table: test metrics, best validation NDCG@10 and its epoch, wall time to the best validation
   epoch, and the wall time our backbone needs to reach each RecBole model's best validation
   NDCG@10, as a ratio of RecBole's time to its best. With `--results`, the dataset's section of
   that Markdown file is replaced (command, machine, table).

Wall times: RecBole's is the sum of its epochs (training + validation), from `Trainer.fit`'s first
epoch (after dataset building); ours is the validation record's time minus the run folder's creation
(`run.json`, after data preparation). Both run with `--threads` torch threads (default 1), on the
CPU or, with `--device cuda`, on the GPU. `--max-seconds` stops each RecBole run after the epoch that
passes that much of its clock (marked unfinished; the same command continues it);
`benchmarks/peers_device.sh` runs the three Amazon datasets this way on a GPU machine.

Compatibility shims with the pinned numpy 2 and torch 2.13 (RecBole 1.2.1 was released for numpy 1
and torch < 2.6) live here, in `import_recbole` and `PeerTrainer`, each with its reason. RecBole
trains with PyTorch's anomaly detection off (RecBole 1.2.1 turns it on at import: `import_recbole`);
`--anomaly-detection` keeps it on, as in the runs made before 2026-12-06.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("defaults", "ours")
METRIC = "ndcg@10"


# ---------------------------------------------------------------------------------------------- RecBole

def import_recbole() -> dict[str, Any]:
    """RecBole's pieces, after the numpy shim it needs, with autograd anomaly detection off.

    Shim (numpy 2): RecBole 1.2.1's `Config.compatibility_settings` re-creates the aliases numpy 1.24
    removed (`np.float = np.float_`, `np.int`, `np.bool`, ...) that its evaluator and `Interaction`
    still use, reading `np.float_`, `np.complex_` and `np.unicode_`, which numpy 2 removed as well:
    `Config(...)` raises AttributeError without them. They are restored as the types they named.

    Anomaly detection: RecBole 1.2.1's `model/sequential_recommender/sine.py` calls
    `torch.autograd.set_detect_anomaly(True)` at import, and the package's `__init__` imports it with
    every sequential model, SASRec included: the debugging mode (a stack trace recorded per forward
    op, every backward output checked for NaN) stays on for the whole process, as it does for
    anyone who runs RecBole's SASRec. It changes no number, only the time
    (`benchmarks/bench_recbole_anomaly.py` measures it): off again here, on with `--anomaly-detection`.
    """
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    torch.autograd.set_detect_anomaly(False)
    return {"Config": Config, "create_dataset": create_dataset, "data_preparation": data_preparation,
            "SASRec": SASRec, "Trainer": Trainer, "init_logger": init_logger, "init_seed": init_seed}


def recbole_settings(variant: str, model_cfg: Any, max_len: int, ks: tuple[int, ...] = (5, 10, 20),
                     device: str = "cpu") -> dict[str, Any]:
    """RecBole config dict of a variant (see module docstring, step 3); `model_cfg` only for `ours`."""
    settings: dict[str, Any] = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "metrics": ["Hit", "NDCG", "MRR"], "topk": list(ks), "valid_metric": "NDCG@10",
        "loss_type": "CE", "train_neg_sample_args": None,  # CE is a full softmax: RecBole requires no sampler
        # RecBole sets CUDA_VISIBLE_DEVICES to gpu_id: keep the one the machine gave
        "use_gpu": device != "cpu", "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES", "0"), "show_progress": False, "log_wandb": False, "save_dataset": False,
        "save_dataloaders": False, "state": "INFO", "MAX_ITEM_LIST_LENGTH": max_len,
    }
    if variant == "ours":
        settings |= {"hidden_size": model_cfg.hidden, "n_layers": model_cfg.layers, "n_heads": model_cfg.heads,
                     "inner_size": model_cfg.hidden * model_cfg.ffn_mult,
                     "hidden_dropout_prob": model_cfg.dropout, "attn_dropout_prob": model_cfg.dropout,
                     "MAX_ITEM_LIST_LENGTH": model_cfg.max_len}
    elif variant != "defaults":
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return settings


@dataclass
class RecBoleSplit:
    config: Any
    dataset: Any
    train: Any
    valid: Any
    test: Any


def recbole_split(atomic_root: Path, name: str, settings: dict[str, Any], seed: int) -> RecBoleSplit:
    """RecBole's dataset and train / valid / test loaders of `<atomic_root>/<name>/<name>.inter`."""
    rb = import_recbole()
    config = rb["Config"](model="SASRec", dataset=name,
                          config_dict={**settings, "data_path": str(atomic_root), "seed": seed})
    rb["init_seed"](config["seed"], config["reproducibility"])
    rb["init_logger"](config)
    dataset = rb["create_dataset"](config)
    train, valid, test = rb["data_preparation"](config, dataset)
    return RecBoleSplit(config, dataset, train, valid, test)


def id_maps(split: RecBoleSplit) -> tuple[np.ndarray, np.ndarray]:
    """(our user id of each RecBole user index, our item id of each RecBole item index); index 0 -> 0."""
    tokens = split.dataset.field2id_token
    users = np.array([0, *map(int, tokens["user_id"][1:])], dtype=np.int64)
    items = np.array([0, *map(int, tokens["item_id"][1:])], dtype=np.int64)
    return users, items


def split_sequences(split: RecBoleSplit) -> dict[str, dict[int, list[tuple[list[int], int]]]]:
    """Per split, per our user: the (input sequence, target) rows RecBole built, in our ids and row order."""
    users, items = id_maps(split)
    out: dict[str, dict[int, list[tuple[list[int], int]]]] = {}
    for name, loader in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        feat = loader._dataset.inter_feat
        uid, target = users[feat["user_id"].numpy()], items[feat["item_id"].numpy()]
        lists, lengths = items[feat["item_id_list"].numpy()], feat["item_length"].numpy()
        rows: dict[int, list[tuple[list[int], int]]] = {}
        for u, t, seq, n in zip(uid.tolist(), target.tolist(), lists, lengths.tolist()):
            rows.setdefault(u, []).append((seq[:n].tolist(), t))
        out[name] = rows
    return out


def check_split(split: RecBoleSplit, full: Any, max_len: int) -> None:
    """Assert that RecBole's rows are the prepared leave-one-out split of `full` (`FullSequences`):
    per user one valid row (target seq[-2], input the last `max_len` of seq[:-2]), one test row
    (seq[-1], the last `max_len` of seq[:-1]) and the training rows of every position of seq[:-2]."""
    short = [int(u) for u, seq in zip(full.users, full.sequences) if len(seq) < 4]
    if short:  # RecBole's leave-one-out keeps >= 1 training row per user: 2 rows give train + test only
        raise AssertionError(f"{len(short)} user(s) (first: {short[0]}) have 3 interactions: RecBole's leave-one-out "
                             "gives them a test row but no validation row, unlike the prepared split")
    rows = split_sequences(split)
    users = full.users.tolist()
    for name in ("valid", "test"):
        if sorted(rows[name]) != users:
            raise AssertionError(f"RecBole's {name} split holds {len(rows[name])} users, the prepared one {len(users)}")
    for user, seq in zip(users, full.sequences):
        seq = seq.tolist()
        for name, cut in (("valid", len(seq) - 2), ("test", len(seq) - 1)):
            expected = [(seq[max(0, cut - max_len):cut], seq[cut])]
            if rows[name][user] != expected:
                raise AssertionError(f"user {user}: RecBole's {name} row {rows[name][user]} != prepared {expected}")
        train = [(seq[max(0, t - max_len):t], seq[t]) for t in range(1, len(seq) - 2)]
        if rows["train"].get(user, []) != train:
            raise AssertionError(f"user {user}: RecBole's training rows differ from the prepared training sequence")


class TimeBudgetSpent(Exception):
    """`--max-seconds`: a RecBole run's clock passed its budget at the end of an epoch (state saved)."""


def peer_trainer_class(Trainer: type) -> type:
    class PeerTrainer(Trainer):
        """RecBole's Trainer with: validation under the masked rule (when `history` is set), a wall
        clock per epoch, the best weights kept in memory and a resumable state after every epoch.

        Shim (torch >= 2.6): `torch.load` defaults to `weights_only=True`, and RecBole's checkpoints
        pickle its `Config`, so `Trainer.evaluate(load_best_model=True)` and `resume_checkpoint`
        fail. No RecBole checkpoint is written or read here: `_save_checkpoint` keeps the best
        weights in memory, and the per-epoch state (`save_state`) holds only tensors and plain
        values, which load with `weights_only=True`.
        """

        history: tuple[torch.Tensor, torch.Tensor] | None = None
        """Masked rule: (offsets [U+1], items) of each RecBole user's history in RecBole item ids."""

        def setup_peer(self, state_path: Path, seed: int, max_seconds: float | None = None) -> None:
            self.state_path, self.seed, self.max_seconds = state_path, seed, max_seconds
            self.clock, self.curve, self.best_state, self.best_epoch = 0.0, [], None, -1

        def _full_sort_batch_eval(self, batched_data):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if self.history is not None:
                offsets, items = self.history
                uid = interaction["user_id"].long()
                counts = offsets[uid + 1] - offsets[uid]
                rows = torch.repeat_interleave(torch.arange(len(uid)), counts)
                starts = torch.repeat_interleave(offsets[uid], counts)
                within = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
                scores[rows.to(scores.device), items[starts + within].to(scores.device)] = -np.inf
            return interaction, scores, positive_u, positive_i

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            start = time.perf_counter()
            loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            self.clock += time.perf_counter() - start
            return loss

        def _valid_epoch(self, valid_data, show_progress=False):
            start = time.perf_counter()
            score, result = super()._valid_epoch(valid_data, show_progress)
            self.clock += time.perf_counter() - start
            self.curve.append({"epoch": len(self.curve) + 1, "seconds": round(self.clock, 2),
                               **{k.lower(): float(v) for k, v in result.items()}})
            return score, result

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_epoch = epoch + 1

        def save_state(self, epoch_idx: int, valid_score: float) -> None:
            """`fit`'s callback after each validated epoch: everything a resumed process needs."""
            state = {"epoch": epoch_idx, "cur_step": self.cur_step, "best_valid_score": float(self.best_valid_score),
                     "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "best_state": self.best_state, "best_epoch": self.best_epoch, "clock": self.clock,
                     "curve": json.dumps(self.curve), "stopped": self.cur_step >= self.stopping_step}
            tmp = self.state_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(self.state_path)
            last = state["stopped"] or epoch_idx + 1 >= self.epochs
            if self.max_seconds is not None and self.clock >= self.max_seconds and not last:
                raise TimeBudgetSpent(epoch_idx + 1)

        def load_state(self) -> bool:
            """Continue from `state_path` when present; returns whether training had already stopped.

            The training order of the continued epochs is seeded by (seed, epoch): deterministic, but
            not the order an uninterrupted run would have drawn."""
            if not self.state_path.is_file():
                return False
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch, self.cur_step = state["epoch"] + 1, state["cur_step"]
            self.best_valid_score, self.best_valid_result = state["best_valid_score"], state["best_valid_result"]
            self.best_state, self.best_epoch, self.clock = state["best_state"], state["best_epoch"], state["clock"]
            self.curve = json.loads(state["curve"])
            torch.manual_seed(self.seed * 100_003 + self.start_epoch)
            np.random.seed((self.seed * 100_003 + self.start_epoch) % 2**32)
            return bool(state["stopped"]) or self.start_epoch >= self.epochs

    return PeerTrainer


def history_index(split: RecBoleSplit, full: Any, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets, items) of each RecBole user's history `seq[:len - cut]` in RecBole item ids."""
    users, items = id_maps(split)
    to_recbole = np.zeros(items.max() + 1, dtype=np.int64)
    to_recbole[items] = np.arange(len(items))
    by_user = dict(zip(full.users.tolist(), full.sequences))
    histories = [np.zeros(0, dtype=np.int64)] + [to_recbole[by_user[u][:len(by_user[u]) - cut]] for u in users[1:]]
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
    return torch.as_tensor(offsets), torch.as_tensor(np.concatenate(histories))


# ------------------------------------------------------------------------------------ shared evaluation

def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, histories: list[np.ndarray],
                      mask_history: bool) -> torch.Tensor:
    """0-based rank of each target among items 1..N of `scores` [B, N+1] (column = our item id,
    0 = padding), ties counted against the target; the history removed under the masked rule."""
    scores = scores.clone().float()
    scores[:, 0] = -torch.inf
    if mask_history:
        rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
        cols = torch.as_tensor(np.concatenate(histories), dtype=torch.long)
        scores[rows, cols] = -torch.inf
    target = scores.gather(1, targets[:, None])
    ahead = (scores >= target).sum(1) - 1
    return ahead


def metrics_of(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    from rodpo_dist.eval.metrics import ranking_metrics

    return ranking_metrics(ranks, ks)


def recbole_final(trainer: Any, split: RecBoleSplit, full: Any, ks: list[int]) -> dict[str, Any]:
    """Best weights' metrics on valid and test under both rules, from the model's full scores."""
    users, items = id_maps(split)
    by_user = dict(zip(full.users.tolist(), full.sequences))
    model = trainer.model
    model.load_state_dict(trainer.best_state)
    model.eval()
    out: dict[str, Any] = {}
    for name, loader, cut in (("valid", split.valid, 2), ("test", split.test, 1)):
        ranks: dict[str, list[torch.Tensor]] = {"masked": [], "unmasked": []}
        with torch.no_grad():
            for interaction, _, _, _ in loader:
                rb_scores = model.full_sort_predict(interaction.to(trainer.device)).float().cpu()
                scores = torch.full((len(rb_scores), items.max() + 1), -torch.inf)
                scores[:, torch.as_tensor(items[1:])] = rb_scores[:, 1:]
                ours = users[interaction["user_id"].numpy()]
                targets = torch.as_tensor(items[interaction["item_id"].numpy()])
                expected = np.array([by_user[u][len(by_user[u]) - cut] for u in ours])
                assert np.array_equal(targets.numpy(), expected), f"{name}: RecBole's targets differ from ours"
                hist = [by_user[u][:len(by_user[u]) - cut] for u in ours]
                for rule in ranks:
                    ranks[rule].append(ranks_from_scores(scores, targets, hist, rule == "masked"))
        for rule, parts in ranks.items():
            out[f"{name}_{rule}"] = metrics_of(torch.cat(parts), ks)
    trainer.history = None
    own = trainer.evaluate(split.test, load_best_model=False)
    out["test_recbole_evaluator"] = {k.lower(): float(v) for k, v in own.items()}
    return out


def run_recbole(variant: str, cfg: Any, atomic_root: Path, name: str, full: Any, folder: Path, seed: int,
                max_epochs: int | None, train: bool = True, device: str = "cpu",
                max_seconds: float | None = None, anomaly_detection: bool = False) -> dict[str, Any] | None:
    """Train (or continue) one RecBole variant in `folder`; returns and saves its result.

    Without `train`, or when its clock passes `max_seconds` first, an unfinished run is only evaluated
    from its best weights so far (result marked `finished: false`, saved as `partial.json`: the same
    command continues it); None when it has not started."""
    result_path, partial_path, state_path = folder / "result.json", folder / "partial.json", folder / "state.pt"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if not train and not state_path.is_file():
        return None
    if not train and partial_path.is_file():  # evaluated already, if at the last saved epoch
        partial = json.loads(partial_path.read_text())
        if partial["epochs_run"] == torch.load(state_path, map_location="cpu", weights_only=True)["epoch"] + 1:
            return partial
    folder.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)  # RecBole writes log/ and log_tensorboard/ into the working directory
    try:
        settings = recbole_settings(variant, cfg.model, cfg.model.max_len, tuple(cfg.eval.ks), device)
        settings["checkpoint_dir"] = str(folder / "saved")
        if max_epochs is not None:
            settings["epochs"] = max_epochs
        split = recbole_split(atomic_root, name, settings, seed)
        max_len = split.config["MAX_ITEM_LIST_LENGTH"]
        check_split(split, full, max_len)
        print(f"[{variant}] RecBole's split equals the prepared one for all {len(full.users)} users "
              f"(max length {max_len})", flush=True)
        rb = import_recbole()
        torch.autograd.set_detect_anomaly(anomaly_detection)  # RecBole as shipped: on (import_recbole)
        model = rb["SASRec"](split.config, split.train.dataset).to(split.config["device"])
        trainer = peer_trainer_class(rb["Trainer"])(split.config, model)
        trainer.setup_peer(state_path, seed, max_seconds)
        trainer.history = history_index(split, full, cut=2)
        stopped = trainer.load_state()
        if trainer.start_epoch:
            print(f"[{variant}] continuing after epoch {trainer.start_epoch} ({trainer.clock:.0f} s so far)", flush=True)
        finished = stopped
        if train and not stopped:
            try:
                trainer.fit(split.train, split.valid, verbose=True, saved=True, show_progress=False,
                            callback_fn=trainer.save_state)
                finished = True
            except TimeBudgetSpent as spent:
                print(f"[{variant}] time budget of {max_seconds:.0f} s spent after epoch {spent.args[0]}: "
                      "unfinished (run the command again to continue)", flush=True)
        result = {"variant": variant, "settings": {k: v for k, v in split.config.final_config_dict.items()
                                                   if k in RECORDED_SETTINGS},
                  "anomaly_detection": anomaly_detection, "curve": trainer.curve, "best_epoch": trainer.best_epoch,
                  "epochs_run": len(trainer.curve), "finished": bool(finished),
                  "seconds_to_best": next(c["seconds"] for c in trainer.curve if c["epoch"] == trainer.best_epoch),
                  "seconds_total": trainer.clock,
                  "num_parameters": sum(p.numel() for p in model.parameters()),
                  **recbole_final(trainer, split, full, list(cfg.eval.ks))}
        (result_path if result["finished"] else partial_path).write_text(json.dumps(result, indent=1))
        return result
    finally:
        os.chdir(cwd)


RECORDED_SETTINGS = ("hidden_size", "n_layers", "n_heads", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
                     "hidden_act", "MAX_ITEM_LIST_LENGTH", "learning_rate", "train_batch_size", "epochs",
                     "stopping_step", "valid_metric", "loss_type", "seed", "eval_args", "weight_decay")


# ------------------------------------------------------------------------------------------ our backbone

def run_ours(cfg: Any, config_path: str, overrides: list[str], folder: Path, threads: int,
             train: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Our backbone's pretraining run (found again or trained), its curve and both rules' metrics."""
    from rodpo_dist.data.dataset import load_dataset
    from rodpo_dist.data.batching import sorted_batches
    from rodpo_dist.model import make_model
    from rodpo_dist.model.weights import load_weights
    from rodpo_dist.runtime import Runtime
    from rodpo_dist.train.run_log import read_metrics

    run = Path(cfg.runtime.run_dir) / "pretrain"
    cache = folder / "rodpo.json"
    identity = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else None
    if cache.is_file() and identity is not None:
        cached = json.loads(cache.read_text())
        if cached.get("run_identity") == identity and (run / "report.json").is_file():
            return cached
    if not (run / "report.json").is_file():
        if not train:
            raise SystemExit(f"--no-train: our backbone's run {run} has not finished")
        cmd = [sys.executable, "-m", "rodpo_dist.cli", "pretrain", "--config", config_path, "--resume", "auto",
               *overrides, "runtime.progress=false", f"runtime.device={device}"]
        print("training our backbone:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        identity = json.loads((run / "run.json").read_text())
    start = (run / "run.json").stat().st_mtime
    curve = [{"epoch": r["epoch"], "seconds": round(r["time"] - start, 2),
              **{k: r[k] for k in r if "@" in k}} for r in read_metrics(run, "valid")]
    report = json.loads((run / "report.json").read_text())
    data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    rt = Runtime.create("cpu")
    model = make_model(cfg, data, rt.device)
    load_weights(run / "best", model)
    model.eval()
    out: dict[str, Any] = {}
    with torch.no_grad():
        table = model.item_encoder.item_table(cfg.eval.item_chunk)
        for name in ("valid", "test"):
            contexts = getattr(data, name)
            ranks: dict[str, list[torch.Tensor]] = {"masked": [], "unmasked": []}
            order: list[np.ndarray] = []
            for index in sorted_batches(contexts.lengths(), cfg.eval.batch_size):
                seq, _, targets = contexts.batch(index, cfg.model.max_len)
                scores = model(seq).hidden[:, -1] @ table.T
                hist = [contexts.histories[i] for i in index]
                for rule in ranks:
                    ranks[rule].append(ranks_from_scores(scores, targets, hist, rule == "masked"))
                order.append(np.asarray(index))
            for rule, parts in ranks.items():
                out[f"{name}_{rule}"] = metrics_of(torch.cat(parts), list(cfg.eval.ks))
    best_key = next(k for k in report if "(test)" in k)
    # the run's own report (masked rule) must agree; trained on a GPU, its report's scores came from
    # there, and a near tie may order differently here (one flip moves a metric by < 1 / test users)
    tolerance = 1e-6 if device == "cpu" else 20 / len(data.test)
    for k, v in report[best_key].items():
        if k in out["test_masked"] and abs(out["test_masked"][k] - v) > tolerance:
            raise AssertionError(f"our backbone's test {k}: recomputed {out['test_masked'][k]} != report {v}")
    selection = cfg.eval.metric
    best = max(curve, key=lambda c: c[selection])
    result = {"run": str(run), "run_identity": identity, "curve": curve, "selection_metric": selection,
              "best_epoch": best["epoch"], "seconds_to_best": best["seconds"], "seconds_total": curve[-1]["seconds"],
              "epochs_run": len(curve), "num_parameters": sum(p.numel() for p in model.parameters()), **out}
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------------ table

def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), platform.machine())
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
            f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def first_reach(curve: list[dict], target: float) -> float | None:
    return next((c["seconds"] for c in curve if c[METRIC] >= target - 1e-12), None)


def table(name: str, ours: dict, peers: dict[str, dict], ks: list[int]) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    head = ("| model | history at test | " + " | ".join(c.upper().replace("HR@", "HR@") for c in cols)
            + " | best valid NDCG@10 (masked) | best epoch / run | s to best epoch | s per epoch |")
    lines = [f"### {name}", "", head, "|---" * (len(cols) + 6) + "|"]
    models = {"rodpo backbone (ours)": ours,
              **{f"RecBole SASRec, {v}" + ("" if r.get("finished", True) else
                                           f" (unfinished: {r['epochs_run']} epochs so far)"): r
                 for v, r in peers.items()}}
    for label, r in models.items():
        best_valid = max(c[METRIC] for c in r["curve"])
        for rule in ("masked", "unmasked"):
            m = r[f"test_{rule}"]
            lines.append(f"| {label} | {rule} | " + " | ".join(f"{m[c]:.4f}" for c in cols)
                         + f" | {best_valid:.4f} | {r['best_epoch']} / {r['epochs_run']} | {r['seconds_to_best']:.0f} | "
                         f"{r['seconds_total'] / r['epochs_run']:.1f} |")
    lines.append("")
    for variant, r in peers.items():
        target = max(c[METRIC] for c in r["curve"])
        reach = first_reach(ours["curve"], target)
        text = (f"{reach:.0f} s, **{reach / r['seconds_to_best']:.3f}x** RecBole's {r['seconds_to_best']:.0f} s"
                if reach is not None else f"never (our best {max(c[METRIC] for c in ours['curve']):.4f})")
        so_far = "" if r.get("finished", True) else " so far (unfinished run)"
        lines.append(f"- Time for our backbone to reach RecBole `{variant}`'s best validation NDCG@10{so_far} "
                     f"({target:.4f}, masked rule): {text}.")
        own = r["test_recbole_evaluator"]
        lines.append(f"  RecBole's own evaluator on its test split (unmasked rule): NDCG@10 {own['ndcg@10']:.4f}, "
                     f"HR@10 {own['hit@10']:.4f} (ours from its scores: {r['test_unmasked']['ndcg@10']:.4f}, "
                     f"{r['test_unmasked']['hr@10']:.4f}).")
    return "\n".join(lines) + "\n"


def update_results(path: Path, name: str, section: str) -> None:
    """Replace (or append) the `name` section of the results file, between its markers."""
    begin, end = f"<!-- peers:{name} -->", f"<!-- /peers:{name} -->"
    text = path.read_text() if path.is_file() else "# RecBole's SASRec beside our backbone (issue 24)\n\n"
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default="runs/peers", help="cache root; results under <out>/<dataset>/")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"RecBole variants to run, comma-separated, in order (default {','.join(VARIANTS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every tool")
    parser.add_argument("--seed", type=int, default=None, help="RecBole's seed (default: runtime.seed of the config)")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap RecBole's epochs (default: its own, 300)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop each RecBole run after the epoch that passes this many seconds of its clock "
                             "(unfinished, resumable; default: no budget)")
    parser.add_argument("--peers-only", action="store_true",
                        help="train the RecBole variants only (no backbone, no table): for running them beside it")
    parser.add_argument("--anomaly-detection", action="store_true",
                        help="RecBole as shipped: autograd anomaly detection on (its sine.py turns it on at import; "
                             "the runs before 2026-12-06 had it); default off")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both tools train (default cpu)")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: report finished runs, and unfinished RecBole runs from their best epoch so far")
    parser.add_argument("--results", type=Path, help="Markdown file whose section for this dataset is replaced")
    parser.add_argument("overrides", nargs="*", help="config overrides (key.sub=value), also passed to rodpo pretrain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from rodpo_dist.config import load_config
    from rodpo_dist.data.export_recbole import export_recbole, full_sequences
    from rodpo_dist.data.prepare import ensure_prepared

    cfg = load_config(args.config, args.overrides)
    ensure_prepared(cfg)
    name = cfg.data.name or Path(cfg.data.prepared_dir).name
    folder = Path(args.out) / Path(cfg.data.prepared_dir).name
    atomic = (folder / "atomic").resolve()
    export_recbole(cfg.data.prepared_dir, atomic / name, name)
    full = full_sequences(cfg.data.prepared_dir)
    seed = cfg.runtime.seed if args.seed is None else args.seed
    started = machine()
    print("machine:", started, flush=True)

    if not args.peers_only:
        ours = run_ours(cfg, args.config, args.overrides, folder, args.threads, train=not args.no_train,
                        device=args.device)
        print(f"our backbone: best epoch {ours['best_epoch']} at {ours['seconds_to_best']:.0f} s, test NDCG@10 "
              f"{ours['test_masked']['ndcg@10']:.4f} (masked)", flush=True)
    peers = {}
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for variant in variants:
        result = run_recbole(variant, cfg, atomic, name, full, (folder / f"recbole-{variant}").resolve(),
                             seed, args.max_epochs, train=not args.no_train, device=args.device,
                             max_seconds=args.max_seconds, anomaly_detection=args.anomaly_detection)
        if result is None:
            print(f"RecBole {variant}: not started (--no-train)", flush=True)
            continue
        peers[variant] = result
        print(f"RecBole {variant}: best epoch {peers[variant]['best_epoch']} at "
              f"{peers[variant]['seconds_to_best']:.0f} s, test NDCG@10 "
              f"{peers[variant]['test_masked']['ndcg@10']:.4f} (masked)", flush=True)

    if args.peers_only:
        return
    command = "OMP_NUM_THREADS=%d python benchmarks/bench_peers.py %s" % (
        args.threads, shlex.join(a for a in sys.argv[1:] if a != "--no-train"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.no_train:
        state = "finished runs" if all(r.get("finished", True) for r in peers.values()) else "runs so far"
        when += f"; this table read the {state} with `--no-train`"
    section = (f"{table(name, ours, peers, list(cfg.eval.ks))}\nCommand: `{command}` ({when}).  \n"
               f"Machine: {started} at the start, {machine().split('load average ')[1]} at the end.\n")
    print(section)
    (folder / "table.md").write_text(section)
    if args.results:
        update_results(args.results, name, section)


if __name__ == "__main__":
    main()
