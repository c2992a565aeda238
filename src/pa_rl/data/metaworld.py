"""Meta-World v3 datasets of mixed quality from the scripted experts.

For a task with a scripted policy (``metaworld.policies.ENV_POLICY_MAP``), each episode runs the
expert with Gaussian action noise of one std σ drawn per episode uniformly from
``NOISE_LEVELS = (0.1, 0.5, 1.0)`` (then clipped to [-1, 1]): near-expert, mediocre and poor
episodes in one dataset (push succeeds ~100 / 45 / 30 % at these σ). Following the PA-RL
reference generator, the reward is ``success - 1`` (-1 per step, 0 at the success step) and the
episode terminates at success; the 200-step limit is a truncation. The env recorded with the data
(:func:`make_env`) returns that same reward, not Meta-World's dense shaped one, so online
fine-tuning adds transitions on the data's reward scale.

Env: ``metaworld.make_mt_envs(task, seed=seed, terminate_on_success=True)``, i.e. what
``gym.make("Meta-World/MT1", env_name=task, seed=seed, terminate_on_success=True)`` builds,
39-d observations (goal included), 4-d actions. MT1 draws a fixed set of 50 goal/object
configurations from ``seed``; a reset with a seed picks one of them from that seed, one without
from MT1's own RNG (see :class:`MT1Env`). That registration's
entry point is a lambda, which an ``EnvSpec`` cannot serialise, so datasets record
``make_env`` below (``pa_rl.data.metaworld:make_env``) with the same ``seed`` kwarg as both env
and eval env: evaluation draws from exactly the 50 configurations the data cover.

Default size: 50k transitions (measured: push 39 s, pick-place 76 s on one core; 55 % / 65 % of
the episodes succeed).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import gymnasium as gym
import metaworld
import numpy as np
from gymnasium.envs.registration import EnvSpec
from metaworld.policies import ENV_POLICY_MAP
from metaworld.wrappers import RandomTaskSelectWrapper

from pa_rl.data.generator import EpisodePlan, Generated, noisy, rollout

NOISE_LEVELS = (0.1, 0.5, 1.0)
MAX_EPISODE_STEPS = 200
DEFAULT_SIZE = 50_000


def tasks() -> list[str]:
    """Task names with a scripted expert, without the ``-v3`` suffix (e.g. ``push``)."""
    return sorted(name.removesuffix("-v3") for name in ENV_POLICY_MAP)


class MT1Env(gym.Wrapper):
    """Meta-World's MT1 env as the datasets see it: reward ``success - 1`` instead of the dense
    shaped one, and a seeded reset picks its configuration from the seed.

    MT1's own task wrapper draws the configuration from an RNG that ``reset(seed=...)`` never
    touches, so envs built with the same ``seed`` replay one sequence: 20 parallel evaluation
    envs ran 20 copies of one configuration. A reset without a seed keeps MT1's draw.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._tasks = _find_wrapper(env, RandomTaskSelectWrapper)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        if seed is None:
            return self.env.reset(options=options)
        tasks = self._tasks.tasks
        self.unwrapped.set_task(tasks[np.random.default_rng(seed).integers(len(tasks))])
        self._tasks.toggle_sample_tasks_on_reset(False)
        try:
            return self.env.reset(seed=seed, options=options)
        finally:
            self._tasks.toggle_sample_tasks_on_reset(True)

    def step(self, action: np.ndarray) -> tuple:
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, float(info["success"]) - 1.0, terminated, truncated, info


def _find_wrapper(env: gym.Env, kind: type[gym.Wrapper]) -> gym.Wrapper:
    while not isinstance(env, kind):
        if not isinstance(env, gym.Wrapper):
            raise TypeError(f"no {kind.__name__} in the Meta-World env's wrappers (metaworld {version('metaworld')})")
        env = env.env
    return env


def make_env(task: str, seed: int, render_mode: str | None = None) -> gym.Env:
    """Gym entry point recorded in the datasets: the MT1 env of ``task`` (terminates on success),
    rewarding ``success - 1``, with seeded resets choosing among its 50 configurations.

    The step limit comes from the spec's ``max_episode_steps`` (the inner Meta-World limit stays
    at its 500-step maximum, past which Meta-World raises).
    """
    env = metaworld.make_mt_envs(f"{task}-v3", seed=seed, terminate_on_success=True, render_mode=render_mode)
    return MT1Env(env)


def env_spec(task: str, seed: int) -> EnvSpec:
    """Serialisable spec of :func:`make_env` (the env checker is off: Meta-World's observation
    space gives the goal coordinates zero bounds, which the checker flags on every make)."""
    return EnvSpec(
        id=f"pa-rl/MetaWorld-{task}-v3",
        entry_point="pa_rl.data.metaworld:make_env",
        max_episode_steps=MAX_EPISODE_STEPS,
        disable_env_checker=True,
        kwargs={"task": task, "seed": seed},
    )


def generate(
    task: str, *, size: int | None = None, seed: int = 0, progress: bool = True
) -> Generated:
    """Roll the noisy expert for exactly ``size`` transitions (default ``DEFAULT_SIZE``)."""
    size = DEFAULT_SIZE if size is None else size
    spec = env_spec(task, seed)
    env = gym.make(spec)
    policy = ENV_POLICY_MAP[f"{task}-v3"]()
    rng = np.random.default_rng(seed)

    def new_episode() -> EpisodePlan:
        sigma = NOISE_LEVELS[rng.integers(len(NOISE_LEVELS))]
        return EpisodePlan(noisy(policy.get_action, sigma, rng), infos={"noise_std": sigma})

    with warnings.catch_warnings():
        # The scripted policies warn that their gains exceed the [-1, 1] action range.
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        buffers = rollout(
            env,
            new_episode,
            size=size,
            seed=seed,
            desc=f"metaworld-{task}",
            progress=progress,
        )
    return Generated(
        buffers,
        env,
        spec,
        description=(
            f"Meta-World {task}-v3 (MT1, seed {seed}): scripted expert with Gaussian action "
            f"noise, std drawn per episode from {NOISE_LEVELS}; reward success - 1, "
            f"termination at success, {MAX_EPISODE_STEPS}-step limit; {size} transitions."
        ),
        algorithm_name="pa-rl noisy Meta-World scripted expert",
        requirements=[f"metaworld=={version('metaworld')}", f"mujoco=={version('mujoco')}"],
    )
