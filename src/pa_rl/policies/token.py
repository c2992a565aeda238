"""Autoregressive transformer over action tokens (OpenVLA-style uniform bins, one token per dim)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.encoders import EncoderConfig, make_encoder
from pa_rl.observations import Obs, ObsSpec
from pa_rl.policies.base import ActionScaler, bin_centres, repeat_obs, to_bins
from pa_rl.validation import require

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TokenConfig:
    """Defaults follow the PA-RL reference transformer policy (4 layers, 8 heads, 128 bins)."""

    bins: int = 128
    width: int = 128
    layers: int = 4
    heads: int = 8
    dropout: float = 0.1
    temperature: float = 1.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # for image/text observations

    def __post_init__(self) -> None:
        require(self, "bins", at_least=2)
        require(self, "width", "layers", "heads", at_least=1)
        require(self, "dropout", at_least=0, below=1)
        require(self, "temperature", above=0)
        if self.width % self.heads:
            raise ValueError(f"TokenConfig.width ({self.width}) must be a multiple of heads ({self.heads})")


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention block that can extend a key/value cache."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(width, dim=-1))
        if cache is not None:  # decoding one new position: it may attend to everything cached
            if layer < len(cache):
                k, v = torch.cat([cache[layer][0], k], 2), torch.cat([cache[layer][1], v], 2)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, length, width))
        return x + self.ff(self.ln2(x))


class TokenPolicy(nn.Module):
    """p(a|s) = Π_i p(tok_i | s, tok_<i); each action dimension is cut into ``bins`` uniform bins on
    [-1, 1] and decoded to the bin centre. The observation is the first position of the sequence;
    token embeddings are separate per action dimension because bin j means a different thing in each.
    """

    def __init__(self, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: TokenConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TokenConfig()
        self.scaler = ActionScaler(action_low, action_high)
        dims = self.scaler.action_dim
        self.encoder = make_encoder(obs_spec, config.encoder)
        self.obs_embed = nn.Linear(self.encoder.out_dim, config.width)
        self.token_embed = nn.Embedding(dims * config.bins, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(dims, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.dropout) for _ in range(config.layers))
        self.head = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.bins))
        self.register_buffer("dim_offset", torch.arange(dims) * config.bins, persistent=False)

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        return to_bins(self.scaler.normalize(actions), self.config.bins)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.scaler.unnormalize(bin_centres(tokens, self.config.bins))

    def _embed(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Inputs for positions 0..L: the encoded observation, then the tokens of dimensions 0..L-1."""
        length = tokens.shape[1]
        tok = self.token_embed(tokens + self.dim_offset[:length])
        return torch.cat([self.obs_embed(features)[:, None], tok], 1) + self.pos_embed[: length + 1]

    def loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenize(actions)
        x = self._embed(self.encoder(obs), tokens[:, :-1])
        for block in self.blocks:
            x = block(x)
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, self.config.bins), tokens.reshape(-1))

    def sample(self, obs: Obs, num_samples: int) -> torch.Tensor:
        features = self.encoder(obs)
        batch = len(features)
        cond = repeat_obs(features, num_samples)
        cache: KVCache = []
        tokens: list[torch.Tensor] = []
        for dim in range(self.scaler.action_dim):
            x = (self.obs_embed(cond)[:, None] if dim == 0
                 else self.token_embed(tokens[-1] + self.dim_offset[dim - 1])) + self.pos_embed[dim: dim + 1]
            for layer, block in enumerate(self.blocks):
                x = block(x, cache, layer)
            logits = self.head(x[:, -1]) / max(self.config.temperature, 1e-6)
            tokens.append(torch.multinomial(logits.softmax(-1), 1))
        return self.scaler.unflatten(self.detokenize(torch.cat(tokens, 1)).reshape(batch, num_samples, -1))
