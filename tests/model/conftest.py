import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: several OpenMP threads only spin against each other on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
