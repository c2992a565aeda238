"""Episodes: the one in-memory form every data source is converted to before training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ACTION_BOUND_TOLERANCE = 1e-6


class DataError(ValueError):
    """A dataset cannot be used as given; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Episode:
    """One trajectory with flat float32 observations, laid out as Minari stores it.

    ``observations`` has one more row than ``actions``: it ends with the observation reached by
    the last action. ``terminations`` marks a true terminal state (no bootstrapping);
    ``truncations`` marks a cut by a time limit (the value of the last state is still bootstrapped).
    """

    observations: np.ndarray  # [T + 1, obs_dim] float32
    actions: np.ndarray  # [T, action_dim] float32
    rewards: np.ndarray  # [T] float32
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool

    def __len__(self) -> int:
        return len(self.actions)


class EpisodeRecorder:
    """Collects one episode step by step, then hands it over as an :class:`Episode`."""

    def __init__(self, first_obs: np.ndarray) -> None:
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
        return Episode(np.asarray(self.observations, np.float32), np.asarray(self.actions, np.float32),
                       np.asarray(self.rewards, np.float32), np.asarray(self.terminations, bool),
                       np.asarray(self.truncations, bool))


def check_episode(episode: Episode, where: str, action_low: np.ndarray, action_high: np.ndarray) -> None:
    """Refuse non-finite values and out-of-bounds actions: either would silently corrupt the critic."""
    for name in ("observations", "actions", "rewards"):
        values = getattr(episode, name)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: non-finite {name} (first at step {row}: {values[row]}). "
                            "Clean or drop that episode and rewrite the dataset.")
    low = np.asarray(action_low, np.float64) - ACTION_BOUND_TOLERANCE
    high = np.asarray(action_high, np.float64) + ACTION_BOUND_TOLERANCE
    outside = (episode.actions < low) | (episode.actions > high)
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        raise DataError(f"{where}: action[{row}][{col}] = {episode.actions[row, col]} is outside the action space "
                        f"bounds [{action_low[col]}, {action_high[col]}]. Clip the actions to the bounds (or record "
                        "the correct action space) and rewrite the dataset.")


def check_episodes(episodes: Sequence[Episode], obs_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                   source: str = "training data") -> None:
    """Everything :func:`check_episode` checks, plus shapes against the agent's, for a whole episode list."""
    if sum(len(e) for e in episodes) == 0:
        raise DataError(f"{source} has no transitions ({len(episodes)} episodes); pass a non-empty dataset.")
    action_dim = len(action_low)
    for i, episode in enumerate(episodes):
        steps = len(episode)
        shapes = (episode.observations.shape, episode.actions.shape, episode.rewards.shape,
                  episode.terminations.shape, episode.truncations.shape)
        expected = ((steps + 1, obs_dim), (steps, action_dim), (steps,), (steps,), (steps,))
        if shapes != expected:
            raise DataError(f"{source}, episode {i}: shapes (observations, actions, rewards, terminations, "
                            f"truncations) = {shapes}, expected {expected} for a {obs_dim}-d observation, "
                            f"{action_dim}-d action agent. Use data recorded in this environment.")
        check_episode(episode, f"{source}, episode {i}", action_low, action_high)
