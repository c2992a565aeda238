"""Policy samples drawn ahead by a background process (``--train.sampler async``), for policies whose
sampling dominates an update; the reference PA-RL code runs caching workers for OpenVLA the same way.

Every critic update of PA-RL needs N draws of the base policy at the batch's states s and s′; for a
large policy decoding action tokens that is most of the update. :class:`AsyncSampler` keeps N draws per
replay slot in a shared-memory cache that a worker process, holding a copy of the policy, fills while
the learner trains:

- **What the worker draws.** The learner draws each batch's slots ``lookahead`` batches ahead, with
  the same generator and in the same order (the sequence of batches is the synchronous one), and
  sends the worker those states among them that the cache cannot serve. The worker draws them in
  order, skipping batches the learner has already reached.
- **Versions.** The learner publishes its policy's weights after each distillation block (online:
  after an episode's updates; offline: after each distillation step) and counts versions; the worker
  loads the newest before each draw. A slot's draws carry the version that made them and are served
  while at most ``max_staleness`` versions old; a slot without any, or with staler ones, is drawn by
  the learner itself, as the synchronous path does, and kept in the cache for later batches.
- **The approximation.** Within a block the policy keeps changing (a distillation step per update),
  so a cached draw, even of staleness 0, may come from weights up to one block (plus
  ``max_staleness`` blocks) older than the learner's: samples of a recent base policy rather than the
  current one. ``--train.sampler sync`` makes none of it.
- **Not bit-exact.** Which states the worker reaches in time depends on timing, so async runs are not
  reproducible bit for bit, and a resumed run continues correctly but not exactly as it would have:
  the cache is not checkpointed (the worker starts afresh with an empty one), and the batches drawn
  ahead at a checkpoint are skipped.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from pa_rl.buffer import Batch, ReplayBuffer, batch_of
from pa_rl.observations import Obs, cat_obs, map_obs
from pa_rl.optimize import sample_actions

# Counters in the shared ``state`` tensor.
VERSION, GENERATION, CONSUMED, DONE = range(4)
POLL_S = 0.5  # how often an idle worker checks that the learner is still alive


def _unique_rows(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct slots, the first row holding each, and each row's index among the distinct slots."""
    unique, inverse = slots.unique(return_inverse=True)
    first = torch.full((len(unique),), len(slots)).scatter_reduce(0, inverse, torch.arange(len(slots)), "amin")
    return unique, first, inverse


def _fresh(drawn_at: torch.Tensor, version: int, max_staleness: int) -> torch.Tensor:
    """Which draws may be served at ``version``: made, and at most ``max_staleness`` versions old."""
    return (drawn_at >= 0) & (version - drawn_at <= max_staleness)


class AsyncSampler:
    """Batches with N policy draws per state, served from a cache a worker process fills ahead.

    Use as a context manager: the worker is stopped (and killed if it does not stop) on leaving it,
    also on errors; an orphaned worker (the learner killed, even while holding the cache's lock) exits
    by itself within a second. Slots of
    all ``buffers`` share one cache, ``capacity · N · H·A`` float32 for each buffer: as much as the
    frozen offline cache (:meth:`ReplayBuffer.cache_policy_samples`) takes for its data.
    """

    def __init__(self, policy: nn.Module, num_samples: int, action_shape: tuple[int, ...],
                 buffers: Sequence[ReplayBuffer], max_staleness: int = 1, device: str | torch.device = "cpu",
                 lookahead: int = 2) -> None:
        if max_staleness < 0 or lookahead < 1:
            raise ValueError(f"max_staleness must be ≥ 0 and lookahead ≥ 1, got {max_staleness}, {lookahead}")
        self.policy, self.num_samples, self.action_shape = policy, num_samples, action_shape
        self.max_staleness, self.lookahead, self.device = max_staleness, lookahead, torch.device(device)
        offsets = np.cumsum([0] + [b.capacity for b in buffers])
        self.offsets = {id(b): int(o) for b, o in zip(buffers, offsets)}
        self.samples = torch.zeros(int(offsets[-1]), num_samples, int(np.prod(action_shape))).share_memory_()
        self.drawn_at = torch.full((int(offsets[-1]),), -1, dtype=torch.long).share_memory_()  # version, -1 none
        self.state = torch.zeros(4, dtype=torch.long).share_memory_()
        self.weights = {name: t.detach().to("cpu", copy=True).share_memory_()
                        for name, t in policy.state_dict().items()}
        self.metrics: dict[str, torch.Tensor] = {}
        self._pending: deque[tuple[int, Batch, torch.Tensor, Obs]] = deque()
        self._draw: Callable[[], list[tuple[ReplayBuffer, torch.Tensor]]] | None = None
        self._left = self._sent = self._requested = 0  # batches to draw in this block, drawn, asked of the worker
        context = mp.get_context("spawn")  # fork would copy the learner's threads and CUDA state
        self.lock, self.requests = context.Lock(), context.Queue()
        threads = min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // 2))
        self.process = context.Process(target=_work, name="pa-rl-sampler", daemon=True, args=(
            self.requests, self.samples, self.drawn_at, self.state, self.lock, self.weights, max_staleness,
            num_samples, action_shape, str(self.device), threads))
        self.process.start()
        # A copy, so that pickling moves its storages (not the learner's) to shared memory. Pickled here, so
        # that a policy that cannot be sent fails at once (not in the queue's thread); queued, so that the
        # learner does not wait for the worker to import torch.
        try:
            self.requests.put(bytes(ForkingPickler.dumps(copy.deepcopy(policy).cpu())))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> AsyncSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self.state[VERSION])

    def publish(self) -> None:
        """The policy's weights as they are now become the next version (after a distillation block)."""
        with self.lock:
            for name, tensor in self.policy.state_dict().items():
                self.weights[name].copy_(tensor)
            self.state[VERSION] += 1

    def forget(self, buffer: ReplayBuffer, slots: torch.Tensor) -> None:
        """``slots`` of ``buffer`` were overwritten: their draws are dropped, and a draw of their old
        states in flight is discarded by the worker (the generation changes)."""
        with self.lock:
            self.drawn_at[self.offsets[id(buffer)] + slots.cpu()] = -1
            self.state[GENERATION] += 1

    def begin(self, draw: Callable[[], list[tuple[ReplayBuffer, torch.Tensor]]], count: int) -> None:
        """The next ``count`` :meth:`batch` calls return the batches at ``draw()``'s slots (called in
        order, at most ``lookahead`` batches ahead; the buffers must not change meanwhile)."""
        if self._left or self._pending:
            raise RuntimeError(f"begin() with {self._left + len(self._pending)} batches of the last block not taken")
        self._draw, self._left = draw, count

    def batch(self) -> Batch:
        """The next batch of the block, with ``policy_samples`` and ``next_policy_samples``."""
        if not self.process.is_alive():
            raise RuntimeError(f"the async sampler's worker (pid {self.process.pid}) exited with code "
                               f"{self.process.exitcode}: see its error above; --train.sampler sync avoids it")
        if not self._pending:
            if not self._left:
                raise RuntimeError("no batches left: begin() a block first")
            self._prepare(ask=False)  # needed now: the learner draws what it lacks itself
        seq, batch, slots, obs = self._pending.popleft()
        self.state[CONSUMED] = seq + 1  # the worker skips this one now: the learner draws what it lacks
        while len(self._pending) < self.lookahead and self._left:
            self._prepare()
        return self._fill(batch, slots, obs)

    def _prepare(self, ask: bool = True) -> None:
        """Draw the next batch's slots and ask the worker for the states the cache cannot serve."""
        parts = self._draw()
        self._left -= 1
        batch = batch_of(parts)
        slots = torch.cat([self.offsets[id(b)] + i.cpu() for b, i in parts]
                          + [self.offsets[id(b)] + b.next_index(i).cpu() for b, i in parts])
        obs = cat_obs([batch.obs, batch.next_obs])
        seq, self._sent = self._sent, self._sent + 1
        self._pending.append((seq, batch, slots, obs))
        if not ask:
            return
        with self.lock:
            need = ~_fresh(self.drawn_at[slots], int(self.state[VERSION]), self.max_staleness)
            generation = int(self.state[GENERATION])
        if need.any():
            unique, first, _ = _unique_rows(slots[need])
            rows = need.nonzero().squeeze(1)[first]
            self._requested += 1
            self.requests.put((seq, generation, unique.numpy(), map_obs(lambda t: t[rows.to(t.device)].cpu().numpy(),
                                                                         obs)))

    def _fill(self, batch: Batch, slots: torch.Tensor, obs: Obs) -> Batch:
        """The batch with its draws: fresh ones from the cache, the rest drawn now (and cached)."""
        with self.lock:
            version = int(self.state[VERSION])
            drawn_at, samples = self.drawn_at[slots], self.samples[slots]
        fresh = _fresh(drawn_at, version, self.max_staleness)
        if not fresh.all():
            unique, first, inverse = _unique_rows(slots[~fresh])
            rows = (~fresh).nonzero().squeeze(1)
            draws = sample_actions(self.policy, map_obs(lambda t: t[rows[first].to(t.device)], obs), self.num_samples,
                                   self.action_shape).cpu()
            samples[rows] = draws[inverse]
            with self.lock:
                self.samples[unique], self.drawn_at[unique] = draws, version
        self.metrics = {"sampler/from_cache": fresh.float().mean(),
                        "sampler/staleness": torch.where(fresh, version - drawn_at, 0).float().mean()}
        samples = samples.to(self.device)
        return replace(batch, policy_samples=samples[: len(batch)], next_policy_samples=samples[len(batch):])

    @property
    def idle(self) -> bool:
        """Whether the worker has handled every request sent so far."""
        return int(self.state[DONE]) >= self._requested

    def close(self) -> None:
        """Stop the worker (killed after 10 s if it does not stop) and release the queue; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        self._pending.clear()
        self._left = 0
        self.state[CONSUMED] = self._sent  # queued requests are skipped: the stop is handled at once
        try:
            self.requests.put(None)
            process.join(timeout=10)
        finally:
            if process.is_alive():
                process.kill()
                process.join()
            self.requests.cancel_join_thread()  # never block the learner's exit on undelivered requests
            self.requests.close()


def _next(requests: Any, parent: Any) -> Any:
    """The next request, or None when told to stop or when the learner is gone (killed)."""
    while True:
        try:
            return requests.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


@contextlib.contextmanager
def _holding(lock: Any, parent: Any) -> Iterator[None]:
    """The lock, or SystemExit once the learner is gone: a learner killed while holding it never releases it."""
    while not lock.acquire(timeout=POLL_S):
        if parent is not None and not parent.is_alive():
            raise SystemExit(0)
    try:
        yield
    finally:
        lock.release()


def _work(requests: Any, samples: torch.Tensor, drawn_at: torch.Tensor, state: torch.Tensor, lock: Any,
          weights: dict[str, torch.Tensor], max_staleness: int, num_samples: int, action_shape: tuple[int, ...],
          device: str, threads: int) -> None:
    """The worker: draw the requested states with the newest published weights, write them to the cache."""
    torch.set_num_threads(threads)
    torch.seed()  # a new process starts from torch's fixed default seed: each worker would draw the same noise
    parent = mp.parent_process()
    policy = _next(requests, parent)
    if policy is None:
        return
    policy = pickle.loads(policy).to(device)
    version = -1
    while (request := _next(requests, parent)) is not None:
        seq, generation, slots, obs = request
        if seq >= int(state[CONSUMED]):
            slots = torch.from_numpy(slots)
            with _holding(lock, parent):
                if int(state[VERSION]) != version:
                    policy.load_state_dict(weights)
                    version = int(state[VERSION])
                # States drawn meanwhile (by the learner, or for an earlier batch) are not drawn again.
                need = ~_fresh(drawn_at[slots], version, max_staleness)
            if need.any():
                rows = need.nonzero().squeeze(1)
                draws = sample_actions(policy, map_obs(lambda a: torch.from_numpy(a[rows.numpy()]).to(device), obs),
                                       num_samples, action_shape).cpu()
                with _holding(lock, parent):
                    if int(state[GENERATION]) == generation:  # else the buffer changed under these states
                        older = drawn_at[slots[rows]] < version  # never over a newer draw of the learner's
                        written = slots[rows][older]
                        samples[written], drawn_at[written] = draws[older], version
        with _holding(lock, parent):
            state[DONE] += 1
