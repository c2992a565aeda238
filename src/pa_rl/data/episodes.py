"""Episodes: the one in-memory form every data source is converted to before training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
