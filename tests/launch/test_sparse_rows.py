"""The sparse item table across ranks: each rank's row gradient is gathered by row and averaged, the
same as averaging the dense gradients, while only the rows used travel."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runs import free_port


def _worker(rank: int, port: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from rodpo_dist.train.engine import _average_gradients

    torch.manual_seed(0)
    table = torch.randn(40, 3)
    sparse = torch.nn.Embedding(40, 3, sparse=True, _weight=table.clone())
    ids = [torch.tensor([1, 5, 5, 9]), torch.tensor([5, 20])][rank]  # row 5 on both ranks; rank-only rows
    (sparse(ids) * torch.arange(1.0, 4.0)).sum().mul(rank + 1).backward()
    _average_gradients(sparse, 2, lambda g: g)
    torch.save(sparse.weight.grad.coalesce(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_row_gradients_average_over_ranks_like_dense_ones(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    grads = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = torch.zeros(40, 3)
    for rank, ids in enumerate([[1, 5, 5, 9], [5, 20]]):
        for i in ids:
            expected[i] += torch.arange(1.0, 4.0) * (rank + 1) / 2  # the mean of the two ranks' gradients
    for grad in grads:
        assert grad.is_sparse
        assert grad.indices()[0].tolist() == [1, 5, 9, 20]  # only the rows used, never the table
        torch.testing.assert_close(grad.to_dense(), expected)
