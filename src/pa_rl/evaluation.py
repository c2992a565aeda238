"""Evaluation: many episodes stepped in lockstep so the agent acts on all of them in one batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pa_rl.observations import stack_obs


def episode_success(info: dict[str, Any]) -> bool | None:
    """The env's own success flag (``success`` or ``is_success``), or None if it reports none."""
    for key in ("success", "is_success"):
        if key in info:
            return bool(np.asarray(info[key]).any())
    return None


def evaluate(envs: Sequence[gym.Env], act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int],
             max_steps: int = 1000) -> dict[str, float]:
    """Run one episode per seed (at most ``len(envs)`` at a time) and average return, success, length.

    ``act`` maps a batch of observations (stacked arrays, or a mapping of them) to actions [M, A],
    or to chunks [M, H, A] that are executed open-loop. Success counts an episode once the env
    reports it at any step; it is NaN if the env never reports it.
    """
    returns, successes, lengths = [], [], []
    for start in range(0, len(seeds), len(envs)):
        group = seeds[start: start + len(envs)]
        obs = [env.reset(seed=int(seed))[0] for env, seed in zip(envs, group)]
        live = np.ones(len(group), dtype=bool)
        ret, length = np.zeros(len(group)), np.zeros(len(group), dtype=int)
        success: list[bool | None] = [None] * len(group)
        while live.any():
            index = np.flatnonzero(live)
            plans = np.asarray(act(stack_obs([obs[i] for i in index])))
            plans = plans[:, None] if plans.ndim == 2 else plans
            for step in range(plans.shape[1]):
                for row, i in enumerate(index):
                    if not live[i]:
                        continue
                    obs[i], reward, terminated, truncated, info = envs[i].step(plans[row, step])
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
            steps, done = 0, False
            while not done and steps < max_steps:
                plan = np.asarray(act(stack_obs([obs])))[0]
                for action in plan.reshape(-1, env.action_space.shape[0]):
                    obs, _, terminated, truncated, _ = env.step(action)
                    writer.append_data(env.render())
                    steps += 1
                    done = terminated or truncated or steps >= max_steps
                    if done:
                        break
    env.close()
    return path
