"""Evaluation: many episodes stepped in lockstep so the agent acts on all of them in one batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


def episode_success(info: dict[str, Any]) -> bool | None:
    """The env's own success flag (``success`` or ``is_success``), or None if it reports none."""
    for key in ("success", "is_success"):
        if key in info:
            return bool(np.asarray(info[key]).any())
    return None


def evaluate(envs: Sequence[gym.Env], act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int],
             max_steps: int = 1000) -> dict[str, float]:
    """Run one episode per seed (at most ``len(envs)`` at a time) and average return, success, length.

    ``act`` maps a batch of observations [M, obs_dim] to actions [M, action_dim]. Success counts an
    episode once the env reports it at any step; it is NaN if the env never reports it.
    """
    returns, successes, lengths = [], [], []
    for start in range(0, len(seeds), len(envs)):
        chunk = seeds[start: start + len(envs)]
        obs = np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(envs, chunk)])
        live = np.ones(len(chunk), dtype=bool)
        ret, length = np.zeros(len(chunk)), np.zeros(len(chunk), dtype=int)
        success: list[bool | None] = [None] * len(chunk)
        while live.any():
            index = np.flatnonzero(live)
            actions = act(obs[index])
            for row, i in enumerate(index):
                obs[i], reward, terminated, truncated, info = envs[i].step(actions[row])
                ret[i] += float(reward)
                length[i] += 1
                flag = episode_success(info)
                if flag is not None:
                    success[i] = bool(success[i]) or flag
                if terminated or truncated or length[i] >= max_steps:
                    live[i] = False
        returns += ret.tolist()
        lengths += length.tolist()
        successes += [np.nan if s is None else float(s) for s in success]
    return {"return": float(np.mean(returns)), "success": float(np.mean(successes)),
            "length": float(np.mean(lengths))}


def record_video(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int], path: str | Path,
                 max_steps: int = 1000, fps: int = 30) -> Path:
    """Render episodes of an ``rgb_array`` env, one after another, into an mp4 file."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps) as writer:
        for seed in seeds:
            obs, _ = env.reset(seed=int(seed))
            writer.append_data(env.render())
            for _ in range(max_steps):
                obs, _, terminated, truncated, _ = env.step(act(obs[None])[0])
                writer.append_data(env.render())
                if terminated or truncated:
                    break
    env.close()
    return path
