"""Observation encoders: an observation (flat vector, or mapping of images, vectors and text) → one
feature vector per state.

Built-in policies and the critic each own one, built by :func:`make_encoder` from the observation
spec and an :class:`EncoderConfig`. Whoever holds an encoder runs it once per state and reuses the
features for every sampled action and every ensemble member. Images are normalised inside (they
travel as ``uint8``) and randomly shifted while the module is in training mode (DrQ, Kostrikov et
al. 2021), never when acting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.observations import Field, ObsSpec
from pa_rl.validation import require


@dataclass
class EncoderConfig:
    """How mapping observations are encoded (flat vectors pass through unchanged)."""

    # conv: a small DrQ-style net (4 layers of 3×3 convolutions), right for ≤ 100-pixel images;
    # resnet18: torchvision's ResNet-18 with GroupNorm for large ones (pip install 'pa-rl[vision]').
    image: Literal["conv", "resnet18"] = "conv"
    image_features: int = 64  # features per camera
    conv_channels: int = 32
    resnet_weights: Path | None = None  # a torchvision resnet18 state dict to start from (no download)
    shift: int = 4  # random-shift augmentation in pixels while training (0 = off)
    text_features: int = 32  # learned byte embedding of the instruction, mean-pooled

    def __post_init__(self) -> None:
        require(self, "image_features", "conv_channels", "text_features", at_least=1)
        require(self, "shift", at_least=0)
        if self.image not in ("conv", "resnet18"):
            raise ValueError(f"unknown image encoder {self.image!r}; choose conv or resnet18")


class FlatEncoder(nn.Module):
    """A flat observation is its own feature vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image [B, H, W, C] moved by up to ``pad`` pixels (edges replicated), one shift per image."""
    batch, height, width, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2), (pad,) * 4, mode="replicate").permute(0, 2, 3, 1)
    dy, dx = (torch.randint(0, 2 * pad + 1, (batch, 1), device=images.device) for _ in range(2))
    rows = dy + torch.arange(height, device=images.device)
    cols = dx + torch.arange(width, device=images.device)
    return padded[torch.arange(batch, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


class ImageEncoder(nn.Module):
    """uint8 [B, H, W, C] → features [B, image_features]: a conv net or ResNet-18, then a linear map,
    LayerNorm and tanh (DrQ's head, keeping features in a fixed range for the MLPs after it)."""

    def __init__(self, field: Field, config: EncoderConfig) -> None:
        super().__init__()
        height, width, channels = field.shape
        self.shift = config.shift
        if config.image == "resnet18":
            self.trunk = resnet18_trunk(channels, config.resnet_weights)
        else:
            c = config.conv_channels
            self.trunk = nn.Sequential(
                nn.Conv2d(channels, c, 3, stride=2), nn.ReLU(), nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
                nn.Conv2d(c, c, 3, stride=2), nn.ReLU(), nn.Conv2d(c, c, 3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            trunk_dim = self.trunk(torch.zeros(1, channels, height, width)).shape[-1]
        self.head = nn.Sequential(nn.Linear(trunk_dim, config.image_features), nn.LayerNorm(config.image_features),
                                  nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.shift:
            images = random_shift(images, self.shift)
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.head(self.trunk(x))


def resnet18_trunk(channels: int, weights: Path | None) -> nn.Module:
    """torchvision's ResNet-18 without its classifier, GroupNorm instead of BatchNorm (batch statistics
    would couple the states of a batch, and the critic sees odd batches), optionally loaded from a
    local state dict (BatchNorm running statistics in it are skipped)."""
    try:
        from torchvision.models import resnet18
    except ImportError as error:
        raise ImportError("the resnet18 image encoder needs torchvision: pip install 'pa-rl[vision]'") from error
    net = resnet18(weights=None, norm_layer=lambda width: nn.GroupNorm(max(1, width // 16), width))
    if channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.") and "running_" not in k
                 and "num_batches_tracked" not in k}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} is not a resnet18 state dict: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return net


class TextEncoder(nn.Module):
    """Instruction bytes [B, L] → the mean of their learned embeddings (padding excluded)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, features, padding_idx=0)
        self.out_dim = features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        counts = (tokens > 0).sum(-1, keepdim=True).clamp(min=1)
        return self.embed(tokens).sum(1) / counts


class MappingEncoder(nn.Module):
    """One encoder per key; features concatenated in key order (vectors pass through)."""

    def __init__(self, spec: dict[str, Field], config: EncoderConfig) -> None:
        super().__init__()
        self.keys = sorted(spec)
        self.encoders = nn.ModuleDict()
        self.out_dim = 0
        for key in self.keys:
            field = spec[key]
            if field.kind == "image":
                self.encoders[key] = ImageEncoder(field, config)
                self.out_dim += config.image_features
            elif field.kind == "text":
                self.encoders[key] = TextEncoder(config.text_features)
                self.out_dim += config.text_features
            else:
                self.out_dim += field.shape[0]

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.encoders[key](obs[key]) if key in self.encoders else obs[key] for key in self.keys], -1)


def make_encoder(spec: ObsSpec, config: EncoderConfig | None = None) -> nn.Module:
    """The encoder for observations of ``spec``; its ``out_dim`` is the feature size."""
    if isinstance(spec, int):
        return FlatEncoder(spec)
    return MappingEncoder(spec, config or EncoderConfig())
