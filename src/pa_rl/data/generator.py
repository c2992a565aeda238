"""What the built-in dataset generators share: the episode-rollout loop and the write step."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector.episode_buffer import EpisodeBuffer

from pa_rl.data.minari_io import write_dataset
from pa_rl.progress import progress_bar

Act = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EpisodePlan:
    """One episode's behaviour: its per-step ``act``, its reset options, and constant infos."""

    act: Act
    reset_options: dict[str, Any] | None = None
    infos: dict[str, float] = field(default_factory=dict)


def noisy(act: Act, std: float, rng: np.random.Generator) -> Act:
    """``act`` plus Gaussian noise of std ``std``, clipped to [-1, 1], as float32."""

    def noisy_act(observation: np.ndarray) -> np.ndarray:
        action = act(observation)
        action = action + std * rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return noisy_act


def rollout(
    env: gym.Env,
    new_episode: Callable[[], EpisodePlan],
    *,
    size: int,
    seed: int,
    desc: str,
    progress: bool = True,
) -> list[EpisodeBuffer]:
    """Roll episodes in ``env`` for exactly ``size`` transitions (the cut truncates the last one).

    Each episode takes its plan from ``new_episode()`` before the reset (seeded with ``seed`` for
    the first episode only). The env's reward is recorded as is, so that the data and the env
    (online fine-tuning, evaluation) share one reward; the buffers'
    infos hold ``success`` per observation (False at a reset whose info has none) and the plan's
    infos repeated over the episode.
    """
    buffers: list[EpisodeBuffer] = []
    total = 0
    with progress_bar(size, desc, progress, unit="step") as bar:
        while total < size:
            plan = new_episode()
            obs, info = env.reset(seed=seed if not buffers else None, options=plan.reset_options)
            observations, actions, rewards = [obs], [], []
            terminations, truncations, successes = [], [], [bool(info.get("success", False))]
            done = False
            while not done:
                action = plan.act(obs)
                obs, r, terminated, truncated, info = env.step(action)
                total += 1
                success = bool(info["success"])
                truncated = truncated or total >= size
                observations.append(obs)
                actions.append(action)
                rewards.append(float(r))
                terminations.append(bool(terminated))
                truncations.append(bool(truncated and not terminated))
                successes.append(success)
                done = terminated or truncated
            bar.update(len(actions))
            buffers.append(
                EpisodeBuffer(
                    id=len(buffers),
                    observations=stack_observations(env.observation_space, observations),
                    actions=np.asarray(actions),
                    rewards=np.asarray(rewards),
                    terminations=np.asarray(terminations),
                    truncations=np.asarray(truncations),
                    infos={
                        "success": np.asarray(successes),
                        **{k: np.full(len(successes), v) for k, v in plan.infos.items()},
                    },
                )
            )
    return buffers


def stack_observations(space: gym.spaces.Space, observations: list[Any]) -> Any:
    """One episode's observations as Minari stores them: an array per Box (of the space's dtype), a
    list of strings per Text, a dict of those per Dict."""
    if isinstance(space, gym.spaces.Dict):
        return {key: stack_observations(sub, [obs[key] for obs in observations]) for key, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Text):
        return [str(obs) for obs in observations]
    return np.asarray(observations, dtype=space.dtype)


@dataclass(frozen=True)
class Generated:
    """A generated dataset before writing: its buffers, the open env they come from, metadata."""

    buffers: list[EpisodeBuffer]
    env: gym.Env
    env_spec: EnvSpec
    description: str
    algorithm_name: str
    requirements: list[str]
    raw_images: bool = False  # store image observations losslessly (gzip) rather than as minari's JPEG

    def write(self, dataset_id: str, *, out_dir: str | os.PathLike | None, overwrite: bool) -> str:
        """Write as Minari ``dataset_id`` (spec as env and eval env), then close the env."""
        try:
            return write_dataset(
                dataset_id,
                self.buffers,
                env_spec=self.env_spec,
                eval_env_spec=self.env_spec,
                observation_space=self.env.observation_space,
                action_space=self.env.action_space,
                description=self.description,
                algorithm_name=self.algorithm_name,
                requirements=self.requirements,
                out_dir=out_dir,
                overwrite=overwrite,
                raw_images=self.raw_images,
            )
        finally:
            self.env.close()
