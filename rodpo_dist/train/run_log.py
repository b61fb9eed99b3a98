"""Run directory logging: metrics as JSON lines, TensorBoard scalars and a rank-0 progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLog:
    """Writes `metrics.jsonl` and TensorBoard events under `run_dir` (on the main process only)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.progress = progress and enabled
        self._bar: tqdm | None = None
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def drop_after(self, step: int) -> None:
        """On resume: forget records past `step` (they are redone), so the log reads as one run."""
        path = self.run_dir / "metrics.jsonl"
        if self.enabled and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def bar(self, total: int, initial: int, desc: str) -> None:
        """Start (or restart) the progress bar over `total` optimizer steps."""
        self.close_bar()
        if self.progress:
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.1)

    def advance(self, postfix: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
