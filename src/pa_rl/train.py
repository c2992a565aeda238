"""The three phases: behaviour cloning, offline RL, online fine-tuning, with periodic evaluation."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from pa_rl.agent import ActMode, Agent
from pa_rl.buffer import Batch, ReplayBuffer
from pa_rl.data.episodes import Episode, EpisodeRecorder
from pa_rl.evaluation import evaluate
from pa_rl.logging import MetricsLogger


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 256
    bc_steps: int = 20_000  # behaviour-cloning updates of the policy
    offline_steps: int = 20_000  # offline critic updates
    online_env_steps: int = 20_000  # environment steps of online fine-tuning
    offline_distill_every: int = 0  # distil every K offline updates; 0 = off (reference code)
    cache_policy_samples: bool = True  # while the policy is frozen offline, draw its samples once
    online_critic_utd: float = 1.0  # critic updates per new env step
    online_distill_utd: float = 1.0  # distillation updates per new env step
    mixing_ratio: float = 0.5  # share of each online-phase batch drawn from the offline data
    warmup_episodes: int = 2  # online episodes collected before the first online update
    online_buffer_size: int = 1_000_000
    collect_mode: ActMode = "argmax"
    eval_every: int = 5_000  # offline updates / online env steps between evaluations
    eval_episodes: int = 20
    eval_parallel: int = 20  # episodes stepped in lockstep (one batched act per step)
    max_episode_steps: int = 1_000  # cap for envs without a time limit of their own
    reward_scale: float = 1.0  # r' = reward_scale · r + reward_bias, for data and env alike
    reward_bias: float = 0.0
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_episodes", "eval_parallel", "max_episode_steps", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("bc_steps", "offline_steps", "online_env_steps", "offline_distill_every", "warmup_episodes",
                     "online_critic_utd", "online_distill_utd"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.mixing_ratio <= 1:
            raise ValueError(f"mixing_ratio must be in [0, 1], got {self.mixing_ratio}")


@dataclass
class TrainResult:
    summary: dict[str, Any]
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def transform_rewards(episodes: Sequence[Episode], scale: float, bias: float) -> list[Episode]:
    if scale == 1.0 and bias == 0.0:
        return list(episodes)
    return [dataclasses.replace(e, rewards=(scale * e.rewards + bias).astype(np.float32)) for e in episodes]


class Trainer:
    """Runs the phases for one agent; ``train`` is the one-call front door."""

    def __init__(self, agent: Agent, episodes: Sequence[Episode], make_env: Callable[[], gym.Env],
                 config: TrainConfig, run_dir: str | Path | None = None) -> None:
        self.agent, self.config, self.make_env = agent, config, make_env
        seed_everything(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        episodes = transform_rewards(episodes, config.reward_scale, config.reward_bias)
        gamma = agent.config.gamma
        self.offline = ReplayBuffer.from_episodes(episodes, gamma, device=agent.device)
        self.floor_reward = min(float(e.rewards.min()) for e in episodes if len(e))
        self.online = ReplayBuffer(config.online_buffer_size, agent.obs_dim, agent.action_dim, agent.device)
        self.logger = MetricsLogger(run_dir)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.updates = 0
        self.env_steps = 0
        self._eval_envs: list[gym.Env] | None = None

    # ---- helpers --------------------------------------------------------------------------------
    def _batch(self) -> Batch:
        size = self.config.batch_size
        if len(self.online) == 0:
            return self.offline.sample(size, self.generator)
        n_offline = round(size * self.config.mixing_ratio)
        parts = [self.offline.sample(n_offline, self.generator), self.online.sample(size - n_offline, self.generator)]
        return Batch.cat([p for p in parts if len(p)])

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, disable=not self.config.progress, dynamic_ncols=True, leave=False)

    def evaluate(self, phase: str, modes: Sequence[tuple[str, ActMode]] = (("pa_rl", "argmax"), ("policy", "policy"))
                 ) -> dict[str, float]:
        """Success and return of the PA-RL policy π̂ (argmax) and of the raw base policy."""
        cfg = self.config
        if self._eval_envs is None:
            self._eval_envs = [self.make_env() for _ in range(min(cfg.eval_episodes, cfg.eval_parallel))]
        seeds = [10_000 + cfg.seed * 1_000 + i for i in range(cfg.eval_episodes)]
        metrics: dict[str, float] = {}
        for label, mode in modes:
            result = evaluate(self._eval_envs, lambda obs, mode=mode: self.agent.act(obs, mode).cpu().numpy(), seeds,
                              cfg.max_episode_steps)
            metrics.update({f"eval/{label}_{key}": value for key, value in result.items()})
        self.logger.log_evaluation(phase, self.updates, self.env_steps, metrics)
        return metrics

    # ---- phases ---------------------------------------------------------------------------------
    def behaviour_cloning(self) -> None:
        with self._bar(self.config.bc_steps, "bc") as bar:
            for _ in range(self.config.bc_steps):
                metrics = self.agent.bc_update(self.offline.sample(self.config.batch_size, self.generator))
                self._after_update("bc", metrics, bar)

    def offline_rl(self) -> None:
        cfg = self.config
        if cfg.cache_policy_samples and cfg.offline_distill_every == 0 and len(self.online) == 0:
            self.offline.cache_policy_samples(self.agent.sample_policy, progress=cfg.progress)
        try:
            self._offline_updates()
        finally:
            self.offline.drop_policy_samples()

    def _offline_updates(self) -> None:
        cfg = self.config
        with self._bar(cfg.offline_steps, "offline") as bar:
            for step in range(1, cfg.offline_steps + 1):
                distill = cfg.offline_distill_every > 0 and step % cfg.offline_distill_every == 0
                self._after_update("offline", self.agent.update(self._batch(), distill=distill), bar)
                if step % cfg.eval_every == 0 and step < cfg.offline_steps:
                    bar.set_postfix(self.evaluate("offline"))

    def online_rl(self) -> None:
        cfg = self.config
        env = self.make_env()
        obs, _ = env.reset(seed=cfg.seed)
        recorder = EpisodeRecorder(obs)
        episodes = 0
        with self._bar(cfg.online_env_steps, "online") as bar:
            for step in range(1, cfg.online_env_steps + 1):
                action = self.agent.act(np.asarray(obs, dtype=np.float32), cfg.collect_mode).cpu().numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                self.env_steps += 1
                truncated = truncated or len(recorder) + 1 >= cfg.max_episode_steps
                recorder.add(action, cfg.reward_scale * reward + cfg.reward_bias, obs, terminated, truncated)
                bar.update(1)
                if terminated or truncated or step == cfg.online_env_steps:
                    episode = recorder.episode()
                    self.online.add_episode(episode, self.agent.config.gamma, self.floor_reward)
                    episodes += 1
                    self.logger.log("online", self.updates, self.env_steps,
                                    {"online/episode_return": float(episode.rewards.sum())})
                    if episodes > cfg.warmup_episodes:
                        self._online_updates(len(episode))
                    obs, _ = env.reset()
                    recorder = EpisodeRecorder(obs)
                if step % cfg.eval_every == 0 and step < cfg.online_env_steps:
                    bar.set_postfix(self.evaluate("online"))
        env.close()

    def _online_updates(self, new_steps: int) -> None:
        critic_updates = round(new_steps * self.config.online_critic_utd)
        distill_updates = round(new_steps * self.config.online_distill_utd)
        for i in range(max(critic_updates, distill_updates)):
            batch = self._batch()
            if i < critic_updates:
                metrics = self.agent.update(batch, distill=i < distill_updates)
            else:
                metrics = self.agent.distill(batch)
            self._after_update("online", metrics, None)

    def _after_update(self, phase: str, metrics: dict[str, float], bar: tqdm | None) -> None:
        self.updates += 1
        if self.updates % self.config.log_every == 0:
            self.logger.log(phase, self.updates, self.env_steps, metrics)
            if bar is not None:
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
        if bar is not None:
            bar.update(1)

    def run(self) -> TrainResult:
        """BC → offline RL → online fine-tuning; phases with a zero budget are skipped."""
        cfg, start = self.config, time.perf_counter()
        summary: dict[str, Any] = {}
        if cfg.bc_steps:
            self.behaviour_cloning()
            summary["bc"] = self.evaluate("bc", modes=(("policy", "policy"),))
        if cfg.offline_steps:
            self.offline_rl()
            summary["offline"] = self.evaluate("offline")
        if cfg.online_env_steps:
            self.online_rl()
            summary["online"] = self.evaluate("online")
        elapsed = time.perf_counter() - start
        summary.update({"wall_clock_s": elapsed, "updates": self.updates, "env_steps": self.env_steps,
                        "updates_per_s": self.updates / elapsed if elapsed else 0.0})
        if self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.logger.close()
        for env in self._eval_envs or []:
            env.close()
        return TrainResult(summary, self.logger.evaluations)


def train(agent: Agent, episodes: Sequence[Episode], make_env: Callable[[], gym.Env],
          config: TrainConfig | None = None, run_dir: str | Path | None = None) -> TrainResult:
    """Pre-train ``agent.policy`` by BC on ``episodes``, then offline PA-RL, then online fine-tuning
    in envs from ``make_env``; returns the summary and every evaluation."""
    return Trainer(agent, episodes, make_env, config or TrainConfig(), run_dir).run()
