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
MODES = (("pa_rl", "-", "PA-RL action selection"), ("policy", "--", "base policy"),
         ("deterministic", "-.", "base policy, deterministic"))
# The critic diagnostic (pa_rl.diagnostics): one panel each, with the level that means "no information".
DIAGNOSTIC_PANELS = (
    ((("diag/q_mean", "-", "Q(s, a) held out"), ("diag/mc_mean", ":", "Monte-Carlo return")), "critic calibration",
     None),
    ((("diag/q_mc_spearman", "-", "rank corr. Q vs return"),), "rank correlation (held out)", 0.0),
    ((("diag/rank_agreement", "-", "critic's choice wins"),), "ranking by rollout", 0.5),
)
# In place of the evaluation row for runs that evaluated nothing by rollout (trained without an environment).
LOSS_PANELS = (
    ((("bc/loss", "-", "behaviour cloning"),), "BC loss", None),
    ((("critic/td_loss", "-", "TD"),), "critic TD loss", None),
    ((("critic/q_data", "-", "data actions"), ("critic/q_policy", "--", "policy's candidates")), "critic's Q", None),
)


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float, str]]]:
    """Every metric of a run: name → [(update step, value, phase)]."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it a pa-rl run directory?")
    series: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            series[row["metric"]].append((int(row["step"]), float(row["value"]), row["phase"]))
    return series


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Overlay the evaluation curves of several runs (success, return, length; PA-RL and base
    policy), or their training losses where none evaluated by rollout, and, below them where the
    runs logged it, the critic diagnostic."""
    all_series = [read_metrics(run_dir) for run_dir in run_dirs]
    names = {name for series in all_series for name in series}
    rows = 2 if any(name.startswith("diag/") for name in names) else 1
    fig, axes = plt.subplots(rows, len(PANELS), figsize=(5 * len(PANELS), 4 * rows), constrained_layout=True,
                             squeeze=False)
    top = [([(f"eval/{mode}_{key}", style, mode_label) for mode, style, mode_label in MODES], label, None)
           for key, label in PANELS]
    if not any(name.startswith("eval/") for name in names):
        top = list(LOSS_PANELS)
    panels = top + list(DIAGNOSTIC_PANELS[: len(PANELS) * (rows - 1)])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (run_dir, series) in enumerate(zip(run_dirs, all_series)):
        color = colors[index % len(colors)]
        for ax, (lines, label, chance) in zip(axes.flat, panels):
            for name, style, line_label in lines:
                points = series.get(name, [])
                if points:
                    steps, values, _ = zip(*points)
                    marker = "o" if name.startswith(("eval/", "diag/")) else "."  # losses: a dot per log line
                    ax.plot(steps, values, style, marker=marker, color=color,
                            label=f"{Path(run_dir).name}: {line_label}")
            if chance is not None:
                ax.axhline(chance, color="grey", lw=0.8)
            ax.set(xlabel="gradient updates (BC, offline, online)", ylabel=label)
            ax.grid(alpha=0.3)
        if len(run_dirs) == 1:  # mark where each phase ended
            ends: dict[str, int] = {}
            for step, _, phase in (point for points in series.values() for point in points):
                ends[phase] = max(step, ends.get(phase, 0))
            for phase, step in ends.items():
                for ax in axes.flat:
                    ax.axvline(step, color="grey", lw=0.8, ls=":")
                    ax.annotate(f"end of {phase}", (step, 0.02), xycoords=("data", "axes fraction"),
                                rotation=90, va="bottom", ha="right", fontsize=8, color="grey")
    for ax in axes.flat:  # e.g. the calibration without held-out episodes, the ranking without an environment
        if not ax.get_legend_handles_labels()[0]:
            ax.text(0.5, 0.6, "not measured in these runs", transform=ax.transAxes, ha="center", color="grey")
    for ax in axes[:, 0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
