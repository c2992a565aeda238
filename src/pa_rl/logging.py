"""Metrics to a long-format CSV (one row per value, so any metric can appear at any step) and TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLogger:
    """Writes ``metrics.csv`` (phase, step, env_steps, metric, value) and TensorBoard events.

    With no run directory it only keeps the evaluation history in memory.
    """

    def __init__(self, run_dir: str | Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.evaluations: list[dict[str, float | str | int]] = []
        self._file = self._writer = self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "metrics.csv"
            new = not path.exists()
            self._file = path.open("a", newline="")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["phase", "step", "env_steps", "metric", "value"])
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, phase: str, step: int, env_steps: int, metrics: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.writerow([phase, step, env_steps, name, f"{value:.6g}"])
            self._tb.add_scalar(name, value, step)
        self._file.flush()

    def log_evaluation(self, phase: str, step: int, env_steps: int, metrics: dict[str, float]) -> None:
        self.evaluations.append({"phase": phase, "step": step, "env_steps": env_steps, **metrics})
        self.log(phase, step, env_steps, metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
