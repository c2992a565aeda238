"""Small environments that ship with pa-rl (for tests, examples and quick checks)."""

import gymnasium as gym

if "pa_rl/PointGoal-v0" not in gym.registry:
    gym.register("pa_rl/PointGoal-v0", entry_point="pa_rl.envs.point_goal:PointGoalEnv", max_episode_steps=40)
