"""Bad input stops before any compute with a message that names the field (and episode) and the fix.

Data set files (missing, damaged, NaN, out-of-bounds actions, non-Box spaces, empty) are covered where
they are loaded, in test_data.py; checkpoints from another config or version in test_resume.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pa_rl import (AgentConfig, CriticConfig, DiffusionConfig, Episode, FlowConfig, GaussianConfig, OptimizerConfig,
                   TokenConfig, TrainConfig)
from pa_rl.data import DataError
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.train import Trainer

from resume_worker import CONFIG, make_agent


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig(batch_size=0), "TrainConfig.batch_size must be ≥ 1, got 0"),
    (lambda: TrainConfig(offline_steps=-5), "TrainConfig.offline_steps must be ≥ 0, got -5"),
    (lambda: TrainConfig(online_buffer_size=0), "TrainConfig.online_buffer_size must be ≥ 1"),
    (lambda: TrainConfig(keep_checkpoints=0), "TrainConfig.keep_checkpoints must be ≥ 1"),
    (lambda: TrainConfig(mixing_ratio=1.5), "mixing_ratio must be in [0, 1], got 1.5"),
    (lambda: TrainConfig(online_env_steps=500, warmup_env_steps=500), "no online update would ever run"),
    (lambda: TrainConfig(held_out_fraction=1.0), "held_out_fraction must be in [0, 1), got 1.0"),
    (lambda: TrainConfig(reward_bias=float("nan")), "reward_scale and reward_bias must be finite"),
    (lambda: OptimizerConfig(num_samples=8, top_k=16), "top_k (16) cannot exceed num_samples (8)"),
    (lambda: OptimizerConfig(num_samples=-1), "OptimizerConfig.num_samples must be ≥ 1, got -1"),
    (lambda: OptimizerConfig(step_size=float("nan")), "OptimizerConfig.step_size must be ≥ 0, got nan"),
    (lambda: AgentConfig(critic_lr=0.0), "AgentConfig.critic_lr must be > 0, got 0.0"),
    (lambda: AgentConfig(cql_alpha=-1.0), "AgentConfig.cql_alpha must be ≥ 0"),
    (lambda: AgentConfig(gamma=1.0), "gamma must be in [0, 1), got 1.0"),
    (lambda: CriticConfig(ensemble_size=0), "CriticConfig.ensemble_size must be ≥ 1, got 0"),
    (lambda: CriticConfig(hidden_dims=(256, 0)), "CriticConfig.hidden_dims must be ≥ 1, got (256, 0)"),
    (lambda: CriticConfig(v_min=0.0, v_max=-100.0), "CriticConfig.v_max must be > 0.0, got -100.0"),
    (lambda: DiffusionConfig(steps=0), "DiffusionConfig.steps must be ≥ 1, got 0"),
    (lambda: FlowConfig(time_dim=33), "FlowConfig.time_dim must be even"),
    (lambda: FlowConfig(dropout=1.0), "FlowConfig.dropout must be < 1, got 1.0"),
    (lambda: GaussianConfig(log_std_min=2.0, log_std_max=-5.0), "GaussianConfig.log_std_max must be > 2.0"),
    (lambda: TokenConfig(width=100, heads=8), "TokenConfig.width (100) must be a multiple of heads (8)"),
    (lambda: TokenConfig(bins=1), "TokenConfig.bins must be ≥ 2, got 1"),
])
def test_invalid_config_values_name_the_field(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value)


def spoil(episode: Episode, field: str, row: int, value: float) -> Episode:
    array = getattr(episode, field).copy()
    array[row] = value
    return dataclasses.replace(episode, **{field: array})


def point_goal_env() -> gym.Env:
    return gym.make("pa_rl/PointGoal-v0")


GOOD = collect_episodes(4, seed=1)


@pytest.mark.parametrize("episodes, message", [
    ([*GOOD[:2], spoil(GOOD[2], "observations", 3, np.nan)], "episode 2: non-finite observations (first at step 3"),
    ([spoil(GOOD[0], "actions", 1, np.inf), *GOOD[1:]], "episode 0: non-finite actions (first at step 1"),
    ([GOOD[0], spoil(GOOD[1], "rewards", 0, -np.inf)], "episode 1: non-finite rewards (first at step 0"),
    ([GOOD[0], spoil(GOOD[1], "actions", 2, 3.0)], "episode 1: action[2][0] = 3.0 is outside the action space bounds"),
    ([dataclasses.replace(GOOD[0], observations=GOOD[0].observations[:, :1])],
     "episode 0: observations have shape (41, 1), expected shape (41, 2)"),
    ([], "training data has no transitions (0 episodes); pass a non-empty dataset"),
])
def test_bad_episodes_are_refused_before_any_compute(tmp_path: Path, episodes: list[Episode], message: str) -> None:
    agent = make_agent()
    before = [p.clone() for p in agent.parameters()]
    with pytest.raises(DataError) as error:
        Trainer(agent, episodes, point_goal_env, CONFIG, tmp_path / "run")
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters()))


class ExtraObservation(gym.ObservationWrapper):
    """PointGoal with a third, constant observation coordinate."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.append(observation, np.float32(0.0))


class GridObservation(gym.ObservationWrapper):
    """PointGoal with its 2-d observation as a 1 × 2 array, as image observations are multi-dimensional."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1, 2), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation.reshape(1, 2)


@pytest.mark.parametrize("make_env, message", [
    (lambda: gym.make("Pendulum-v1"), "action space Box(-2.0, 2.0, (1,), float32) does not match the data's 2-d"),
    (lambda: gym.make("CartPole-v1"), "action space Discrete(2) does not match the data's 2-d Box actions"),
    (lambda: gym.wrappers.RescaleAction(point_goal_env(), np.float32(-2), np.float32(2)), "action bounds [[-2. -2.], [2. 2.]] differ"),
    (lambda: ExtraObservation(point_goal_env()), "does not match the data's 2-d observations"),
    (lambda: GridObservation(point_goal_env()), "(1, 2), float32) does not match the data's 2-d observations"),
])
def test_an_environment_that_does_not_fit_the_data_is_refused(tmp_path: Path, make_env, message: str) -> None:
    with pytest.raises(DataError) as error:
        Trainer(make_agent(), GOOD, make_env, CONFIG, tmp_path / "run")
    assert message in str(error.value) and "recorded in this env" in str(error.value)


def test_a_replay_buffer_larger_than_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    # 10¹² slots of 37 bytes: far beyond any RAM (a long enough online phase, or the buffer is capped at what it fills)
    config = dataclasses.replace(CONFIG, online_buffer_size=10**12, online_env_steps=10**12)
    with pytest.raises(ValueError, match=r"an online replay buffer of 1,000,000,000,000 slots \(37 bytes each\) needs "
                                         r"[\d.]+ GB but .* GB are free on cpu: at most [\d,]+ fit; lower "
                                         r"--train\.online-buffer"):
        Trainer(make_agent(), GOOD, point_goal_env, config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
