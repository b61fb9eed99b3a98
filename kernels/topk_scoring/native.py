"""The compiled tile selection of the CPU path (``select.cpp``), built on first use.

Built with ``torch.utils.cpp_extension`` for this CPU's vector extensions (the extension's name
carries torch's CPU capability, so hosts of different kinds sharing a build cache never load each
other's code) and cached in torch's extension folder (``TORCH_EXTENSIONS_DIR``); ``make setup``
builds it ahead. Where it cannot be built (no C++ compiler), :func:`tile_candidates` is None after
one warning and ``cpu`` selects candidates with torch ops instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("select.cpp")
FLAGS = {  # torch.backends.cpu.get_cpu_capability() -> compiler flags of that instruction set
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    "AVX2": ["-mavx2", "-mfma"],
}


@cache
def tile_candidates() -> Callable | None:
    """``select.cpp``'s ``tile_candidates(scores, thr, slack, k, cap, row_offset)``, or None if unbuildable."""
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        from torch.utils.cpp_extension import load

        module = load(name=f"rodpo_topk_select_{capability.lower()}", sources=[str(SOURCE)],
                      extra_cflags=["-O3", *FLAGS.get(capability, [])], verbose=False)
    except Exception as error:  # no compiler, no ninja, a read-only cache: fall back, once
        warnings.warn(f"top-K: the compiled tile selection could not be built ({error}); "
                      "selecting with torch ops (slower)", RuntimeWarning, stacklevel=2)
        return None
    return module.tile_candidates
