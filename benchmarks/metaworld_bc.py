"""Why BC of the diffusion policy scored 5–25 % on Meta-World data whose episodes succeed 55–75 % of the time.

    python benchmarks/metaworld_bc.py --task push --experts                    # the data's collector, in the eval env
    python benchmarks/metaworld_bc.py --task push --bc-steps 3000 10000 20000 --raw   # BC, observations as recorded
    python benchmarks/metaworld_bc.py --task push --bc-steps 3000 10000 20000         # BC, standardised (0.7.0)

``--experts`` runs the scripted expert that collected the data set in the evaluation env (the same
50 evaluation seeds as a run's evaluations): noise-free, at each of the data's noise levels, and with
the level redrawn every step (what a BC policy that imitated the pooled data perfectly would do if the
noise did not depend on the state). It checks that collection and evaluation match and gives BC's
ceiling. ``--bc-steps`` trains BC of the ``cpu`` preset's diffusion policy (batch 128, seed
``--seed``) and evaluates one raw sample per step after each listed number of updates, with the
samples' mean |a| and share at the action bounds next to the data's. One torch thread; JSON lines
on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from pa_rl.buffer import ReplayBuffer
from pa_rl.data.metaworld import NOISE_LEVELS
from pa_rl.evaluation import evaluate
from pa_rl.presets import cpu
from pa_rl.data import LoadedDataset
from pa_rl.data.episodes import vector_rows
from pa_rl.runs import RunConfig, build_agent, resolve_dataset

EPISODES, PARALLEL, MAX_STEPS = 50, 25, 200
BATCH = 128  # the suite's


def action_stats(actions: np.ndarray) -> dict[str, list[float]]:
    return {"mean_abs": np.abs(actions).mean(0).round(3).tolist(),
            "at_bounds": (np.abs(actions) >= 0.999).mean(0).round(3).tolist()}


def experts(task: str, envs: list, seeds: list[int]) -> None:
    from metaworld.policies import ENV_POLICY_MAP

    expert = ENV_POLICY_MAP[f"{task}-v3"]()
    rng = np.random.default_rng(0)

    def noisy(obs: np.ndarray, sigma: float | None) -> np.ndarray:
        actions = []
        for row in obs:
            std = NOISE_LEVELS[rng.integers(len(NOISE_LEVELS))] if sigma is None else sigma
            actions.append(np.clip(expert.get_action(row) + std * rng.standard_normal(4), -1, 1))
        return np.stack(actions)

    for sigma in (0.0, *NOISE_LEVELS, None):
        result = evaluate(envs, lambda obs, s=sigma: noisy(obs, s), seeds, MAX_STEPS)
        print(json.dumps({"task": task, "expert_noise": "per-step mixture" if sigma is None else sigma,
                          "success": result["success"], "length": result["length"]}), flush=True)


def behaviour_cloning(config: RunConfig, data: LoadedDataset, envs: list, seeds: list[int], steps: list[int],
                      raw: bool, seed: int) -> None:
    config = dataclasses.replace(config, policy="diffusion",
                                 agent=dataclasses.replace(config.agent, standardize_observations=not raw),
                                 train=dataclasses.replace(config.train, seed=seed))
    agent = build_agent(config, data)
    episodes = data.episodes
    if not raw:  # as pa_rl.train does on a fresh agent (it would also hold out 5 % of the episodes)
        agent.fit_standardization(vector_rows(episodes, agent.obs_spec))
    buffer = ReplayBuffer.from_episodes(episodes, gamma=agent.config.gamma)
    generator = torch.Generator().manual_seed(seed)
    probe = buffer.sample(512, generator)
    done, start = 0, time.perf_counter()
    for target in sorted(steps):
        while done < target:
            loss = agent.bc_update(buffer.sample(BATCH, generator))["bc/loss"]
            done += 1
        agent.eval()
        with torch.no_grad():
            samples = agent.policy.sample(probe.obs, 8).reshape(-1, probe.actions.shape[-1]).numpy()
        result = evaluate(envs, lambda obs: agent.act(obs, "policy").cpu().numpy(), seeds, MAX_STEPS)
        print(json.dumps({"task": config.dataset, "observations": "raw" if raw else "standardised", "seed": seed,
                          "bc_updates": done, "train_s": round(time.perf_counter() - start), "loss": float(loss),
                          "success": result["success"], "length": result["length"],
                          "samples": action_stats(samples)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="push")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent.parent / "datasets")
    parser.add_argument("--experts", action="store_true", help="evaluate the data's scripted collector")
    parser.add_argument("--bc-steps", type=int, nargs="*", default=[], help="evaluate BC after these updates")
    parser.add_argument("--raw", action="store_true", help="BC on raw observations (standardize_observations off)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = dataclasses.replace(cpu(), dataset=f"metaworld-{args.task}", data_dir=args.data_dir)
    loaded = resolve_dataset(config)
    actions = np.concatenate([e.actions for e in loaded.episodes])
    print(json.dumps({"task": args.task, "episodes": len(loaded.episodes), "transitions": len(actions),
                      "data_success": float(np.mean([e.rewards[-1] == 0 for e in loaded.episodes])),
                      "data_actions": action_stats(actions)}), flush=True)
    envs = [loaded.make_env(eval_env=True) for _ in range(PARALLEL)]
    seeds = [10_000 + args.seed * 1_000 + i for i in range(EPISODES)]  # a run's evaluation seeds
    if args.experts:
        experts(args.task, envs, seeds)
    if args.bc_steps:
        behaviour_cloning(config, loaded, envs, seeds, args.bc_steps, args.raw, args.seed)


if __name__ == "__main__":
    main()
