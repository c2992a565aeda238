"""Which critic settings learn a useful ranking of actions within a CPU budget? Measured by the critic
diagnostic (pa_rl.diagnostics), not by one task's success alone.

One BC-pre-trained diffusion policy per task and seed (the ``cpu`` preset's BC, cached) is frozen,
and each critic variant then trains offline from it for ``--offline-steps`` updates, evaluated every
``--eval-every`` updates: π̂'s success over 50 episodes, Q against held-out Monte-Carlo returns
(bias and rank correlation) and the ranking-by-rollout agreement. One JSON per (task, variant, seed)
under ``benchmarks/results-critic/``; existing ones are skipped, so a killed study resumes.

    python benchmarks/critic_study.py --tasks pointmaze-umaze --seeds 0 1 --variants all --jobs 2
    python benchmarks/critic_study.py --report          # the table, from the JSONs
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import multiprocessing
import torch

from pa_rl.plotting import plot_runs
from pa_rl.presets import cpu
from pa_rl.runs import RunConfig, build_agent, resolve_dataset
from pa_rl.train import to_jsonable, train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results-critic"


def _agent(**changes: Any) -> Callable[[RunConfig], RunConfig]:
    return lambda c: dataclasses.replace(c, agent=dataclasses.replace(c.agent, **changes))


def _critic(**changes: Any) -> Callable[[RunConfig], RunConfig]:
    return lambda c: dataclasses.replace(c, agent=dataclasses.replace(
        c.agent, critic=dataclasses.replace(c.agent.critic, **changes)))


def _both(*steps: Callable[[RunConfig], RunConfig]) -> Callable[[RunConfig], RunConfig]:
    def apply(config: RunConfig) -> RunConfig:
        for step in steps:
            config = step(config)
        return config
    return apply


VARIANTS: dict[str, Callable[[RunConfig], RunConfig]] = {
    "base": lambda c: c,  # the cpu preset's critic
    "tau0.05": _agent(tau=0.05),
    "nstep10": _agent(n_step=10),
    "mcfloor": _agent(mc_target_floor=True),
    "mcfloor-nstep10": _agent(mc_target_floor=True, n_step=10),
    "twohot": _critic(distributional=True, v_min=-100.0, v_max=0.0),
    "mcfloor-alpha1": _agent(mc_target_floor=True, cql_alpha=1.0),
    "returnfit": lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, critic_return_fit_steps=1000)),
    "returnfit-nstep10": _both(_agent(n_step=10), lambda c: dataclasses.replace(
        c, train=dataclasses.replace(c.train, critic_return_fit_steps=1000))),
}


def base_config(task: str, seed: int, runs_dir: Path) -> RunConfig:
    config = dataclasses.replace(cpu(), dataset=task, policy="diffusion", runs_dir=runs_dir)
    bias = 0.0 if task.startswith("metaworld-") else -1.0
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed, reward_bias=bias,
                                                                 progress=False, eval_episodes=50))


def bc_policy(task: str, seed: int, runs_dir: Path) -> dict[str, torch.Tensor]:
    """The cpu preset's BC policy for (task, seed), trained once and kept in ``runs_dir``."""
    path = runs_dir / f"bc-{task}-s{seed}.pt"
    if not path.exists():
        config = base_config(task, seed, runs_dir)
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, offline_steps=0, online_env_steps=0, eval_episodes=2))
        data = resolve_dataset(config)
        agent = build_agent(config, data)
        train(agent, data.episodes, lambda: data.make_env(eval_env=True), config.train)
        runs_dir.mkdir(parents=True, exist_ok=True)
        torch.save(agent.policy.state_dict(), path)
    return torch.load(path, weights_only=True)


def run(task: str, variant: str, seed: int, offline_steps: int, eval_every: int, threads: int) -> str:
    torch.set_num_threads(threads)
    out = RESULTS / f"{task}__{variant}__s{seed}.json"
    if out.exists():
        return f"skip {out.name}"
    runs_dir = ROOT / "runs" / "critic-study"
    policy_state = bc_policy(task, seed, runs_dir)
    config = VARIANTS[variant](base_config(task, seed, runs_dir))
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, bc_steps=0, offline_steps=offline_steps, online_env_steps=0, eval_every=eval_every))
    data = resolve_dataset(config)
    agent = build_agent(config, data)
    agent.policy.load_state_dict(policy_state)
    start = time.perf_counter()
    run_dir = runs_dir / out.stem  # metrics.csv and curves as a run writes them (a killed cell starts again)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = train(agent, data.episodes, lambda: data.make_env(eval_env=True), config.train, run_dir)
    plot_runs([run_dir], run_dir / "curves.png")
    payload = {"task": task, "variant": variant, "seed": seed, "wall_clock_s": time.perf_counter() - start,
               "evaluations": result.evaluations, "config": to_jsonable(config),
               "command": " ".join(["python", *sys.argv]), "torch_threads": threads,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    last = result.evaluations[-1]
    return (f"done {out.name}: π̂ {last['eval/pa_rl_success']:.0%}, Q−MC {last.get('diag/q_mc_bias', float('nan')):.1f}, "
            f"ρ {last.get('diag/q_mc_spearman', float('nan')):.2f}, rank {last.get('diag/rank_agreement', float('nan')):.2f}"
            f" ({payload['wall_clock_s']:.0f} s)")


def report(results: Path = RESULTS) -> str:
    """Per task and variant, at each evaluation: means over seeds of π̂ success and the diagnostic."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.json")):
        payload = json.loads(path.read_text())
        rows.setdefault((payload["task"], payload["variant"]), []).append(payload)
    keys = ("eval/pa_rl_success", "eval/policy_success", "diag/q_mean", "diag/mc_mean", "diag/q_mc_spearman",
            "diag/rank_agreement", "diag/rank_decisive")
    lines = ["| task | variant | seeds | updates | π̂ success | frozen policy success | Q held out | MC return "
             "| rank corr. ρ | rollout agreement | decisive |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, variant), runs in sorted(rows.items(), key=lambda kv: (kv[0][0], list(VARIANTS).index(kv[0][1]))):
        for index, evaluation in enumerate(runs[0]["evaluations"]):
            values = [[r["evaluations"][index].get(k, float("nan")) for r in runs if index < len(r["evaluations"])]
                      for k in keys]
            cells = [f"{sum(v) / len(v):.2f}" for v in values]
            lines.append(f"| {task} | {variant} | {len(runs)} | {evaluation['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pointmaze-umaze"])
    parser.add_argument("--variants", nargs="+", default=["all"], help=f"names or 'all': {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--offline-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report", action="store_true", help="print the table of existing results and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report())
        return
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    runs_dir = ROOT / "runs" / "critic-study"
    torch.set_num_threads(args.threads)
    for task in args.tasks:  # BC policies first, one per (task, seed), so parallel runs share them
        for seed in args.seeds:
            bc_policy(task, seed, runs_dir)
    cells = [(t, v, s) for s in args.seeds for t in args.tasks for v in variants]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, t, v, s, args.offline_steps, args.eval_every, args.threads) for t, v, s in cells]
        for future in futures:
            print(future.result(), flush=True)


if __name__ == "__main__":
    main()
