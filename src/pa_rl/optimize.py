"""Action optimization: the "PA-RL policy" π̂(s) built from any base policy and a critic.

Sample N actions per state from the policy, keep the top-k by Q (global), take T steps of gradient
ascent on Q with respect to each kept action (local), then choose one (argmax, or a softmax/uniform
draw). T = 0 gives best-of-N re-ranking; k = N turns the global filter off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pa_rl.critic import QEnsemble
from pa_rl.observations import Obs, batch_size
from pa_rl.validation import require

ChooseMode = Literal["argmax", "softmax", "uniform"]


@dataclass
class OptimizerConfig:
    """Defaults are the reference code's (N = 32, k = 10, T = 10, α = 3e-4, ensemble mean)."""

    num_samples: int = 32
    top_k: int = 10
    local_steps: int = 10
    step_size: float = 3e-4
    objective: Literal["mean", "min"] = "mean"
    # π̂'s argmax only where every critic member ranks the same candidate first; elsewhere the base
    # policy's own (first) sample. A critic that cannot yet tell the candidates apart then leaves the
    # policy's behaviour as it is instead of acting on its errors (BENCHMARKS.md, stability).
    agreement_gate: bool = False
    # States optimized per block: small blocks keep the critic's [E, states·k, width] activations in
    # cache (2.6× faster default updates measured on this CPU); None = all at once.
    chunk_states: int | None = 64

    def __post_init__(self) -> None:
        require(self, "num_samples", "top_k", at_least=1)
        require(self, "local_steps", "step_size", at_least=0)
        if self.chunk_states is not None:
            require(self, "chunk_states", at_least=1)
        if self.top_k > self.num_samples:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_samples ({self.num_samples})")


@dataclass
class Candidates:
    """The k refined actions per state with their values under the critic."""

    actions: torch.Tensor  # [B, k, A]
    values: torch.Tensor  # [B, k], best value seen during the local steps
    initial_values: torch.Tensor  # [B, k], before the local steps (for diagnostics)
    # With the agreement gate: the base policy's own sample [B, A] and where the members disagree [B].
    base: torch.Tensor | None = None
    undecided: torch.Tensor | None = None

    def choose(self, mode: ChooseMode = "argmax", temperature: float = 1.0) -> torch.Tensor:
        """One action per state: the best (the base sample where a gate finds the critic undecided), a
        softmax(Q / temperature) draw, or a uniform draw."""
        if mode == "argmax":
            best = self.actions[torch.arange(len(self.values), device=self.values.device), self.values.argmax(-1)]
            return best if self.undecided is None else torch.where(self.undecided[:, None], self.base, best)
        if mode == "softmax":
            index = torch.multinomial((self.values / temperature).softmax(-1), 1).squeeze(-1)
        elif mode == "uniform":
            index = torch.randint(0, self.values.shape[-1], self.values.shape[:1], device=self.values.device)
        else:
            raise ValueError(f"unknown choice mode {mode!r}; use 'argmax', 'softmax' or 'uniform'")
        return self.actions[torch.arange(len(index), device=index.device), index]

    def with_action(self, actions: torch.Tensor, values: torch.Tensor) -> Candidates:
        """Replace each state's worst candidate by a given action (e.g. the data set's)."""
        worst = self.values.argmin(-1, keepdim=True)
        new_actions = self.actions.scatter(1, worst[..., None].expand(-1, -1, actions.shape[-1]), actions[:, None])
        new_values = self.values.scatter(1, worst, values[:, None])
        return Candidates(new_actions, new_values, self.initial_values)  # the gate judged the old set


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Switch dropout etc. off while sampling, then restore the module's mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def sample_actions(policy: nn.Module, obs: Obs, num_samples: int, action_shape: tuple[int, ...] | None = None
                   ) -> torch.Tensor:
    """``policy.sample`` in eval mode without autograd, checked against the contract (``[B, N, A]``, or
    ``[B, N, H, A]`` for chunks: ``action_shape`` (H, A)) and returned flat: ``[B, N, H·A]``."""
    with torch.no_grad(), evaluating(policy):
        actions = policy.sample(obs, num_samples)
    rows = batch_size(obs)
    trailing = ("action_dim",) if action_shape is None else action_shape
    if (not isinstance(actions, torch.Tensor) or actions.shape[:2] != (rows, num_samples)
            or actions.dim() != 2 + len(trailing) or (action_shape is not None and actions.shape[2:] != action_shape)):
        shape = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
        expected = ", ".join(str(d) for d in (rows, num_samples, *trailing))
        raise TypeError(f"{type(policy).__name__}.sample(obs, {num_samples}) must return a tensor [{expected}], "
                        f"got {shape}")
    return actions.flatten(2)


class ActionOptimizer:
    """π̂: global (top-k of N samples) then local (T clipped gradient-ascent steps) optimization.

    Actions are flat to it: an action chunk [H, A] is one H·A vector (``action_shape`` is what the
    policy samples). The critic encodes each state once (``critic.encode``) and scores all its
    candidates and local steps on those features (``critic.q``)."""

    def __init__(self, config: OptimizerConfig, action_low: np.ndarray | torch.Tensor,
                 action_high: np.ndarray | torch.Tensor, action_shape: tuple[int, ...] | None = None) -> None:
        self.config = config
        self.low = torch.as_tensor(action_low, dtype=torch.float32)  # a tensor keeps its device
        self.high = torch.as_tensor(action_high, dtype=torch.float32)
        self.action_shape = action_shape

    def reduce(self, q: torch.Tensor) -> torch.Tensor:
        """The ensemble's values [E, ...] reduced as the optimizer sees them (mean or min over members)."""
        return q.mean(0) if self.config.objective == "mean" else q.min(0).values

    def value(self, critic: QEnsemble, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        """Q(s, a) as π̂ sees it: reduced over members, the critic in eval mode (no augmentation)."""
        with evaluating(critic):
            return self.reduce(critic(obs, actions))

    def __call__(self, policy: nn.Module, critic: QEnsemble, obs: Obs, samples: torch.Tensor | None = None
                 ) -> Candidates:
        """Optimize actions for a batch of observations; ``samples [B, N, A]`` may be passed in (e.g.
        cached draws of a frozen policy) instead of being drawn now."""
        cfg = self.config
        if samples is None:
            samples = sample_actions(policy, obs, cfg.num_samples, self.action_shape)
        with torch.no_grad(), evaluating(critic):
            features = critic.encode(obs)
        chunk = cfg.chunk_states or len(features)
        if len(features) <= chunk:
            return self._optimize(critic, features, samples)
        parts = [self._optimize(critic, f, a) for f, a in zip(features.split(chunk), samples.split(chunk))]
        return Candidates(*(None if column[0] is None else torch.cat(column) for column in zip(
            *((p.actions, p.values, p.initial_values, p.base, p.undecided) for p in parts))))

    def _optimize(self, critic: QEnsemble, features: torch.Tensor, samples: torch.Tensor) -> Candidates:
        """Global then local optimization of given samples at encoded states; states are independent."""
        cfg = self.config
        low, high = self.low.to(samples.device), self.high.to(samples.device)
        samples = torch.maximum(torch.minimum(samples, high), low)
        base = samples[:, 0]  # the policy's own first draw, before any selection
        with torch.no_grad():
            members = critic.q(features, samples)  # [E, B, N]
            values = self.reduce(members)
            if cfg.top_k < samples.shape[1]:
                values, index = values.topk(cfg.top_k, dim=-1)
                samples = samples.gather(1, index[..., None].expand(-1, -1, samples.shape[-1]))
                members = members.gather(2, index.expand(len(members), -1, -1))
        best_actions, best_members, initial = samples, members, values  # members [E, B, k]: values reduce them

        def keep_best(actions: torch.Tensor, members: torch.Tensor) -> None:
            nonlocal best_actions, best_members
            better = self.reduce(members) > self.reduce(best_members)
            best_members = torch.where(better, members, best_members).detach()
            best_actions = torch.where(better[..., None], actions, best_actions).detach()

        actions = samples
        for step in range(cfg.local_steps):
            actions = actions.detach().requires_grad_(True)
            with torch.enable_grad():
                members = critic.q(features, actions)
                (grad,) = torch.autograd.grad(self.reduce(members).sum(), actions)
            if step > 0:  # step 0 re-evaluates the top-k themselves
                keep_best(actions, members)
            actions = torch.maximum(torch.minimum(actions.detach() + cfg.step_size * grad, high), low)
        if cfg.local_steps > 0:
            with torch.no_grad():
                keep_best(actions, critic.q(features, actions))
        best_values = self.reduce(best_members).detach()
        if not cfg.agreement_gate:
            return Candidates(best_actions.detach(), best_values, initial)
        undecided = (best_members.argmax(-1) != best_values.argmax(-1)).any(0)
        return Candidates(best_actions.detach(), best_values, initial, base, undecided)
