"""Does the critic know which actions are better? Two checks against ground truth, logged as ``diag/*``.

A PA-RL run is only as good as its critic's ranking of sampled actions, and a critic's own losses
do not say whether that ranking means anything. So every evaluation also measures:

* **Calibration** on held-out episodes (never trained on): Q(s, a) of the data actions against the
  discounted Monte-Carlo return that followed them (the same return-to-go Cal-QL uses, a lower
  bound where an episode was cut by a time limit). ``q_mc_bias`` is mean(Q − G), ``q_mc_spearman``
  their rank correlation over transitions. A young critic shows a bias near −G and a low correlation.
* **Ranking by rollout**: at a few states reached along evaluation episodes, draw the optimizer's N
  policy samples, take the critic's best (π̂'s global choice) and a random other one, execute each
  in its own copy of the episode and follow π̂ to the end. ``rank_agreement`` is how often the
  critic's choice earned the higher discounted return (ties count half): 0.5 is a coin flip.
  Both copies of a pair are replayed from the same reset seed with the same actions up to the
  branch, and draw the same random numbers (common random numbers) at every step after it, so
  the return difference is the branch action's doing, not the continuation's noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from pa_rl.agent import Agent
from pa_rl.buffer import chunk_actions, monte_carlo_returns
from pa_rl.data.episodes import Episode
from pa_rl.observations import cat_obs, map_obs, stack_obs, to_tensor


def split_held_out(episodes: Sequence[Episode], fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """(training, held-out) episodes; ``floor(fraction · n)`` episodes drawn under ``seed`` are held out,
    none if that leaves nothing to train on."""
    count = int(fraction * len(episodes))
    if count == 0 or count >= len(episodes):
        return list(episodes), []
    held = set(np.random.default_rng(seed).choice(len(episodes), count, replace=False).tolist())
    return ([e for i, e in enumerate(episodes) if i not in held], [e for i, e in enumerate(episodes) if i in held])


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rank correlation of two 1-d tensors (0 where either is constant)."""
    rx, ry = (v.argsort().argsort().double() for v in (x, y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.norm() * ry.norm()).item()
    return float((rx @ ry).item() / denominator) if denominator > 0 else 0.0


class CriticDiagnostic:
    """Calibration on held-out episodes and ranking by rollout; see the module docstring."""

    def __init__(self, held_out: Sequence[Episode], gamma: float, floor_reward: float, max_transitions: int = 4096,
                 seed: int = 0, chunk: int = 1) -> None:
        obs, actions, returns = [], [], []
        for episode in held_out:
            if len(episode):
                obs.append(map_obs(lambda a: a[:-1], episode.observations))
                actions.append(chunk_actions(episode.actions, chunk))
                returns.append(monte_carlo_returns(episode.rewards, gamma, bool(episode.terminations[-1]),
                                                   floor_reward))
        self.gamma, self.chunk = gamma, chunk
        if obs:
            obs_all, actions_all, returns_all = cat_obs(obs), np.concatenate(actions), np.concatenate(returns)
            if len(returns_all) > max_transitions:  # a fixed subsample keeps each check cheap
                keep = np.sort(np.random.default_rng(seed).choice(len(returns_all), max_transitions, replace=False))
                obs_all, actions_all, returns_all = map_obs(lambda a: a[keep], obs_all), actions_all[keep], returns_all[keep]
            self.held_out = (map_obs(torch.as_tensor, obs_all), torch.as_tensor(actions_all), torch.as_tensor(returns_all))
        else:
            self.held_out = None
        lengths = [len(e) for e in held_out]
        self.typical_length = int(np.median(lengths)) if lengths else 0

    @torch.no_grad()
    def calibration(self, agent: Agent) -> dict[str, float]:
        """Q of held-out data actions against their Monte-Carlo returns."""
        if self.held_out is None:
            return {}
        obs, actions, returns = (map_obs(lambda t: t.to(agent.device), c) for c in self.held_out)
        q = agent.action_optimizer.value(agent.critic, obs, actions)
        return {"diag/q_mc_bias": float((q - returns).mean()), "diag/q_mc_spearman": spearman(q.cpu(), returns.cpu()),
                "diag/q_mean": float(q.mean()), "diag/mc_mean": float(returns.mean())}

    def ranking(self, agent: Agent, envs: Sequence[gym.Env], seeds: Sequence[int], max_steps: int,
                reward: Callable[[float], float], continuation: str = "argmax") -> dict[str, float]:
        """Pairs of rollouts branching at one state each (``len(envs) // 2`` pairs, one reset seed each).
        Nothing to rank with one policy sample per state (``optimizer.num_samples`` 1)."""
        pairs = min(len(envs) // 2, len(seeds))
        if pairs == 0 or agent.config.optimizer.num_samples < 2:
            return {}
        horizon = max(1, min(self.typical_length or max_steps, max_steps))
        # Branch points spread over the first 80 % of a typical episode, so early and late states count;
        # with action chunks, at the start of a chunk.
        branch = [self.chunk * (int(0.8 * horizon * i / pairs) // self.chunk) for i in range(pairs)]
        with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
            torch.manual_seed(int(seeds[0]))
            returns, q_gap = self._rollout_pairs(agent, envs[: 2 * pairs], seeds[:pairs], branch, max_steps, reward,
                                                 continuation)
        valid = ~np.isnan(returns[:, 0])
        if not valid.any():
            return {"diag/rank_pairs": 0.0}
        chosen, other = returns[valid, 0], returns[valid, 1]
        wins = (chosen > other) + 0.5 * (chosen == other)
        return {"diag/rank_agreement": float(wins.mean()), "diag/rank_decisive": float((chosen != other).mean()),
                "diag/rank_return_gap": float((chosen - other).mean()), "diag/rank_q_gap": float(q_gap[valid].mean()),
                "diag/rank_pairs": float(valid.sum())}

    def _rollout_pairs(self, agent: Agent, envs: Sequence[gym.Env], seeds: Sequence[int], branch: Sequence[int],
                       max_steps: int, reward: Callable[[float], float], continuation: str
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Rows 0..P−1 take the critic's choice at their branch step, rows P..2P−1 a random other
        sample; before the branch both rows of a pair are the same episode. Returns the discounted
        return from the branch ([P, 2], NaN where the episode ended before its branch) and the
        critic's value gap between the two branch actions [P]."""
        pairs = len(seeds)
        obs = [env.reset(seed=int(seeds[i % pairs]))[0] for i, env in enumerate(envs)]
        live = np.ones(2 * pairs, dtype=bool)
        returns = np.full(2 * pairs, np.nan)
        q_gap = np.full(pairs, np.nan)
        discount = np.ones(2 * pairs)
        chunk_shape = (self.chunk, agent.action_dim)
        step = 0
        while step < max_steps and live.any():
            # The same noise for both halves: one seed per decision, each half acted on separately.
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
            plans = np.empty((2 * pairs, *chunk_shape), dtype=np.float32)
            for half in (slice(0, pairs), slice(pairs, 2 * pairs)):
                torch.manual_seed(seed)
                plans[half] = agent.act(stack_obs(obs[half]), continuation).cpu().numpy().reshape(-1, *chunk_shape)
            at_branch = [i for i in range(pairs) if branch[i] == step and live[i] and live[i + pairs]]
            if at_branch:
                states, _ = to_tensor(stack_obs([obs[i] for i in at_branch]), agent.obs_spec, agent.device)
                samples = agent.sample_policy(states)
                with torch.no_grad():
                    values = agent.action_optimizer.value(agent.acting_critic, states, samples)  # [M, N]
                best = values.argmax(-1)
                other = (best + torch.randint(1, values.shape[1], best.shape, device=best.device)) % values.shape[1]
                rows = torch.arange(len(at_branch), device=best.device)
                plans[at_branch] = samples[rows, best].reshape(-1, *chunk_shape).cpu().numpy()
                plans[[i + pairs for i in at_branch]] = samples[rows, other].reshape(-1, *chunk_shape).cpu().numpy()
                q_gap[at_branch] = (values[rows, best] - values[rows, other]).cpu().numpy()
                returns[at_branch] = 0.0
                returns[[i + pairs for i in at_branch]] = 0.0
            for j in range(self.chunk):
                for i in np.flatnonzero(live):
                    obs[i], r, terminated, truncated, _ = envs[i].step(plans[i, j])
                    if not np.isnan(returns[i]):
                        returns[i] += discount[i] * reward(float(r))
                        discount[i] *= self.gamma
                    if terminated or truncated or step + 1 >= max_steps:
                        live[i] = False
                step += 1
        return np.stack([returns[:pairs], returns[pairs:]], 1), q_gap
