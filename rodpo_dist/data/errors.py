"""The one exception type of the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input or prepared data; the message names the file and, where known, the record.

    Format: `<file>, <record>: <problem>`, e.g. `Beauty.txt, line 12: user 12 has 2 items ...`.
    """

    def __init__(self, where: str | Path, problem: str, record: str = "") -> None:
        self.where = str(where)
        self.record = record
        super().__init__(f"{where}{', ' + record if record else ''}: {problem}")
