"""Action optimization against an analytic critic whose maximum is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from pa_rl import ActionOptimizer, Candidates, OptimizerConfig

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)


class QuadraticCritic(nn.Module):
    """Q(s, a) = −‖a − a*‖², the same for every state, as a 2-member 'ensemble'."""

    def __init__(self, best: list[float]) -> None:
        super().__init__()
        self.best = torch.tensor(best)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def q(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        q = -((actions - self.best) ** 2).sum(-1)
        return torch.stack([q, q])

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.q(self.encode(obs), actions)


class UniformPolicy(nn.Module):
    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        return torch.rand(obs.shape[0], num_samples, 2) * 2 - 1

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return actions.sum() * 0


def test_local_steps_climb_to_the_maximum() -> None:
    critic, obs = QuadraticCritic([0.3, -0.2]), torch.zeros(64, 3)
    best_of_n = ActionOptimizer(OptimizerConfig(num_samples=16, top_k=4, local_steps=0), LOW, HIGH)
    refined = ActionOptimizer(OptimizerConfig(num_samples=16, top_k=4, local_steps=30, step_size=0.1), LOW, HIGH)
    coarse = best_of_n(UniformPolicy(), critic, obs).choose("argmax")
    fine = refined(UniformPolicy(), critic, obs).choose("argmax")
    error = lambda a: (a - critic.best).norm(dim=-1)  # noqa: E731
    assert error(fine).max() < 1e-3
    assert error(fine).mean() < error(coarse).mean() / 10


def test_without_local_steps_and_filter_it_is_exactly_best_of_n() -> None:
    critic, obs = QuadraticCritic([0.3, -0.2]), torch.zeros(8, 3)
    samples = torch.rand(8, 16, 2) * 2 - 1
    out = ActionOptimizer(OptimizerConfig(num_samples=16, top_k=16, local_steps=0), LOW, HIGH)(
        UniformPolicy(), critic, obs, samples=samples)
    assert torch.equal(out.actions, samples)
    expected = samples[torch.arange(8), critic(obs, samples)[0].argmax(-1)]
    assert torch.equal(out.choose("argmax"), expected)


def test_global_stage_keeps_the_top_k() -> None:
    critic, obs = QuadraticCritic([0.3, -0.2]), torch.zeros(8, 3)
    samples = torch.rand(8, 16, 2) * 2 - 1
    out = ActionOptimizer(OptimizerConfig(num_samples=16, top_k=5, local_steps=0), LOW, HIGH)(
        UniformPolicy(), critic, obs, samples=samples)
    top = critic(obs, samples)[0].topk(5, dim=-1).values
    assert torch.allclose(out.values, top)


def test_actions_stay_in_bounds_and_the_best_iterate_is_kept() -> None:
    critic, obs = QuadraticCritic([1.5, -3.0]), torch.zeros(32, 3)  # maximum outside the box
    out = ActionOptimizer(OptimizerConfig(num_samples=8, top_k=4, local_steps=20, step_size=0.2), LOW, HIGH)(
        UniformPolicy(), critic, obs)
    assert (out.actions >= -1).all() and (out.actions <= 1).all()
    assert torch.allclose(out.choose("argmax"), torch.tensor([1.0, -1.0]).expand(32, 2))
    # A step far too large oscillates; the optimizer still returns its best iterate, never worse.
    wild = ActionOptimizer(OptimizerConfig(num_samples=8, top_k=4, local_steps=5, step_size=50.0), LOW, HIGH)(
        UniformPolicy(), QuadraticCritic([0.0, 0.0]), obs)
    assert (wild.values >= wild.initial_values).all()
    assert torch.allclose(wild.values, QuadraticCritic([0.0, 0.0])(obs, wild.actions)[0])


def test_choice_modes() -> None:
    values = torch.tensor([[0.0, 5.0, 1.0]]).repeat(2000, 1)
    actions = torch.arange(3.0)[None, :, None].repeat(2000, 1, 1)
    candidates = Candidates(actions, values, values)
    assert (candidates.choose("argmax") == 1).all()
    softmax = torch.bincount(candidates.choose("softmax", temperature=5.0).long().flatten(), minlength=3) / 2000
    expected = (values[0] / 5.0).softmax(-1)
    assert torch.allclose(softmax, expected, atol=0.04)
    uniform = torch.bincount(candidates.choose("uniform").long().flatten(), minlength=3) / 2000
    assert torch.allclose(uniform, torch.full((3,), 1 / 3), atol=0.04)
    replaced = candidates.with_action(torch.full((2000, 1), 9.0), torch.full((2000,), 2.0))
    assert (replaced.actions[:, 0, 0] == 9).all() and (replaced.values[:, 0] == 2).all()
    with pytest.raises(ValueError, match="unknown choice mode"):
        candidates.choose("best")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="top_k .* cannot exceed num_samples"):
        OptimizerConfig(num_samples=4, top_k=8)
    with pytest.raises(ValueError, match="OptimizerConfig.local_steps must be ≥ 0, got -1"):
        OptimizerConfig(local_steps=-1)


def test_policy_with_wrong_sample_shape_is_named() -> None:
    class Broken(UniformPolicy):
        def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
            return torch.zeros(obs.shape[0], 2)

    with pytest.raises(TypeError, match=r"Broken.sample\(obs, 8\) must return a tensor \[4, 8, action_dim\]"):
        ActionOptimizer(OptimizerConfig(num_samples=8, top_k=4), LOW, HIGH)(Broken(), QuadraticCritic([0, 0]),
                                                                           torch.zeros(4, 3))


def test_optimizing_in_blocks_of_states_gives_the_same_candidates() -> None:
    critic, obs = QuadraticCritic([0.3, -0.2]), torch.randn(10, 3)
    samples = torch.rand(10, 8, 2) * 2 - 1
    config = dict(num_samples=8, top_k=3, local_steps=4, step_size=0.1)
    whole = ActionOptimizer(OptimizerConfig(**config, chunk_states=None), LOW, HIGH)(UniformPolicy(), critic, obs, samples)
    blocks = ActionOptimizer(OptimizerConfig(**config, chunk_states=3), LOW, HIGH)(UniformPolicy(), critic, obs, samples)
    for a, b in ((whole.actions, blocks.actions), (whole.values, blocks.values), (whole.initial_values, blocks.initial_values)):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_states"):
        OptimizerConfig(chunk_states=0)


class SplitCritic(QuadraticCritic):
    """Two members that agree on the best action for states with obs[0] > 0 and disagree elsewhere."""

    def q(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        near = -((actions - self.best) ** 2).sum(-1)
        agree = (features[:, :1] > 0).expand_as(near)
        return torch.stack([near, torch.where(agree, near, -near)])


@pytest.mark.parametrize("local_steps", [0, 2])
def test_agreement_gate_acts_with_the_base_sample_where_members_disagree(local_steps: int) -> None:
    critic = SplitCritic([0.3, -0.2])
    obs = torch.cat([torch.ones(32, 3), -torch.ones(32, 3)])
    samples = torch.rand(64, 8, 2) * 2 - 1
    config = OptimizerConfig(num_samples=8, top_k=4, local_steps=local_steps, step_size=0.05, chunk_states=16)
    gated = ActionOptimizer(dataclasses.replace(config, agreement_gate=True), LOW, HIGH)(
        UniformPolicy(), critic, obs, samples=samples)
    plain = ActionOptimizer(config, LOW, HIGH)(UniformPolicy(), critic, obs, samples=samples)
    assert not gated.undecided[:32].any() and gated.undecided[32:].all()
    assert torch.equal(gated.choose("argmax")[:32], plain.choose("argmax")[:32])  # agreed: π̂'s own pick
    assert torch.equal(gated.choose("argmax")[32:], samples[32:, 0])  # undecided: the policy's first draw
    assert plain.undecided is None and torch.equal(gated.actions, plain.actions)
