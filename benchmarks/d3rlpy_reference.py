"""d3rlpy 2.8.1's default Cal-QL and IQL on a pa-rl data set, evaluated exactly as pa-rl evaluates.

The reference for the "fair baselines" issue: d3rlpy's defaults solve pointmaze-umaze where our
calql-gaussian and iql-gaussian baselines score far lower, so both run here on the same data, reward
bias, batch size, evaluation env and evaluation seeds, and the JSON records d3rlpy's settings for
comparison with ours (benchmarks/d3rlpy_vs_pa_rl.md).

Full runs: 4k updates, an evaluation of 50 episodes every 500, 3 seeds each, one torch thread, from
the repository root (PY = the project's venv, on the shared machine /work/main/.venv/bin/python;
``make bench-deps VENV=...`` first). Measured on the busy 2-core machine: Cal-QL 0.27–0.37 s an
update (20–25 min a seed), IQL ≈ 0.05 s (≈ 5 min a seed), plus the evaluations.

    for algo in iql calql; do for seed in 0 1 2; do
      OMP_NUM_THREADS=1 PYTHONPATH=src $PY benchmarks/d3rlpy_reference.py --algo $algo --seed $seed
    done; done
    PYTHONPATH=src $PY benchmarks/d3rlpy_reference.py --report

Smoke test (proves the pipeline, not a result):

    OMP_NUM_THREADS=1 PYTHONPATH=src $PY benchmarks/d3rlpy_reference.py --algo calql \\
        --steps 300 --eval-every 150 --eval-episodes 5 --out /tmp/d3rlpy-smoke

What is set on d3rlpy's configs, and why (everything else is its default):

* ``batch_size=256``: the cpu preset's batch and that of the d3rlpy runs quoted in the issue (the suite
  runs 128); also d3rlpy's default, set to make it explicit.
* Cal-QL only, the data set's transition picker: ``SparseRewardTransitionPicker(failure_return=
  r_min / (1 − γ), step_reward=r_min)``, as d3rlpy's Cal-QL reproduction script does
  (reproductions/finetuning/cal_ql_finetune.py). Cal-QL floors policy values at the Monte-Carlo
  return, and d3rlpy sums an episode's observed rewards only; an episode cut by the time limit
  without reaching the goal (all rewards r_min) would get a truncated, too optimistic return. The
  picker gives such episodes r_min / (1 − γ) = −100 instead, which is exactly pa-rl's Monte-Carlo
  return for them (``pa_rl.buffer.monte_carlo_returns``). That script's other settings (4-layer
  critic, alpha_threshold 0.8, max-Q backup, AntMaze reward scaler) are AntMaze tuning, not defaults,
  and are not used: the reward bias −1 here plays the role of its reward scaler.

Data: per episode observations[:-1], actions, rewards + ``--reward-bias``, a terminal flag on the
last step of terminated episodes, a timeout flag on the last step of the others. d3rlpy keeps no
next observation after a timeout, so it drops the last transition of each truncated episode (231
of 100k on pointmaze-umaze); ``transitions`` in the JSON records how many it trains on.

Evaluation: pa-rl's own loop (``pa_rl.evaluation.evaluate``) on the data set's evaluation env,
seeds 10_000 + seed·1000 + i, success = the env's flag, every ``--eval-every`` updates, twice:
``success`` with d3rlpy's ``predict`` (the deterministic squashed mean, what d3rlpy's own evaluator
uses) and ``success_sample`` with one ``sample_action`` draw (what pa-rl scores its reparam/awr
baselines with: the ``policy`` mode, clipped to the action box as pa-rl clips it).

d3rlpy is imported only in the functions that train, so ``--report`` runs without it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results-d3rlpy"
ALGOS = ("calql", "iql")


def to_mdp_dataset(episodes: Sequence[Any], reward_bias: float, gamma: float, algo: str) -> Any:
    """pa-rl episodes → one d3rlpy MDPDataset (the Cal-QL transition picker: see the module docstring)."""
    import d3rlpy

    terminals, timeouts = [], []
    for episode in episodes:
        end = np.zeros(len(episode.actions), dtype=np.float32)
        terminated = bool(episode.terminations[-1])
        terminals.append(end.copy())
        timeouts.append(end)
        (terminals if terminated else timeouts)[-1][-1] = 1.0  # d3rlpy forbids both flags on one step
    rewards = np.concatenate([e.rewards for e in episodes]).astype(np.float32) + reward_bias
    picker = None
    if algo == "calql":
        floor = float(rewards.min())
        picker = d3rlpy.dataset.SparseRewardTransitionPicker(failure_return=floor / (1 - gamma), step_reward=floor)
    return d3rlpy.dataset.MDPDataset(
        observations=np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float32),
        actions=np.concatenate([e.actions for e in episodes]).astype(np.float32),
        rewards=rewards, terminals=np.concatenate(terminals), timeouts=np.concatenate(timeouts),
        transition_picker=picker, action_space=d3rlpy.ActionSpace.CONTINUOUS)


def make_algo(algo: str, batch_size: int) -> Any:
    import d3rlpy

    config = d3rlpy.algos.CalQLConfig if algo == "calql" else d3rlpy.algos.IQLConfig
    return config(batch_size=batch_size).create(device="cpu:0")


def network(module: torch.nn.Module) -> dict[str, Any]:
    """Layer widths and normalisation of a built d3rlpy network, read off its modules."""
    return {"linear_out_features": [m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear)],
            "layer_norm": any(isinstance(m, torch.nn.LayerNorm) for m in module.modules()),
            "activation": sorted({type(m).__name__ for m in module.modules()
                                  if type(m).__module__ == "torch.nn.modules.activation"})}


def hyperparameters(algo: Any, name: str) -> dict[str, Any]:
    """The settings to compare with ours: the config fields that matter and the built networks."""
    config, modules = algo.config, algo.impl.modules
    policy = modules.policy
    std_parameter = isinstance(policy._logstd, torch.nn.Parameter)
    out: dict[str, Any] = {
        "actor_lr": config.actor_learning_rate, "critic_lr": config.critic_learning_rate,
        "tau": config.tau, "gamma": config.gamma, "n_critics": config.n_critics, "batch_size": config.batch_size,
        # Neither d3rlpy's Cal-QL nor its IQL has a behaviour-cloning phase: the actor starts from its
        # random initialisation and takes one step per critic step from the first update.
        "bc_pretraining": False,
        "actor": {**network(policy), "log_std_range": [policy._min_logstd, policy._max_logstd],
                  "std": "state-independent parameter" if std_parameter else "state-dependent head"},
        "critic": network(modules.q_funcs[0]),
    }
    if name == "calql":
        out.update({
            "initial_temperature": config.initial_temperature, "temp_lr": config.temp_learning_rate,
            "target_entropy": -algo.impl.action_size,  # SACImpl.update_temp: log π − |A|
            "conservative_weight": config.conservative_weight, "initial_alpha": config.initial_alpha,
            "alpha_lr": config.alpha_learning_rate, "alpha_threshold": config.alpha_threshold,
            "n_action_samples": config.n_action_samples, "max_q_backup": config.max_q_backup,
            "soft_q_backup": config.soft_q_backup})
    else:
        out.update({"expectile": config.expectile, "weight_temp": config.weight_temp,
                    "max_weight": config.max_weight, "value": network(modules.value_func)})
    return out


def evaluate_both(algo: Any, envs: list[Any], seeds: list[int], low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """Success, return and length with the deterministic action and with one sample of the policy."""
    from pa_rl.evaluation import evaluate

    def act(fn: Any) -> Any:
        return lambda obs: np.clip(fn(obs.astype(np.float32)), low, high)

    result = {}
    for suffix, fn in (("", algo.predict), ("_sample", algo.sample_action)):
        result.update({f"{key}{suffix}": value for key, value in evaluate(envs, act(fn), seeds).items()})
    return result


def versions() -> dict[str, str]:
    import d3rlpy
    import gymnasium

    import pa_rl

    return {"d3rlpy": d3rlpy.__version__, "pa_rl": pa_rl.__version__, "torch": torch.__version__,
            "gymnasium": gymnasium.__version__, "numpy": np.__version__, "python": platform.python_version()}


def run(args: argparse.Namespace) -> Path:
    import d3rlpy
    import structlog

    from pa_rl.data import load_dataset

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no per-epoch info
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_dataset(args.dataset)
    algo = make_algo(args.algo, args.batch_size)  # a config only: the networks are built in fitter
    dataset = to_mdp_dataset(data.episodes, args.reward_bias, algo.config.gamma, args.algo)
    envs = [data.make_env(eval_env=True) for _ in range(min(args.eval_episodes, 50))]
    seeds = [10_000 + args.seed * 1_000 + i for i in range(args.eval_episodes)]
    d3rlpy.seed(args.seed)  # last: building the dataset draws from numpy's global generator
    curve = []
    fitter = algo.fitter(dataset, n_steps=args.steps, n_steps_per_epoch=args.eval_every,
                         logger_adapter=d3rlpy.logging.NoopAdapterFactory(), show_progress=False)
    for epoch, train_metrics in fitter:
        row = {"updates": epoch * args.eval_every, "wall_clock_s": time.perf_counter() - start,
               **evaluate_both(algo, envs, seeds, data.action_low, data.action_high),
               "train": {key: float(value) for key, value in train_metrics.items()}}
        curve.append(row)
        print(f"{args.algo} s{args.seed} {row['updates']:>6} updates: success {row['success']:.2f} "
              f"(sampled {row['success_sample']:.2f}), {row['wall_clock_s']:.0f} s", flush=True)
    name = re.sub(r"-v\d+$", "", Path(data.path).name)
    result = {
        "dataset": {"id": data.dataset_id, "path": data.path, "episodes": len(data.episodes),
                    "transitions": dataset.transition_count, "reward_bias": args.reward_bias},
        "algo": args.algo, "seed": args.seed, "steps": args.steps, "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes, "eval_seeds": [seeds[0], seeds[-1]], "curve": curve,
        "hyperparameters": hyperparameters(algo, args.algo), "config": json.loads(algo.config.serialize()),
        "transition_picker": {"class": type(dataset.transition_picker).__name__,
                              **{k.lstrip("_"): v for k, v in vars(dataset.transition_picker).items()
                                 if isinstance(v, (int, float))}},
        "wall_clock_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "versions": versions(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}__d3rlpy-{args.algo}__s{args.seed}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def report(folder: Path) -> str:
    """Markdown: success (%) at each evaluation, mean ± std over seeds, one table per evaluation mode."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not results:
        raise SystemExit(f"error: no results (*.json) in {folder}")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(Path(r["dataset"]["path"]).name, r["algo"])].append(r)
    lines = []
    for key, title in (("success", "deterministic action (d3rlpy's predict)"),
                       ("success_sample", "one policy sample (pa-rl's score mode for its baselines)")):
        updates = sorted({row["updates"] for r in results for row in r["curve"]})
        lines += [f"Success (%), {title}, mean ± std over seeds:", "",
                  "| data set | algorithm | seeds | " + " | ".join(f"{u} upd" for u in updates) + " |",
                  "|---|---|---|" + "---|" * len(updates)]
        for (dataset, algo), runs in sorted(groups.items()):
            cells = []
            for u in updates:
                values = [100 * row[key] for r in runs for row in r["curve"] if row["updates"] == u]
                cells.append(f"{statistics.mean(values):.0f} ± {statistics.pstdev(values):.0f}" if values else "–")
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            lines.append(f"| {dataset} | d3rlpy {algo} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--algo", choices=ALGOS, help="required unless --report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="pa-rl/pointmaze-umaze-v0", help="Minari id or directory")
    parser.add_argument("--reward-bias", type=float, default=-1.0, help="added to every reward, as pa-rl's")
    parser.add_argument("--steps", type=int, default=4_000, help="gradient updates")
    parser.add_argument("--eval-every", type=int, default=500, help="updates between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--report", action="store_true", help="print the markdown table of --out and exit")
    args = parser.parse_args(argv)
    if not args.report:
        if args.algo is None:
            parser.error("--algo is required unless --report")
        if args.steps < args.eval_every or args.steps % args.eval_every:
            parser.error("--steps must be a multiple of --eval-every")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args.out))
    else:
        print(f"wrote {run(args)}")


if __name__ == "__main__":
    main()
