"""Learning curves from runs' ``metrics.csv`` files."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (("success", "success rate"), ("return", "return (env reward)"), ("length", "episode length"))
MODES = (("pa_rl", "-", "PA-RL action selection"), ("policy", "--", "base policy"))


def read_evaluations(run_dir: Path) -> dict[str, list[tuple[int, float, str]]]:
    """``eval/*`` metrics of a run: name → [(update step, value, phase)]."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it a pa-rl run directory?")
    series: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["metric"].startswith("eval/"):
                series[row["metric"]].append((int(row["step"]), float(row["value"]), row["phase"]))
    return series


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Overlay the evaluation curves of several runs (success, return, length; PA-RL and base policy)."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run_dir in enumerate(run_dirs):
        series = read_evaluations(run_dir)
        color = colors[index % len(colors)]
        for ax, (key, label) in zip(axes, PANELS):
            for mode, style, mode_label in MODES:
                points = series.get(f"eval/{mode}_{key}", [])
                if points:
                    steps, values, _ = zip(*points)
                    ax.plot(steps, values, style, marker="o", color=color, label=f"{Path(run_dir).name}: {mode_label}")
            ax.set(xlabel="gradient updates (BC, offline, online)", ylabel=label)
            ax.grid(alpha=0.3)
        if len(run_dirs) == 1:  # mark where each phase ended
            ends: dict[str, int] = {}
            for step, _, phase in series.get("eval/policy_success", []):
                ends[phase] = max(step, ends.get(phase, 0))
            for phase, step in ends.items():
                for ax in axes:
                    ax.axvline(step, color="grey", lw=0.8, ls=":")
                    ax.annotate(f"end of {phase}", (step, 0.02), xycoords=("data", "axes fraction"),
                                rotation=90, va="bottom", ha="right", fontsize=8, color="grey")
    axes[0].legend(fontsize=7, loc="best")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
