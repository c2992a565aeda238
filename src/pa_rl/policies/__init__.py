"""Built-in policy classes and the contract every policy (built-in or yours) follows."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from pa_rl.policies.base import ActionScaler, Policy
from pa_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
from pa_rl.policies.flow import FlowConfig, FlowPolicy
from pa_rl.policies.gaussian import GaussianConfig, GaussianPolicy
from pa_rl.policies.token import TokenConfig, TokenPolicy

POLICIES: dict[str, tuple[type[nn.Module], type]] = {
    "diffusion": (DiffusionPolicy, DiffusionConfig),
    "gaussian": (GaussianPolicy, GaussianConfig),
    "token": (TokenPolicy, TokenConfig),
    "flow": (FlowPolicy, FlowConfig),
}


def make_policy(name: str, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                config: Any | None = None) -> nn.Module:
    """Build a built-in policy by name (``diffusion``, ``gaussian``, ``token``, ``flow``)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    cls, config_cls = POLICIES[name]
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"policy {name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    return cls(obs_dim, action_low, action_high, config)


__all__ = ["ActionScaler", "Policy", "POLICIES", "make_policy", "DiffusionConfig", "DiffusionPolicy",
           "FlowConfig", "FlowPolicy", "GaussianConfig", "GaussianPolicy", "TokenConfig", "TokenPolicy"]
