"""Critic ensemble, Monte-Carlo bounds, replay buffer, and the objectives on MDPs with known values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pa_rl import Agent, AgentConfig, CriticConfig, Episode, OptimizerConfig, QEnsemble, ReplayBuffer
from pa_rl.buffer import Batch, monte_carlo_returns, n_step_targets
from pa_rl.observations import Field

from helpers import UniformPolicy

ONE = np.ones(1, np.float32)


def test_ensemble_members_are_independent_networks_in_one_pass() -> None:
    critic = QEnsemble(3, 2, CriticConfig(ensemble_size=4, hidden_dims=(16, 16)))
    obs, actions = torch.randn(10, 3), torch.randn(10, 5, 2)
    q = critic(obs, actions)
    assert q.shape == (4, 10, 5)
    # Member 2 computed by hand from its own slice of the stacked weights.
    x = torch.cat([obs[:, None].expand(-1, 5, -1), actions], -1)
    for layer in critic.net:
        if hasattr(layer, "weight") and layer.weight.dim() == 3 and layer.weight.shape[1] != 1:
            x = x @ layer.weight[2] + layer.bias[2]
        elif hasattr(layer, "weight"):
            x = torch.nn.functional.layer_norm(x, x.shape[-1:]) * layer.weight[2] + layer.bias[2]
        else:
            x = layer(x)
    assert torch.allclose(q[2], x.squeeze(-1), atol=1e-5)
    q[1].sum().backward()  # member 1's output depends on member 1's weights only
    grads = critic.net[0].weight.grad
    assert grads[1].abs().sum() > 0 and grads[0].abs().sum() == 0 and grads[3].abs().sum() == 0


def test_distributional_head_two_hot_preserves_the_mean() -> None:
    critic = QEnsemble(2, 1, CriticConfig(ensemble_size=2, distributional=True, num_bins=11, v_min=-1, v_max=1))
    target = torch.tensor([-1.0, -0.33, 0.0, 0.77, 1.0, 5.0])
    probs = critic.two_hot(target)
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    assert torch.allclose(probs @ critic.support, target.clamp(-1, 1), atol=1e-6)


def test_monte_carlo_returns_terminal_and_truncated() -> None:
    rewards = np.array([0.0, 0.0, 1.0], np.float32)
    assert np.allclose(monte_carlo_returns(rewards, 0.5, terminated=True, floor_reward=0.0), [0.25, 0.5, 1.0])
    # Truncated with −1 rewards: the unseen tail is bounded by −1 forever, −1/(1 − γ) = −2 at γ = 0.5.
    minus = -np.ones(2, np.float32)
    assert np.allclose(monte_carlo_returns(minus, 0.5, terminated=False, floor_reward=-1.0), [-2.0, -2.0])
    assert np.allclose(monte_carlo_returns(minus, 0.5, terminated=True, floor_reward=-1.0), [-1.5, -1.0])


def test_replay_buffer_ring_and_sampling() -> None:
    def episode(length: int, start: float) -> Episode:
        obs = np.arange(start, start + length + 1, dtype=np.float32)[:, None]
        return Episode(obs, np.zeros((length, 1), np.float32), np.ones(length, np.float32),
                       np.eye(1, length, length - 1, dtype=bool)[0], np.zeros(length, bool))

    buffer = ReplayBuffer(7, 1, 1)
    buffer.add_episode(episode(3, 0.0), gamma=0.9, floor_reward=0.0)  # 4 slots: 3 transitions + the final state
    assert len(buffer) == 3 and torch.allclose(buffer.storage["mc_returns"][:3], torch.tensor([2.71, 1.9, 1.0]))
    buffer.add_episode(episode(4, 10.0), gamma=0.9, floor_reward=0.0)  # 5 slots: wraps around, oldest overwritten
    assert sorted(buffer.obs.flatten().tolist()) == [2.0, 3.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    assert len(buffer) == 5  # 2 → 3 of the first episode, and the second's 4
    batch = buffer.sample(64, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (64, 1) and torch.equal(batch.next_obs, batch.obs + 1)
    assert set(batch.obs.flatten().tolist()) == {2.0, 10.0, 11.0, 12.0, 13.0}  # final states are never sampled


@pytest.mark.parametrize("terminated", [True, False])
def test_n_step_backup_by_hand_with_the_episode_ending_inside_the_window(terminated: bool) -> None:
    rewards = np.array([1, 2, 3, 4], np.float32)
    obs = np.arange(5, dtype=np.float32)[:, None]
    end = np.array([False, False, False, True])
    episode = Episode(obs, np.zeros((4, 1), np.float32), rewards, end & terminated, end & (not terminated))
    targets = n_step_targets(episode, gamma=0.5, n_step=3)
    assert np.allclose(targets["rewards"], [1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4])
    assert np.allclose(targets["discounts"], [0.125, 0.125, 0.25, 0.5])  # γ^k for the k steps actually taken
    assert targets["offsets"].tolist() == [3, 3, 2, 1]  # s_{t+k}: states 3, 4, 4, 4
    # A termination inside the window: no bootstrap; a time-limit cut: bootstrap from the last state.
    assert targets["terminals"].tolist() == [False, terminated, terminated, terminated]
    buffer = ReplayBuffer.from_episodes([episode], gamma=0.5, horizon=3)
    assert torch.allclose(buffer.storage["rewards"][:4], torch.tensor([2.75, 4.5, 5.0, 4.0]))
    assert torch.allclose(buffer.storage["discounts"][:4], torch.tensor([0.125, 0.125, 0.25, 0.5]))
    batch = buffer.sample(32, torch.Generator().manual_seed(0))
    assert torch.equal(batch.next_obs[:, 0], torch.clamp(batch.obs[:, 0] + 3, max=4))


@pytest.mark.parametrize("terminated", [True, False])
def test_chunk_backup_by_hand_with_the_episode_ending_inside_a_chunk(terminated: bool) -> None:
    """Chunks of H = 2 over a 3-step episode: the chunk at t holds actions t, t+1 (the last one repeated
    past the end), the reward sum and γ^k of the k steps actually taken, and bootstraps from s_{t+k}
    unless the episode terminated there."""
    obs = np.arange(4, dtype=np.float32)[:, None]
    actions = np.array([[0.1], [0.2], [0.3]], np.float32)
    end = np.array([False, False, True])
    episode = Episode(obs, actions, np.array([1, 2, 4], np.float32), end & terminated, end & (not terminated))
    buffer = ReplayBuffer.from_episodes([episode], gamma=0.5, horizon=2, chunk=2)
    assert torch.allclose(buffer.storage["actions"][:3], torch.tensor([[0.1, 0.2], [0.2, 0.3], [0.3, 0.3]]))
    assert torch.allclose(buffer.storage["rewards"][:3], torch.tensor([1 + 0.5 * 2, 2 + 0.5 * 4, 4]))
    assert torch.allclose(buffer.storage["discounts"][:3], torch.tensor([0.25, 0.25, 0.5]))
    assert buffer.storage["terminals"][:3].tolist() == [0.0, float(terminated), float(terminated)]
    batch = buffer.sample(32, torch.Generator().manual_seed(0))
    assert torch.equal(batch.next_obs[:, 0], torch.clamp(batch.obs[:, 0] + 2, max=3))


def test_images_are_stored_once_as_uint8() -> None:
    spec = {"pixels": Field("image", (8, 8, 3)), "velocity": Field("vector", (2,)), "instruction": Field("text", (64,))}
    per_slot = 8 * 8 * 3 + 4 * 2 + 64 + 4 * (2 + 5) + 1
    assert ReplayBuffer.bytes_per_slot(spec, 2) == per_slot
    buffer = ReplayBuffer(100, spec, 2)
    assert buffer.nbytes == 100 * per_slot  # one observation per slot: the next one is read by index
    assert buffer.obs["pixels"].dtype == torch.uint8 and buffer.obs["instruction"].dtype == torch.uint8
    steps = 5
    pixels = np.arange(steps + 1, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    observations = {"pixels": pixels, "velocity": np.zeros((steps + 1, 2), np.float32),
                    "instruction": np.zeros((steps + 1, 64), np.uint8)}
    buffer.add_episode(Episode(observations, np.zeros((steps, 2), np.float32), np.ones(steps, np.float32),
                               np.zeros(steps, bool), np.eye(1, steps, steps - 1, dtype=bool)[0]), 0.9, 0.0)
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    assert batch.obs["pixels"].dtype == torch.uint8
    assert torch.equal(batch.next_obs["pixels"][:, 0, 0, 0], batch.obs["pixels"][:, 0, 0, 0] + 1)


def test_the_monte_carlo_floor_lifts_targets_below_the_data_return() -> None:
    agent = Agent(UniformPolicy(1), 2, -ONE, ONE, AgentConfig(objective="iql", mc_target_floor=True,
                                                             critic=CriticConfig(ensemble_size=2, hidden_dims=(8,))))
    zeros = torch.zeros(4)
    batch = Batch(torch.zeros(4, 2), torch.zeros(4, 1), zeros - 1, torch.zeros(4, 2), zeros,
                  torch.tensor([-50.0, 3.0, -50.0, 3.0]), zeros + 0.99)
    with torch.no_grad():
        target = agent._backup(batch, torch.full((4,), -10.0))
    assert torch.allclose(target, torch.tensor([-10.9, 3.0, -10.9, 3.0]))


def chain_episodes(count: int, rng: np.random.Generator) -> list[Episode]:
    """Two-step chain: s0 → s1 → end. r(s0, a) = −|a|, r(s1, a) = 1 − a². With γ = 0.9:
    Q(s1, a) = 1 − a², Q(s0, a) = −|a| + 0.9."""
    episodes = []
    for _ in range(count):
        a = rng.uniform(-1, 1, size=(2, 1)).astype(np.float32)
        obs = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
        rewards = np.array([-abs(a[0, 0]), 1 - a[1, 0] ** 2], np.float32)
        episodes.append(Episode(obs, a, rewards, np.array([False, True]), np.array([False, False])))
    return episodes


def fit(agent: Agent, buffer: ReplayBuffer, steps: int) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        agent.update(buffer.sample(128, generator))


@pytest.mark.parametrize("distributional", [False, True])
def test_q_learning_with_optimized_actions_recovers_the_true_q(distributional: bool) -> None:
    critic = CriticConfig(ensemble_size=2, hidden_dims=(64, 64), distributional=distributional, num_bins=41,
                          v_min=-2.0, v_max=2.0)
    config = AgentConfig(objective="cql", cql_alpha=0.0, gamma=0.9, critic_lr=1e-3, critic=critic,
                         optimizer=OptimizerConfig(num_samples=16, top_k=4, local_steps=3, step_size=0.05))
    agent = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
    fit(agent, ReplayBuffer.from_episodes(chain_episodes(500, np.random.default_rng(0)), gamma=0.9), 1500)
    a = torch.linspace(-0.9, 0.9, 7)[:, None]
    with torch.no_grad():
        q1 = agent.critic(torch.tensor([[0.0, 1.0]]).expand(7, 2), a).mean(0)
        q0 = agent.critic(torch.tensor([[1.0, 0.0]]).expand(7, 2), a).mean(0)
    assert torch.allclose(q1, 1 - a[:, 0] ** 2, atol=0.1), q1
    assert torch.allclose(q0, 0.9 - a[:, 0].abs(), atol=0.1), q0


def test_iql_value_is_the_expectile_of_q() -> None:
    config = AgentConfig(objective="iql", expectile=0.7, gamma=0.9, critic_lr=1e-3,
                         critic=CriticConfig(ensemble_size=2, hidden_dims=(64, 64)))
    agent = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
    fit(agent, ReplayBuffer.from_episodes(chain_episodes(500, np.random.default_rng(0)), gamma=0.9), 2000)
    # The 0.7-expectile of 1 − a², a ~ U[-1, 1], solved numerically.
    q = 1 - np.random.default_rng(1).uniform(-1, 1, 200_000) ** 2
    v = q.mean()
    for _ in range(100):
        w = np.where(q > v, 0.7, 0.3)
        v = (w * q).sum() / w.sum()
    with torch.no_grad():
        learned = agent.value(torch.tensor([[0.0, 1.0]]))[0, 0].item()
    assert abs(learned - v) < 0.05, (learned, v)


def test_calql_keeps_policy_values_above_the_monte_carlo_bound_where_cql_does_not() -> None:
    """One-step episodes, r = 1 − a², from a mediocre behaviour (a ≈ 0.6, return ≈ 0.63). With a strong
    conservative weight CQL pushes Q(s, π̂(s)) far below the data's return; Cal-QL stops at the MC bound."""
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(1000):
        a = np.clip(rng.normal(0.6, 0.1, size=(1, 1)), -1, 1).astype(np.float32)
        obs = rng.normal(size=(2, 2)).astype(np.float32)
        episodes.append(Episode(obs, a, (1 - a[:, 0] ** 2).astype(np.float32), np.array([True]), np.array([False])))
    buffer = ReplayBuffer.from_episodes(episodes, gamma=0.9)
    policy_values = {}
    for objective in ("cql", "calql"):
        torch.manual_seed(0)
        config = AgentConfig(objective=objective, cql_alpha=5.0, gamma=0.9, critic_lr=1e-3,
                             critic=CriticConfig(ensemble_size=2, hidden_dims=(64, 64)),
                             optimizer=OptimizerConfig(num_samples=16, top_k=4, local_steps=0))
        agent = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
        fit(agent, buffer, 500)
        batch = buffer.sample(512, torch.Generator().manual_seed(1))
        policy_values[objective] = agent.optimize_actions(batch.obs).values.mean().item()
    mc = buffer.storage["mc_returns"].mean().item()
    assert policy_values["calql"] >= mc - 0.1, (policy_values, mc)
    assert policy_values["cql"] < mc - 0.3, (policy_values, mc)


def test_the_conservative_term_can_see_the_data_rows_only() -> None:
    """Cal-QL's bound (the rows' Monte-Carlo returns) enters the update through the conservative term
    only: with ``conservative_states`` 'data', raising it on rows past ``data_rows`` changes nothing;
    on every row (``conservative_states`` 'all'), it does."""
    buffer = ReplayBuffer.from_episodes(chain_episodes(50, np.random.default_rng(0)), gamma=0.9)
    batch = buffer.sample(32, torch.Generator().manual_seed(0))
    lifted = dataclasses.replace(batch, mc_returns=torch.cat([batch.mc_returns[:20], torch.full((12,), 50.0)]))
    weights = {}
    for name, states, data in (("base", "data", batch), ("lifted", "data", lifted), ("all rows", "all", lifted)):
        config = AgentConfig(objective="calql", cql_alpha=1.0, conservative_states=states,
                             critic=CriticConfig(ensemble_size=2, hidden_dims=(16, 16)),
                             optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1))
        torch.manual_seed(0)
        twin = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
        torch.manual_seed(1)
        twin.update(data, data_rows=20)
        weights[name] = torch.cat([p.detach().flatten() for p in twin.critic.parameters()])
    assert torch.equal(weights["base"], weights["lifted"])
    assert not torch.equal(weights["base"], weights["all rows"])


@pytest.mark.parametrize("act_critic", ["critic", "target"])
def test_pi_hat_acts_with_the_critic_it_is_told_to(act_critic: str) -> None:
    config = AgentConfig(act_critic=act_critic, critic=CriticConfig(ensemble_size=2, hidden_dims=(16, 16)),
                         optimizer=OptimizerConfig(num_samples=8, top_k=4, local_steps=1))
    torch.manual_seed(0)
    agent = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
    with torch.no_grad():  # the learned critic and its target now rank the candidates differently
        for param in agent.critic.parameters():
            param.add_(torch.randn_like(param))
    obs = torch.randn(64, 2)
    chosen = agent.target_critic if act_critic == "target" else agent.critic
    for critic in (agent.critic, agent.target_critic):
        torch.manual_seed(1)
        expected = agent.optimize_actions(obs, critic=critic).choose("argmax")
        torch.manual_seed(1)
        assert torch.equal(agent.act(obs), expected) == (critic is chosen)


def test_cached_policy_samples_replace_sampling_in_updates() -> None:
    class CountingPolicy(UniformPolicy):
        calls = 0
        states = 0

        def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
            CountingPolicy.calls += 1
            CountingPolicy.states += len(obs)
            return super().sample(obs, num_samples)

    config = AgentConfig(critic=CriticConfig(ensemble_size=2, hidden_dims=(16, 16)),
                         optimizer=OptimizerConfig(num_samples=6, top_k=3, local_steps=1))
    agent = Agent(CountingPolicy(1), 2, -ONE, ONE, config)
    episodes = chain_episodes(50, np.random.default_rng(0))
    buffer = ReplayBuffer.from_episodes(episodes, gamma=0.9)
    CountingPolicy.states = 0
    buffer.cache_policy_samples(agent.sample_policy)
    assert CountingPolicy.states == 0  # drawn lazily: nothing before the first batch
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    assert batch.policy_samples.shape == batch.next_policy_samples.shape == (16, 6, 1)
    assert 0 < CountingPolicy.states <= 32 and CountingPolicy.calls == 1  # one batched draw for the new slots
    calls = CountingPolicy.calls
    agent.update(batch, distill=True)
    assert CountingPolicy.calls == calls  # no new draws: the cache served the update
    # The cache, saved mid-way, continues a second buffer exactly as the first goes on.
    saved, rng = buffer.policy_cache(), torch.get_rng_state()
    generator = torch.Generator().manual_seed(1)
    later = [buffer.sample(64, generator).next_policy_samples for _ in range(3)]
    first_buffer_states = CountingPolicy.states
    resumed = ReplayBuffer.from_episodes(episodes, gamma=0.9)
    resumed.cache_policy_samples(agent.sample_policy)
    resumed.load_policy_cache(saved)
    assert resumed._undrawn == int((~saved["drawn"]).sum()) > 0
    torch.set_rng_state(rng)
    generator = torch.Generator().manual_seed(1)
    assert all(torch.equal(resumed.sample(64, generator).next_policy_samples, b) for b in later)
    # Each slot is drawn once, however often it is sampled; a transition's next state shares its slot's draw.
    CountingPolicy.states = first_buffer_states
    for _ in range(100):
        buffer.sample(64)
    assert buffer._drawn.all() and CountingPolicy.states == 100 + len(episodes)
    assert buffer._undrawn == 0  # from now on a batch reads no mask of drawn slots (a device sync on CUDA)
    # The samples handed out are those of the batch's states: mark each slot's draws with its index.
    marked = buffer.policy_samples
    buffer.policy_samples = torch.arange(len(marked), dtype=torch.float32)[:, None, None].expand_as(marked)
    marks = buffer.sample(64)
    slot, next_slot = marks.policy_samples[:, 0, 0].long(), marks.next_policy_samples[:, 0, 0].long()
    assert torch.equal(buffer.obs[slot], marks.obs) and torch.equal(buffer.obs[next_slot], marks.next_obs)
    assert torch.equal(next_slot, slot + 1)
    with pytest.raises(RuntimeError, match="drop_policy_samples"):
        buffer.add_episode(chain_episodes(1, np.random.default_rng(1))[0], 0.9, 0.0)
    buffer.drop_policy_samples()
    assert buffer.sample(4).policy_samples is None


def test_fitting_returns_sets_the_critic_to_the_data_values_before_any_td_update() -> None:
    """On the chain, regressing on Monte-Carlo returns gives Q(s1, a) = 1 − a² for the data's actions."""
    config = AgentConfig(objective="cql", gamma=0.9, critic_lr=1e-3,
                         critic=CriticConfig(ensemble_size=2, hidden_dims=(64, 64)))
    agent = Agent(UniformPolicy(1), 2, -ONE, ONE, config)
    buffer = ReplayBuffer.from_episodes(chain_episodes(500, np.random.default_rng(0)), gamma=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(800):
        agent.fit_returns(buffer.sample(128, generator))
    agent.sync_target()
    a = torch.linspace(-0.9, 0.9, 7)[:, None]
    with torch.no_grad():
        q1 = agent.critic(torch.tensor([[0.0, 1.0]]).expand(7, 2), a).mean(0)
    assert torch.allclose(q1, 1 - a[:, 0] ** 2, atol=0.1), q1
    assert all(torch.equal(p, q) for p, q in zip(agent.critic.parameters(), agent.target_critic.parameters()))


def test_a_compiled_critic_learns_as_the_eager_one_and_saves_the_same_weights() -> None:
    """``compile_critic`` changes how the critic runs, not what it computes or how it is stored."""
    def build(compiled: bool) -> Agent:
        torch.manual_seed(0)
        config = AgentConfig(compile_critic=compiled, critic=CriticConfig(ensemble_size=2, hidden_dims=(16, 16)),
                             optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1))
        return Agent(UniformPolicy(1), 2, -ONE, ONE, config)

    def losses(agent: Agent) -> torch.Tensor:
        torch.manual_seed(1)
        generator = torch.Generator().manual_seed(0)
        return torch.stack([agent.update(buffer.sample(32, generator))["critic/loss"] for _ in range(3)])

    eager, compiled = build(False), build(True)
    buffer = ReplayBuffer.from_episodes(chain_episodes(50, np.random.default_rng(0)), gamma=0.9)
    assert torch.allclose(losses(eager), losses(compiled), rtol=1e-4, atol=1e-5)
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    for name, value in eager.state_dict().items():
        assert torch.allclose(value, compiled.state_dict()[name], rtol=1e-4, atol=1e-5), name
