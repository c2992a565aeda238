"""Vector observations standardised with the offline data's statistics (``AgentConfig.standardize_observations``):
fitted once when training starts on a fresh agent, carried by the weights, identity for weights written
before it existed, and what it is for: BC learns from positions that vary little around a large offset."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from pa_rl import Agent, AgentConfig, CriticConfig, GaussianConfig, OptimizerConfig, TrainConfig, make_policy, train
from pa_rl.buffer import Batch
from pa_rl.encoders import Standardize
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.observations import TEXT_LENGTH, Field

from helpers import SMALL_POLICY_CONFIGS

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)
TINY = TrainConfig(batch_size=16, bc_steps=3, offline_steps=3, online_env_steps=0, eval_every=10_000, eval_episodes=2,
                   held_out_fraction=0.0, progress=False)


def small_agent(standardize: bool = True, objective: str = "calql") -> Agent:
    policy = make_policy("diffusion", 2, LOW, HIGH, SMALL_POLICY_CONFIGS["diffusion"])
    config = AgentConfig(objective=objective, standardize_observations=standardize,
                         critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
                         optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1))
    return Agent(policy, 2, LOW, HIGH, config)


def standardizers(agent: Agent) -> list[Standardize]:
    return [m for m in agent.modules() if isinstance(m, Standardize)]


@pytest.mark.parametrize("objective", ["calql", "iql"])
def test_training_a_fresh_agent_fits_every_encoder_to_the_data(objective: str) -> None:
    episodes = collect_episodes(20, seed=0)
    observations = np.concatenate([e.observations for e in episodes])
    agent = small_agent(objective=objective)
    assert not agent.standardization_fitted
    train(agent, episodes, lambda: gym.make("pa_rl/PointGoal-v0"), TINY)
    found = standardizers(agent)
    # The policy's, the critic's, its target's (and IQL's value network's): one statistic for all.
    assert len(found) == (4 if objective == "iql" else 3)
    for module in found:
        torch.testing.assert_close(module.mean, torch.tensor(observations.mean(0)))
        torch.testing.assert_close(module.std, torch.tensor(observations.std(0)))
    obs = torch.tensor(observations[:5])
    torch.testing.assert_close(agent.critic.encode(obs), (obs - obs.new_tensor(observations.mean(0)))
                               / obs.new_tensor(observations.std(0)))


def test_a_trained_agent_keeps_its_statistics_on_new_data_and_off_means_raw_observations() -> None:
    agent = small_agent()
    train(agent, collect_episodes(20, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), TINY)
    before = [m.mean.clone() for m in standardizers(agent)]
    shifted = [dataclasses.replace(e, observations=e.observations + 5) for e in collect_episodes(20, seed=1)]
    train(agent, shifted, lambda: gym.make("pa_rl/PointGoal-v0"), TINY)  # fine-tuning: its networks read these stats
    for module, mean in zip(standardizers(agent), before):
        torch.testing.assert_close(module.mean, mean)

    raw = small_agent(standardize=False)
    train(raw, collect_episodes(20, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), TINY)
    obs = torch.randn(4, 2)
    assert not raw.standardization_fitted
    torch.testing.assert_close(raw.critic.encode(obs), obs)


def test_weights_written_before_standardisation_load_as_the_identity_and_are_not_refitted() -> None:
    old = {name: value for name, value in small_agent().state_dict().items()
           if not name.endswith(("encoder.mean", "encoder.std", "encoder.fitted"))}
    agent = small_agent()
    agent.load_state_dict(old)  # strict: nothing missing
    assert agent.standardization_fitted  # its networks were trained on raw observations: keep it so
    obs = torch.randn(4, 2)
    torch.testing.assert_close(agent.critic.encode(obs), obs)
    train(agent, collect_episodes(20, seed=0), lambda: gym.make("pa_rl/PointGoal-v0"), TINY)
    torch.testing.assert_close(agent.critic.encode(obs), obs)


def test_only_the_vector_keys_of_a_mapping_observation_are_standardised() -> None:
    spec = {"pixels": Field("image", (8, 8, 3)), "state": Field("vector", (3,)), "instruction": Field("text", (TEXT_LENGTH,))}
    policy = make_policy("gaussian", spec, LOW, HIGH, GaussianConfig(hidden_dims=(16,)))
    agent = Agent(policy, spec, LOW, HIGH, AgentConfig(critic=CriticConfig(ensemble_size=2, hidden_dims=(16,))))
    state = np.random.default_rng(0).normal(3.0, 0.01, (100, 3)).astype(np.float32)
    agent.fit_standardization({"state": state})  # no image rows needed (nor copied)
    found = standardizers(agent)
    assert [m.key for m in found] == ["state"] * 3 and agent.standardization_fitted
    torch.testing.assert_close(found[0].mean, torch.tensor(state.mean(0)))
    obs = {"pixels": torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "state": torch.tensor(state[:2]),
           "instruction": torch.zeros(2, TEXT_LENGTH, dtype=torch.uint8)}
    features = agent.critic.encode(obs)
    torch.testing.assert_close(features[:, -3:], (obs["state"] - found[0].mean) / found[0].std)


def offset_task(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of a few centimetres' spread around 0.66 m and 0.85 m (Meta-World's scale) and actions
    that depend on them steeply, as a controller's would."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, 2, generator=gen)
    obs = torch.stack([0.66 + 0.02 * u[:, 0], 0.85 + 0.02 * u[:, 1], torch.full((rows,), 0.1)], -1)
    actions = torch.tanh(torch.stack([2 * u[:, 0] - u[:, 1], u[:, 0] + u[:, 1]], -1)) * 0.9
    return obs, actions


def test_standardised_observations_let_behaviour_cloning_learn_from_small_offsets() -> None:
    obs, actions = offset_task(4096, seed=0)
    losses = {}
    for standardize in (True, False):
        torch.manual_seed(0)
        policy = make_policy("gaussian", 3, LOW, HIGH, GaussianConfig(hidden_dims=(64, 64)))
        agent = Agent(policy, 3, LOW, HIGH, AgentConfig(standardize_observations=standardize, bc_warmup_steps=1,
                                                         critic=CriticConfig(ensemble_size=2, hidden_dims=(16,))))
        if standardize:
            agent.fit_standardization(obs.numpy())
        gen = torch.Generator().manual_seed(1)
        for _ in range(300):
            index = torch.randint(0, len(obs), (128,), generator=gen)
            zeros = torch.zeros(128)
            agent.bc_update(Batch(obs[index], actions[index], zeros, obs[index], zeros, zeros, zeros))
        with torch.no_grad():
            losses[standardize] = float(agent.policy.loss(obs, actions))
    assert losses[True] < losses[False] - 1.0, losses
