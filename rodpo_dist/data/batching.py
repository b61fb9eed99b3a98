"""Length-aware batching: batches of similar length, so little of a padded batch is padding.

Training: the samples are shuffled, cut into windows of `window` batches, each window is sorted by
length and cut into batches, and the batches of each window come out in random order; so every
sample is in exactly one batch per epoch, batches stay random across epochs, and everything follows
from the seed. Only the last window can leave a short batch, so there are ceil(n / batch_size) batches as
with plain random batching (`window=1`). Scoring (evaluation, pool refresh): batches of the
length-sorted samples, results put back in input order by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def length_grouped_batches(lengths: np.ndarray, batch_size: int, window: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of a shuffled epoch, similar lengths together (see module docstring)."""
    order = rng.permutation(len(lengths))
    return list(window_batches(order, lengths.__getitem__, batch_size, window, rng))


def window_batches(samples: Iterable[T], length: Callable[[T], int], batch_size: int, window: int,
                   rng: np.random.Generator) -> Iterator[list[T]]:
    """Batches of an (already shuffled) sample stream, sorted by `length` within windows of
    `window * batch_size` samples; the batches of each window come out in random order."""
    span, buffer = batch_size * max(1, window), []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) == span:
            yield from _sorted_window(buffer, length, batch_size, window, rng)
            buffer = []
    if buffer:
        yield from _sorted_window(buffer, length, batch_size, window, rng)


def _sorted_window(buffer: list[T], length: Callable[[T], int], batch_size: int, window: int,
                   rng: np.random.Generator) -> list[list[T]]:
    if window > 1:
        buffer = [buffer[i] for i in np.argsort([length(s) for s in buffer], kind="stable")]
    batches = [buffer[i:i + batch_size] for i in range(0, len(buffer), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if window > 1 else batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches in order of length (for scoring; the caller restores the input order)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_share(batch_lengths: Iterable[np.ndarray]) -> float:
    """Share of padded positions when each batch pads to its longest sample."""
    real = padded = 0
    for lengths in batch_lengths:
        real += int(np.sum(lengths))
        padded += int(np.max(lengths)) * len(lengths) if len(lengths) else 0
    return 1.0 - real / padded if padded else 0.0
