"""PointGoal: a seconds-to-train 2-D navigation task whose mixed-quality data leave room for RL.

A point starts near (−0.8, 0) and must reach a disc of radius 0.15 around (0.8, 0) by moving at
most 0.1 per step in each coordinate. Reward is −1 per step and 0 on the step that reaches the goal,
which ends the episode (Meta-World-style sparse reward); 40 steps at most. The data set mixes a
noisy expert with a random walker, so behaviour cloning imitates the mixture and is slow, while a
critic can tell which sampled actions make progress.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from pa_rl.data.episodes import Episode, EpisodeRecorder

GOAL = np.array([0.8, 0.0], dtype=np.float32)
START = np.array([-0.8, 0.0], dtype=np.float32)


class PointGoalEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, goal_radius: float = 0.15, speed: float = 0.1) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.goal_radius, self.speed = goal_radius, speed
        self.position = START.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = (START + self.np_random.uniform(-0.1, 0.1, size=2)).astype(np.float32)
        return self.position.copy(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self.position = np.clip(self.position + self.speed * action, -1.0, 1.0).astype(np.float32)
        success = bool(np.linalg.norm(self.position - GOAL) <= self.goal_radius)
        return self.position.copy(), 0.0 if success else -1.0, success, False, {"success": success}


def expert_action(position: np.ndarray) -> np.ndarray:
    direction = GOAL - position
    return np.clip(direction / max(float(np.abs(direction).max()), 1e-6), -1.0, 1.0)


def collect_episodes(num_episodes: int, seed: int = 0, expert_fraction: float = 0.5,
                     expert_noise: float = 0.3) -> list[Episode]:
    """Roll out a mixture of a noisy expert and a uniform random walker in PointGoal-v0."""
    env = gym.make("pa_rl/PointGoal-v0")
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num_episodes):
        expert = rng.random() < expert_fraction
        obs, _ = env.reset(seed=seed * 100_003 + i)
        recorder = EpisodeRecorder(obs)
        done = False
        while not done:
            if expert:
                action = np.clip(expert_action(obs) + expert_noise * rng.standard_normal(2), -1, 1)
            else:
                action = rng.uniform(-1, 1, size=2)
            obs, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
            recorder.add(action, reward, obs, terminated, truncated)
            done = terminated or truncated
        episodes.append(recorder.episode())
    env.close()
    return episodes
