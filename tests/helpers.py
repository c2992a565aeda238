"""Small configurations and a user-style policy shared by the tests."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl import DiffusionConfig, FlowConfig, GaussianConfig, TokenConfig

SMALL_POLICY_CONFIGS = {
    "diffusion": DiffusionConfig(hidden_dim=64, num_blocks=2, time_dim=16, dropout=0.0),
    "flow": FlowConfig(hidden_dim=64, num_blocks=2, time_dim=16, dropout=0.0, steps=8),
    "gaussian": GaussianConfig(hidden_dims=(64, 64)),
    "token": TokenConfig(width=32, layers=2, heads=2, bins=32, dropout=0.0),
}

# `pa-rl train` options for a run of seconds (pointmaze-umaze made with --size 3000).
TINY_TRAIN = ["--train.bc-steps", "20", "--train.offline-steps", "20", "--train.online-env-steps", "100",
              "--train.eval-episodes", "2", "--train.eval-every", "1000", "--train.warmup-env-steps", "0",
              "--train.batch-size", "32", "--train.max-episode-steps", "60", "--train.no-progress",
              "--diffusion.hidden-dim", "32", "--agent.critic.hidden-dims", "32", "32"]


class GridPolicy(nn.Module):
    """What a user might write: a softmax over a fixed grid of joint actions. It knows nothing of pa_rl."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, points: int = 11) -> None:
        super().__init__()
        axes = [torch.linspace(float(lo), float(hi), points) for lo, hi in zip(low, high)]
        self.register_buffer("grid", torch.cartesian_prod(*axes).reshape(-1, len(axes)))
        self.net = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, len(self.grid)))

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        index = torch.multinomial(self.net(obs).softmax(-1), num_samples, replacement=True)
        return self.grid[index]

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(actions, self.grid).argmin(-1)
        return F.cross_entropy(self.net(obs), nearest)


class UniformPolicy(nn.Module):
    """Samples uniformly in [-1, 1]^d: lets critic tests isolate the critic from policy learning."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.dummy = nn.Parameter(torch.zeros(()))

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        return torch.rand(obs.shape[0], num_samples, self.action_dim) * 2 - 1

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dummy * 0


INSTRUCTION = "move the dot to the right edge"


def render_dots(positions: np.ndarray, size: int = 12) -> np.ndarray:
    """Positions in [-1, 1]² [T, 2] → uint8 images [T, size, size, 3]: a white 2×2 dot on a grey goal column."""
    images = np.zeros((len(positions), size, size, 3), np.uint8)
    images[:, :, -2:, 1] = 128  # the goal region, always visible
    cells = np.clip(((np.asarray(positions) + 1) / 2 * (size - 2)).round().astype(int), 0, size - 2)
    for dy in (0, 1):
        for dx in (0, 1):
            images[np.arange(len(positions)), cells[:, 1] + dy, cells[:, 0] + dx] = 255
    return images


class PixelPointGoal(gym.Wrapper):
    """PointGoal seen through a 12×12 camera, with a language instruction: a raw Dict/Text env, as a user's is."""

    def __init__(self) -> None:
        super().__init__(gym.make("pa_rl/PointGoal-v0"))
        self.observation_space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (12, 12, 3), np.uint8),
                                                  "instruction": gym.spaces.Text(64)})

    def _observe(self, position: np.ndarray) -> dict:
        return {"pixels": render_dots(position[None])[0], "instruction": INSTRUCTION}

    def reset(self, **kwargs):
        position, info = self.env.reset(**kwargs)
        return self._observe(position), info

    def step(self, action):
        position, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(position), reward, terminated, truncated, info


def pixel_episodes(count: int, seed: int) -> list:
    """PointGoal's expert/random mixture, its positions rendered as PixelPointGoal observes them."""
    from pa_rl.envs.point_goal import collect_episodes
    from pa_rl.observations import encode_text

    return [dataclasses.replace(e, observations={
        "pixels": render_dots(e.observations), "instruction": encode_text([INSTRUCTION] * len(e.observations))})
        for e in collect_episodes(count, seed=seed)]


def same_threads() -> dict[str, str]:
    """The environment for a subprocess that must compute as this process does: torch's thread count
    changes float sums in the last digits, and the shell's OMP_NUM_THREADS need not match conftest's."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def kill_at_first_checkpoint(train_args: list[str], run_dir: Path) -> None:
    """Start ``pa-rl train ARGS`` in a subprocess and SIGKILL it as soon as its first checkpoint is on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "pa_rl.cli", "train", *train_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=same_threads())
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("ckpt-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
