"""The learner's updates/s with ``--train.sampler sync`` and ``async`` (pa_rl.samplers), per policy class.

    OMP_NUM_THREADS=1 python benchmarks/sampler_speed.py [--policy hf diffusion] [--rounds 2] [--json out.json]

Each measurement is a fresh Trainer at the ``cpu`` preset's agent and policy settings (N = 8 samples,
top 4, one local step, two (256, 256) critics, batch 256) on PointGoal data (100 episodes of 2-d states
and actions, pa_rl.envs.point_goal); ``hf`` is a 2-layer Llama (hidden 32) built by make_tiny_hf.py,
LoRA rank 8. It times the two phases where the policy changes, so the async sampler runs:
  offline  --offline-steps updates with a distillation step (and a weight publication) every
           --distill-every; the worker's start-up is inside this time
  online   the blocks of updates after each episode of --online-env-steps (acting and env steps are
           not counted: they are the same for both samplers)
with the learner's and the worker's CPU time per update (the learner's, unlike its wall clock, hardly
depends on what else runs: 1000 / it is the updates/s the learner would reach with a core of its own
and a worker that keeps up), and the share of batch states served from the cache. Sync and async alternate
(sync, async, sync, async, ...) in one process so that both see the same load on a shared machine; the
learner runs one torch thread (the worker another). Medians over --rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import make_tiny_hf
from pa_rl import Agent, make_policy
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.policies import HFConfig
from pa_rl.presets import cpu
from pa_rl.train import Trainer

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)


def children_cpu_s() -> float:
    """CPU seconds of this process's children reaped so far (the sampler's worker, once its phase ends)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(policy: str, sampler: str, episodes: list, args: argparse.Namespace, model: Path) -> dict[str, float]:
    """One offline then online phase; per phase: the learner's updates/s (wall clock), the learner's and the
    worker's CPU ms per update, and the share of batch states served from the cache."""
    run = cpu()
    torch.manual_seed(0)
    policy_config = HFConfig(model=str(model)) if policy == "hf" else getattr(run, policy)
    agent = Agent(make_policy(policy, 2, LOW, HIGH, policy_config), 2, LOW, HIGH, run.agent)
    config = replace(run.train, bc_steps=0, offline_steps=args.offline_steps, offline_distill_every=args.distill_every,
                     online_env_steps=args.online_env_steps, warmup_env_steps=0, eval_episodes=1, eval_parallel=1,
                     diagnostic_pairs=0, checkpoint_minutes=0, progress=False, sampler=sampler)
    trainer = Trainer(agent, episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config)
    served: dict[str, list[float]] = {"offline": [], "online": []}
    spent = {phase: {"wall": 0.0, "cpu": 0.0, "worker": 0.0, "updates": 0} for phase in served}
    after_update, online_updates = trainer._after_update, trainer._online_updates

    def record(phase: str, metrics: dict, bar: object) -> None:
        if trainer.sampler is not None:
            served[phase].append(float(trainer.sampler.metrics["sampler/from_cache"]))
        spent[phase]["updates"] += 1
        after_update(phase, metrics, bar)

    def timed(phase: str, fn: Callable[..., None], *args: object) -> None:
        wall, cpu_s = time.perf_counter(), time.process_time()
        fn(*args)
        spent[phase]["wall"] += time.perf_counter() - wall
        spent[phase]["cpu"] += time.process_time() - cpu_s

    trainer._after_update = record
    trainer._online_updates = lambda new_steps: timed("online", online_updates, new_steps)
    for phase, run_phase in (("offline", lambda: timed("offline", trainer.offline_rl)), ("online", trainer.online_rl)):
        worker = children_cpu_s()
        run_phase()
        spent[phase]["worker"] = children_cpu_s() - worker  # its whole life, start-up included
    for env in trainer._eval_envs:
        env.close()
    result = {}
    for phase, s in spent.items():
        result |= {f"{phase}_updates_per_s": s["updates"] / s["wall"],
                   f"{phase}_learner_cpu_ms": 1e3 * s["cpu"] / s["updates"],
                   f"{phase}_worker_cpu_ms": 1e3 * s["worker"] / s["updates"],
                   f"{phase}_from_cache": float(np.mean(served[phase])) if served[phase] else 0.0}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", nargs="+", default=["hf", "diffusion"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--offline-steps", type=int, default=60)
    parser.add_argument("--distill-every", type=int, default=4)
    parser.add_argument("--online-env-steps", type=int, default=120)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    episodes = collect_episodes(100, seed=0)
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        model = make_tiny_hf.make_text_model(Path(folder) / "tiny-llama")
        for round_ in range(args.rounds):
            for policy in args.policy:
                for sampler in ("sync", "async"):
                    result = measure(policy, sampler, episodes, args, model)
                    rows.setdefault((policy, sampler), []).append(result)
                    print(f"round {round_} {policy:9s} {sampler:5s} " + "  ".join(f"{k} {v:.3f}"
                                                                           for k, v in result.items()), flush=True)
    print("\n| policy | phase | sampler | updates/s | learner CPU ms/update | worker CPU ms/update | from the cache |\n"
          "|---|---|---|---:|---:|---:|---:|")
    summary = {}
    for (policy, sampler), results in rows.items():
        summary[f"{policy}/{sampler}"] = {key: statistics.median(r[key] for r in results) for key in results[0]}
    for policy in args.policy:
        for phase in ("offline", "online"):
            for sampler in ("sync", "async"):
                m = {key.removeprefix(f"{phase}_"): value for key, value in summary[f"{policy}/{sampler}"].items()}
                print(f"| {policy} | {phase} | {sampler} | {m['updates_per_s']:.2f} | {m['learner_cpu_ms']:.0f} "
                      f"| {m['worker_cpu_ms']:.0f} | {100 * m['from_cache']:.0f} % |")
    if args.json:
        runs = {f"{policy}/{sampler}": results for (policy, sampler), results in rows.items()}
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
