"""The catalog sharded over 2 gloo ranks gives exactly the single-process top-K, pool and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rodpo_dist.eval.catalog import catalog_slice, catalog_topk
from rodpo_dist.data import Contexts, SplitData, TrainingContexts
from rodpo_dist.eval.evaluate import evaluate
from rodpo_dist.train.pool import CandidatePool
from rodpo_dist.runtime import Runtime
from rodpo_kernels import topk_scores
from stand_ins import PrefixMean

NUM_ITEMS, HIDDEN = 101, 8  # odd: the two slices differ in size


def problem() -> tuple[torch.Tensor, Contexts]:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(NUM_ITEMS + 1, HIDDEN, generator=gen)
    table[0] = 0
    rng = np.random.default_rng(0)
    histories = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=rng.integers(1, 9), replace=False) for _ in range(37)]
    targets = rng.integers(1, NUM_ITEMS + 1, size=37)
    return table, Contexts(np.arange(37), histories, targets)


def results(rt: Runtime) -> dict[str, object]:
    table, contexts = problem()
    model = PrefixMean(table)
    seq, exclude, _ = contexts.batch(range(len(contexts)), 6, exclude_target=True)
    top = catalog_topk(model.user_state(seq), table[1:], 10, exclude, rt)
    sequences = [np.append(h, t) for h, t in zip(contexts.histories, contexts.targets)]
    train = TrainingContexts.from_split(SplitData(contexts.users, sequences, contexts.targets * 0 - 1), "all", 6)
    pool = CandidatePool(train, 7)
    pool.refresh(model, table, step=0, batch_size=8, rt=rt)
    metrics, _ = evaluate(model, table, contexts, ks=[5, 10], max_len=6, batch_size=8, rt=rt)
    return {"top": top, "pool": (pool.ids, pool.scores), "metrics": metrics}


def worker(rank: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    out = results(Runtime(torch.device("cpu"), rank, 2))
    queue.put((rank, out))
    dist.barrier()
    dist.destroy_process_group()


def test_slices_cover_the_catalog_once():
    slices = [catalog_slice(NUM_ITEMS, Runtime(torch.device("cpu"), r, 3)) for r in range(3)]
    assert slices[0][0] == 0 and slices[-1][1] == NUM_ITEMS
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    single = results(Runtime(torch.device("cpu")))
    table, contexts = problem()
    seq, exclude, _ = contexts.batch(range(len(contexts)), 6, exclude_target=True)
    reference = topk_scores(PrefixMean(table).user_state(seq), table[1:], 10, exclude=exclude, id_offset=1,
                            backend="reference")
    torch.testing.assert_close(single["top"].scores, reference.scores)
    half = catalog_slice(NUM_ITEMS, Runtime(torch.device("cpu"), 1, 2))[0] + 1  # first id of rank 1's slice
    assert (single["top"].ids < half).any() and (single["top"].ids >= half).any()  # both slices matter

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    outs = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        out = outs[rank]
        assert torch.equal(out["top"].ids, single["top"].ids)
        assert torch.equal(out["top"].scores, single["top"].scores)
        assert torch.equal(out["pool"][0], single["pool"][0]) and torch.equal(out["pool"][1], single["pool"][1])
        assert out["metrics"] == single["metrics"]
