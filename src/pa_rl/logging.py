"""Metrics to a long-format CSV (one row per value, so any metric can appear at any step) and TensorBoard."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch

from pa_rl.checkpoint import write_atomically


class MetricsLogger:
    """Writes ``metrics.csv`` (phase, step, env_steps, metric, value) and TensorBoard events.

    With no run directory it only keeps the evaluation history in memory. A resumed run passes
    what its checkpoint saw (``rows``, ``evaluations``, ``step``): rows written after that
    checkpoint are cut from the CSV and from TensorBoard, so the history reads as if the run had
    never been interrupted.
    """

    HEADER = ["phase", "step", "env_steps", "metric", "value"]

    def __init__(self, run_dir: str | Path | None, rows: int = 0,
                 evaluations: list[dict[str, float | str | int]] | None = None, step: int | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.evaluations = list(evaluations or [])
        self.rows = rows
        self._file = self._writer = self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "metrics.csv"
            # newline="": the csv writer ends rows with \r\n; a cut must keep them as written.
            lines = []
            if path.exists():
                with path.open(newline="") as existing:
                    lines = existing.read().splitlines(keepends=True)
            kept = lines[: rows + 1]  # the header and the rows the checkpoint saw
            if rows and len(kept) < rows + 1:
                raise ValueError(f"{path} has fewer rows than its checkpoint recorded ({rows}): it was damaged")
            if kept != lines:  # cut, atomically, what was logged after the checkpoint
                write_atomically(path, lambda tmp: tmp.write_text("".join(kept), newline=""))
            self._file = path.open("a", newline="")
            self._writer = csv.writer(self._file)
            if not kept:
                self._writer.writerow(self.HEADER)
            self._file.flush()
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step)
            # TensorBoard purges whole steps, and rows may follow the checkpoint at its own step: purge that step
            # too and re-add the rows the checkpoint saw there (at the CSV's 6 digits), so none is doubled.
            for _, row_step, _, name, value in csv.reader(kept[1:] if step is not None else []):
                if int(row_step) == step:
                    self._tb.add_scalar(name, float(value), step)

    def log(self, phase: str, step: int, env_steps: int, metrics: Mapping[str, float | torch.Tensor]) -> None:
        """Numbers or 0-d tensors (read here, so updates between logs never wait for the device)."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            value = float(value)
            self._writer.writerow([phase, step, env_steps, name, f"{value:.6g}"])
            self._tb.add_scalar(name, value, step)
            self.rows += 1
        self._file.flush()

    def log_evaluation(self, phase: str, step: int, env_steps: int, metrics: dict[str, float]) -> None:
        self.evaluations.append({"phase": phase, "step": step, "env_steps": env_steps, **metrics})
        self.log(phase, step, env_steps, metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
