"""DDPM policy (IDQL / PA-RL style): a residual-MLP ε-predictor, cosine noise schedule, few steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.encoders import EncoderConfig, make_encoder
from pa_rl.observations import Obs, ObsSpec
from pa_rl.policies.base import ActionScaler, repeat_obs
from pa_rl.policies.nets import Denoiser, check_denoiser_config


@dataclass
class DiffusionConfig:
    """Defaults follow the PA-RL reference code for state-based tasks."""

    steps: int = 5
    hidden_dim: int = 256
    num_blocks: int = 3
    time_dim: int = 128
    dropout: float = 0.1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # for image/text observations

    def __post_init__(self) -> None:
        check_denoiser_config(self)


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    """β_t from ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal, 2021), clipped at 0.999."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999).float()


class DiffusionPolicy(nn.Module):
    """Denoising diffusion over actions normalized to [-1, 1]; loss is the DDPM ε-prediction MSE."""

    def __init__(self, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiffusionConfig()
        self.scaler = ActionScaler(action_low, action_high)
        self.encoder = make_encoder(obs_spec, config.encoder)
        self.denoiser = Denoiser(self.encoder.out_dim, self.scaler.action_dim, config.hidden_dim, config.num_blocks,
                                 config.time_dim, config.dropout)
        betas = cosine_betas(config.steps)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1), alpha_bar[:-1]])
        buffers = {
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            # Posterior q(x_{t-1} | x_t, x_0) = N(c0·x_0 + ct·x_t, σ²).
            "post_c0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "post_ct": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
            "post_std": (betas * (1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        return (t.float() + 1) / self.config.steps

    def loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        x0 = self.scaler.normalize(actions)
        t = torch.randint(0, self.config.steps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.sqrt_alpha_bar[t, None] * x0 + self.sqrt_one_minus_alpha_bar[t, None] * noise
        return F.mse_loss(self.denoiser(x_t, self._time(t), self.encoder(obs)), noise)

    def sample(self, obs: Obs, num_samples: int) -> torch.Tensor:
        features = self.encoder(obs)
        batch = len(features)
        cond = repeat_obs(features, num_samples)
        x = torch.randn(len(cond), self.scaler.action_dim, device=features.device)
        for step in reversed(range(self.config.steps)):
            t = torch.full((len(cond),), step, device=features.device)
            eps = self.denoiser(x, self._time(t), cond)
            # Clipping the x_0 estimate keeps few-step samplers inside the action box.
            x0 = ((x - self.sqrt_one_minus_alpha_bar[step] * eps) / self.sqrt_alpha_bar[step]).clamp(-1, 1)
            x = self.post_c0[step] * x0 + self.post_ct[step] * x
            if step > 0:
                x = x + self.post_std[step] * torch.randn_like(x)
        return self.scaler.unflatten(self.scaler.unnormalize(x).reshape(batch, num_samples, -1))
