"""Turn the suite's JSON results into markdown tables and one learning-curve PNG.

    python benchmarks/report.py                                   # benchmarks/results → stdout + suite_curves.png
    python benchmarks/report.py --results DIR --out report.md --png curves.png

Scores are success rates of each method's own score mode (``pa_rl`` = π̂, ``policy`` = the raw
policy), mean ± std over seeds (population std; "±0" with one seed means one seed, see n), then in
brackets a 95 % interval of the mean: the wider of the Wilson interval over all evaluation episodes
of all seeds (episode noise) and Student's t-interval over the seeds' scores (seeds that disagree).
Stability: per online run, its best offline evaluation against where its online phase ended.
Sample efficiency: the online env steps at which a method's mean-over-seeds success first reaches
the best baseline's final score (a BC baseline's final score is its offline score: it has no online
phase); env step 0 is the end of the offline phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import BASELINES, GROUPS, METHODS, TASKS  # noqa: E402

Result = dict[str, Any]


def load_results(folder: Path) -> list[Result]:
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not results:
        raise SystemExit(f"error: no results (*.json) in {folder}; run benchmarks/suite.py first")
    return results


def mean_std(values: Sequence[float], episodes: int = 0) -> str:
    """Mean ± std over seeds, and with ``episodes`` (per seed) the 95 % interval of :func:`interval`."""
    if not values:
        return "n/a"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    text = f"{100 * statistics.fmean(values):.0f} ± {100 * std:.0f} %"
    if episodes:
        low, high = interval(values, episodes)
        text += f" [{100 * low:.0f}–{100 * high:.0f}]"
    return text


def interval(values: Sequence[float], episodes: int) -> tuple[float, float]:
    """95 % interval of the mean success over seeds (``episodes`` each): the wider of the pooled Wilson
    interval, which sees only episode noise (all seeds at 100 % still leave doubt), and the t-interval
    over the seeds' scores, which sees seeds that disagree (pooling 10 %, 90 % and 70 % episodes alone
    would read as a narrow interval around 57 %)."""
    mean = statistics.fmean(values)
    low, high = wilson(mean, episodes * len(values))
    if len(values) > 1:
        half = t975(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
        low, high = min(low, max(0.0, mean - half)), max(high, min(1.0, mean + half))
    return low, high


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179}


def t975(df: int) -> float:
    """Student's t 97.5 % quantile: exact for ≤ 12 degrees of freedom, within 0.01 beyond."""
    return T975.get(df, 1.96 + 2.5 / df)


def wilson(rate: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate observed over ``trials`` episodes."""
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * (rate * (1 - rate) / trials + z * z / (4 * trials * trials)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def episodes(runs: list[Result]) -> int:
    """Evaluation episodes per seed of a cell (its runs share a config; 0 if not recorded)."""
    return int(runs[0]["config"]["train"].get("eval_episodes", 0))


def has_online(runs: list[Result]) -> bool:
    """Whether a cell's runs had an online phase (a score for it)."""
    return any(r["online_score"] is not None for r in runs)


def order(names: set[str] | list[str]) -> list[str]:
    """Methods in the suite's order (the main group first), unknown names last."""
    known = list(dict.fromkeys([*GROUPS["main"], *METHODS]))
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def by_cell(results: list[Result]) -> dict[tuple[str, str], list[Result]]:
    cells: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        cells[(r["task"], r["method"])].append(r)
    return cells


def final_score(runs: list[Result]) -> float | None:
    """Mean final score: the online score, or for a method without an online phase its offline score."""
    values = [r["online_score"] if r["online_score"] is not None else r["offline_score"] for r in runs]
    return statistics.fmean(values) if values else None


def curve(result: Result) -> dict[int, float]:
    """Success of the method's score mode by online env step; env step 0 = the end of offline RL."""
    key = f"eval/{result['score_mode']}_success"
    points: dict[int, float] = {}
    offline = [e for e in result["evaluations"] if e["phase"] == "offline" and key in e]
    if offline:
        points[0] = offline[-1][key]
    for e in result["evaluations"]:
        if e["phase"] == "online" and key in e:
            points[int(e["env_steps"])] = e[key]
    return points


def mean_curve(runs: list[Result]) -> list[tuple[int, float, float, int]]:
    """(env steps, mean, std, seeds) at each step some seed evaluated."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for step, value in curve(r).items():
            by_step[step].append(value)
    return [(s, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, len(v))
            for s, v in sorted(by_step.items())]


def per_device(runs: list[Result], field: str, digits: int = 0, spread: bool = True) -> str:
    """Mean of a timing field over the cells, with the range when there are several; cells run on
    another device than the CPU are averaged apart and named (a GPU cell's time is not a CPU cost)."""
    parts = []
    for device in sorted({r["machine"]["device"] for r in runs}, key=lambda d: d != "cpu"):
        values = [r[field] for r in runs if r["machine"]["device"] == device]
        span = f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if spread and len(values) > 1 else ""
        parts.append(f"{statistics.fmean(values):.{digits}f}{span}" + ("" if device == "cpu" else f" on {device}"))
    return "; ".join(parts)


def online_updates(result: Result) -> int:
    """Updates of the online phase: the warm-up episodes come first, so a short env-step budget on
    long episodes can leave none (the online score is then the offline agent's, re-evaluated)."""
    train = result["config"]["train"]
    return result["updates"] - train["bc_steps"] - train["offline_steps"]


def scores_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str]) -> str:
    rows = ["| task | method | score mode | offline | online | online updates | seeds | wall clock s / cell "
            "| updates/s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for task in tasks:
        for method in methods:
            runs = cells.get((task, method))
            if not runs:
                continue
            online = [r["online_score"] for r in runs if r["online_score"] is not None]
            rows.append(f"| {task} | {method} | {runs[0]['score_mode']} "
                        f"| {mean_std([r['offline_score'] for r in runs], episodes(runs))} "
                        f"| {mean_std(online, episodes(runs)) if online else 'n/a (no online phase)'} "
                        f"| {f'{statistics.fmean(online_updates(r) for r in runs):.0f}' if online else '–'} "
                        f"| {len(runs)} ({', '.join(str(r['seed']) for r in sorted(runs, key=lambda r: r['seed']))}) "
                        f"| {per_device(runs, 'wall_clock_s')} "
                        f"| {per_device(runs, 'updates_per_s', digits=1, spread=False)} |")
    return "\n".join(rows)


def stability_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str],
                    tolerance: float = 0.15) -> str:
    """Does online fine-tuning keep what the offline phase reached? Per run: the best offline
    evaluation of its score mode, the end of its online phase, and the drop between them."""
    rows = ["| task | method | seed | best offline | end of online | drop (points) |", "|---|---|---:|---:|---:|---:|"]
    drops: dict[tuple[str, str], list[float]] = {}
    for task in tasks:
        for method in methods:
            for r in sorted(cells.get((task, method), []), key=lambda r: r["seed"]):
                key = f"eval/{r['score_mode']}_success"
                offline = [e[key] for e in r["evaluations"] if e["phase"] == "offline" and key in e]
                if r["online_score"] is None or not offline:
                    continue
                drop = max(offline) - r["online_score"]
                drops.setdefault((task, method), []).append(drop)
                rows.append(f"| {task} | {method} | {r['seed']} | {100 * max(offline):.0f} % "
                            f"| {100 * r['online_score']:.0f} % | {100 * drop:.0f} |")
    if not drops:
        return "(no run with both phases in these results)"
    counts = [f"- {task}, {method}: {sum(d > tolerance + 1e-9 for d in cell)} of {len(cell)} runs end online more "
              f"than {100 * tolerance:.0f} points below their best offline score"
              for (task, method), cell in drops.items()]
    return "\n".join(rows) + "\n\n" + "\n".join(counts)


def modes_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str]) -> str:
    """Both evaluation modes of every method, whichever is its score: shows what distillation carried
    into the policy, and what action selection with the method's critic would give."""
    rows = ["| task | method | offline π̂ | offline policy | online π̂ | online policy |", "|---|---|---:|---:|---:|---:|"]
    for task in tasks:
        for method in methods:
            runs = cells.get((task, method))
            if not runs or not METHODS[method].online:
                continue
            cols = [mean_std([r["summary"][phase][f"eval/{mode}_success"] for r in runs])
                    if phase in runs[0]["summary"] else "n/a"
                    for phase in ("offline", "online") for mode in ("pa_rl", "policy")]
            rows.append(f"| {task} | {method} | {' | '.join(cols)} |")
    return "\n".join(rows)


def phases_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str]) -> str:
    """Each phase's end in the method's score mode (BC: the raw policy after behaviour cloning), and the
    cells' peak memory: resident memory of the cell's process, and what torch allocated on a GPU. Only
    cells that recorded their memory (run since 0.5.0) are counted."""
    rows = ["| task | method | BC (policy) | offline | online | seeds | peak RSS MB | peak CUDA MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for task in tasks:
        for method in methods:
            runs = [r for r in cells.get((task, method), []) if r.get("peak_rss_mb") is not None]
            if not runs:
                continue
            bc = [r["bc_score"] for r in runs if r["bc_score"] is not None]
            online = [r["online_score"] for r in runs if r["online_score"] is not None]
            cuda = [r for r in runs if r.get("peak_cuda_mb") is not None]
            gpu = per_device(cuda, "peak_cuda_mb") if cuda else "–"
            rows.append(f"| {task} | {method} | {mean_std(bc, episodes(runs))} "
                        f"| {mean_std([r['offline_score'] for r in runs], episodes(runs))} "
                        f"| {mean_std(online, episodes(runs)) if online else 'n/a'} | {len(runs)} "
                        f"| {per_device(runs, 'peak_rss_mb')} | {gpu} |")
    return "\n".join(rows) if len(rows) > 2 else "(no cell in these results recorded its memory)"


def efficiency_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str]) -> str:
    rows = ["| task | target (best baseline, its final score) | method | env steps to reach it |", "|---|---|---|---:|"]
    for task in tasks:
        finals = {m: final_score(cells[(task, m)]) for m in methods if m in BASELINES and (task, m) in cells}
        if not finals:
            continue
        best = max(finals, key=lambda m: finals[m])
        target = finals[best]
        for method in methods:
            runs = cells.get((task, method))
            if not runs or not has_online(runs):
                continue
            reached = next((step for step, mean, _, _ in mean_curve(runs) if mean >= target - 1e-9), None)
            budget = max(r["online_env_steps"] for r in runs)
            rows.append(f"| {task} | {best}: {100 * target:.0f} % | {method} | "
                        f"{reached if reached is not None else f'not reached in {budget}'} |")
    return "\n".join(rows)


def ablation_table(cells: dict[tuple[str, str], list[Result]], tasks: list[str]) -> str:
    rows = ["| task | variant | N | k | T | offline | online | seeds | wall clock s / cell |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task in tasks:
        if not any((task, m) in cells for m in GROUPS["ablations"][1:]):
            continue
        for method in GROUPS["ablations"]:
            runs = cells.get((task, method))
            if not runs:
                rows.append(f"| {task} | {method} | | | | not run | not run | 0 | |")
                continue
            opt = runs[0]["config"]["agent"]["optimizer"]
            online = [r["online_score"] for r in runs if r["online_score"] is not None]
            rows.append(f"| {task} | {method} | {opt['num_samples']} | {opt['top_k']} | {opt['local_steps']} "
                        f"| {mean_std([r['offline_score'] for r in runs])} | {mean_std(online)} | {len(runs)} "
                        f"| {per_device(runs, 'wall_clock_s')} |")
    return "\n".join(rows) if len(rows) > 2 else "(no ablation cells in these results)"


def plot(cells: dict[tuple[str, str], list[Result]], tasks: list[str], methods: list[str], path: Path) -> None:
    """Success vs online env steps, mean ± std band over seeds: one panel per task for ``methods``,
    and one per task that has ablation cells; a method keeps its colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ablations = list(GROUPS["ablations"])
    panels = [(task, task, methods) for task in tasks
              if any(has_online(cells.get((task, m), [])) for m in methods)]
    panels += [(task, f"{task}: ablations", ablations) for task in tasks
               if any((task, m) in cells for m in ablations[1:])]
    if not panels:
        return
    palette = plt.get_cmap("tab20").colors
    colours = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys([*methods, *ablations]))}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (task, title, names) in zip(axes.flat, panels):
        x_max = max(r["online_env_steps"] for (t, _), runs in cells.items() if t == task for r in runs) or 1
        for method in names:
            runs = cells.get((task, method))
            if not runs:
                continue
            label = f"{method} ({len(runs)})"
            if not METHODS[method].online:  # BC: a flat dashed line at its score, for reference
                level = 100 * statistics.fmean(r["offline_score"] for r in runs)
                ax.plot([0, x_max], [level, level], "--", color=colours[method], label=label)
                continue
            points = mean_curve(runs)
            steps = [p[0] for p in points]
            mean = [100 * p[1] for p in points]
            std = [100 * p[2] for p in points]
            ax.plot(steps, mean, marker="o", markersize=3, color=colours[method], label=label)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colours[method], alpha=0.12)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("online env steps (0 = end of offline)", fontsize=8)
        ax.set_ylabel("success % (score mode)", fontsize=8)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best", title="method (seeds)", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def report(results: list[Result]) -> str:
    cells = by_cell(results)
    tasks = [t for t in TASKS if any(k[0] == t for k in cells)]
    tasks += sorted({k[0] for k in cells} - set(tasks))
    methods = order({k[1] for k in cells})
    main_methods = [m for m in methods if m not in GROUPS["ablations"][1:]]
    parts = ["### Offline and online score (success %, mean ± std over seeds)", "",
             scores_table(cells, tasks, main_methods), "",
             "### Both evaluation modes (π̂ = argmax of Q over the optimized samples; policy = one raw sample)", "",
             modes_table(cells, tasks, main_methods), "",
             "### Phases and peak memory (BC → offline → online, cells that recorded their memory)", "",
             phases_table(cells, tasks, main_methods), "",
             "### Sample efficiency (online env steps to reach the best baseline's final score)", "",
             efficiency_table(cells, tasks, main_methods), "",
             "### Stability (best offline evaluation vs the end of the online phase, per run)", "",
             stability_table(cells, tasks, main_methods), "",
             "### Ablations (PA-RL, diffusion policy)", "", ablation_table(cells, tasks)]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: stdout)")
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "suite_curves.png")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    text = report(results)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
    cells = by_cell(results)
    tasks = [t for t in TASKS if any(k[0] == t for k in cells)]
    plot(cells, tasks, [m for m in order({k[1] for k in cells}) if m not in GROUPS["ablations"][1:]], args.png)
    print(f"wrote {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
