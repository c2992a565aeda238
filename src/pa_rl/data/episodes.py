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
