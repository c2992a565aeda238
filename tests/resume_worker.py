"""A training process for the kill-and-resume tests: PointGoal, a small flow policy, tiny budgets.

    python tests/resume_worker.py RUN_DIR [--resume] [--kill-at WHERE:N] [--pixels]

``--kill-at`` makes the process SIGKILL itself at the N-th call, in this process, of WHERE:
``bc_update``, ``update`` (critic updates, offline and online), ``evaluate`` (as an evaluation
starts) or ``env_step`` (an online env step, mid-episode). A real SIGKILL at an exact point, so
the tests can aim at each phase. Without it the run ends and writes ``RUN_DIR/final.safetensors``.
``--pixels``: PointGoal seen through a camera with an instruction, in action chunks of 2.
``--async-sampler``: policy samples from the async sampler's worker, offline distillation every 2 updates; shorter
(10 BC updates, 60 online env steps, no critic ranking diagnostic).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SMALL_POLICY_CONFIGS, PixelPointGoal, pixel_episodes  # noqa: E402
from pa_rl import (Agent, AgentConfig, CriticConfig, EncoderConfig, OptimizerConfig, TrainConfig,  # noqa: E402
                   make_policy, spec_of_space)
from pa_rl.data.episodes import EpisodeRecorder  # noqa: E402
from pa_rl.envs.point_goal import collect_episodes  # noqa: E402

from pa_rl.train import seed_everything  # noqa: E402

training = importlib.import_module("pa_rl.train")  # the module (the package's `train` is the function)

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)
CONFIG = TrainConfig(batch_size=32, bc_steps=30, offline_steps=30, online_env_steps=120, warmup_env_steps=20,
                     eval_every=20, eval_episodes=2, checkpoint_every=8, keep_checkpoints=2, log_every=1,
                     progress=False, seed=5)


def make_agent(pixels: bool = False) -> Agent:
    seed_everything(CONFIG.seed)  # the initial weights, as the CLI's build_agent draws them
    spec = spec_of_space(PixelPointGoal().observation_space) if pixels else 2
    encoder, chunk = EncoderConfig(conv_channels=8, image_features=16, text_features=8), 2 if pixels else 1
    policy_config = SMALL_POLICY_CONFIGS["flow"]
    policy_config.encoder = encoder
    policy = make_policy("flow", spec, LOW, HIGH, policy_config, chunk)
    return Agent(policy, spec, LOW, HIGH, AgentConfig(
        cql_alpha=0.1, bc_warmup_steps=10, distill_lr=1e-4, critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
        optimizer=OptimizerConfig(num_samples=8, top_k=4, local_steps=1, step_size=3e-3), encoder=encoder,
        chunk=chunk))


def kill_at(owner: Any, name: str, calls: int) -> None:
    """Replace ``owner.name`` by a wrapper that SIGKILLs this process at its ``calls``-th call."""
    original: Callable[..., Any] = getattr(owner, name)
    count = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", default=None)
    parser.add_argument("--pixels", action="store_true")
    parser.add_argument("--async-sampler", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    episodes = pixel_episodes(20, seed=1) if args.pixels else collect_episodes(20, seed=1)
    if args.kill_at:
        where, calls = args.kill_at.split(":")
        owner = {"bc_update": Agent, "update": Agent, "evaluate": training, "env_step": EpisodeRecorder}[where]
        kill_at(owner, "add" if where == "env_step" else where, int(calls))
    agent = make_agent(args.pixels)
    make_env = PixelPointGoal if args.pixels else lambda: gym.make("pa_rl/PointGoal-v0")
    config = (dataclasses.replace(CONFIG, sampler="async", offline_distill_every=2, bc_steps=10, online_env_steps=60,
                                  diagnostic_pairs=0) if args.async_sampler else CONFIG)
    result = training.train(agent, episodes, make_env, config, args.run_dir, resume=args.resume)
    save_file({k: v.contiguous() for k, v in agent.state_dict().items()}, str(args.run_dir / "final.safetensors"))
    print(result.summary["online"])


if __name__ == "__main__":
    main()
