"""The PA-RL agent: a critic trained with optimized actions, and a policy distilled on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from torch import nn

from pa_rl.buffer import Batch
from pa_rl.critic import CriticConfig, QEnsemble, make_target, polyak_update
from pa_rl.optimize import ActionOptimizer, Candidates, ChooseMode, OptimizerConfig, sample_actions
from pa_rl.policies.base import Policy

ActMode = Literal["argmax", "softmax", "uniform", "policy"]


@dataclass
class AgentConfig:
    """Defaults follow the PA-RL reference code (see shared/spec/algorithm.md)."""

    objective: Annotated[Literal["calql", "cql", "iql"],
                         tyro.conf.arg(name="critic", prefix_name=False)] = "calql"  # critic objective
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic
    critic_lr: float = 3e-4
    bc_lr: float = 3e-4  # policy learning rate for behaviour cloning
    bc_warmup_steps: int = 2000  # linear learning-rate warm-up of behaviour cloning
    distill_lr: float = 5e-5  # policy learning rate for distillation on optimized actions
    cql_alpha: float = 0.005  # weight of the conservative term (paper's AntMaze value; 1–5 on narrow data)
    cql_actions: int = 10  # uniform random actions per state in the conservative term
    target_members: int = 2  # REDQ-style: min over this many random target members
    expectile: float = 0.7  # IQL value expectile
    distill_choice: ChooseMode = "softmax"
    distill_temperature: float = 1.0
    distill_with_data_action: bool = True  # the data set action replaces the worst candidate
    critic: CriticConfig = field(default_factory=CriticConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 < self.expectile < 1:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if not 1 <= self.target_members <= self.critic.ensemble_size:
            raise ValueError(f"target_members ({self.target_members}) must be in [1, critic.ensemble_size "
                             f"({self.critic.ensemble_size})]")
        if self.objective not in ("calql", "cql", "iql"):
            raise ValueError(f"unknown critic objective {self.objective!r}; choose calql, cql or iql")


class Agent(nn.Module):
    """Owns the policy (any class honouring :class:`~pa_rl.policies.Policy`), the critic ensemble,
    its target, and their optimizers. Knows nothing of environments or files."""

    def __init__(self, policy: nn.Module, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                 config: AgentConfig | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if not isinstance(policy, nn.Module) or not isinstance(policy, Policy):
            raise TypeError(f"{type(policy).__name__} is not a pa-rl policy: it must be a torch.nn.Module with "
                            "sample(obs, num_samples) -> [B, N, action_dim] and loss(obs, actions) -> scalar")
        self.config = config = config or AgentConfig()
        self.device = torch.device(device)
        low = np.asarray(action_low, dtype=np.float32).reshape(-1)
        high = np.asarray(action_high, dtype=np.float32).reshape(-1)
        self.obs_dim, self.action_dim = obs_dim, len(low)
        self.policy = policy.to(self.device)
        self.critic = QEnsemble(obs_dim, self.action_dim, config.critic).to(self.device)
        self.target_critic = make_target(self.critic)
        critic_params = list(self.critic.parameters())
        if config.objective == "iql":
            self.value = QEnsemble(obs_dim, 0, CriticConfig(ensemble_size=1, hidden_dims=config.critic.hidden_dims,
                                                            layer_norm=config.critic.layer_norm)).to(self.device)
            critic_params += list(self.value.parameters())
        self.critic_optim = torch.optim.Adam(critic_params, lr=config.critic_lr)
        self.policy_optim = torch.optim.Adam(self.policy.parameters(), lr=config.bc_lr)
        self.action_optimizer = ActionOptimizer(config.optimizer, low, high)
        self.register_buffer("action_low", torch.tensor(low))
        self.register_buffer("action_high", torch.tensor(high))
        self.bc_steps_done = 0

    # ---- acting -------------------------------------------------------------------------------
    def optimize_actions(self, obs: torch.Tensor, samples: torch.Tensor | None = None) -> Candidates:
        """π̂'s candidates at ``obs``; ``samples`` are cached policy draws to use instead of new ones."""
        return self.action_optimizer(self.policy, self.critic, obs, samples)

    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """The optimizer's N draws of the base policy (what a sample cache stores)."""
        return sample_actions(self.policy, obs, self.config.optimizer.num_samples)

    def act(self, obs: np.ndarray | torch.Tensor, mode: ActMode = "argmax") -> torch.Tensor:
        """Actions for a batch of observations: the PA-RL policy π̂ (``argmax``/``softmax``/
        ``uniform`` choice among the optimized candidates) or one raw sample of the base ``policy``."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = obs_t.dim() == 1
        obs_t = obs_t[None] if single else obs_t
        if mode == "policy":
            actions = sample_actions(self.policy, obs_t, 1)[:, 0]
            actions = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
        else:
            actions = self.optimize_actions(obs_t).choose(mode)
        return actions[0] if single else actions

    # ---- learning -----------------------------------------------------------------------------
    def _policy_step(self, obs: torch.Tensor, actions: torch.Tensor, lr: float) -> float:
        for group in self.policy_optim.param_groups:
            group["lr"] = lr
        self.policy.train()
        loss = self.policy.loss(obs, actions)
        self.policy_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.policy_optim.step()
        return loss.item()

    def bc_update(self, batch: Batch) -> dict[str, float]:
        """One behaviour-cloning step: the policy's own loss on data set actions."""
        cfg = self.config
        self.bc_steps_done += 1
        lr = cfg.bc_lr * min(1.0, self.bc_steps_done / max(cfg.bc_warmup_steps, 1))
        return {"bc/loss": self._policy_step(batch.obs, batch.actions, lr)}

    def update(self, batch: Batch, distill: bool = False) -> dict[str, float]:
        """One critic step (and optionally one distillation step) on ``batch``."""
        if self.config.objective == "iql":
            metrics, candidates = self._iql_critic_step(batch), None
        else:
            metrics, candidates = self._cql_critic_step(batch)
        polyak_update(self.target_critic, self.critic, self.config.tau)
        if distill:
            metrics.update(self._distill_step(batch, candidates))
        return metrics

    def _target_values(self, next_obs: torch.Tensor, next_actions: torch.Tensor) -> torch.Tensor:
        """min over a random subset of target members (REDQ-style) of Q̄(s', a')."""
        q = self.target_critic(next_obs, next_actions)
        members = torch.randperm(q.shape[0], device=q.device)[: self.config.target_members]
        return q[members].min(0).values

    def _cql_critic_step(self, batch: Batch) -> tuple[dict[str, float], Candidates]:
        cfg, size = self.config, len(batch)
        # π̂ on s and s' in one batched call: s' for the backup, both for the conservative term.
        cached = None
        if batch.policy_samples is not None and batch.next_policy_samples is not None:
            cached = torch.cat([batch.policy_samples, batch.next_policy_samples])
        both = self.optimize_actions(torch.cat([batch.obs, batch.next_obs]), cached)
        current = Candidates(both.actions[:size], both.values[:size], both.initial_values[:size])
        next_actions = both.actions[size:]
        with torch.no_grad():
            best_next = next_actions[torch.arange(size, device=self.device), both.values[size:].argmax(-1)]
            target = batch.rewards + cfg.gamma * (1 - batch.terminals) * self._target_values(batch.next_obs, best_next)
        random_actions = self.action_low + (self.action_high - self.action_low) * torch.rand(
            size, cfg.cql_actions, self.action_dim, device=self.device)
        # Data action, random actions, π̂(s) and π̂(s') candidates: one critic pass at the states s.
        actions = torch.cat([batch.actions[:, None], random_actions, current.actions, next_actions], 1)
        logits = self.critic.logits(batch.obs, actions)
        values = self.critic.values(logits)  # [E, B, 1 + n + 2k]
        td_loss = self.critic.td_loss(logits[:, :, 0], target)
        q_data, q_random, q_policy = values[..., 0], values[..., 1: 1 + cfg.cql_actions], values[..., 1 + cfg.cql_actions:]
        if cfg.objective == "calql":  # calibration: policy values no lower than the behaviour's MC return
            q_policy = torch.maximum(q_policy, batch.mc_returns[None, :, None])
        gap = torch.logsumexp(torch.cat([q_random, q_policy], -1), -1) - q_data
        loss = td_loss + cfg.cql_alpha * gap.mean(-1).sum()
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()
        metrics = {
            "critic/loss": loss.item(), "critic/td_loss": td_loss.item(), "critic/cql_gap": gap.mean().item(),
            "critic/q_data": q_data.mean().item(), "critic/q_policy": current.values.mean().item(),
            "critic/target": target.mean().item(),
            "critic/local_gain": (both.values - both.initial_values).mean().item(),
        }
        return metrics, current

    def _iql_critic_step(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            q_target = self.target_critic(batch.obs, batch.actions).min(0).values
            target = batch.rewards + cfg.gamma * (1 - batch.terminals) * self.value(batch.next_obs)[0]
        v = self.value(batch.obs)[0]
        diff = q_target - v
        value_loss = (torch.abs(cfg.expectile - (diff < 0).float()) * diff ** 2).mean()
        logits = self.critic.logits(batch.obs, batch.actions)
        td_loss = self.critic.td_loss(logits, target)
        self.critic_optim.zero_grad(set_to_none=True)
        (td_loss + value_loss).backward()
        self.critic_optim.step()
        return {"critic/td_loss": td_loss.item(), "critic/value_loss": value_loss.item(),
                "critic/q_data": self.critic.values(logits).mean().item(), "critic/v": v.mean().item()}

    def distill(self, batch: Batch) -> dict[str, float]:
        """One distillation step alone (action optimization included)."""
        return self._distill_step(batch, None)

    def _distill_step(self, batch: Batch, candidates: Candidates | None) -> dict[str, float]:
        """Fit the policy, with its own loss, to actions chosen from the optimized candidates."""
        cfg = self.config
        if candidates is None:
            candidates = self.optimize_actions(batch.obs, batch.policy_samples)
        if cfg.distill_with_data_action:
            with torch.no_grad():
                data_values = self.action_optimizer.value(self.critic, batch.obs, batch.actions)
            candidates = candidates.with_action(batch.actions, data_values)
        targets = candidates.choose(cfg.distill_choice, cfg.distill_temperature)
        return {"distill/loss": self._policy_step(batch.obs, targets, cfg.distill_lr)}
