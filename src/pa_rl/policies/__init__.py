"""Built-in policy classes and the contract every policy (built-in or yours) follows."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from pa_rl.observations import ObsSpec
from pa_rl.policies.base import ActionScaler, Policy
from pa_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
from pa_rl.policies.flow import FlowConfig, FlowPolicy
from pa_rl.policies.gaussian import GaussianConfig, GaussianPolicy
from pa_rl.policies.hf import HFConfig, HFPolicy
from pa_rl.policies.token import TokenConfig, TokenPolicy

POLICIES: dict[str, tuple[type[nn.Module], type]] = {
    "diffusion": (DiffusionPolicy, DiffusionConfig),
    "gaussian": (GaussianPolicy, GaussianConfig),
    "token": (TokenPolicy, TokenConfig),
    "flow": (FlowPolicy, FlowConfig),
    "hf": (HFPolicy, HFConfig),
}


def make_policy(name: str, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                config: Any | None = None, chunk: int = 1) -> nn.Module:
    """Build a built-in policy by name (``diffusion``, ``gaussian``, ``token``, ``flow``, ``hf``) for
    observations of ``obs_spec`` and the env's per-step action bounds; ``chunk`` H > 1 makes it model
    H-step chunks."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    cls, config_cls = POLICIES[name]
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"policy {name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    if chunk > 1:
        action_low, action_high = (np.tile(np.asarray(b, np.float32), (chunk, 1)) for b in (action_low, action_high))
    return cls(obs_spec, action_low, action_high, config)


__all__ = ["ActionScaler", "Policy", "POLICIES", "make_policy", "DiffusionConfig", "DiffusionPolicy",
           "FlowConfig", "FlowPolicy", "GaussianConfig", "GaussianPolicy", "HFConfig", "HFPolicy", "TokenConfig",
           "TokenPolicy"]
