"""The policy contract, checked the same way for every built-in class and for a user's own class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pa_rl import Agent, make_policy
from pa_rl.policies import POLICIES, Policy

from helpers import SMALL_POLICY_CONFIGS, GridPolicy

OBS_DIM = 3
LOW = np.array([-2.0, 0.0], dtype=np.float32)
HIGH = np.array([1.0, 0.5], dtype=np.float32)
BUILT_IN = [name for name in POLICIES if name != "hf"]  # hf loads a pretrained model: tests/test_hf.py
CLASSES = [*BUILT_IN, "user"]


def build(name: str, low: np.ndarray = LOW, high: np.ndarray = HIGH) -> torch.nn.Module:
    if name == "user":
        return GridPolicy(OBS_DIM, low, high)
    return make_policy(name, OBS_DIM, low, high, SMALL_POLICY_CONFIGS[name])


@pytest.mark.parametrize("name", CLASSES)
def test_contract_shapes_bounds_and_gradients(name: str) -> None:
    policy = build(name)
    assert isinstance(policy, Policy)
    obs = torch.randn(5, OBS_DIM)
    actions = policy.sample(obs, 7)
    assert actions.shape == (5, 7, 2)
    assert (actions >= torch.as_tensor(LOW)).all() and (actions <= torch.as_tensor(HIGH)).all()
    loss = policy.loss(obs, actions[:, 0])
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", BUILT_IN)
def test_an_agent_keeps_every_tensor_on_its_device(name: str) -> None:
    """Built for a device other than the CPU (PyTorch's 'meta' device stands in for CUDA here: mixing
    it with CPU tensors fails the same way), all state and π̂'s candidates live there."""
    agent = Agent(build(name), OBS_DIM, LOW, HIGH, device="meta")
    tensors = [*agent.parameters(), *agent.buffers(), agent.action_optimizer.low, agent.action_optimizer.high]
    assert {t.device.type for t in tensors} == {"meta"}
    candidates = agent.optimize_actions(torch.randn(4, OBS_DIM, device="meta"))
    assert candidates.actions.device.type == "meta" and candidates.actions.shape[0] == 4


@pytest.mark.parametrize("name", CLASSES)
def test_sampling_is_deterministic_under_a_seed(name: str) -> None:
    policy = build(name).eval()
    obs = torch.randn(4, OBS_DIM)
    torch.manual_seed(123)
    first = policy.sample(obs, 6)
    torch.manual_seed(123)
    assert torch.equal(first, policy.sample(obs, 6))
    assert not torch.equal(first, policy.sample(obs, 6))  # and it is really random


@pytest.mark.parametrize("name", CLASSES)
def test_fitting_a_bimodal_distribution_reproduces_both_modes(name: str, request: pytest.FixtureRequest) -> None:
    if name == "gaussian":
        request.applymarker(pytest.mark.xfail(strict=True, reason="a unimodal Gaussian cannot fit two modes"))
    low, high = -np.ones(2, np.float32), np.ones(2, np.float32)
    policy = build(name, low, high)
    modes = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    optim = torch.optim.Adam(policy.parameters(), lr=2e-3)
    for _ in range(800):
        obs = torch.randn(256, OBS_DIM)
        targets = modes[torch.randint(0, 2, (256,))] + 0.03 * torch.randn(256, 2)
        loss = policy.loss(obs, targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
    policy.eval()
    with torch.no_grad():
        samples = policy.sample(torch.randn(8, OBS_DIM), 100).reshape(-1, 2)
    distance = torch.cdist(samples, modes)
    near = distance.min(-1).values < 0.2
    share = torch.bincount(distance.argmin(-1)[near], minlength=2).float() / len(samples)
    assert near.float().mean() > 0.8, f"only {near.float().mean():.2f} of samples near a mode"
    assert (share > 0.2).all(), f"mode shares {share.tolist()}"


def test_user_policy_needs_no_pa_rl_base_class_and_bad_objects_are_refused() -> None:
    policy = GridPolicy(OBS_DIM, LOW, HIGH)
    assert not any(cls.__module__.startswith("pa_rl") for cls in type(policy).__mro__)
    Agent(policy, OBS_DIM, LOW, HIGH)  # accepted as it is
    with pytest.raises(TypeError, match="not a pa-rl policy"):
        Agent(torch.nn.Linear(3, 2), OBS_DIM, LOW, HIGH)


def test_unknown_policy_and_bad_bounds_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown policy 'mlp'"):
        make_policy("mlp", OBS_DIM, LOW, HIGH)
    with pytest.raises(ValueError, match="high > low"):
        make_policy("diffusion", OBS_DIM, HIGH, LOW)
    with pytest.raises(ValueError, match="finite"):
        make_policy("flow", OBS_DIM, np.array([-np.inf, 0.0]), HIGH)
