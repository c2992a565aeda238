"""Transitions in preallocated tensors, and the Monte-Carlo return lower bounds Cal-QL needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from pa_rl.data.episodes import Episode


@dataclass
class Batch:
    obs: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, action_dim]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, obs_dim]
    terminals: torch.Tensor  # [B] float, 1 where no bootstrapping
    mc_returns: torch.Tensor  # [B]
    discounts: torch.Tensor  # [B] γ^k, k the env steps the reward sum covers (k = n_step but at episode ends)
    # Draws of a frozen policy at obs and next_obs, [B, N, action_dim], when the buffer caches them.
    policy_samples: torch.Tensor | None = None
    next_policy_samples: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """Concatenate; cached samples survive only if every part has them."""
        columns = {}
        for f in fields(Batch):
            parts = [getattr(b, f.name) for b in batches]
            columns[f.name] = None if any(p is None for p in parts) else torch.cat(parts)
        return Batch(**columns)


def monte_carlo_returns(rewards: np.ndarray, gamma: float, terminated: bool, floor_reward: float) -> np.ndarray:
    """Discounted return-to-go of one episode, a lower bound on the behaviour policy's Q.

    An episode cut by a time limit (not ``terminated``) continues past its end; its unseen tail is
    bounded below by earning ``floor_reward`` (the data's smallest reward) forever, so the bound
    stays a bound for negative rewards too (this is Cal-QL's r_min / (1 − γ) rule for failed
    sparse-reward episodes, applied to the tail).
    """
    returns = np.empty(len(rewards), dtype=np.float64)
    running = 0.0 if terminated else floor_reward / (1.0 - gamma)
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns.astype(np.float32)


def n_step_targets(episode: Episode, gamma: float, n_step: int) -> dict[str, np.ndarray]:
    """Per step t: the discounted reward sum over the next k = min(n, T − t) steps, the state s_{t+k}
    to bootstrap from, γ^k, and whether s_{t+k} is terminal. A sum cut by the episode's end covers
    only the steps taken: a terminated episode does not bootstrap, a time-limit cut bootstraps from
    the last state reached with the discount of the steps actually taken."""
    steps = len(episode)
    t = np.arange(steps)
    k = np.minimum(n_step, steps - t)
    rewards = np.zeros(steps, dtype=np.float64)
    for i in range(min(n_step, steps)):  # n is small: one shifted add per term of the sum
        rewards[: steps - i] += gamma ** i * episode.rewards[i:]
    end = t + k
    terminal = (end == steps) & bool(episode.terminations[-1])
    return {"rewards": rewards, "next_obs": episode.observations[end], "terminals": terminal,
            "discounts": gamma ** k}


class ReplayBuffer:
    """A ring buffer of transitions, allocated once at full capacity on one device.

    Episodes are added whole, so the Monte-Carlo bound and the n-step backup of each transition
    are known when it enters. Memory is ``capacity × bytes_per_transition(obs_dim, action_dim)``
    from the start and never grows: a 1M-transition buffer for Meta-World (39-d observations, 4-d
    actions) takes 344 MB.
    """

    COLUMNS = ("obs", "actions", "rewards", "next_obs", "terminals", "mc_returns", "discounts")

    @staticmethod
    def bytes_per_transition(obs_dim: int, action_dim: int) -> int:
        """float32 obs, action, reward sum, next obs, terminal flag, Monte-Carlo return and discount."""
        return 4 * (2 * obs_dim + action_dim + 4)

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.storage.values())

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu",
                 n_step: int = 1) -> None:
        if capacity < 1 or n_step < 1:
            raise ValueError(f"buffer capacity and n_step must be ≥ 1, got {capacity}, {n_step}")
        self.capacity, self.device, self.n_step = capacity, torch.device(device), n_step
        shapes = {"obs": (obs_dim,), "actions": (action_dim,), "rewards": (), "next_obs": (obs_dim,),
                  "terminals": (), "mc_returns": (), "discounts": ()}
        self.storage = {name: torch.zeros(capacity, *shape, device=self.device) for name, shape in shapes.items()}
        self.size = 0
        self.position = 0
        self.policy_samples: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.size

    def add_episode(self, episode: Episode, gamma: float, floor_reward: float) -> None:
        """Append one episode's transitions (the oldest are overwritten once full)."""
        if self.policy_samples:
            raise RuntimeError("drop_policy_samples() before adding data: the cached samples would be misaligned")
        steps = len(episode)
        if steps == 0:
            return
        mc = monte_carlo_returns(episode.rewards, gamma, bool(episode.terminations[-1]), floor_reward)
        columns = {"obs": episode.observations[:-1], "actions": episode.actions, "mc_returns": mc,
                   **n_step_targets(episode, gamma, self.n_step)}
        if steps > self.capacity:  # only the newest transitions would survive anyway
            columns = {name: value[-self.capacity:] for name, value in columns.items()}
            steps = self.capacity
        index = ((self.position + torch.arange(steps)) % self.capacity).to(self.device)
        for name, value in columns.items():
            self.storage[name][index] = torch.as_tensor(np.asarray(value, dtype=np.float32), device=self.device)
        self.position = (self.position + steps) % self.capacity
        self.size = min(self.size + steps, self.capacity)

    def state_dict(self) -> dict[str, object]:
        """The filled part only (a fresh 1M buffer checkpoints as nothing): copies, since torch.save
        of a view writes the whole storage behind it."""
        return {"size": self.size, "position": self.position, "capacity": self.capacity,
                "storage": {name: tensor[: self.size].clone().cpu() for name, tensor in self.storage.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer state has capacity {state['capacity']}, this buffer {self.capacity}")
        self.drop_policy_samples()
        for name, tensor in state["storage"].items():
            self.storage[name][: len(tensor)] = tensor.to(self.device)
        self.size, self.position = int(state["size"]), int(state["position"])

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), generator=generator).to(self.device)
        columns = {name: tensor[index] for name, tensor in (self.storage | self.policy_samples).items()}
        return Batch(**columns)

    def cache_policy_samples(self, sample: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096,
                             progress: bool = False) -> None:
        """Draw policy samples for every stored obs and next_obs once, and hand them out with each batch.

        Valid only while the policy is frozen (the offline phase without distillation, as in the
        reference code): it replaces the dominant cost of an update, sampling B×N actions twice.
        Inside an episode ``next_obs[i]`` is ``obs[i + n]``; such states share their samples, so
        only episode ends are drawn twice and the cache costs about one draw per transition.
        Call :meth:`drop_policy_samples` as soon as the policy changes or the buffer grows.
        """
        from pa_rl.progress import progress_bar

        obs, next_obs = self.storage["obs"][: self.size], self.storage["next_obs"][: self.size]
        n = self.n_step
        shared = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        shared[:-n] = (next_obs[:-n] == obs[n:]).all(dim=1)
        ends = next_obs[~shared]
        with progress_bar(self.size + len(ends), "caching policy samples", progress, leave=False) as bar:
            def draw(states: torch.Tensor) -> torch.Tensor:
                parts = []
                for start in range(0, len(states), chunk):
                    parts.append(sample(states[start: start + chunk]))
                    bar.update(len(parts[-1]))
                return torch.cat(parts)

            samples = draw(obs)
            next_samples = samples.roll(-n, dims=0)  # row i gets row i + n's samples; ends are redrawn
            next_samples[~shared] = draw(ends)
        self.policy_samples = {"policy_samples": samples, "next_policy_samples": next_samples}

    def drop_policy_samples(self) -> None:
        self.policy_samples = {}

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], gamma: float, capacity: int | None = None,
                      device: str | torch.device = "cpu", floor_reward: float | None = None,
                      n_step: int = 1) -> ReplayBuffer:
        """A buffer holding ``episodes`` (capacity defaults to their total length)."""
        if not episodes or sum(len(e) for e in episodes) == 0:
            raise ValueError("no transitions: the episode list is empty")
        obs_dim, action_dim = episodes[0].observations.shape[1], episodes[0].actions.shape[1]
        total = sum(len(e) for e in episodes)
        buffer = cls(capacity or total, obs_dim, action_dim, device, n_step)
        floor = min(float(e.rewards.min()) for e in episodes if len(e)) if floor_reward is None else floor_reward
        for episode in episodes:
            buffer.add_episode(episode, gamma, floor)
        return buffer


def free_memory(device: torch.device) -> int:
    """Bytes that can be allocated now: free GPU memory, or the kernel's MemAvailable estimate."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_buffer_fits(capacity: int, obs_dim: int, action_dim: int, device: str | torch.device) -> None:
    """Refuse, before allocating, a replay buffer larger than the free memory, saying what fits:
    allocating it would fail with a raw allocator error, or be killed by the OOM killer later."""
    device = torch.device(device)
    per_transition = ReplayBuffer.bytes_per_transition(obs_dim, action_dim)
    free = free_memory(device)
    if capacity * per_transition > free:
        raise ValueError(f"an online replay buffer of {capacity:,} transitions needs "
                         f"{capacity * per_transition / 1e9:.1f} GB but {free / 1e9:.1f} GB are free on {device}: at "
                         f"most {free // per_transition:,} fit; lower --train.online-buffer-size")
