"""The policy contract, and the action scaling that every built-in class uses internally."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@runtime_checkable
class Policy(Protocol):
    """What pa-rl needs from a policy, and nothing more.

    Any ``torch.nn.Module`` with these two methods is trainable by pa-rl; no subclassing or
    registration. The RL code never asks for log-probabilities, reparameterised samples or entropies,
    which is what lets the policy class be anything.
    """

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``obs`` (a tensor ``[B, ...]``, or a mapping of them for Dict observations) → ``actions
        [B, num_samples, action_dim]`` in env action units (``[B, num_samples, H, action_dim]`` when the
        agent acts in chunks of H steps)."""
        ...

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The class's own supervised loss (scalar) for fitting ``actions [B, action_dim]`` (``[B, H,
        action_dim]`` for chunks)."""
        ...


class ActionScaler(nn.Module):
    """Maps env actions in a Box [low, high] to [-1, 1] and back.

    Built-in classes model actions in [-1, 1]; the bounds travel with the module's state dict so a
    saved policy samples in the right units. Bounds of shape (H, A) describe an action chunk: the
    class models it as one flat H·A vector (``normalize`` flattens, ``unflatten`` restores the shape).
    """

    def __init__(self, low: np.ndarray | torch.Tensor, high: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(np.shape(low))
        low_t = torch.tensor(np.asarray(low), dtype=torch.float32).flatten()
        high_t = torch.tensor(np.asarray(high), dtype=torch.float32).flatten()
        if low_t.shape != high_t.shape:
            raise ValueError(f"action bounds disagree in shape: low {tuple(low_t.shape)}, high {tuple(high_t.shape)}")
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("action bounds must be finite: pa-rl policies sample inside a bounded Box")
        if not (high_t > low_t).all():
            raise ValueError(f"action bounds need high > low in every dimension, got low={low_t.tolist()}, high={high_t.tolist()}")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)

    @property
    def action_dim(self) -> int:
        return self.low.numel()

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions ``[..., *shape]`` → flat unit actions ``[..., action_dim]``."""
        flat = actions.reshape(*actions.shape[: actions.dim() - len(self.shape)], -1)
        return 2.0 * (flat - self.low) / (self.high - self.low) - 1.0

    def unflatten(self, actions: torch.Tensor) -> torch.Tensor:
        """Flat actions ``[..., action_dim]`` → ``[..., *shape]``."""
        return actions.reshape(*actions.shape[:-1], *self.shape)

    def unnormalize(self, unit_actions: torch.Tensor) -> torch.Tensor:
        return self.low + (unit_actions.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


def to_bins(unit_actions: torch.Tensor, bins: int) -> torch.Tensor:
    """Unit actions in [-1, 1] → indices of ``bins`` uniform bins (OpenVLA-style action tokens)."""
    return ((unit_actions.clamp(-1, 1) + 1) / 2 * bins).long().clamp(0, bins - 1)


def bin_centres(indices: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin indices → the unit actions at their centres: within half a bin of what was binned."""
    return (indices.float() + 0.5) / bins * 2 - 1


def repeat_obs(features: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[B, F] → [B·N, F], sample-major within each state, so a reshape to [B, N, ...] undoes it.
    Repeat encoded features, not raw observations: the encoder then runs once per state."""
    return features.repeat_interleave(num_samples, dim=0)
