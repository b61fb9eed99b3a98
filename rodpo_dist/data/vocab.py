"""Raw ids (strings) -> dense integer codes, built chunk by chunk with pyarrow's hash kernels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Vocabulary:
    """Codes 0..V-1 in order of first appearance; `values[c]` is the raw id of code c."""

    def __init__(self) -> None:
        self.values: pa.StringArray = pa.array([], pa.string())

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, ids: pa.StringArray) -> np.ndarray:
        """The code of each id, -1 for ids not in the vocabulary (int64)."""
        return pc.fill_null(pc.index_in(ids, value_set=self.values), -1).to_numpy().astype(np.int64)

    def encode(self, ids: pa.StringArray) -> np.ndarray:
        """The code of each id, adding unseen ids (in order of first appearance)."""
        encoded = ids.dictionary_encode()
        local = encoded.dictionary
        codes = self.lookup(local)
        new = codes < 0
        codes[new] = len(self.values) + np.arange(int(new.sum()))
        if new.any():
            self.values = pa.concat_arrays([self.values, local.filter(pa.array(new))])
        return codes[encoded.indices.to_numpy()]

    def sorted_ranks(self) -> np.ndarray:
        """rank[c]: the position of code c's raw id in sorted order (byte-wise, i.e. by code point)."""
        order = pc.sort_indices(self.values).to_numpy()
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return rank
