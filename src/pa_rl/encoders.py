"""Observation encoders: an observation (flat vector, or mapping of images, vectors and text) → one
feature vector per state.

Built-in policies and the critic each own one, built by :func:`make_encoder` from the observation
spec and an :class:`EncoderConfig`. Whoever holds an encoder runs it once per state and reuses the
features for every sampled action and every ensemble member. Images are normalised inside (they
travel as ``uint8``) and randomly shifted while the module is in training mode (DrQ, Kostrikov et
al. 2021), never when acting; vectors are standardised with the offline data's statistics
(:class:`Standardize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.observations import Field, Obs, ObsSpec
from pa_rl.validation import require


@dataclass
class EncoderConfig:
    """How the images and text of mapping observations are encoded (vectors are standardised)."""

    # conv: a small DrQ-style net (4 layers of 3×3 convolutions), right for ≤ 100-pixel images;
    # resnet18: ResNet-18 with GroupNorm (torchvision's layout) for large ones.
    image: Literal["conv", "resnet18"] = "conv"
    image_features: int = 64  # features per camera
    conv_channels: int = 32
    resnet_weights: Path | None = None  # a (torchvision) resnet18 state dict file to start from; none is downloaded
    shift: int = 4  # random-shift augmentation in pixels while training (0 = off)
    text_features: int = 32  # learned byte embedding of the instruction, mean-pooled

    def __post_init__(self) -> None:
        require(self, "image_features", "conv_channels", "text_features", at_least=1)
        require(self, "shift", at_least=0)
        if self.image not in ("conv", "resnet18"):
            raise ValueError(f"unknown image encoder {self.image!r}; choose conv or resnet18")


STD_FLOOR = 1e-3  # a dimension constant in the data is centred, not blown up


class Standardize(nn.Module):
    """A vector observation → (x − mean) / std with its offline data's statistics, once
    :func:`fit_standardization` has set them (the identity before). MLPs learn slowly from raw inputs
    that vary little around a large offset: Meta-World's positions vary by centimetres around 0.66 m,
    and 3k BC updates of its diffusion policy scored 1–12 % on them raw, 14–45 % standardised
    (BENCHMARKS.md, "Meta-World BC").

    ``key``: the observation key it reads (None for a flat observation). The statistics are buffers,
    so checkpoints, ``save_pretrained`` and ``pa-rl export`` carry them."""

    def __init__(self, dim: int, key: str | None = None) -> None:
        super().__init__()
        self.key, self.out_dim = key, dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # Weights written before 0.7.0 have no statistics: their networks read raw observations, so they
        # load as the identity, marked fitted so that training never standardises under them.
        names = [prefix + name for name in ("mean", "std", "fitted")]
        if not any(name in state_dict for name in names):
            state_dict.update(zip(names, (torch.zeros_like(self.mean), torch.ones_like(self.std), torch.tensor(True))))
        super()._load_from_state_dict(state_dict, prefix, *args)


def fit_standardization(module: nn.Module, observations: Obs) -> None:
    """Set every :class:`Standardize` inside ``module`` to the per-dimension mean and std of
    ``observations`` (rows of a flat observation, or a mapping with one such tensor per vector key)."""
    for sub in module.modules():
        if isinstance(sub, Standardize):
            rows = (observations if sub.key is None else observations[sub.key]).to(sub.mean.device, torch.float64)
            sub.mean.copy_(rows.mean(0))
            sub.std.copy_(rows.std(0, correction=0).clamp(min=STD_FLOOR))
            sub.fitted.fill_(True)


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
            self.trunk = ResNet18(channels, config.resnet_weights)
        else:
            self.trunk = conv_trunk(channels, min(height, width), config.conv_channels)
        with torch.no_grad():
            trunk_dim = self.trunk(torch.zeros(1, channels, height, width)).shape[-1]
        self.head = nn.Sequential(nn.Linear(trunk_dim, config.image_features), nn.LayerNorm(config.image_features),
                                  nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.shift:
            images = random_shift(images, self.shift)
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.head(self.trunk(x))


def conv_trunk(channels: int, size: int, width: int) -> nn.Sequential:
    """Up to four 3×3 convolutions (DrQ's encoder), striding 2 while the feature map is larger than 8
    pixels: 64×64 images end as 5×5 maps (31, 15, 7, 5), small ones keep at least one pixel."""
    layers: list[nn.Module] = []
    for _ in range(4):
        if size < 3:
            break
        stride = 2 if size > 8 else 1
        layers += [nn.Conv2d(channels, width, 3, stride=stride), nn.ReLU()]
        channels, size = width, (size - 3) // stride + 1
    return nn.Sequential(*layers, nn.Flatten())


def group_norm(width: int) -> nn.GroupNorm:
    """GroupNorm instead of BatchNorm: batch statistics would couple the states of a batch (and the
    critic sees odd batches: states and next states, candidates of one state)."""
    return nn.GroupNorm(max(1, width // 16), width)


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convolutions with a skip connection (projected when the shape changes)."""

    def __init__(self, in_width: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride, 1, bias=False)
        self.bn1 = group_norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = group_norm(width)
        self.downsample = (nn.Sequential(nn.Conv2d(in_width, width, 1, stride, bias=False), group_norm(width))
                           if stride != 1 or in_width != width else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) without its classifier: [B, C, H, W] → [B, 512].

    Parameter names follow torchvision's ``resnet18`` so its state dicts load (``weights``: a local
    file; BatchNorm running statistics in it are skipped). Written here rather than imported: the
    torchvision wheel on PyPI is built for the CUDA torch and cannot load its operators next to the
    CPU torch build that ``make install`` pins."""

    def __init__(self, channels: int = 3, weights: Path | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        self.bn1 = group_norm(64)
        widths, in_width = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(in_width, width, stride), BasicBlock(width, width, 1)))
            in_width = width
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.") and "running_" not in k
                     and "num_batches_tracked" not in k}
            missing, unexpected = self.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{weights} is not a resnet18 state dict for {channels}-channel images: missing "
                                 f"{missing[:4]}, unexpected {unexpected[:4]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


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
    """One encoder per key; features concatenated in key order."""

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
                self.encoders[key] = Standardize(field.shape[0], key)
                self.out_dim += field.shape[0]

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.encoders[key](obs[key]) for key in self.keys], -1)


def make_encoder(spec: ObsSpec, config: EncoderConfig | None = None) -> nn.Module:
    """The encoder for observations of ``spec``; its ``out_dim`` is the feature size."""
    if isinstance(spec, int):
        return Standardize(spec)
    return MappingEncoder(spec, config or EncoderConfig())
