"""The class-specific baselines inside the Agent: the Cal-QL/SAC reparameterised actor and IQL's AWR,
checked against critics and advantages whose optimum is known."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from pa_rl import Agent, AgentConfig, CriticConfig, GaussianConfig, GaussianPolicy, OptimizerConfig, TrainConfig
from pa_rl import make_policy, train
from pa_rl.buffer import Batch
from pa_rl.envs.point_goal import collect_episodes

from helpers import SMALL_POLICY_CONFIGS, GridPolicy

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)
BEST = [0.5, -0.3]


class QuadraticCritic(nn.Module):
    """Q(s, a) = −c ‖a − a*‖² for every state, as a 2-member 'ensemble' [2, *batch]."""

    def __init__(self, best: list[float], curvature: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("best", torch.tensor(best))
        self.curvature = curvature

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        q = -self.curvature * ((actions - self.best) ** 2).sum(-1)
        return torch.stack([q, q])


class ZeroValue(nn.Module):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, obs.shape[0])


def gaussian_agent(policy_improvement: str, objective: str = "calql", log_std: float | None = None,
                   **config) -> Agent:
    policy = GaussianPolicy(3, LOW, HIGH, GaussianConfig(hidden_dims=(32, 32)))
    if log_std is not None:  # a policy of known entropy: σ = e^log_std whatever the state
        head = policy.net[-1]
        with torch.no_grad():
            head.weight[2:].zero_()
            head.bias[2:].fill_(log_std)
    agent_config = AgentConfig(objective=objective, policy_improvement=policy_improvement, distill_lr=1e-3,
                               critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
                               optimizer=OptimizerConfig(num_samples=4, top_k=4, local_steps=0), **config)
    return Agent(policy, 3, LOW, HIGH, agent_config)


def batch_of(obs: torch.Tensor, actions: torch.Tensor) -> Batch:
    zeros = torch.zeros(len(obs))
    return Batch(obs, actions, zeros, obs, zeros, zeros, zeros)


def mean_action(agent: Agent, obs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.tanh(agent.policy.distribution(obs)[0])  # LOW, HIGH = ±1: unit = env units


def test_rsample_log_prob_is_the_density_of_its_actions() -> None:
    policy = GaussianPolicy(3, LOW, HIGH, GaussianConfig(hidden_dims=(32, 32)))
    obs = torch.randn(256, 3)
    actions, log_prob = policy.rsample(obs)
    assert actions.shape == (256, 2) and log_prob.shape == (256,)
    inside = actions.abs().amax(-1) < 0.99  # at the edge, atanh(tanh(u)) loses u in float32; rsample does not
    assert inside.sum() > 128
    assert torch.allclose(log_prob[inside], policy.log_prob(obs, actions)[inside], atol=1e-3)
    (actions.sum() + log_prob.sum()).backward()  # reparameterised: gradients reach the network
    assert policy.net[0].weight.grad.abs().sum() > 0


def test_reparam_actor_climbs_a_known_critic_and_leaves_the_critic_alone() -> None:
    agent = gaussian_agent("reparam")
    learned_critic = agent.critic
    # A sharp maximum, so the entropy bonus (α starts at 1; it pulls tanh-Gaussian means to 0) biases little.
    agent.critic = QuadraticCritic(BEST, curvature=10.0)
    obs = torch.randn(128, 3)
    error = lambda: (mean_action(agent, obs) - torch.tensor(BEST)).norm(dim=-1).mean()  # noqa: E731
    before = error()
    for _ in range(200):
        metrics = agent.distill(batch_of(obs, torch.zeros(128, 2)))
    assert before > 0.2 and error() < 0.06, (before, error())
    assert set(metrics) == {"actor/loss", "actor/alpha", "actor/entropy"}
    # Through the real critic, as update(batch, distill=True) runs it: the actor's gradient stops at the
    # policy's parameters (the critic's come from its own loss only).
    agent.critic = learned_critic
    agent.critic_optim.zero_grad(set_to_none=True)
    agent.distill(batch_of(obs, torch.zeros(128, 2)))
    assert all(p.grad is None for p in agent.critic.parameters())


@pytest.mark.parametrize("log_std, rises", [(-4.0, True), (-0.5, False)])
def test_entropy_temperature_rises_below_the_target_entropy_and_falls_above(log_std: float, rises: bool) -> None:
    agent = gaussian_agent("reparam", log_std=log_std)
    agent.critic = QuadraticCritic(BEST)
    obs = torch.randn(64, 3)
    alphas = [agent.distill(batch_of(obs, torch.zeros(64, 2)))["actor/alpha"] for _ in range(20)]
    entropy = agent.distill(batch_of(obs, torch.zeros(64, 2)))["actor/entropy"]
    assert alphas[0] == pytest.approx(1.0)  # α starts at 1 (log α = 0)
    assert (entropy < agent.target_entropy) == rises
    assert (alphas[-1] > 1.0 if rises else alphas[-1] < 1.0), alphas
    assert all(np.diff(alphas) > 0) if rises else all(np.diff(alphas) < 0)


@pytest.mark.parametrize("temperature, near", [(3.0, "good"), (1e-6, "middle")])
def test_awr_weights_high_advantage_data_actions(temperature: float, near: str) -> None:
    """Half the data acts at a*, half far from it; with A = Q − V = −‖a − a*‖² AWR fits the good
    half, while β → 0 (equal weights) is behaviour cloning and lands between the two."""
    agent = gaussian_agent("awr", objective="iql", awr_temperature=temperature)
    agent.target_critic, agent.value = QuadraticCritic(BEST), ZeroValue()
    obs = torch.randn(256, 3)
    good, bad = torch.tensor(BEST), torch.tensor([-0.5, 0.3])
    actions = torch.cat([good.expand(128, 2), bad.expand(128, 2)]) + 0.05 * torch.randn(256, 2)
    for _ in range(300):
        metrics = agent.distill(batch_of(obs, actions))
    assert set(metrics) == {"actor/loss", "actor/advantage", "actor/weight"}
    mean = mean_action(agent, obs).mean(0)
    if near == "good":
        assert (mean - good).norm() < 0.2, mean  # the midpoint is 0.58 away
    else:
        assert (mean - (good + bad) / 2).norm() < 0.15, mean


def test_baselines_refuse_what_they_cannot_use() -> None:
    with pytest.raises(ValueError, match="needs the IQL value function: use the iql critic"):
        AgentConfig(policy_improvement="awr")  # calql critic by default
    with pytest.raises(ValueError, match="unknown policy_improvement"):
        AgentConfig(policy_improvement="sac")
    diffusion = make_policy("diffusion", 3, LOW, HIGH, SMALL_POLICY_CONFIGS["diffusion"])
    with pytest.raises(TypeError, match=r"'reparam' needs rsample\(\) on the policy, which DiffusionPolicy lacks"):
        Agent(diffusion, 3, LOW, HIGH, AgentConfig(policy_improvement="reparam"))
    with pytest.raises(TypeError, match=r"'awr' needs log_prob\(\) on the policy, which GridPolicy lacks"):
        Agent(GridPolicy(3, LOW, HIGH), 3, LOW, HIGH, AgentConfig(policy_improvement="awr", objective="iql"))


@pytest.mark.parametrize("improvement, objective", [("reparam", "calql"), ("awr", "iql")])
def test_baselines_run_through_every_phase(improvement: str, objective: str) -> None:
    """The Trainer drives a baseline through the same calls as PA-RL (update(distill=True), distill)."""
    policy = make_policy("gaussian", 2, LOW, HIGH, SMALL_POLICY_CONFIGS["gaussian"])
    agent = Agent(policy, 2, LOW, HIGH, AgentConfig(
        objective=objective, policy_improvement=improvement, critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
        optimizer=OptimizerConfig(num_samples=4, top_k=4, local_steps=0)))
    config = TrainConfig(batch_size=16, bc_steps=5, offline_steps=6, online_env_steps=40, warmup_env_steps=0,
                         offline_distill_every=1, online_distill_utd=2.0, collect_mode="policy", eval_every=10_000,
                         eval_episodes=1, progress=False)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    result = train(agent, collect_episodes(5, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    assert np.isfinite(result.summary["online"]["eval/policy_return"])
    # Every phase also scores the Gaussian's deterministic action, as SAC/IQL implementations do.
    assert all(f"eval/deterministic_success" in result.summary[phase] for phase in ("bc", "offline", "online"))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))


def test_the_deterministic_action_is_the_gaussians_squashed_mean_in_env_units() -> None:
    low, high = np.array([0.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32)
    policy = GaussianPolicy(3, low, high, GaussianConfig(hidden_dims=(32, 32)))
    with torch.no_grad():
        policy.net[-1].bias[:2] = torch.tensor([0.3, 1.5])  # means well inside, and beyond ±1 in env units
    agent = Agent(policy, 3, low, high, gaussian_agent("distill").config)
    obs = torch.randn(5, 3)
    unit = torch.tanh(agent.policy.distribution(obs)[0].detach())
    expected = torch.tensor(low) + (unit + 1) / 2 * torch.tensor(high - low)
    assert torch.allclose(agent.act(obs, "deterministic"), expected, atol=1e-6)
    assert (expected[:, 1].abs() > 1).any()  # the bounds are the env's, not the unit box
    assert torch.equal(agent.act(obs, "deterministic"), agent.act(obs, "deterministic"))  # no noise
    assert agent.act(obs[0].numpy(), "deterministic").shape == (2,)
    diffusion = Agent(make_policy("diffusion", 3, LOW, HIGH, SMALL_POLICY_CONFIGS["diffusion"]), 3, LOW, HIGH,
                      agent.config)
    assert not diffusion.has_deterministic_action
    with pytest.raises(TypeError, match="deterministic_action"):
        diffusion.act(obs, "deterministic")


@pytest.mark.parametrize("improvement, objective, trains", [("reparam", "calql", True), ("awr", "iql", True),
                                                            ("distill", "calql", False)])
def test_a_critic_only_online_phase_freezes_pa_rls_policy_not_a_baselines_actor(improvement: str, objective: str,
                                                                               trains: bool) -> None:
    """online_distill_utd 0 (the cpu preset) stops PA-RL's distillation; SAC's and IQL's actors step with
    each critic update whatever it says."""
    policy = make_policy("gaussian", 2, LOW, HIGH, SMALL_POLICY_CONFIGS["gaussian"])
    agent = Agent(policy, 2, LOW, HIGH, AgentConfig(
        objective=objective, policy_improvement=improvement, critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
        optimizer=OptimizerConfig(num_samples=4, top_k=4, local_steps=0)))
    config = TrainConfig(batch_size=16, bc_steps=0, offline_steps=0, online_env_steps=30, online_distill_utd=0.0,
                         eval_episodes=1, diagnostic_pairs=0, progress=False)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    train(agent, collect_episodes(5, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters())) == trains


@pytest.mark.parametrize("improvement, objective, trains", [("reparam", "calql", True), ("awr", "iql", True),
                                                            ("distill", "calql", False)])
def test_the_offline_phase_trains_a_baselines_actor_by_itself(improvement: str, objective: str, trains: bool) -> None:
    """With no offline_distill_every given, a baseline's actor learns offline (as Cal-QL's and IQL's do)
    and acts online with its own samples; PA-RL's base policy stays frozen offline (reference code)."""
    from pa_rl.train import Trainer

    policy = make_policy("gaussian", 2, LOW, HIGH, SMALL_POLICY_CONFIGS["gaussian"])
    agent = Agent(policy, 2, LOW, HIGH, AgentConfig(
        objective=objective, policy_improvement=improvement, critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
        optimizer=OptimizerConfig(num_samples=4, top_k=4, local_steps=0)))
    config = TrainConfig(batch_size=16, bc_steps=0, offline_steps=5, online_env_steps=0, eval_episodes=1,
                         diagnostic_pairs=0, progress=False)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    trainer = Trainer(agent, collect_episodes(5, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    trainer.run()
    changed = any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    assert changed == trains
    assert trainer.collect_mode == ("policy" if trains else "argmax")
