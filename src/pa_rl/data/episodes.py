"""Episodes: the one in-memory form every data source is converted to before training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pa_rl.observations import ObsSpec, stack_obs

ACTION_BOUND_TOLERANCE = 1e-6


class DataError(ValueError):
    """A dataset cannot be used as given; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Episode:
    """One trajectory, laid out as Minari stores it.

    ``observations`` is a flat float32 array, or a mapping of arrays in the form an
    :data:`~pa_rl.observations.ObsSpec` describes (uint8 images, float32 vectors, uint8 text); each
    has one more row than ``actions``: it ends with the observation reached by
    the last action. ``terminations`` marks a true terminal state (no bootstrapping);
    ``truncations`` marks a cut by a time limit (the value of the last state is still bootstrapped).
    """

    observations: np.ndarray | dict[str, np.ndarray]  # [T + 1, obs_dim] float32, or [T + 1, *shape] per key
    actions: np.ndarray  # [T, action_dim] float32
    rewards: np.ndarray  # [T] float32
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool

    def __len__(self) -> int:
        return len(self.actions)


class EpisodeRecorder:
    """Collects one episode step by step, then hands it over as an :class:`Episode`."""

    def __init__(self, first_obs: np.ndarray | dict[str, np.ndarray]) -> None:
        self.observations, self.actions, self.rewards = [first_obs], [], []
        self.terminations: list[bool] = []
        self.truncations: list[bool] = []

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool, truncated: bool) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.observations.append(next_obs)
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))

    def episode(self) -> Episode:
        observations = stack_obs(self.observations)
        if not isinstance(observations, dict):
            observations = observations.astype(np.float32)
        return Episode(observations, np.asarray(self.actions, np.float32),
                       np.asarray(self.rewards, np.float32), np.asarray(self.terminations, bool),
                       np.asarray(self.truncations, bool))


def check_episode(episode: Episode, where: str, action_low: np.ndarray, action_high: np.ndarray) -> None:
    """Refuse non-finite values and out-of-bounds actions: either would silently corrupt the critic."""
    arrays = {"actions": episode.actions, "rewards": episode.rewards}
    if isinstance(episode.observations, dict):
        arrays |= {f"observations[{key!r}]": value for key, value in episode.observations.items()
                   if np.issubdtype(value.dtype, np.floating)}
    else:
        arrays["observations"] = episode.observations
    for name, values in arrays.items():
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: non-finite {name} (first at step {row}). "
                            "Clean or drop that episode and rewrite the dataset.")
    low = np.asarray(action_low, np.float64) - ACTION_BOUND_TOLERANCE
    high = np.asarray(action_high, np.float64) + ACTION_BOUND_TOLERANCE
    outside = (episode.actions < low) | (episode.actions > high)
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        raise DataError(f"{where}: action[{row}][{col}] = {episode.actions[row, col]} is outside the action space "
                        f"bounds [{action_low[col]}, {action_high[col]}]. Clip the actions to the bounds (or record "
                        "the correct action space) and rewrite the dataset.")


def check_observations(observations: np.ndarray | dict[str, np.ndarray], spec: ObsSpec, rows: int, where: str) -> None:
    """``rows`` observations in ``spec``'s form: every key present, with its shape and dtype."""
    if isinstance(spec, int):
        if isinstance(observations, dict) or np.shape(observations) != (rows, spec):
            got = f"keys {sorted(observations)}" if isinstance(observations, dict) else f"shape {np.shape(observations)}"
            raise DataError(f"{where}: observations have {got}, expected shape {(rows, spec)} (flat {spec}-d vectors). "
                            "Use data recorded in this environment.")
        return
    if not isinstance(observations, dict):
        raise DataError(f"{where}: observations are a {type(observations).__name__}, expected a mapping with keys "
                        f"{sorted(spec)}. Use data recorded in this environment.")
    missing = sorted(set(spec) - set(observations))
    if missing:
        raise DataError(f"{where}: observation key(s) {missing} missing (has {sorted(observations)}). "
                        "Record every key the agent was built for.")
    for key, field in spec.items():
        value = observations[key]
        if value.shape != (rows, *field.shape) or value.dtype != field.dtype:
            raise DataError(f"{where}: observation key {key!r} holds {value.dtype} {value.shape[1:]} per step, expected "
                            f"{field.describe()} ({rows} steps). Images must be uint8 (H, W, C) as the space records "
                            "them; use data recorded in this environment.")


def check_episodes(episodes: Sequence[Episode], obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                   source: str = "training data", chunk: int = 1) -> None:
    """Everything :func:`check_episode` checks, plus shapes against the agent's, for a whole episode list;
    an action chunk longer than every episode is refused (no chunk of the data was ever executed whole)."""
    if sum(len(e) for e in episodes) == 0:
        raise DataError(f"{source} has no transitions ({len(episodes)} episodes); pass a non-empty dataset.")
    longest = int(np.argmax([len(e) for e in episodes]))
    if chunk > len(episodes[longest]):
        raise DataError(f"{source}: action chunks of {chunk} steps (--agent.chunk) are longer than every episode (the "
                        f"longest, episode {longest}, has {len(episodes[longest])} steps); use a chunk of at most "
                        f"{len(episodes[longest])}.")
    action_dim = len(action_low)
    for i, episode in enumerate(episodes):
        steps = len(episode)
        shapes = (episode.actions.shape, episode.rewards.shape, episode.terminations.shape, episode.truncations.shape)
        expected = ((steps, action_dim), (steps,), (steps,), (steps,))
        if shapes != expected:
            raise DataError(f"{source}, episode {i}: shapes (actions, rewards, terminations, truncations) = {shapes}, "
                            f"expected {expected} for a {action_dim}-d action agent. Use data recorded in this "
                            "environment.")
        check_observations(episode.observations, obs_spec, steps + 1, f"{source}, episode {i}")
        check_episode(episode, f"{source}, episode {i}", action_low, action_high)


def vector_rows(episodes: Sequence[Episode], obs_spec: ObsSpec) -> np.ndarray | dict[str, np.ndarray]:
    """Every observation of ``episodes`` stacked: ``[N, D]`` for a flat observation, or such rows for
    each vector key of a mapping (images and text left out: nothing standardises them)."""
    if isinstance(obs_spec, int):
        return np.concatenate([e.observations for e in episodes])
    return {key: np.concatenate([e.observations[key] for e in episodes])
            for key, field in obs_spec.items() if field.kind == "vector"}
