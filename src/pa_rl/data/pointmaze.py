"""PointMaze datasets in the D4RL maze2d form (gymnasium-robotics ``PointMaze_*-v3``).

Recipe (after D4RL ``generate_maze2d_datasets.py --noisy``): a waypoint controller drives the
point mass to a randomly drawn target cell along the BFS shortest path through the maze cells
(PD control ``clip(10 * (waypoint - pos) - 1 * vel, -1, 1)`` towards the next cell centre, then
towards the target); Gaussian noise (std 0.5) is added to every action before clipping to
[-1, 1]; whenever a target is reached (within 0.45, the env's success radius) a new random target
cell is drawn and collection goes on.

What is recorded makes the data a stitching benchmark rather than an imitation one:

* observation: the 4-d ``observation`` entry only (x, y, vx, vy), no goal;
* reward: sparse, against ONE fixed evaluation goal (1 within 0.45 of it, else 0), not against
  the controller's target. The controller wanders between random targets, so behaviour cloning
  scores low and RL has to stitch the pieces of trajectories that pass by the goal.

The data are collected in the evaluation env itself (recorded as both ``env`` and ``eval_env``):
``PointMaze_<Maze>-v3`` with a custom ``maze_map`` holding one reset cell 'r' and one goal cell
'g', ``continuing_task=False`` (an episode terminates when the goal is reached; success is
``info["success"]``), the registered step limit as truncation (umaze 300, medium 600, large 800),
wrapped in ``FilterObservation(["observation"])`` then ``FlattenObservation``. So data and
evaluation share one MDP (same reward, same termination on success, both get the env's ±0.25-cell
goal noise); only the start state differs: each data episode starts at a uniformly drawn free
cell other than the goal cell, evaluation starts at 'r'.

Fixed (row, col) cells, as in D4RL's maze2d eval tasks, far apart:

=======  ========  ========  =================
maze     start r   goal g    BFS path (cells)
=======  ========  ========  =================
umaze    (3, 1)    (1, 1)    6 (the two ends of the U)
medium   (1, 1)    (6, 6)    10 (opposite corners)
large    (1, 1)    (7, 9)    14
=======  ========  ========  =================

Default sizes are 10x smaller than D4RL's (1M / 2M / 4M): 100k / 200k / 400k transitions
(measured: 4 / 9 / 21 s at ~20k steps/s on one core); ``size`` overrides them. With seed 0, the
fraction of data episodes that reach the eval goal is 48 % / 35 % / 19 %.

``pointmaze-umaze-pixels`` (:mod:`pa_rl.data.pointmaze_pixels`) records the same trajectories, seed
for seed, with a 64 x 64 top-down frame, the velocity and an instruction in place of the state.
"""

from __future__ import annotations

import contextlib
import io
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from pa_rl.data.generator import EpisodePlan, Generated, noisy, rollout

# Its import prints a notice about Adroit rewards to stderr, on every pa-rl command; pa-rl uses no Adroit env.
with contextlib.redirect_stderr(io.StringIO()):
    import gymnasium_robotics
    from gymnasium_robotics.envs.maze import maps
    from gymnasium_robotics.envs.maze.maze_v4 import Maze

gym.register_envs(gymnasium_robotics)

Cell = tuple[int, int]

REACH_RADIUS = 0.45  # the env's own success radius
DEFAULT_NOISE_STD = 0.5


@dataclass(frozen=True)
class MazeTask:
    env_id: str
    maze_map: list[list[int | str]]
    start: Cell
    goal: Cell
    default_size: int


MAZES: dict[str, MazeTask] = {
    "umaze": MazeTask("PointMaze_UMaze-v3", maps.U_MAZE, (3, 1), (1, 1), 100_000),
    "medium": MazeTask("PointMaze_Medium-v3", maps.MEDIUM_MAZE, (1, 1), (6, 6), 200_000),
    "large": MazeTask("PointMaze_Large-v3", maps.LARGE_MAZE, (1, 1), (7, 9), 400_000),
}


def eval_maze_map(maze: str) -> list[list[int | str]]:
    """The maze's map with the fixed reset cell marked 'r' and the fixed goal cell marked 'g'."""
    task = MAZES[maze]
    maze_map = [[0 if c in ("r", "g", "c") else c for c in row] for row in task.maze_map]
    maze_map[task.start[0]][task.start[1]] = "r"
    maze_map[task.goal[0]][task.goal[1]] = "g"
    return maze_map


def make_eval_env(maze: str, *, render_mode: str | None = None) -> gym.Env:
    """The evaluation env: fixed start and goal, terminates on success, 4-d flat observations."""
    env = gym.make(
        MAZES[maze].env_id,
        maze_map=eval_maze_map(maze),
        continuing_task=False,
        reset_target=False,
        render_mode=render_mode,
    )
    return gym.wrappers.FlattenObservation(gym.wrappers.FilterObservation(env, ["observation"]))


def free_cells(maze_map: list[list[int | str]]) -> list[Cell]:
    return [(i, j) for i, row in enumerate(maze_map) for j, c in enumerate(row) if c != 1]


class WaypointController:
    """D4RL-style maze controller: BFS path over cells, PD control to the next cell centre.

    The next waypoint is recomputed from the current cell at every step, so noise that knocks
    the point mass off its path never leaves the controller following a stale plan.
    """

    def __init__(self, maze: Maze, *, p_gain: float = 10.0, d_gain: float = 1.0) -> None:
        self.maze = maze
        self.cells = free_cells(maze.maze_map)
        self.p_gain = p_gain
        self.d_gain = d_gain
        self._next_cell: dict[Cell, dict[Cell, Cell]] = {}
        self.target: Cell = self.cells[0]
        self.target_xy = self.centre(self.target)

    def centre(self, cell: Cell) -> np.ndarray:
        return self.maze.cell_rowcol_to_xy(np.array(cell))

    def set_target(self, cell: Cell) -> None:
        self.target = cell
        self.target_xy = self.centre(cell)
        if cell not in self._next_cell:
            self._next_cell[cell] = self._bfs_next(cell)

    def reached(self, pos: np.ndarray) -> bool:
        return bool(np.linalg.norm(pos - self.target_xy) <= REACH_RADIUS)

    def cell_of(self, pos: np.ndarray) -> Cell:
        cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos))
        if cell in self._next_cell[self.target]:
            return cell
        # Numerically outside the free cells (touching a wall): snap to the nearest free cell.
        return min(self.cells, key=lambda c: float(np.linalg.norm(self.centre(c) - pos)))

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        pos, vel = observation[:2], observation[2:4]
        cell = self.cell_of(pos)
        if cell == self.target:
            waypoint = self.target_xy
        else:
            waypoint = self.centre(self._next_cell[self.target][cell])
        return np.clip(self.p_gain * (waypoint - pos) - self.d_gain * vel, -1.0, 1.0)

    def _bfs_next(self, target: Cell) -> dict[Cell, Cell]:
        """For every free cell, the neighbouring cell one step closer to ``target``."""
        free = set(self.cells)
        next_cell = {target: target}
        queue = deque([target])
        while queue:
            cell = queue.popleft()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                neighbour = (cell[0] + di, cell[1] + dj)
                if neighbour in free and neighbour not in next_cell:
                    next_cell[neighbour] = cell
                    queue.append(neighbour)
        return next_cell


def generate(
    maze: str,
    *,
    size: int | None = None,
    seed: int = 0,
    noise_std: float = DEFAULT_NOISE_STD,
    progress: bool = True,
    pixels: bool = False,
) -> Generated:
    """Roll the noisy controller in the eval env for ``size`` transitions (default per maze).

    ``pixels`` records :mod:`pa_rl.data.pointmaze_pixels`' observations (frames, velocity, instruction)
    in place of the 4-d state; the controller steers by the env's true state either way, so one seed
    gives the same trajectories."""
    task = MAZES[maze]
    size = task.default_size if size is None else size
    if pixels:
        from pa_rl.data.pointmaze_pixels import make_pixel_env

        env = make_pixel_env(maze)
        state = lambda observation: env.unwrapped.state  # noqa: E731
    else:
        env = make_eval_env(maze)
        state = lambda observation: observation  # noqa: E731
    rng = np.random.default_rng(seed)
    controller = WaypointController(env.unwrapped.maze)
    start_cells = [c for c in controller.cells if c != task.goal]

    def new_target(exclude: Cell) -> Cell:
        choices = [c for c in controller.cells if c != exclude]
        return choices[rng.integers(len(choices))]

    def act(observation: np.ndarray) -> np.ndarray:
        observation = state(observation)
        if controller.reached(observation[:2]):
            controller.set_target(new_target(controller.target))
        return controller(observation)

    noisy_act = noisy(act, noise_std, rng)

    def new_episode() -> EpisodePlan:
        start = start_cells[rng.integers(len(start_cells))]
        controller.set_target(new_target(start))
        return EpisodePlan(noisy_act, reset_options={"reset_cell": np.array(start)})

    name = f"pointmaze-{maze}" + ("-pixels" if pixels else "")
    buffers = rollout(env, new_episode, size=size, seed=seed, desc=name, progress=progress)
    if pixels:
        instruction = env.unwrapped.instruction
        observations = f"64x64 top-down frames, 2-d velocity and the instruction {instruction!r}"
    else:
        observations = "4-d observations"
    return Generated(
        buffers,
        env,
        env.spec,
        description=(
            f"D4RL maze2d-style {maze} PointMaze data: noisy (std {noise_std}) BFS "
            f"waypoint controller to random targets; {observations}; sparse reward and "
            f"termination at the fixed goal cell {task.goal}; eval start cell {task.start}; "
            f"{size} transitions, seed {seed}."
        ),
        algorithm_name="pa-rl noisy waypoint controller (D4RL maze2d recipe)",
        requirements=[f"gymnasium-robotics=={gymnasium_robotics.__version__}"],
        raw_images=pixels,
    )
