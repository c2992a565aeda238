"""Transitions in preallocated tensors (each observation stored once), and the Monte-Carlo return
lower bounds Cal-QL needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from pa_rl.data.episodes import Episode
from pa_rl.observations import Field, Obs, ObsSpec, cat_obs, map_obs


@dataclass
class Batch:
    obs: Obs  # [B, obs_dim], or a mapping of [B, *shape] per key
    actions: torch.Tensor  # [B, action_dim] (an action chunk is one flat H·A vector)
    rewards: torch.Tensor  # [B]
    next_obs: Obs  # the state the reward sum ends in
    terminals: torch.Tensor  # [B] float, 1 where no bootstrapping
    mc_returns: torch.Tensor  # [B]
    discounts: torch.Tensor  # [B] γ^k, k the env steps the reward sum covers (the horizon but at episode ends)
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
            columns[f.name] = None if any(p is None for p in parts) else cat_obs(parts)
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
    """Per step t: the discounted reward sum over the next k = min(n, T − t) steps, the offset k of
    the state s_{t+k} to bootstrap from, γ^k, and whether s_{t+k} is terminal. A sum cut by the
    episode's end covers only the steps taken: a terminated episode does not bootstrap, a time-limit
    cut bootstraps from the last state reached with the discount of the steps actually taken. The
    same backup serves action chunks of H steps (n = H, the Q-chunking backup)."""
    steps = len(episode)
    t = np.arange(steps)
    k = np.minimum(n_step, steps - t)
    rewards = np.zeros(steps, dtype=np.float64)
    for i in range(min(n_step, steps)):  # n is small: one shifted add per term of the sum
        rewards[: steps - i] += gamma ** i * episode.rewards[i:]
    terminal = (t + k == steps) & bool(episode.terminations[-1])
    return {"rewards": rewards, "offsets": k, "terminals": terminal, "discounts": gamma ** k}


def chunk_actions(actions: np.ndarray, chunk: int) -> np.ndarray:
    """[T, A] → [T, chunk·A]: row t holds actions t..t+chunk−1; past the episode's end the last action
    repeats (those steps are never taken: the backup stops at the end)."""
    if chunk == 1:
        return actions
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(chunk), len(actions) - 1)
    return actions[index].reshape(len(actions), -1)


def obs_bytes(spec: ObsSpec) -> int:
    """Bytes of one stored observation: float32 vectors, uint8 images and text."""
    if isinstance(spec, int):
        return 4 * spec
    return sum(int(np.prod(f.shape)) * f.dtype.itemsize for f in spec.values())


class ReplayBuffer:
    """A ring of slots in preallocated tensors, allocated once at full capacity on one device.

    An episode of T steps takes T + 1 consecutive slots: slot t holds s_t and the transition from
    it; the last holds only the final observation and is never sampled. The state a backup
    bootstraps from, s_{t+k}, is read from slot t + k, so every observation (an image too) is stored
    once. Episodes are added whole, so the Monte-Carlo bound and the n-step (or chunk) backup of each
    transition are known when it enters; once full, the oldest slots are overwritten, and a
    transition whose slot survives still finds its s_{t+k}, written after it.

    Memory is ``capacity × bytes_per_slot(obs_spec, action_dim)`` from the start and never grows:
    a 1M-slot buffer for Meta-World (39-d observations, 4-d actions) takes 193 MB, one for 64×64 RGB
    images (plus velocity and instruction) 12.4 GB.
    """

    SCALARS = ("rewards", "terminals", "mc_returns", "discounts")

    @staticmethod
    def bytes_per_slot(obs_spec: ObsSpec, action_dim: int) -> int:
        """The observation, a float32 action, reward sum, terminal flag, Monte-Carlo return and
        discount, an int32 offset to the next state and a valid flag: obs + 4·(A + 5) + 1 bytes."""
        return obs_bytes(obs_spec) + 4 * (action_dim + 5) + 1

    @property
    def nbytes(self) -> int:
        tensors = [*self.storage.values(), *(self.obs.values() if isinstance(self.obs, dict) else [self.obs])]
        return sum(t.element_size() * t.nelement() for t in tensors)

    def __init__(self, capacity: int, obs_spec: ObsSpec, action_dim: int, device: str | torch.device = "cpu",
                 horizon: int = 1, chunk: int = 1) -> None:
        if capacity < 2 or horizon < 1 or chunk < 1:
            raise ValueError(f"buffer capacity must be ≥ 2 (an episode needs two slots), horizon and chunk ≥ 1, got "
                             f"{capacity}, {horizon}, {chunk}")
        self.capacity, self.device, self.horizon, self.chunk = capacity, torch.device(device), horizon, chunk
        self.obs_spec = obs_spec
        self.obs = map_obs(lambda f: torch.zeros(capacity, *f.shape, dtype=_torch_dtype(f.dtype), device=self.device),
                           _fields(obs_spec))
        self.storage = {"actions": torch.zeros(capacity, action_dim, device=self.device),
                        **{name: torch.zeros(capacity, device=self.device) for name in self.SCALARS},
                        "offsets": torch.zeros(capacity, dtype=torch.int32, device=self.device),
                        "valid": torch.zeros(capacity, dtype=torch.bool, device=self.device)}
        self.size = 0  # slots filled
        self.position = 0
        # Draws of a frozen policy per slot, made the first time a batch needs the slot (cache_policy_samples).
        self.policy_samples: torch.Tensor | None = None
        self._draw: Callable[[Obs], torch.Tensor] | None = None
        self._drawn: torch.Tensor | None = None  # [size] bool: slots whose draws are in policy_samples
        self._undrawn = 0  # slots not drawn yet, on the host: once 0, a batch reads no mask (no device sync)
        self._valid_index: torch.Tensor | None = None

    def __len__(self) -> int:
        """Transitions held (slots that start one)."""
        return len(self.valid_index)

    @property
    def valid_index(self) -> torch.Tensor:
        """Slots that hold a transition (recomputed once after each added episode)."""
        if self._valid_index is None:
            self._valid_index = self.storage["valid"][: self.size].nonzero().squeeze(1)
        return self._valid_index

    def add_episode(self, episode: Episode, gamma: float, floor_reward: float) -> torch.Tensor:
        """Append one episode's T + 1 slots (the oldest are overwritten once full); returns the slots written."""
        if self._draw is not None:
            raise RuntimeError("drop_policy_samples() before adding data: the cached samples would be misaligned")
        steps = len(episode)
        if steps == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        mc = monte_carlo_returns(episode.rewards, gamma, bool(episode.terminations[-1]), floor_reward)
        targets = n_step_targets(episode, gamma, self.horizon)
        pad = lambda column: np.concatenate([np.asarray(column, np.float32), np.zeros((1, *np.shape(column)[1:]),  # noqa: E731
                                                                                       np.float32)])
        columns = {"actions": pad(chunk_actions(episode.actions, self.chunk)), "mc_returns": pad(mc),
                   "rewards": pad(targets["rewards"]), "terminals": pad(targets["terminals"]),
                   "discounts": pad(targets["discounts"]),
                   "offsets": np.append(targets["offsets"], 0).astype(np.int32),
                   "valid": np.arange(steps + 1) < steps}
        observations = episode.observations
        slots = steps + 1
        if slots > self.capacity:  # only the newest slots would survive anyway; their next states are among them
            columns = {name: value[-self.capacity:] for name, value in columns.items()}
            observations = map_obs(lambda a: a[-self.capacity:], observations)
            slots = self.capacity
        index = ((self.position + torch.arange(slots)) % self.capacity).to(self.device)
        for name, value in columns.items():
            self.storage[name][index] = torch.as_tensor(value, device=self.device)
        for target, value in _pairs(self.obs, observations):
            target[index] = torch.as_tensor(value, device=self.device)
        self.position = (self.position + slots) % self.capacity
        self.size = min(self.size + slots, self.capacity)
        self._valid_index = None
        return index

    def state_dict(self) -> dict[str, object]:
        """The filled part only (a fresh 1M buffer checkpoints as nothing): copies, since torch.save
        of a view writes the whole storage behind it."""
        filled = lambda t: t[: self.size].clone().cpu()  # noqa: E731
        return {"size": self.size, "position": self.position, "capacity": self.capacity,
                "storage": {name: filled(t) for name, t in self.storage.items()}, "obs": map_obs(filled, self.obs)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer state has capacity {state['capacity']}, this buffer {self.capacity}")
        self.drop_policy_samples()
        for name, tensor in state["storage"].items():
            self.storage[name][: len(tensor)] = tensor.to(self.device)
        for target, value in _pairs(self.obs, state["obs"]):
            target[: len(value)] = value.to(self.device)
        self.size, self.position = int(state["size"]), int(state["position"])
        self._valid_index = None

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Transitions drawn uniformly (with replacement)."""
        return self.batch_at(self.draw_index(batch_size, generator))

    def draw_index(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The slots of ``batch_size`` transitions drawn uniformly (with replacement), for :meth:`batch_at`."""
        valid = self.valid_index
        if len(valid) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        return valid[torch.randint(0, len(valid), (batch_size,), generator=generator).to(self.device)]

    def next_index(self, index: torch.Tensor) -> torch.Tensor:
        """The slots of the states the transitions at ``index`` bootstrap from."""
        return (index + self.storage["offsets"][index]) % self.capacity

    def batch_at(self, index: torch.Tensor) -> Batch:
        """The transitions at slots ``index`` (with the frozen policy's draws when caching them)."""
        next_index = self.next_index(index)
        columns = {name: self.storage[name][index] for name in ("actions", *self.SCALARS)}
        cached = {}
        if self._draw is not None:
            self._draw_missing(torch.cat([index, next_index]))
            cached = {"policy_samples": self.policy_samples[index], "next_policy_samples": self.policy_samples[next_index]}
        return Batch(obs=map_obs(lambda t: t[index], self.obs), next_obs=map_obs(lambda t: t[next_index], self.obs),
                     **columns, **cached)

    def cache_policy_samples(self, sample: Callable[[Obs], torch.Tensor]) -> None:
        """Hand out draws of a frozen policy with each batch: a slot's draws are made the first time
        a batch needs them (its state or the state a transition bootstraps from) and kept.

        Valid only while the policy is frozen (the offline phase without distillation, as in the
        reference code): it replaces the dominant cost of an update, sampling B×N actions twice.
        Lazily, so the first update starts at once (drawing 100k states up front took 2.3 min on
        one thread) and a phase that touches part of the data draws no more than it uses (1000
        updates of 128 reach 72 % of 100k transitions, 92 % of the slots with their next states).
        Call :meth:`drop_policy_samples` as soon as the policy changes or the buffer grows.
        """
        self._draw, self.policy_samples = sample, None
        self._drawn = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        self._undrawn = self.size

    def _draw_missing(self, slots: torch.Tensor) -> None:
        """Draw, in one batched call, for the slots among ``slots`` not drawn yet (in sorted order, so
        the same history of batches and RNG gives the same cache)."""
        if self._undrawn == 0:
            return
        missing = slots[~self._drawn[slots]].unique()  # data-dependent size: a sync on CUDA, until all are drawn
        if len(missing) == 0:
            return
        self._undrawn -= len(missing)
        draws = self._draw(map_obs(lambda t: t[missing], self.obs))
        if self.policy_samples is None:
            self.policy_samples = draws.new_zeros(self.size, *draws.shape[1:])
        self.policy_samples[missing] = draws
        self._drawn[missing] = True

    def policy_cache(self) -> dict[str, torch.Tensor] | None:
        """The draws made so far and which slots they cover (for a checkpoint); None when not caching."""
        if self._draw is None:
            return None
        copy = lambda t: None if t is None else t.to("cpu", copy=True)  # noqa: E731  (a snapshot, not a view)
        return {"drawn": copy(self._drawn), "samples": copy(self.policy_samples)}

    def load_policy_cache(self, state: dict[str, torch.Tensor | None]) -> None:
        """Restore :meth:`policy_cache` after :meth:`cache_policy_samples`, so a resumed phase hands out
        the same draws and makes the same new ones."""
        if self._draw is None:
            raise RuntimeError("cache_policy_samples() before load_policy_cache()")
        if len(state["drawn"]) != self.size:
            raise ValueError(f"the policy-sample cache covers {len(state['drawn'])} slots, this buffer holds {self.size}")
        self._drawn = state["drawn"].to(self.device)
        self._undrawn = int((~state["drawn"]).sum())
        self.policy_samples = None if state["samples"] is None else state["samples"].to(self.device)

    def drop_policy_samples(self) -> None:
        self._draw = self._drawn = self.policy_samples = None

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], gamma: float, capacity: int | None = None,
                      device: str | torch.device = "cpu", floor_reward: float | None = None,
                      horizon: int = 1, chunk: int = 1, obs_spec: ObsSpec | None = None) -> ReplayBuffer:
        """A buffer holding ``episodes`` (capacity defaults to their slots: transitions + episodes);
        ``obs_spec`` defaults to the flat episodes' observation size."""
        if not episodes or sum(len(e) for e in episodes) == 0:
            raise ValueError("no transitions: the episode list is empty")
        first = episodes[0]
        if obs_spec is None:
            if isinstance(first.observations, dict):
                raise ValueError("mapping observations need their obs_spec (pa_rl.observations.spec_of_space)")
            obs_spec = first.observations.shape[1]
        slots = sum(len(e) + 1 for e in episodes if len(e))
        buffer = cls(capacity or slots, obs_spec, first.actions.shape[1] * chunk, device, horizon, chunk)
        floor = min(float(e.rewards.min()) for e in episodes if len(e)) if floor_reward is None else floor_reward
        for episode in episodes:
            buffer.add_episode(episode, gamma, floor)
        return buffer


def batch_of(parts: Sequence[tuple[ReplayBuffer, torch.Tensor]]) -> Batch:
    """One batch of the transitions at each buffer's slots, in order (parts without slots left out)."""
    batches = [buffer.batch_at(index) for buffer, index in parts if len(index)]
    return batches[0] if len(batches) == 1 else Batch.cat(batches)


def _fields(spec: ObsSpec) -> Field | dict[str, Field]:
    return Field("vector", (spec,)) if isinstance(spec, int) else spec


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.uint8 if dtype == np.uint8 else torch.float32


def _pairs(storage: Obs, obs: object) -> list[tuple[torch.Tensor, object]]:
    """(stored tensor, given array) per key of the buffer's observations (one pair for a flat one)."""
    return [(storage[key], obs[key]) for key in storage] if isinstance(storage, dict) else [(storage, obs)]


def free_memory(device: torch.device) -> int:
    """Bytes that can be allocated now: free GPU memory, or the kernel's MemAvailable estimate."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_buffer_fits(capacity: int, obs_spec: ObsSpec, action_dim: int, device: str | torch.device) -> int:
    """Refuse, before allocating, a replay buffer larger than the free memory, saying what fits:
    allocating it would fail with a raw allocator error, or be killed by the OOM killer later.
    Returns the bytes it will take."""
    device = torch.device(device)
    per_slot = ReplayBuffer.bytes_per_slot(obs_spec, action_dim)
    free = free_memory(device)
    if capacity * per_slot > free:
        raise ValueError(f"an online replay buffer of {capacity:,} slots ({per_slot:,} bytes each) needs "
                         f"{capacity * per_slot / 1e9:.1f} GB but {free / 1e9:.1f} GB are free on {device}: at "
                         f"most {free // per_slot:,} fit; lower --train.online-buffer-size")
    return capacity * per_slot
