"""The PA-RL agent: a critic trained with optimized actions, and a policy distilled on them.

The policy step can also be one of two class-specific baselines, so they run through the same
critic, data, phases and evaluation as PA-RL (``AgentConfig.policy_improvement``): the Cal-QL/SAC
reparameterised actor, and IQL's advantage-weighted regression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from torch import nn

from pa_rl.buffer import Batch
from pa_rl.critic import CriticConfig, QEnsemble, make_target, polyak_update
from pa_rl.encoders import EncoderConfig, Standardize, fit_standardization, make_encoder
from pa_rl.observations import Obs, ObsSpec, batch_size, cat_obs, map_obs, to_tensor
from pa_rl.optimize import ActionOptimizer, Candidates, ChooseMode, OptimizerConfig, evaluating, sample_actions
from pa_rl.policies.base import Policy
from pa_rl.validation import require

ActMode = Literal["argmax", "softmax", "uniform", "policy", "deterministic"]
PolicyImprovement = Literal["distill", "reparam", "awr"]
# What each policy step needs from the policy class beyond the PA-RL contract.
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {"distill": (), "reparam": ("rsample",), "awr": ("log_prob",)}


@dataclass
class AgentConfig:
    """Defaults follow the PA-RL reference code (see shared/spec/algorithm.md): sized for a GPU (about
    2 s an update on a 2-core CPU). ``pa_rl.presets.cpu().agent`` holds the laptop-sized settings."""

    objective: Annotated[Literal["calql", "cql", "iql"],
                         tyro.conf.arg(name="critic", prefix_name=False)] = "calql"  # critic objective
    gamma: float = 0.99
    # Backups over n env steps (reward sum, γ^n bootstrap): values propagate n times faster per update.
    n_step: int = 1
    # Action chunks: the policy proposes H actions at once, executed open-loop; the critic scores the
    # chunk, Q(s_t, a_t..a_{t+H−1}), with the H-step reward sum and a γ^H bootstrap (Q-chunking).
    chunk: int = 1
    # TD targets no lower than the data's Monte-Carlo return-to-go, a lower bound on Q (MCAC, Wilcox et
    # al. 2022): a young critic starts from the behaviour's returns instead of climbing one Bellman
    # iteration per 1/τ updates. Exact for deterministic envs; optimistic where returns are noisy.
    mc_target_floor: bool = False
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
    # Each distillation step also fits the policy to the data set's own actions at the batch's
    # data-set rows (``update``'s data_rows), as extra rows of the same loss: where the critic cannot
    # tell the candidates apart, the targets are the policy's own samples, on which a few-step diffusion
    # policy shrinks its actions. Holds it offline; online, a third of the loss, it did not (BENCHMARKS.md).
    distill_data_anchor: bool = False
    # The rows the conservative (CQL/Cal-QL) term sees: all, or only the data set's ("data": online,
    # the term then keeps raising Q at the data set's actions, not at actions π̂ chose itself).
    conservative_states: Literal["all", "data"] = "all"
    # The critic that ranks π̂'s candidates when acting (evaluation, online collection): the learned one,
    # or its Polyak average ("target"), whose ranking averages out the last ≈ 1/τ updates' noise.
    act_critic: Literal["critic", "target"] = "critic"
    # The policy step: "distill" = PA-RL (fit the policy's own loss to optimized actions); "reparam" =
    # the Cal-QL/SAC actor, max E[Q(s, a ~ π)] − α log π with automatic α (needs policy.rsample);
    # "awr" = IQL's advantage-weighted regression on data actions (needs policy.log_prob and --critic iql).
    # Baselines use distill_lr as their actor lr (= Cal-QL's actor lr 1e-4 in the cpu preset).
    policy_improvement: PolicyImprovement = "distill"
    # AWR's β in exp(β·(Q − V)): IQL's value for its expectile 0.7 (MuJoCo); its AntMaze setting is β 10
    # with expectile 0.9. Our −1-per-step rewards give advantages of order 1, like those tasks.
    awr_temperature: float = 3.0
    awr_max_weight: float = 100.0  # AWR weights are clipped here (IQL's value)
    # Vector observations standardised with the offline data's mean and std (pa_rl.encoders.Standardize)
    # in every built-in encoder: the policy's, the critic's, IQL's value. Training fits them once, when
    # it starts on a fresh agent; a user's own policy class reads raw observations unless it builds
    # its encoder with pa_rl.encoders.make_encoder.
    standardize_observations: bool = True
    # torch.compile the critic ensemble's network (and its target's, IQL's value's): fuses its
    # elementwise ops. Off by default: at the cpu preset on this project's CPU it did not win
    # (0.74–1.19× per step, BENCHMARKS.md "torch.compile"); on CUDA it is unmeasured.
    # `python benchmarks/speed.py` times both on your machine.
    compile_critic: bool = False
    critic: CriticConfig = field(default_factory=CriticConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the critic's, for image/text observations

    def __post_init__(self) -> None:
        require(self, "critic_lr", "bc_lr", "distill_lr", "distill_temperature", above=0)
        require(self, "cql_alpha", "bc_warmup_steps", at_least=0)
        require(self, "cql_actions", "n_step", "chunk", at_least=1)
        if self.chunk > 1 and self.n_step > 1:
            raise ValueError(f"chunk {self.chunk} already backs up over {self.chunk} env steps; leave n_step at 1 "
                             f"(got {self.n_step})")
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
        if self.policy_improvement not in REQUIRED_METHODS:
            raise ValueError(f"unknown policy_improvement {self.policy_improvement!r}; "
                             f"choose one of {sorted(REQUIRED_METHODS)}")
        if self.policy_improvement == "awr" and self.objective != "iql":
            raise ValueError(f"policy_improvement 'awr' weights data actions by Q − V and needs the IQL value "
                             f"function: use the iql critic (--critic iql), not {self.objective!r}")
        if self.awr_temperature <= 0 or self.awr_max_weight <= 0:
            raise ValueError(f"awr_temperature and awr_max_weight must be > 0, got {self.awr_temperature}, "
                             f"{self.awr_max_weight}")

    @property
    def horizon(self) -> int:
        """Env steps one backup covers (n-step, or the chunk)."""
        return max(self.n_step, self.chunk)


class Agent(nn.Module):
    """Owns the policy (any class honouring :class:`~pa_rl.policies.Policy`), the critic ensemble,
    its target, and their optimizers. Knows nothing of environments or files."""

    def __init__(self, policy: nn.Module, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: AgentConfig | None = None, device: str | torch.device = "cpu") -> None:
        """``obs_spec``: a flat observation's size, or a mapping spec (:mod:`pa_rl.observations`);
        ``action_low``/``action_high``: the env's per-step action bounds. With ``config.chunk`` H > 1
        the policy must sample ``[B, N, H, A]`` (built-in classes: :func:`pa_rl.policies.make_policy`
        with ``chunk=H``)."""
        super().__init__()
        if not isinstance(policy, nn.Module) or not isinstance(policy, Policy):
            raise TypeError(f"{type(policy).__name__} is not a pa-rl policy: it must be a torch.nn.Module with "
                            "sample(obs, num_samples) -> [B, N, action_dim] and loss(obs, actions) -> scalar")
        self.config = config = config or AgentConfig()
        missing = [m for m in REQUIRED_METHODS[config.policy_improvement] if not callable(getattr(policy, m, None))]
        if missing:
            raise TypeError(f"policy_improvement {config.policy_improvement!r} needs {', '.join(missing)}() on the "
                            f"policy, which {type(policy).__name__} lacks (GaussianPolicy has it; PA-RL's "
                            "'distill' works with any policy)")
        self.device = torch.device(device)
        low = np.asarray(action_low, dtype=np.float32).reshape(-1)
        high = np.asarray(action_high, dtype=np.float32).reshape(-1)
        self.obs_spec, self.action_dim, chunk = obs_spec, len(low), config.chunk
        self.action_shape = (chunk, len(low)) if chunk > 1 else (len(low),)
        self.policy = policy.to(self.device)
        self.critic = QEnsemble(make_encoder(obs_spec, config.encoder), chunk * len(low), config.critic).to(self.device)
        self.target_critic = make_target(self.critic)
        critic_params = list(self.critic.parameters())
        if config.objective == "iql":
            self.value = QEnsemble(make_encoder(obs_spec, config.encoder), 0,
                                   CriticConfig(ensemble_size=1, hidden_dims=config.critic.hidden_dims,
                                                layer_norm=config.critic.layer_norm)).to(self.device)
            critic_params += list(self.value.parameters())
        if config.compile_critic:  # in place: parameter names, checkpoints and copies stay as they are
            for module in (self.critic, self.target_critic, getattr(self, "value", None)):
                if module is not None:
                    module.net.compile()
        self.critic_optim = torch.optim.Adam(critic_params, lr=config.critic_lr)
        # Trainable parameters only: a pretrained policy's frozen base has no optimizer state.
        self.policy_optim = torch.optim.Adam([p for p in self.policy.parameters() if p.requires_grad], lr=config.bc_lr)
        if config.policy_improvement == "reparam":  # SAC's automatic entropy temperature, α = 1 at start
            self.log_alpha = nn.Parameter(torch.zeros((), device=self.device))
            self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=config.distill_lr)
            self.target_entropy = -float(chunk * len(low))
        self.register_buffer("action_low", torch.tensor(low, device=self.device))
        self.register_buffer("action_high", torch.tensor(high, device=self.device))
        # The bounds of a flat chunk, as the critic and the action optimizer see actions.
        self.register_buffer("chunk_low", self.action_low.repeat(chunk), persistent=False)
        self.register_buffer("chunk_high", self.action_high.repeat(chunk), persistent=False)
        self.action_optimizer = ActionOptimizer(config.optimizer, self.chunk_low, self.chunk_high, self.action_shape)
        self.bc_steps_done = 0

    # ---- observations ---------------------------------------------------------------------------
    @property
    def standardization_fitted(self) -> bool:
        """Whether every standardising encoder holds statistics (fitted, or loaded from weights)."""
        return all(bool(m.fitted) for m in self.modules() if isinstance(m, Standardize))

    def fit_standardization(self, observations: object) -> None:
        """Standardise vector observations with the mean and std of ``observations``: rows of a flat
        observation ``[N, D]``, or a mapping with such rows for each vector key. Call it once, before
        training a fresh agent (``pa_rl.train`` does when ``standardize_observations`` is on):
        refitting a trained agent changes what its networks read."""
        if isinstance(self.obs_spec, int):
            rows: Obs = torch.as_tensor(np.asarray(observations, dtype=np.float32))
        else:
            rows = {key: torch.as_tensor(np.asarray(observations[key], dtype=np.float32))  # type: ignore[index]
                    for key, field in self.obs_spec.items() if field.kind == "vector"}
        fit_standardization(self, rows)

    # ---- acting -------------------------------------------------------------------------------
    def optimize_actions(self, obs: Obs, samples: torch.Tensor | None = None, critic: QEnsemble | None = None
                         ) -> Candidates:
        """π̂'s candidates at ``obs``; ``samples`` are cached policy draws to use instead of new ones."""
        return self.action_optimizer(self.policy, self.critic if critic is None else critic, obs, samples)

    @property
    def acting_critic(self) -> QEnsemble:
        """The critic whose ranking π̂ acts by (``AgentConfig.act_critic``)."""
        return self.target_critic if self.config.act_critic == "target" else self.critic

    def sample_policy(self, obs: Obs) -> torch.Tensor:
        """The optimizer's N draws of the base policy, flat ``[B, N, H·A]`` (what a sample cache stores)."""
        return sample_actions(self.policy, obs, self.config.optimizer.num_samples, self.action_shape)

    def shaped(self, actions: torch.Tensor) -> torch.Tensor:
        """Flat actions ``[B, H·A]`` → the policy's shape (``[B, A]``, or ``[B, H, A]`` for chunks)."""
        return actions.reshape(len(actions), *self.action_shape)

    @property
    def has_deterministic_action(self) -> bool:
        """Whether the policy defines ``deterministic_action`` (act mode "deterministic")."""
        return callable(getattr(self.policy, "deterministic_action", None))

    def act(self, obs: object, mode: ActMode = "argmax") -> torch.Tensor:
        """Actions for a batch of observations (arrays, tensors or mappings of them; one unbatched
        observation gives one action): the PA-RL policy π̂ (``argmax``/``softmax``/``uniform``
        choice among the optimized candidates), one raw sample of the base ``policy``, or the base policy's
        ``deterministic`` action (for classes that define ``deterministic_action``, e.g. the Gaussian's
        tanh(μ)). With chunks, each action is a ``[H, A]`` chunk to execute in order."""
        obs_t, single = to_tensor(obs, self.obs_spec, self.device)
        if mode == "deterministic":
            if not self.has_deterministic_action:
                raise TypeError(f"act mode 'deterministic' needs deterministic_action() on the policy, which "
                                f"{type(self.policy).__name__} lacks; use 'policy' (one sample) or 'argmax' (π̂)")
            with torch.no_grad(), evaluating(self.policy):
                actions = self.policy.deterministic_action(obs_t).reshape(batch_size(obs_t), -1)
        elif mode == "policy":
            actions = sample_actions(self.policy, obs_t, 1, self.action_shape)[:, 0]
        else:
            actions = self.optimize_actions(obs_t, critic=self.acting_critic).choose(mode)
        if mode in ("deterministic", "policy"):  # π̂'s candidates are clipped by the optimizer
            actions = torch.maximum(torch.minimum(actions, self.chunk_high), self.chunk_low)
        actions = self.shaped(actions)
        return actions[0] if single else actions

    # ---- learning -----------------------------------------------------------------------------
    def _policy_step(self, loss_fn: Callable[[], torch.Tensor], lr: float) -> torch.Tensor:
        """One Adam step of the policy on ``loss_fn()``; gradients reach the policy's parameters only
        (an actor loss through the critic leaves the critic's untouched)."""
        for group in self.policy_optim.param_groups:
            group["lr"] = lr
        self.policy.train()
        loss = loss_fn()
        params = [p for group in self.policy_optim.param_groups for p in group["params"] if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for param, grad in zip(params, grads):
            param.grad = grad
        self.policy_optim.step()
        return loss.detach()

    def bc_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One behaviour-cloning step: the policy's own loss on data set actions."""
        cfg = self.config
        self.bc_steps_done += 1
        lr = cfg.bc_lr * min(1.0, self.bc_steps_done / max(cfg.bc_warmup_steps, 1))
        return {"bc/loss": self._policy_step(lambda: self.policy.loss(batch.obs, self.shaped(batch.actions)), lr)}

    def update(self, batch: Batch, distill: bool = False, data_rows: int | None = None) -> dict[str, torch.Tensor]:
        """One critic step (and optionally one policy step, see ``policy_improvement``) on ``batch``;
        ``data_rows``: how many of its first rows come from the offline data set (all when None; online
        batches mix in the agent's own transitions after them).

        Metrics are 0-d tensors, read (one host sync each) only when someone logs them."""
        if self.config.objective == "iql":
            metrics, candidates = self._iql_critic_step(batch), None
        else:
            conservative_rows = data_rows if self.config.conservative_states == "data" else None
            metrics, candidates = self._cql_critic_step(batch, conservative_rows)  # π̂'s candidates, data values
        polyak_update(self.target_critic, self.critic, self.config.tau)
        if distill:
            metrics.update(self._improve_policy(batch, candidates, data_rows))
        return metrics

    def _target_values(self, next_obs: Obs, next_actions: torch.Tensor) -> torch.Tensor:
        """min over a random subset of target members (REDQ-style) of Q̄(s', a')."""
        q = self.target_critic(next_obs, next_actions)
        members = torch.randperm(q.shape[0], device=q.device)[: self.config.target_members]
        return q[members].min(0).values

    def _backup(self, batch: Batch, next_values: torch.Tensor) -> torch.Tensor:
        """y = R + γ^k (1 − done) V(s'), floored at the Monte-Carlo return if ``mc_target_floor``."""
        target = batch.rewards + batch.discounts * (1 - batch.terminals) * next_values
        return torch.maximum(target, batch.mc_returns) if self.config.mc_target_floor else target

    def _cql_critic_step(self, batch: Batch, conservative_rows: int | None = None
                         ) -> tuple[dict[str, torch.Tensor], tuple[Candidates, torch.Tensor]]:
        cfg, size = self.config, len(batch)
        # π̂ on s and s' in one batched call: s' for the backup, both for the conservative term.
        cached = None
        if batch.policy_samples is not None and batch.next_policy_samples is not None:
            cached = torch.cat([batch.policy_samples, batch.next_policy_samples])
        both = self.optimize_actions(cat_obs([batch.obs, batch.next_obs]), cached)
        current = Candidates(both.actions[:size], both.values[:size], both.initial_values[:size],
                             *(None if x is None else x[:size] for x in (both.base, both.undecided)))
        next_actions = both.actions[size:]
        with torch.no_grad():
            best_next = next_actions[torch.arange(size, device=self.device), both.values[size:].argmax(-1)]
            target = self._backup(batch, self._target_values(batch.next_obs, best_next))
        random_actions = self.chunk_low + (self.chunk_high - self.chunk_low) * torch.rand(
            size, cfg.cql_actions, len(self.chunk_low), device=self.device)
        # Data action, random actions, π̂(s) and π̂(s') candidates: one critic pass at the states s.
        actions = torch.cat([batch.actions[:, None], random_actions, current.actions, next_actions], 1)
        logits = self.critic.logits(self.critic.encode(batch.obs), actions)  # one encoder pass per state
        values = self.critic.values(logits)  # [E, B, 1 + n + 2k]
        td_loss = self.critic.td_loss(logits[:, :, 0], target)
        q_data, q_random, q_policy = values[..., 0], values[..., 1: 1 + cfg.cql_actions], values[..., 1 + cfg.cql_actions:]
        if cfg.objective == "calql":  # calibration: policy values no lower than the behaviour's MC return
            q_policy = torch.maximum(q_policy, batch.mc_returns[None, :, None])
        gap = (torch.logsumexp(torch.cat([q_random, q_policy], -1), -1) - q_data)[:, :conservative_rows]
        loss = td_loss + cfg.cql_alpha * gap.mean(-1).sum()
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()
        metrics = {
            "critic/loss": loss, "critic/td_loss": td_loss, "critic/cql_gap": gap.mean(),
            "critic/q_data": q_data.mean(), "critic/q_policy": current.values.mean(), "critic/target": target.mean(),
            # How far apart the critic holds π̂'s candidates, and how much the local steps gain on them.
            "critic/q_spread": current.values.std(-1).mean() if current.values.shape[-1] > 1 else target.new_zeros(()),
            "critic/local_gain": (both.values - both.initial_values).mean(),
        }
        if current.undecided is not None:  # how often the members disagree on π̂'s pick (agreement gate)
            metrics["critic/undecided"] = current.undecided.float().mean()
        # The data actions' values as π̂ sees them, for distillation (no second encoder pass over s).
        data_values = self.action_optimizer.reduce(q_data).detach()
        return {name: value.detach() for name, value in metrics.items()}, (current, data_values)

    def _iql_critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            q_target = self.target_critic(batch.obs, batch.actions).min(0).values
            target = self._backup(batch, self.value(batch.next_obs)[0])
        v = self.value(batch.obs)[0]
        diff = q_target - v
        value_loss = (torch.abs(cfg.expectile - (diff < 0).float()) * diff ** 2).mean()
        logits = self.critic.logits(self.critic.encode(batch.obs), batch.actions)
        td_loss = self.critic.td_loss(logits, target)
        self.critic_optim.zero_grad(set_to_none=True)
        (td_loss + value_loss).backward()
        self.critic_optim.step()
        return {"critic/td_loss": td_loss.detach(), "critic/value_loss": value_loss.detach(),
                "critic/q_data": self.critic.values(logits).mean().detach(), "critic/v": v.mean().detach()}

    def fit_returns(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One regression step of every critic member on the data's Monte-Carlo returns G(s, a).

        A critic starts near Q = 0, and TD moves its level by about one Bellman iteration per 1/τ
        updates: with −1-per-step rewards and returns near −80 it stays far too optimistic for
        thousands of updates (BENCHMARKS.md, critic study). Regressing on G first starts TD from
        the behaviour's values instead. The target critic is not moved here (see
        :meth:`sync_target`)."""
        td_loss = self.critic.td_loss(self.critic.logits(self.critic.encode(batch.obs), batch.actions),
                                      batch.mc_returns)
        self.critic_optim.zero_grad(set_to_none=True)
        td_loss.backward()
        self.critic_optim.step()
        return {"critic/mc_fit_loss": td_loss.detach()}

    @torch.no_grad()
    def sync_target(self) -> None:
        """Target critic ← critic (after :meth:`fit_returns`)."""
        polyak_update(self.target_critic, self.critic, 1.0)

    def distill(self, batch: Batch, data_rows: int | None = None) -> dict[str, torch.Tensor]:
        """One policy step alone (for PA-RL: distillation, action optimization included); ``data_rows`` as
        in :meth:`update`."""
        return self._improve_policy(batch, None, data_rows)

    def _improve_policy(self, batch: Batch, candidates: tuple[Candidates, torch.Tensor] | None,
                        data_rows: int | None) -> dict[str, torch.Tensor]:
        mode = self.config.policy_improvement
        if mode == "reparam":
            return self._reparam_step(batch)
        if mode == "awr":
            return self._awr_step(batch)
        return self._distill_step(batch, candidates, data_rows)

    def _distill_step(self, batch: Batch, scored: tuple[Candidates, torch.Tensor] | None, data_rows: int | None
                      ) -> dict[str, torch.Tensor]:
        """Fit the policy, with its own loss, to actions chosen from the optimized candidates (and, with
        ``distill_data_anchor``, to the data set's actions at its rows); ``scored``: the critic step's
        candidates and data-action values, computed here when not given."""
        cfg = self.config
        if scored is None:
            candidates = self.optimize_actions(batch.obs, batch.policy_samples)
            if cfg.distill_with_data_action:
                with torch.no_grad():
                    data_values = self.action_optimizer.value(self.critic, batch.obs, batch.actions)
        else:
            candidates, data_values = scored
        if cfg.distill_with_data_action:
            candidates = candidates.with_action(batch.actions, data_values)
        targets = candidates.choose(cfg.distill_choice, cfg.distill_temperature)
        obs, fitted = batch.obs, targets
        if cfg.distill_data_anchor:
            rows = len(batch) if data_rows is None else data_rows
            obs = cat_obs([obs, map_obs(lambda t: t[:rows], batch.obs)])
            fitted = torch.cat([targets, batch.actions[:rows]])
        loss = self._policy_step(lambda: self.policy.loss(obs, self.shaped(fitted)), cfg.distill_lr)
        # Drift: how far the targets lie from the data actions, and how often the data action is the target.
        return {"distill/loss": loss, "distill/target_drift": (targets - batch.actions).norm(dim=-1).mean(),
                "distill/target_is_data": (targets == batch.actions).all(-1).float().mean()}

    def _reparam_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Cal-QL/SAC actor: minimise α log π(a|s) − Q(s, a), a = rsample(s), Q reduced over the
        ensemble as the action optimizer does (``optimizer.objective``: min is Cal-QL's, mean the
        PA-RL default); then α follows SAC's rule toward entropy −action_dim."""
        alpha = self.log_alpha.exp().detach()
        log_prob = torch.empty(0)

        def actor_loss() -> torch.Tensor:
            nonlocal log_prob
            actions, log_prob = self.policy.rsample(batch.obs)
            return (alpha * log_prob - self.action_optimizer.value(self.critic, batch.obs, actions)).mean()

        loss = self._policy_step(actor_loss, self.config.distill_lr)
        entropy = -log_prob.detach().mean()
        alpha_loss = self.log_alpha * (entropy - self.target_entropy)  # α grows while entropy < target
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()
        return {"actor/loss": loss, "actor/alpha": alpha, "actor/entropy": entropy}

    def _awr_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """IQL's policy extraction: −log π(a|s) on data actions, weighted by exp(β·(Q(s, a) − V(s)))
        clipped at ``awr_max_weight``; Q is the target ensemble's min, as in the IQL value loss."""
        cfg = self.config
        with torch.no_grad():
            advantage = self.target_critic(batch.obs, batch.actions).min(0).values - self.value(batch.obs)[0]
            weights = torch.exp(cfg.awr_temperature * advantage).clamp(max=cfg.awr_max_weight)
        loss = self._policy_step(lambda: -(weights * self.policy.log_prob(batch.obs, self.shaped(batch.actions))).mean(),
                                 cfg.distill_lr)
        return {"actor/loss": loss, "actor/advantage": advantage.mean(), "actor/weight": weights.mean()}

    # ---- saving, loading, publishing (pa_rl.pretrained) ---------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write this agent to a folder that :meth:`from_pretrained` rebuilds it from (config.json
        with the policy class and configs, observation spec and bounds; model.safetensors)."""
        from pa_rl.pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu", base_model: str | None = None) -> Agent:
        """An agent from a :meth:`save_pretrained` folder, a finished run's folder (final weights), or a
        Hugging Face Hub id; ``base_model`` moves an hf policy's adapters onto a copy of its base."""
        from pa_rl.pretrained import load_pretrained

        return load_pretrained(source, device, base_model)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
        """Upload :meth:`save_pretrained`'s folder to a Hub model repository (``pip install 'pa-rl[hf]'``)."""
        from pa_rl.pretrained import push_to_hub

        return push_to_hub(self, repo_id, private, token)
