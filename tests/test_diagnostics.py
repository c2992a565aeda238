"""The critic diagnostic against critics whose calibration and ranking are known, and its place in a run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from pa_rl import Agent, AgentConfig, CriticConfig, Episode, OptimizerConfig, TrainConfig, train
from pa_rl.buffer import monte_carlo_returns
from pa_rl.diagnostics import CriticDiagnostic, spearman, split_held_out
from pa_rl.envs.point_goal import collect_episodes

from helpers import UniformPolicy
from test_train import small_agent

ONE = np.ones(1, np.float32)
BEST = 0.5


class Bandit(gym.Env):
    """One step: reward −(a − 0.5)², then the episode ends."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(1, np.float32), -float((action[0] - BEST) ** 2), True, False, {}


class KnownCritic(nn.Module):
    """Q(s, a) = sign · −(a − 0.5)² + s: the bandit's true Q (sign +1) or its reverse (sign −1), for 2 'members'."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        while obs.dim() < actions.dim():
            obs = obs.unsqueeze(-2)
        q = -self.sign * ((actions - BEST) ** 2).sum(-1) + obs[..., 0]
        return torch.stack([q, q])


def agent_with(critic: nn.Module) -> Agent:
    config = AgentConfig(critic=CriticConfig(ensemble_size=2, hidden_dims=(8,)),
                         optimizer=OptimizerConfig(num_samples=8, top_k=8, local_steps=0))
    agent = Agent(UniformPolicy(1), 1, -ONE, ONE, config)
    agent.critic = critic
    return agent


def one_step_episode(obs: float, reward: float) -> Episode:
    return Episode(np.array([[obs], [0.0]], np.float32), np.zeros((1, 1), np.float32), np.array([reward], np.float32),
                   np.array([True]), np.array([False]))


def test_held_out_episodes_are_a_seeded_disjoint_fraction() -> None:
    episodes = [one_step_episode(float(i), 0.0) for i in range(40)]
    train_part, held = split_held_out(episodes, 0.1, seed=3)
    assert len(held) == 4 and len(train_part) == 36
    assert {e.observations[0, 0] for e in held}.isdisjoint({e.observations[0, 0] for e in train_part})
    assert [e.observations[0, 0] for e in split_held_out(episodes, 0.1, seed=3)[1]] == [e.observations[0, 0] for e in held]
    assert split_held_out(episodes[:5], 0.1, seed=0) == (episodes[:5], [])  # nothing to spare: train on all


def test_spearman_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)  # 1 − 6·4 / (4·15)


def test_calibration_reads_the_bias_and_rank_correlation_against_monte_carlo_returns() -> None:
    rewards = np.array([-1.0, -1.0, 0.0], np.float32)
    returns = monte_carlo_returns(rewards, 0.9, terminated=True, floor_reward=-1.0)
    # A critic whose Q(s, a) is the state's feature, set to the true return + 2: bias 2, perfect ranking.
    obs = np.append(returns + 2, 0.0).astype(np.float32)[:, None]
    episode = Episode(obs, np.zeros((3, 1), np.float32), rewards, np.array([False, False, True]), np.zeros(3, bool))
    diagnostic = CriticDiagnostic([episode], gamma=0.9, floor_reward=-1.0)
    metrics = diagnostic.calibration(agent_with(KnownCritic(0.0)))
    assert metrics["diag/q_mc_bias"] == pytest.approx(2.0)
    assert metrics["diag/q_mc_spearman"] == pytest.approx(1.0)
    assert CriticDiagnostic([], 0.9, -1.0).calibration(agent_with(KnownCritic(0.0))) == {}


@pytest.mark.parametrize(("sign", "agreement"), [(1.0, 1.0), (-1.0, 0.0)])
def test_ranking_by_rollout_agrees_with_a_true_critic_and_disagrees_with_a_reversed_one(sign: float,
                                                                                       agreement: float) -> None:
    diagnostic = CriticDiagnostic([one_step_episode(0.0, 0.0)], gamma=0.9, floor_reward=-1.0)
    envs = [Bandit() for _ in range(12)]
    metrics = diagnostic.ranking(agent_with(KnownCritic(sign)), envs, list(range(6)), max_steps=5,
                                 reward=lambda r: r, continuation="policy")
    assert metrics["diag/rank_pairs"] == 6
    assert metrics["diag/rank_agreement"] == agreement and metrics["diag/rank_decisive"] == 1.0
    assert np.sign(metrics["diag/rank_q_gap"]) == np.sign(metrics["diag/rank_return_gap"]) * (1 if sign > 0 else -1)


def test_ranking_is_skipped_when_the_policy_gives_one_sample_per_state() -> None:
    """With N = 1 there is no other sample to branch to: no ranking, no crash (it once crashed the
    first evaluation of a Cal-QL run with a one-sample backup)."""
    agent = agent_with(KnownCritic(1.0))
    agent.config.optimizer = OptimizerConfig(num_samples=1, top_k=1, local_steps=0)
    diagnostic = CriticDiagnostic([one_step_episode(0.0, 0.0)], gamma=0.9, floor_reward=-1.0)
    assert diagnostic.ranking(agent, [Bandit() for _ in range(4)], [0, 1], max_steps=5, reward=lambda r: r) == {}


def test_the_diagnostic_is_logged_and_does_not_change_the_run(tmp_path) -> None:
    episodes = collect_episodes(40, seed=1)
    results = []
    for pairs in (0, 3):
        config = TrainConfig(batch_size=32, bc_steps=10, offline_steps=20, online_env_steps=40, eval_every=10,
                             online_eval_every=20, eval_episodes=2, progress=False, diagnostic_pairs=pairs,
                             held_out_fraction=0.1)
        run_dir = tmp_path / f"pairs{pairs}"
        torch.manual_seed(0)  # the same initial weights for both runs
        result = train(small_agent("flow"), episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config, run_dir)
        results.append(result.evaluations)
    without, with_pairs = results
    assert [{k: v for k, v in e.items() if not k.startswith("diag/rank")} for e in with_pairs] == without
    assert "diag/q_mc_spearman" in without[1] and "diag/rank_agreement" in with_pairs[1]
    assert "diag/q_mc_bias" not in without[0]  # no critic yet during BC
    assert [e["env_steps"] for e in without if e["phase"] == "online"] == [20, 40]
    assert "diag/rank_agreement" in (tmp_path / "pairs3" / "metrics.csv").read_text()
