"""The three phases: behaviour cloning, offline RL, online fine-tuning, with periodic evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from pa_rl.agent import ActMode, Agent
from pa_rl.buffer import Batch, ReplayBuffer, batch_of, check_buffer_fits
from pa_rl.checkpoint import CheckpointError, CheckpointStore, write_atomically
from pa_rl.data.episodes import DataError, Episode, EpisodeRecorder, check_episodes, vector_rows
from pa_rl.diagnostics import CriticDiagnostic, split_held_out
from pa_rl.evaluation import evaluate
from pa_rl.logging import MetricsLogger
from pa_rl.observations import ObsSpec, SpecObservation, space_of_spec, spec_of_space
from pa_rl.progress import progress_bar
from pa_rl.samplers import AsyncSampler
from pa_rl.validation import require

log = logging.getLogger("pa_rl")


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (missing, clashing, or from another config)."""


PHASES = ("bc", "offline", "online", "done")


@dataclass
class TrainConfig:
    """Budgets sized for a GPU by default; ``pa_rl.presets.cpu().train`` holds the 2-core-CPU ones."""

    seed: int = 0
    batch_size: int = 256
    bc_steps: int = 20_000  # behaviour-cloning updates of the policy
    offline_steps: int = 20_000  # offline critic updates
    online_env_steps: int = 20_000  # environment steps of online fine-tuning
    # Offline, before the first TD update: this many critic regressions on the data's Monte-Carlo
    # returns (Agent.fit_returns), so TD starts from the behaviour's values, not from Q ≈ 0.
    critic_return_fit_steps: int = 0
    # A policy step every K offline updates. 0 = the method's own rule: none for PA-RL (the reference
    # code keeps the base policy frozen offline), every update for the reparam/awr baselines (as
    # Cal-QL's and IQL's actors train).
    offline_distill_every: int = 0
    cache_policy_samples: bool = True  # while the policy is frozen offline, draw its samples once
    # Where the policy's samples come from while it changes (offline distillation, online): "sync" draws
    # them in each update; "async" draws them ahead in a worker process (pa_rl.samplers: faster for an
    # expensive policy, samples up to sampler_max_staleness distillation blocks old, not bit-exact).
    sampler: Literal["sync", "async"] = "sync"
    sampler_max_staleness: int = 1
    online_critic_utd: float = 1.0  # critic updates per new env step
    # PA-RL distillation updates per new env step (0: online, only the critic learns). A baseline's actor
    # steps with each critic update instead, as SAC's and IQL's do.
    online_distill_utd: float = 1.0
    online_distill_start: int = 0  # online env steps of critic-only updates before distillation resumes
    # The states online distillation fits the policy at: the whole mixed batch ("all"), or only its
    # offline-data rows ("offline"; the critic still trains on both). A candidate fix for online
    # collapse (BENCHMARKS.md, stability): the policy then never imitates at states its own π̂ visited.
    online_distill_states: Literal["all", "offline"] = "all"
    mixing_ratio: float = 0.5  # share of each online-phase batch drawn from the offline data
    # Online env steps collected before the first online update (updates follow whole episodes, so
    # they start after the episode that crosses this count). Counted in steps, not episodes, so a
    # long-horizon task's warm-up does not swallow a short online budget.
    warmup_env_steps: int = 0
    # Slots (an episode of T steps takes T + 1); preallocated, capped at what the online phase can
    # fill (2 · online_env_steps), see ReplayBuffer.bytes_per_slot.
    online_buffer_size: int = 1_000_000
    # How online episodes are acted (and the diagnostic's rollouts continued): None = π̂'s argmax for
    # PA-RL, the actor's own sample ("policy") for the reparam/awr baselines.
    collect_mode: ActMode | None = None
    eval_every: int = 5_000  # offline updates between evaluations
    online_eval_every: int = 5_000  # online env steps between evaluations
    eval_episodes: int = 50  # fewer make differences of 10–20 points noise (one policy read 0, 20 and 10 % at 20)
    eval_parallel: int = 50  # episodes stepped in lockstep (one batched act per step)
    held_out_fraction: float = 0.05  # episodes kept out of training for the critic's calibration check
    diagnostic_pairs: int = 8  # rollout pairs per evaluation that test the critic's ranking (0 = off)
    max_episode_steps: int = 1_000  # cap for envs without a time limit of their own
    reward_scale: float = 1.0  # r' = reward_scale · r + reward_bias, for data and env alike
    reward_bias: float = 0.0
    checkpoint_every: int = 5_000  # updates (BC, offline) or env steps (online, at the next episode end)
    checkpoint_minutes: float = 5.0  # also after this much wall clock (online: at the next episode end); 0 = off
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        require(self, "batch_size", "eval_episodes", "eval_parallel", "max_episode_steps", "log_every", "eval_every",
                "online_eval_every", "online_buffer_size", "checkpoint_every", "keep_checkpoints", at_least=1)
        require(self, "bc_steps", "offline_steps", "online_env_steps", "offline_distill_every", "warmup_env_steps",
                "critic_return_fit_steps", "online_distill_start", "diagnostic_pairs", "online_critic_utd",
                "online_distill_utd", "sampler_max_staleness", at_least=0)
        if self.sampler not in ("sync", "async"):
            raise ValueError(f"sampler must be 'sync' or 'async', got {self.sampler!r}")
        if self.online_distill_states not in ("all", "offline"):
            raise ValueError(f"online_distill_states must be 'all' or 'offline', got {self.online_distill_states!r}")
        if self.online_distill_states == "offline" and (self.sampler == "async" or self.mixing_ratio == 0):
            raise ValueError("online_distill_states 'offline' needs offline rows in online batches (mixing_ratio > 0) "
                             f"and sampler 'sync'; got mixing_ratio {self.mixing_ratio}, sampler {self.sampler!r}")
        if 0 < self.online_env_steps <= self.warmup_env_steps:
            raise ValueError(f"warmup_env_steps ({self.warmup_env_steps}) must be below online_env_steps "
                             f"({self.online_env_steps}): no online update would ever run")
        if not 0 <= self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if not 0 <= self.mixing_ratio <= 1:
            raise ValueError(f"mixing_ratio must be in [0, 1], got {self.mixing_ratio}")
        if not (np.isfinite(self.reward_scale) and np.isfinite(self.reward_bias)):
            raise ValueError(f"reward_scale and reward_bias must be finite, got {self.reward_scale}, {self.reward_bias}")
        require(self, "checkpoint_minutes", at_least=0)


@dataclass
class TrainResult:
    summary: dict[str, Any]
    evaluations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Progress:
    """Where a run stands; with the RNG states it is what a checkpoint must restore exactly."""

    phase: str = "bc"  # the phase under way (PHASES), "done" at the end
    step: int = 0  # updates (bc, offline) or env steps (online) done in that phase
    updates: int = 0
    env_steps: int = 0
    episodes: int = 0  # online episodes collected
    elapsed_s: float = 0.0  # wall clock of earlier sessions of this run


class EnvironmentFault(RuntimeError):
    """The environment raised or returned non-finite values during online training."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def transform_rewards(episodes: Sequence[Episode], scale: float, bias: float) -> list[Episode]:
    if scale == 1.0 and bias == 0.0:
        return list(episodes)
    return [dataclasses.replace(e, rewards=(scale * e.rewards + bias).astype(np.float32)) for e in episodes]


def _describe(spec: ObsSpec) -> int | dict[str, tuple[str, tuple[int, ...]]]:
    """An observation spec as its keys' kinds and shapes, for messages."""
    return spec if isinstance(spec, int) else {key: (f.kind, f.shape) for key, f in spec.items()}


def adapt_env(env: gym.Env, obs_spec: ObsSpec) -> gym.Env:
    """An env with raw mapping observations (Dict, Text, images) wrapped to give them in the agent's form;
    refused at once when its observations have other keys or shapes than the data's (not at the first step)."""
    if isinstance(obs_spec, dict) and env.observation_space != space_of_spec(obs_spec):
        try:
            raw = spec_of_space(env.observation_space)
        except ValueError as error:
            raise DataError(f"the environment's observations cannot be used: {error}") from error
        if raw != obs_spec:
            raise DataError(f"the environment's observations {_describe(raw)} do not match the data's "
                            f"{_describe(obs_spec)}; use data recorded in this env")
        return SpecObservation(env, obs_spec)
    return env


def check_env(env: gym.Env, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray) -> None:
    """The environment must offer the spaces the data and the agent were built for."""
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(action_space, gym.spaces.Box) or action_space.shape != (len(action_low),):
        raise DataError(f"the environment's action space {action_space} does not match the data's "
                        f"{len(action_low)}-d Box actions; pa-rl needs a 1-d Box and data recorded in this env")
    if not (np.allclose(action_space.low, action_low, atol=1e-6) and np.allclose(action_space.high, action_high,
                                                                                 atol=1e-6)):
        raise DataError(f"the environment's action bounds [{action_space.low}, {action_space.high}] differ from the "
                        f"data's [{action_low}, {action_high}]; use data recorded in this env")
    if isinstance(obs_spec, dict):
        if obs_space != space_of_spec(obs_spec):
            raise DataError(f"the environment's observation space {obs_space} does not match the data's "
                            f"{space_of_spec(obs_spec)}; use data recorded in this env")
    elif not isinstance(obs_space, gym.spaces.Box) or obs_space.shape != (obs_spec,):  # not flatdim: (64, 64, 3)
        raise DataError(f"the environment's observation space {obs_space} does not match the data's {obs_spec}-d "
                        "observations; flatten Dict observations of vectors (gymnasium.wrappers.FlattenObservation) "
                        "and use data recorded in this env")


# Fields that decide how the same numbers are computed, not which run this is: a run may resume with others.
HOW_NOT_WHAT = {"train": ("sampler", "sampler_max_staleness"), "agent": ("compile_critic",)}


def configs_of(agent: Agent, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed by this agent and config."""
    policy_config = getattr(agent.policy, "config", None)
    train = to_jsonable(dataclasses.replace(config, progress=True))
    return identity({"agent": to_jsonable(agent.config), "train": train,
                     "policy": {"class": type(agent.policy).__name__, "config": to_jsonable(policy_config)}})


def identity(configs: dict[str, Any]) -> dict[str, Any]:
    """``configs`` (a ``configs_of`` tree, maybe a checkpoint's) without the ``HOW_NOT_WHAT`` fields."""
    return {part: {key: value for key, value in tree.items() if key not in HOW_NOT_WHAT.get(part, ())}
            for part, tree in configs.items()}


def to_jsonable(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists, paths to strings: the form configs are stored and compared in."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def declared_defaults(config: Any) -> Any:
    """The ``to_jsonable`` tree of a dataclass's declared field defaults, nested dataclasses recursed.
    A checkpoint written before a field existed is read as having used its default: a new field must
    default to the behaviour from before it, so such a checkpoint stays resumable."""
    if not dataclasses.is_dataclass(config):
        return None
    defaults = {}
    for f in dataclasses.fields(config):
        if dataclasses.is_dataclass(value := getattr(config, f.name)):
            defaults[f.name] = declared_defaults(value)
        elif f.default is not dataclasses.MISSING:
            defaults[f.name] = to_jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = to_jsonable(f.default_factory())
    return defaults


def differences(saved: Any, current: Any, defaults: Any = None, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two ``to_jsonable`` trees differ; a field ``saved`` lacks is read
    from ``defaults`` (a ``declared_defaults`` tree) where that has it."""
    if isinstance(saved, dict) and isinstance(current, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        return [d for key in sorted(set(saved) | set(current))
                for d in differences(saved[key] if key in saved else defaults.get(key), current.get(key),
                                     defaults.get(key), f"{prefix}{key}.")]
    return [] if saved == current else [f"{prefix[:-1]} (checkpoint {saved!r}, now {current!r})"]


class Trainer:
    """Runs the phases for one agent, checkpointing as it goes; ``train`` is the one-call front door.

    With a ``run_dir`` it writes metrics there and checkpoints to ``run_dir/checkpoints``; with
    ``resume=True`` it continues from the newest valid checkpoint there, and a resumed run on
    CPU produces the same metrics as an uninterrupted one.

    ``make_env=None`` trains on recorded data alone (BC and offline RL; e.g. a LeRobotDataset, which
    records no environment): evaluations then measure only what needs no rollout, the critic's
    calibration on held-out episodes, and never report a success or return.
    """

    def __init__(self, agent: Agent, episodes: Sequence[Episode], make_env: Callable[[], gym.Env] | None,
                 config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> None:
        if make_env is None and config.online_env_steps:
            raise ValueError(f"online fine-tuning (online_env_steps={config.online_env_steps}) needs an environment, "
                             "and these data come without one (a LeRobotDataset or another data set that records "
                             "none, or make_env=None): train BC and offline RL only with --train.online-env-steps 0 "
                             "(Python: TrainConfig(online_env_steps=0))")
        self.agent, self.config = agent, config
        self.make_env = None if make_env is None else lambda: adapt_env(make_env(), agent.obs_spec)
        low, high = agent.action_low.cpu().numpy(), agent.action_high.cpu().numpy()
        check_episodes(episodes, agent.obs_spec, low, high, chunk=agent.config.chunk)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoints = CheckpointStore(self.run_dir / "checkpoints", config.keep_checkpoints) if run_dir else None
        if self.run_dir is not None and not resume and (self.run_dir / "metrics.csv").exists():
            raise RunError(f"{self.run_dir} already holds a run; resume it or use a new folder")
        if resume and self.checkpoints is None:
            raise ValueError("resume=True needs the run_dir of the run to resume")
        if agent.config.conservative_states == "data" and config.online_env_steps and config.mixing_ratio == 0:
            raise ValueError("conservative_states 'data' needs offline-data rows in online batches: mixing_ratio > 0")
        self._eval_envs: list[gym.Env] = []
        if self.make_env is not None:
            self._eval_envs = [self.make_env() for _ in range(min(config.eval_episodes, config.eval_parallel))]
            check_env(self._eval_envs[0], agent.obs_spec, low, high)
        chunk_dim = len(agent.chunk_low)
        # Never more slots than the online phase can fill: each step takes at most two (its own, an episode end).
        online_slots = min(config.online_buffer_size, 2 * config.online_env_steps) or 2
        if config.online_env_steps:
            size = check_buffer_fits(online_slots, agent.obs_spec, chunk_dim, agent.device)
            log.info("online replay buffer: %s slots × %s bytes = %.1f MB on %s", f"{online_slots:,}",
                     f"{ReplayBuffer.bytes_per_slot(agent.obs_spec, chunk_dim):,}", size / 1e6, agent.device)
        seed_everything(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        episodes = transform_rewards(episodes, config.reward_scale, config.reward_bias)
        gamma = agent.config.gamma
        self.floor_reward = min(float(e.rewards.min()) for e in episodes if len(e))
        episodes, held_out = split_held_out(episodes, config.held_out_fraction, config.seed)
        if agent.config.standardize_observations and not agent.standardization_fitted:
            agent.fit_standardization(vector_rows(episodes, agent.obs_spec))  # a resume then loads the same
        horizon, chunk = agent.config.horizon, agent.config.chunk
        self.offline = ReplayBuffer.from_episodes(episodes, gamma, device=agent.device, floor_reward=self.floor_reward,
                                                  horizon=horizon, chunk=chunk, obs_spec=agent.obs_spec)
        self.diagnostic = CriticDiagnostic(held_out, gamma, self.floor_reward, seed=config.seed, chunk=chunk)
        if self.make_env is None and self.diagnostic.held_out is None:
            log.warning("no environment and no held-out episodes (held_out_fraction %g of %d episodes): this run "
                        "measures nothing but its training losses; raise held_out_fraction to check its critic",
                        config.held_out_fraction, len(episodes) + len(held_out))
        self._diagnostic_envs: list[gym.Env] = []
        self.online = ReplayBuffer(online_slots, agent.obs_spec, chunk_dim, agent.device, horizon, chunk)
        self.progress = Progress()
        self.summary: dict[str, Any] = {}
        self.offline_cache: dict[str, torch.Tensor] | None = None  # a checkpoint's policy-sample cache, to restore
        self.sampler: AsyncSampler | None = None  # --train.sampler async, during a phase that uses it
        checkpoint = self._load_checkpoint() if resume else None
        if checkpoint is None:  # a resume with nothing to resume from clears what the run had logged
            self.logger = MetricsLogger(run_dir, step=0 if resume else None)
        else:
            self.logger = MetricsLogger(run_dir, checkpoint["metrics_rows"], checkpoint["evaluations"],
                                        checkpoint["progress"]["updates"])
            self._restore(checkpoint)
        self._session_start = self._last_checkpoint = time.perf_counter()

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        import pa_rl

        optimizers = {name: value.state_dict() for name, value in vars(self.agent).items()
                      if isinstance(value, torch.optim.Optimizer)}
        return {
            "pa_rl_version": pa_rl.__version__, "configs": configs_of(self.agent, self.config),
            "progress": dataclasses.asdict(self._progress_now()), "summary": self.summary,
            "agent": self.agent.state_dict(), "optimizers": optimizers,
            "bc_steps_done": self.agent.bc_steps_done,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": _numpy_state_to_tensors(np.random.get_state()), "python": random.getstate()},
            "offline_cache": self.offline.policy_cache(),
            "online_buffer": self.online.state_dict(),
            "metrics_rows": self.logger.rows, "evaluations": self.logger.evaluations,
        }

    def save_checkpoint(self) -> Path | None:
        self._last_checkpoint = time.perf_counter()
        return None if self.checkpoints is None else self.checkpoints.save(self.state_dict())

    def _checkpoint_due(self) -> bool:
        """By wall clock, so a phase shorter than ``checkpoint_every`` is not lost whole to a kill. A checkpoint
        only reads the run's state, so when one is written does not change what the run computes."""
        minutes = self.config.checkpoint_minutes
        return minutes > 0 and time.perf_counter() - self._last_checkpoint >= 60 * minutes

    def _load_checkpoint(self) -> dict[str, Any] | None:
        import pa_rl

        found = self.checkpoints.load_latest()
        if found is None:
            log.warning("no readable checkpoint in %s: restarting the run from the beginning",
                        self.checkpoints.directory)
            return None
        path, checkpoint = found
        if checkpoint["pa_rl_version"] != pa_rl.__version__:
            raise CheckpointError(f"{path} was written by pa-rl {checkpoint['pa_rl_version']}, this is "
                                  f"{pa_rl.__version__}: resume with that version, or start a new run")
        defaults = {"agent": declared_defaults(self.agent.config), "train": declared_defaults(self.config),
                    "policy": {"config": declared_defaults(getattr(self.agent.policy, "config", None))}}
        changed = differences(identity(checkpoint["configs"]), configs_of(self.agent, self.config), defaults)
        if changed:
            raise CheckpointError(f"{path} was written with another config: {'; '.join(changed[:5])}. Resume with "
                                  "the run's own config (pa-rl train --resume RUN), or start a new run")
        log.warning("resuming from %s (%s, step %d)", path, checkpoint["progress"]["phase"],
                    checkpoint["progress"]["step"])
        return checkpoint

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.agent.load_state_dict(checkpoint["agent"])
        for name, state in checkpoint["optimizers"].items():
            getattr(self.agent, name).load_state_dict(state)
        self.agent.bc_steps_done = checkpoint["bc_steps_done"]
        self.online.load_state_dict(checkpoint["online_buffer"])
        self.progress = Progress(**checkpoint["progress"])
        self.summary = checkpoint["summary"]
        self.offline_cache = checkpoint["offline_cache"]
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["generator"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
        random.setstate(rng["python"])

    def _progress_now(self) -> Progress:
        return dataclasses.replace(self.progress, elapsed_s=self.progress.elapsed_s
                                   + time.perf_counter() - self._session_start)

    # ---- helpers --------------------------------------------------------------------------------
    @property
    def pa_rl(self) -> bool:
        """PA-RL's distillation (not one of the class-specific baselines)."""
        return self.agent.config.policy_improvement == "distill"

    @property
    def offline_policy_every(self) -> int:
        """Offline updates per policy step (0 = the policy stays frozen offline)."""
        return self.config.offline_distill_every or (0 if self.pa_rl else 1)

    def _reward(self, reward: float) -> float:
        """An env reward as training sees it (the data's rewards are transformed the same way)."""
        return self.config.reward_scale * reward + self.config.reward_bias

    @property
    def collect_mode(self) -> ActMode:
        return self.config.collect_mode or ("argmax" if self.pa_rl else "policy")

    def _batch_index(self) -> list[tuple[ReplayBuffer, torch.Tensor]]:
        """The next batch's slots: offline data only, or online the two buffers at the mixing ratio."""
        size = self.config.batch_size
        if len(self.online) == 0:
            return [(self.offline, self.offline.draw_index(size, self.generator))]
        return [(self.offline, self.offline.draw_index(self._offline_rows, self.generator)),
                (self.online, self.online.draw_index(size - self._offline_rows, self.generator))]

    @property
    def _offline_rows(self) -> int:
        """How many rows of a mixed online batch come from the offline data (they come first)."""
        return round(self.config.batch_size * self.config.mixing_ratio)

    def _batch(self) -> Batch:
        return batch_of(self._batch_index()) if self.sampler is None else self.sampler.batch()

    @contextlib.contextmanager
    def _sampling(self) -> Iterator[None]:
        """The async sampler for a phase whose policy changes (none with ``sampler sync``, nor when no
        update draws policy samples: IQL with a baseline actor); its worker ends with the phase, however
        the phase ends."""
        agent = self.agent
        if self.config.sampler == "sync" or (agent.config.objective == "iql" and not self.pa_rl):
            yield
            return
        with AsyncSampler(agent.policy, agent.config.optimizer.num_samples, agent.action_shape,
                          [self.offline, self.online], self.config.sampler_max_staleness, agent.device) as sampler:
            self.sampler = sampler
            try:
                yield
            finally:
                self.sampler = None

    def _bar(self, total: int, desc: str) -> tqdm:
        return progress_bar(total, desc, self.config.progress, self.progress.step, dynamic_ncols=True, leave=False)

    def evaluate(self, phase: str) -> dict[str, float]:
        """Success and return of the PA-RL policy π̂ (argmax; not after BC, whose critic is untrained), of
        one raw sample of the base policy and, for classes that have one (the Gaussian), of its
        deterministic action; once a critic is being trained, the critic diagnostic too
        (:mod:`pa_rl.diagnostics`). Without an environment only the diagnostic's held-out calibration:
        nothing else can be measured."""
        cfg = self.config
        seeds = [10_000 + cfg.seed * 1_000 + i for i in range(cfg.eval_episodes)]
        metrics: dict[str, float] = {}
        modes: list[tuple[str, ActMode]] = [] if phase == "bc" else [("pa_rl", "argmax")]
        modes.append(("policy", "policy"))
        if self.agent.has_deterministic_action:
            modes.append(("deterministic", "deterministic"))
        for label, mode in modes if self.make_env is not None else ():
            result = evaluate(self._eval_envs, lambda obs, mode=mode: self.agent.act(obs, mode).cpu().numpy(), seeds,
                              cfg.max_episode_steps)
            metrics.update({f"eval/{label}_{key}": value for key, value in result.items()})
        if phase != "bc":
            metrics.update(self.diagnose())
        self.logger.log_evaluation(phase, self.progress.updates, self.progress.env_steps, metrics)
        return metrics

    def diagnose(self) -> dict[str, float]:
        """The critic's calibration on held-out episodes and, with an environment, its ranking by rollout."""
        cfg = self.config
        metrics = self.diagnostic.calibration(self.agent)
        if cfg.diagnostic_pairs and self.make_env is not None:
            if not self._diagnostic_envs:
                self._diagnostic_envs = [self.make_env() for _ in range(2 * cfg.diagnostic_pairs)]
            seeds = [20_000 + cfg.seed * 1_000 + i for i in range(cfg.diagnostic_pairs)]
            metrics.update(self.diagnostic.ranking(self.agent, self._diagnostic_envs, seeds, cfg.max_episode_steps,
                                                   self._reward, self.collect_mode))
        return metrics

    def _step_done(self, phase: str, metrics: dict[str, torch.Tensor], bar: tqdm | None) -> None:
        """Count one update of an update-driven phase; evaluate and checkpoint when they are due."""
        self._after_update(phase, metrics, bar)
        progress, cfg = self.progress, self.config
        progress.step += 1
        budget = cfg.bc_steps if phase == "bc" else cfg.offline_steps
        if phase == "offline" and progress.step % cfg.eval_every == 0 and progress.step < budget:
            bar.set_postfix(self.evaluate("offline"))
        if progress.step % cfg.checkpoint_every == 0 or self._checkpoint_due():
            self.save_checkpoint()

    # ---- phases ---------------------------------------------------------------------------------
    def behaviour_cloning(self) -> None:
        with self._bar(self.config.bc_steps, "bc") as bar:
            while self.progress.step < self.config.bc_steps:
                metrics = self.agent.bc_update(self.offline.sample(self.config.batch_size, self.generator))
                self._step_done("bc", metrics, bar)

    def offline_rl(self) -> None:
        cfg = self.config
        every = self.offline_policy_every
        frozen_cache = cfg.cache_policy_samples and every == 0 and len(self.online) == 0
        if frozen_cache:
            self.offline.cache_policy_samples(self.agent.sample_policy)
            if self.offline_cache is not None:  # a resumed phase continues with the draws made before
                self.offline.load_policy_cache(self.offline_cache)
                self.offline_cache = None
        if self.progress.step == 0 and cfg.critic_return_fit_steps:
            # Not counted as updates: a kill here resumes from the phase's start and redoes them exactly.
            for _ in range(cfg.critic_return_fit_steps):
                metrics = self.agent.fit_returns(self.offline.sample(cfg.batch_size, self.generator))
            self.agent.sync_target()
            self.logger.log("offline", self.progress.updates, self.progress.env_steps, metrics)
        sampling = contextlib.nullcontext() if frozen_cache else self._sampling()  # the exact cache needs none
        try:
            with sampling, self._bar(cfg.offline_steps, "offline") as bar:
                if self.sampler is not None:
                    self.sampler.begin(self._batch_index, cfg.offline_steps - self.progress.step)
                while self.progress.step < cfg.offline_steps:
                    distill = every > 0 and (self.progress.step + 1) % every == 0
                    metrics = self.agent.update(self._batch(), distill=distill)
                    if distill and self.sampler is not None:
                        self.sampler.publish()
                    self._step_done("offline", metrics, bar)
        finally:
            self.offline.drop_policy_samples()

    def online_rl(self) -> None:
        """Collect whole episodes, update after each; checkpoint at episode ends (an env cannot be saved mid-episode)."""
        cfg = self.config
        env = self.make_env()
        try:
            check_env(env, self.agent.obs_spec, self.agent.action_low.cpu().numpy(),
                      self.agent.action_high.cpu().numpy())
            with self._sampling(), self._bar(cfg.online_env_steps, "online") as bar:
                while self.progress.step < cfg.online_env_steps:
                    before = self.progress.step
                    episode = self._collect_episode(env, bar)
                    self._store_episode(episode)
                    if self.progress.step >= cfg.warmup_env_steps:
                        self._online_updates(len(episode))
                    crossed = before // cfg.checkpoint_every < self.progress.step // cfg.checkpoint_every
                    if crossed or self._checkpoint_due():
                        self.save_checkpoint()
        finally:
            env.close()

    def _store_episode(self, episode: Episode) -> None:
        slots = self.online.add_episode(episode, self.agent.config.gamma, self.floor_reward)
        if self.sampler is not None:
            self.sampler.forget(self.online, slots)
        self.progress.episodes += 1
        self.logger.log("online", self.progress.updates, self.progress.env_steps,
                        {"online/episode_return": float(episode.rewards.sum()), "online/buffer_size": len(self.online)})

    def _collect_episode(self, env: gym.Env, bar: tqdm) -> Episode:
        """One episode of at most ``max_episode_steps``, cut at the phase's budget; evaluates when due.

        Each episode's reset seed is derived from the run seed and the episode index, so a resumed
        run meets the same episodes. If the env raises or returns a non-finite observation or
        reward, the steps before the fault are kept as a truncated episode, a checkpoint is
        written and :class:`EnvironmentFault` is raised.
        """
        cfg, progress = self.config, self.progress
        try:
            obs, _ = env.reset(seed=1_000_000 * (cfg.seed + 1) + progress.episodes)
        except Exception as error:
            raise self._fault(None, f"env.reset raised {type(error).__name__}: {error}") from error
        recorder = EpisodeRecorder(as_stored(obs))
        while True:  # a chunk of actions per decision, executed open-loop (one action without chunks)
            plan = self.agent.act(recorder.observations[-1], self.collect_mode).cpu().numpy()
            for action in plan.reshape(-1, self.agent.action_dim):
                try:
                    obs, reward, terminated, truncated, _ = env.step(action)
                except Exception as error:
                    raise self._fault(recorder, f"env.step raised {type(error).__name__}: {error}") from error
                obs = as_stored(obs)
                if not (finite(obs) and np.isfinite(reward)):
                    raise self._fault(recorder, f"env.step returned a non-finite observation or reward ({reward})")
                progress.step += 1
                progress.env_steps += 1
                truncated = (truncated or len(recorder) + 1 >= cfg.max_episode_steps
                             or progress.step == cfg.online_env_steps)
                recorder.add(action, self._reward(float(reward)), obs, terminated, truncated)
                bar.update(1)
                if progress.step % cfg.online_eval_every == 0 and progress.step < cfg.online_env_steps:
                    bar.set_postfix(self.evaluate("online"))
                if terminated or truncated:
                    return recorder.episode()

    def _fault(self, recorder: EpisodeRecorder | None, what: str) -> EnvironmentFault:
        """Keep the steps before the fault as a truncated episode, checkpoint, and describe it all."""
        kept, episode_index = 0, self.progress.episodes
        if recorder is not None and len(recorder):
            recorder.truncations[-1] = True
            episode = recorder.episode()
            self._store_episode(episode)
            kept = len(episode)
        path = self.save_checkpoint()
        where = f"checkpoint {path} was written; resume with `pa-rl train --resume RUN`" if path else "no run_dir"
        return EnvironmentFault(f"{what} at online env step {self.progress.env_steps + 1} (episode {episode_index}); "
                                f"the {kept} steps before it were kept as a truncated episode and the faulty step "
                                f"dropped; {where}")

    def _online_updates(self, new_steps: int) -> None:
        cfg = self.config
        critic_updates = round(new_steps * cfg.online_critic_utd)
        distill_updates = round(new_steps * (cfg.online_distill_utd if self.pa_rl else cfg.online_critic_utd))
        if self.progress.step < cfg.online_distill_start:  # the critic learns the new data first
            distill_updates = 0
        if self.sampler is not None:
            self.sampler.begin(self._batch_index, max(critic_updates, distill_updates))
        rows = self._offline_rows
        for i in range(max(critic_updates, distill_updates)):
            if self.config.online_distill_states == "offline" and i < distill_updates:
                parts = self._batch_index()
                metrics = self.agent.update(batch_of(parts), False, rows) if i < critic_updates else {}
                metrics.update(self.agent.distill(batch_of(parts[:1])))
                self._after_update("online", metrics, None)
                continue
            batch = self._batch()
            if i < critic_updates:
                metrics = self.agent.update(batch, i < distill_updates, rows)
            else:
                metrics = self.agent.distill(batch, rows)
            self._after_update("online", metrics, None)
        if self.sampler is not None and distill_updates:  # the end of a distillation block
            self.sampler.publish()

    def _after_update(self, phase: str, metrics: dict[str, torch.Tensor], bar: tqdm | None) -> None:
        self.progress.updates += 1
        if self.sampler is not None:  # the share of the batch served from the cache, and its staleness
            metrics = {**metrics, **self.sampler.metrics}
        if self.progress.updates % self.config.log_every == 0:
            self.logger.log(phase, self.progress.updates, self.progress.env_steps, metrics)
            if bar is not None:
                bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in metrics.items()}, refresh=False)
        if bar is not None:
            bar.update(1)

    def run(self) -> TrainResult:
        """BC → offline RL → online fine-tuning, from wherever the run stands; phases with a zero budget are skipped.

        Each phase ends with an evaluation, then a checkpoint that starts the next phase.
        """
        cfg = self.config
        phases = {"bc": (cfg.bc_steps, self.behaviour_cloning), "offline": (cfg.offline_steps, self.offline_rl),
                  "online": (cfg.online_env_steps, self.online_rl)}
        try:
            for name, (budget, phase) in phases.items():
                if PHASES.index(name) < PHASES.index(self.progress.phase):
                    continue
                if budget:
                    phase()
                    self.summary[name] = self.evaluate(name)
                self.progress = dataclasses.replace(self.progress, phase=PHASES[PHASES.index(name) + 1], step=0)
                self.save_checkpoint()
            progress = self._progress_now()
            # Whether success, return and the ranking by rollout were measured at all (summary[phase] holds what was).
            self.summary.update({"environment": self.make_env is not None,
                                 "wall_clock_s": progress.elapsed_s, "updates": progress.updates,
                                 "env_steps": progress.env_steps,
                                 "updates_per_s": progress.updates / progress.elapsed_s if progress.elapsed_s else 0.0})
            if self.run_dir is not None:
                write_atomically(self.run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(self.summary,
                                                                                                     indent=2)))
        finally:
            self.logger.close()
            for env in self._eval_envs + self._diagnostic_envs:
                env.close()
        return TrainResult(self.summary, self.logger.evaluations)


def as_stored(obs: object) -> np.ndarray | dict[str, np.ndarray]:
    """An env observation as episodes store it: float32 vectors, mappings as they come (already in spec form)."""
    return dict(obs) if isinstance(obs, dict) else np.asarray(obs, dtype=np.float32)


def finite(obs: object) -> bool:
    """No NaN or inf in any float array of an observation."""
    arrays = obs.values() if isinstance(obs, dict) else [obs]
    return all(np.isfinite(a).all() for a in arrays if np.issubdtype(np.asarray(a).dtype, np.floating))


def _numpy_state_to_tensors(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor (checkpoints load with weights_only=True)."""
    return (state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:])


def _numpy_state_from_tensors(state: tuple) -> tuple:
    return (state[0], state[1].numpy().astype(np.uint32), *state[2:])


def train(agent: Agent, episodes: Sequence[Episode], make_env: Callable[[], gym.Env] | None = None,
          config: TrainConfig | None = None, run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Pre-train ``agent.policy`` by BC on ``episodes``, then offline PA-RL, then online fine-tuning
    in envs from ``make_env``; returns the summary and every evaluation. ``resume=True`` continues
    the run in ``run_dir`` from its newest valid checkpoint. Without ``make_env`` (data that record
    no environment) the run needs ``online_env_steps=0`` and evaluates the critic's held-out calibration only."""
    return Trainer(agent, episodes, make_env, config or TrainConfig(), run_dir, resume).run()
