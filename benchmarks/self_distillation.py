"""What distillation alone does to a trained policy when the critic cannot rank its samples.

Loads a suite cell's agent at the end of its offline phase (checkpoint 2: BC, then offline), freezes
the critic, and takes policy steps on batches of the offline data only, one rule per variant:

* ``self``: the target is one raw sample of the policy itself (pure self-training);
* ``distill``: PA-RL's distillation step as the agent runs it (softmax over the optimized candidates,
  the data action among them);
* ``anchor``: ``distill`` with ``distill_data_anchor`` (the data actions as extra rows).

Every ``--every`` steps: success of one raw policy sample and of π̂ over 50 episodes, and how the
policy's samples compare with the data's actions (mean |a|, share at the bounds). One JSON line per
reading on stdout and in ``--out``.

    python benchmarks/self_distillation.py \\
        --cell benchmarks/results-stability-b128/pointmaze-umaze__parl-diffusion-act-target__s1.json \\
        --variants self distill anchor --steps 750
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from pa_rl.buffer import ReplayBuffer
from pa_rl.checkpoint import decode
from pa_rl.evaluation import evaluate
from pa_rl.runs import RunConfig, build_agent, from_jsonable, resolve_dataset


def run(cell: Path, variant: str, steps: int, every: int, episodes: int) -> list[dict]:
    result = json.loads(cell.read_text())
    config = from_jsonable(RunConfig, result["config"])
    run_dir = Path(config.runs_dir) / config.name
    torch.manual_seed(0)
    data = resolve_dataset(config)
    agent = build_agent(config, data)
    agent.config = dataclasses.replace(agent.config, distill_data_anchor=variant == "anchor")
    checkpoint = decode((run_dir / "checkpoints" / "ckpt-000002.pt").read_bytes(), str(run_dir))
    assert checkpoint["progress"]["phase"] == "online", "checkpoint 2 must be the end of the offline phase"
    agent.load_state_dict(checkpoint["agent"])
    agent.policy_optim.load_state_dict(checkpoint["optimizers"]["policy_optim"])
    buffer = ReplayBuffer.from_episodes(data.episodes, agent.config.gamma)
    envs = [data.make_env(eval_env=True) for _ in range(episodes)]
    seeds = [10_000 + config.train.seed * 1_000 + i for i in range(episodes)]  # the run's own evaluation seeds
    generator, probe = torch.Generator().manual_seed(0), buffer.sample(1024, torch.Generator().manual_seed(5))
    readings = []

    def read(step: int) -> None:
        success = {mode: evaluate(envs, lambda obs, mode=mode: agent.act(obs, mode).cpu().numpy(), seeds,
                                  config.train.max_episode_steps)["success"] for mode in ("policy", "argmax")}
        with torch.no_grad():
            samples = agent.sample_policy(probe.obs)[:, 0]
        reading = {"cell": cell.stem, "variant": variant, "step": step, "policy_success": success["policy"],
                   "pa_rl_success": success["argmax"], "sample_abs": float(samples.abs().mean()),
                   "data_abs": float(probe.actions.abs().mean()),
                   "sample_at_bounds": float((samples.abs() > 0.99).float().mean()),
                   "data_at_bounds": float((probe.actions.abs() > 0.99).float().mean())}
        print(json.dumps(reading), flush=True)
        readings.append(reading)

    read(0)
    for step in range(1, steps + 1):
        batch = buffer.sample(config.train.batch_size, generator)
        if variant == "self":
            with torch.no_grad():
                targets = agent.sample_policy(batch.obs)[:, 0]
            agent._policy_step(lambda: agent.policy.loss(batch.obs, agent.shaped(targets)), agent.config.distill_lr)
        else:
            agent.distill(batch)
        if step % every == 0:
            read(step)
    return readings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", type=Path, required=True, help="a suite cell's result JSON (its run folder is used)")
    parser.add_argument("--variants", nargs="+", default=["self", "distill", "anchor"],
                        choices=["self", "distill", "anchor"])
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-self-distillation"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        readings = run(args.cell, variant, args.steps, args.every, args.episodes)
        (args.out / f"{args.cell.stem}__{variant}.json").write_text(json.dumps(readings, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
