"""Tanh-squashed Gaussian MLP policy: the class Cal-QL and SAC use, trained here by its NLL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pa_rl.encoders import EncoderConfig, make_encoder
from pa_rl.observations import Obs, ObsSpec
from pa_rl.policies.base import ActionScaler
from pa_rl.policies.nets import mlp
from pa_rl.validation import require


@dataclass
class GaussianConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    layer_norm: bool = True  # in the hidden layers (d3rlpy's SAC/Cal-QL actor has none)
    # Data actions at the box edge have infinite pre-tanh values; clip like the reference code (±0.99999).
    edge_clip: float = 0.99999
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # for image/text observations

    def __post_init__(self) -> None:
        require(self, "hidden_dims", at_least=1)
        require(self, "log_std_max", above=self.log_std_min)
        require(self, "edge_clip", above=0, below=1)


class GaussianPolicy(nn.Module):
    """a = tanh(u), u ~ N(μ(s), σ(s)²); loss is −log p(a|s) with the tanh change of variables."""

    def __init__(self, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: GaussianConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GaussianConfig()
        self.scaler = ActionScaler(action_low, action_high)
        self.encoder = make_encoder(obs_spec, config.encoder)
        self.net = mlp(self.encoder.out_dim, config.hidden_dims, 2 * self.scaler.action_dim, config.layer_norm)

    def distribution(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the pre-tanh Gaussian over flat unit actions; exposed for actor-critic baselines."""
        mean, log_std = self.net(self.encoder(obs)).chunk(2, dim=-1)
        log_std = log_std.clamp(self.config.log_std_min, self.config.log_std_max)
        return mean, log_std.exp()

    def log_prob(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        """log p of env-unit actions ``[B, A]`` (or chunks ``[B, H, A]``) → ``[B]``, as densities of the actions mapped to [-1, 1]
        (the affine map's constant Jacobian is left out): the weighted NLL of the AWR baseline."""
        return self.log_prob_unit(obs, self.scaler.normalize(actions))

    def log_prob_unit(self, obs: Obs, unit_actions: torch.Tensor) -> torch.Tensor:
        """log p of actions already in [-1, 1] (sum over action dimensions)."""
        mean, std = self.distribution(obs)
        a = unit_actions.clamp(-self.config.edge_clip, self.config.edge_clip)
        u = torch.atanh(a)
        log_normal = -0.5 * (((u - mean) / std) ** 2 + 2 * std.log() + math.log(2 * math.pi))
        return (log_normal - torch.log1p(-a.pow(2))).sum(-1)

    def loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(obs, actions).mean()

    def rsample(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """One reparameterised action per state (env units, flat: ``[B, A]``, ``[B, H·A]`` for chunks) and its log-density in [-1, 1]
        units (``[B]``), differentiable in the policy's parameters: the SAC / Cal-QL actor's input.

        The tanh correction is log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), exact and finite
        where tanh saturates (which the clipped atanh of ``log_prob_unit`` is not)."""
        mean, std = self.distribution(obs)
        u = mean + std * torch.randn_like(mean)
        log_normal = -0.5 * (((u - mean) / std) ** 2 + 2 * std.log() + math.log(2 * math.pi))
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))
        return self.scaler.unnormalize(torch.tanh(u)), (log_normal - log_det).sum(-1)

    def deterministic_action(self, obs: Obs) -> torch.Tensor:
        """tanh(μ(s)) in env units (``[B, A]``, or ``[B, H, A]`` for chunks): the action that SAC, Cal-QL and
        IQL implementations evaluate with (d3rlpy's ``predict``); ``Agent.act(obs, "deterministic")``."""
        mean, _ = self.distribution(obs)
        return self.scaler.unflatten(self.scaler.unnormalize(torch.tanh(mean)))

    def sample(self, obs: Obs, num_samples: int) -> torch.Tensor:
        mean, std = self.distribution(obs)
        noise = torch.randn(mean.shape[0], num_samples, mean.shape[-1], device=mean.device)
        return self.scaler.unflatten(self.scaler.unnormalize(torch.tanh(mean[:, None] + std[:, None] * noise)))
