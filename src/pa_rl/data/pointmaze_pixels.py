"""PointMaze seen from above: 64 × 64 camera frames, the velocity and an instruction, no position.

``pa-rl data make pointmaze-umaze-pixels`` runs the built-in umaze recipe (:mod:`pa_rl.data.pointmaze`:
same noisy waypoint controller, reward, termination, start and goal cells, default size, seed for seed
the same trajectories) but records, in place of the 4-d state, a Dict observation:

* ``pixels``: uint8 (64, 64, 3), a top-down render of the whole maze: walls (dark), floor (light),
  the goal region (green disc of the success radius, 0.45, around the goal cell's centre) and the
  ball (red disc of radius 0.2, anti-aliased, so that sub-pixel moves change the frame);
* ``velocity``: float32 (2,), the point's (vx, vy);
* ``instruction``: Text, ``"reach the goal at the top-left end of the U"`` (the same every step).

The controller still steers by the true position (as D4RL's does); only what is recorded differs.
Frames are drawn in numpy (a background precomputed once per maze and size, plus the ball's disc in
a small window around it): no MuJoCo rendering, no system library. The evaluation env
(``pa_rl/PointMazePixels_UMaze-v0``, recorded as ``env`` and ``eval_env``) renders the same way; with
``render_mode="rgb_array"`` its ``render()`` returns a 256 × 256 frame of the same picture.

Images are stored raw (uint8, not minari's default JPEG: training sees exactly what the env renders),
gzip-compressed in the HDF5 file. Measured on one thread (OMP_NUM_THREADS=1, a 2-core machine shared
with other jobs) at the default size, seed 0 (100k transitions, 447 episodes, 48 % of them reach the
goal, as in ``pointmaze-umaze``): ``pa-rl data make pointmaze-umaze-pixels`` takes 62 s (26 s rolling
out and rendering, ~5k steps/s; the rest writing 1.2 GB of raw frames and compressing them), 1.6 GB
peak memory; 47 MB on disk; ``load_dataset`` reads it back in 6 s.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np

from pa_rl.data.pointmaze import MAZES, REACH_RADIUS, Maze, eval_maze_map  # imports gymnasium-robotics quietly
from pa_rl.observations import TEXT_LENGTH

from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv  # noqa: E402  (after pointmaze's quiet import)

FRAME_SIZE = 64  # observation frames, pixels a side
RENDER_SIZE = 256  # render() frames (videos)
BALL_RADIUS = 0.2  # world units (the MuJoCo scene's particle site)
FLOOR, WALL, GOAL, BALL = ((225, 225, 215), (60, 60, 80), (90, 190, 90), (210, 40, 40))
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " -,.'"

# Mazes with a pixel data set, and the instruction every observation carries.
INSTRUCTIONS = {"umaze": "reach the goal at the top-left end of the U"}


def env_id(maze: str) -> str:
    return f"pa_rl/PointMazePixels_{MAZES[maze].env_id.split('_')[1].split('-')[0]}-v0"


class MazeRenderer:
    """Top-down frames of a maze: a precomputed background (floor, walls, goal region) plus the ball."""

    def __init__(self, maze: Maze, goal_xy: np.ndarray, size: int) -> None:
        rows, cols, scale = maze.map_length, maze.map_width, maze.maze_size_scaling
        self.size = size
        self.ppu = size / (max(rows, cols) * scale)  # pixels per world unit; the maze is centred
        self.x0 = maze.x_map_center - (size / self.ppu - cols * scale) / 2  # world x at the left edge
        self.y0 = maze.y_map_center + (size / self.ppu - rows * scale) / 2  # world y at the top edge
        xs = self.x_of(np.arange(size) + 0.5)
        ys = self.y_of(np.arange(size) + 0.5)
        col = np.floor((xs + maze.x_map_center) / scale).astype(int)
        row = np.floor((maze.y_map_center - ys) / scale).astype(int)
        walls = np.array([[c == 1 for c in r] for r in maze.maze_map])
        inside = (row[:, None] >= 0) & (row[:, None] < rows) & (col[None, :] >= 0) & (col[None, :] < cols)
        wall = ~inside | walls[np.clip(row, 0, rows - 1)[:, None], np.clip(col, 0, cols - 1)[None, :]]
        background = np.where(wall[..., None], np.float32(WALL), np.float32(FLOOR)).astype(np.float32)
        goal = self._coverage(xs[None, :], ys[:, None], goal_xy, REACH_RADIUS)
        self.background = background + goal[..., None] * (np.float32(GOAL) - background)
        self.frame = np.rint(self.background).astype(np.uint8)
        self.radius_px = BALL_RADIUS * self.ppu + 1.5

    def x_of(self, column: np.ndarray) -> np.ndarray:
        return column / self.ppu - self.x0

    def y_of(self, row: np.ndarray) -> np.ndarray:
        return self.y0 - row / self.ppu

    def _coverage(self, xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
        """How much of each pixel a disc covers (a one-pixel soft edge)."""
        distance = np.sqrt((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)
        return np.clip((radius - distance) * self.ppu + 0.5, 0.0, 1.0).astype(np.float32)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """The frame with the ball at world position ``xy``: uint8 (size, size, 3)."""
        frame = self.frame.copy()
        cx, cy = (xy[0] + self.x0) * self.ppu, (self.y0 - xy[1]) * self.ppu  # ball centre in pixels
        c0, c1 = max(int(cx - self.radius_px), 0), min(int(cx + self.radius_px) + 1, self.size)
        r0, r1 = max(int(cy - self.radius_px), 0), min(int(cy + self.radius_px) + 1, self.size)
        if c0 < c1 and r0 < r1:
            xs = self.x_of(np.arange(c0, c1) + 0.5)[None, :]
            ys = self.y_of(np.arange(r0, r1) + 0.5)[:, None]
            cover = self._coverage(xs, ys, xy, BALL_RADIUS)[..., None]
            under = self.background[r0:r1, c0:c1]
            frame[r0:r1, c0:c1] = np.rint(under + cover * (np.float32(BALL) - under)).astype(np.uint8)
        return frame


class PointMazePixelsEnv(gym.Env):
    """The pointmaze evaluation env (fixed start and goal cells, terminates on success) whose
    observations are ``{"pixels", "velocity", "instruction"}``; ``state`` holds the hidden (x, y, vx, vy)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, maze: str = "umaze", render_mode: str | None = None) -> None:
        if maze not in INSTRUCTIONS:
            raise ValueError(f"no pixel PointMaze {maze!r}; known: {sorted(INSTRUCTIONS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r}: this env renders 'rgb_array' only")
        self.render_mode = render_mode
        self._env = PointMazeEnv(maze_map=eval_maze_map(maze), continuing_task=False, reset_target=False)
        self.maze: Maze = self._env.maze
        self.instruction = INSTRUCTIONS[maze]
        goal = self.maze.cell_rowcol_to_xy(np.array(MAZES[maze].goal))
        self._frames = MazeRenderer(self.maze, goal, FRAME_SIZE)
        self._video = MazeRenderer(self.maze, goal, RENDER_SIZE) if render_mode == "rgb_array" else None
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8),
            "velocity": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "instruction": gym.spaces.Text(TEXT_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET),
        })
        self.action_space = self._env.action_space
        self.state = np.zeros(4)

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        self.state = raw["observation"]
        return {"pixels": self._frames(self.state[:2]), "velocity": self.state[2:4].astype(np.float32),
                "instruction": self.instruction}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        raw, info = self._env.reset(seed=seed, options=options)
        return self._observation(raw), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        raw, reward, terminated, truncated, info = self._env.step(action)
        return self._observation(raw), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return None if self._video is None else self._video(self.state[:2])

    def close(self) -> None:
        self._env.close()


def make_pixel_env(maze: str, *, render_mode: str | None = None) -> gym.Env:
    return gym.make(env_id(maze), render_mode=render_mode)


for _maze in INSTRUCTIONS:
    if env_id(_maze) not in gym.registry:
        gym.register(env_id(_maze), entry_point="pa_rl.data.pointmaze_pixels:PointMazePixelsEnv",
                     kwargs={"maze": _maze}, max_episode_steps=gym.spec(MAZES[_maze].env_id).max_episode_steps)
