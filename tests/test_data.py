"""Data layer: generators write Minari datasets that minari and our loader read back; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector.episode_buffer import EpisodeBuffer

import pa_rl.data.minari_io as minari_io
from pa_rl.data import DataError, available_datasets, dataset_info, load_dataset, make_dataset
from pa_rl.data.pointmaze import MAZES, WaypointController

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAZE_SIZE = 3000
METAWORLD_SIZE = 500  # push, seed 1: 5 episodes, 3 of them successful


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def maze_path(root: Path) -> str:
    return make_dataset("pointmaze-umaze", out_dir=str(root), size=MAZE_SIZE, progress=False)


@pytest.fixture(scope="module")
def metaworld_path(root: Path) -> str:
    return make_dataset(
        "metaworld-push", out_dir=str(root), seed=1, size=METAWORLD_SIZE, progress=False
    )


def _check_episode_layout(data, obs_dim: int, act_dim: int, size: int) -> None:
    assert data.obs_spec == obs_dim and data.action_dim == act_dim
    assert sum(len(ep) for ep in data.episodes) == size
    for ep in data.episodes:
        t = len(ep)
        assert ep.observations.shape == (t + 1, obs_dim) and ep.observations.dtype == np.float32
        assert ep.actions.shape == (t, act_dim) and ep.actions.dtype == np.float32
        assert ep.rewards.shape == (t,) and ep.rewards.dtype == np.float32
        assert ep.terminations.dtype == bool and ep.truncations.dtype == bool
        ends = ep.terminations | ep.truncations
        assert ends[-1] and not ends[:-1].any() and not (ep.terminations & ep.truncations).any()
        assert (ep.actions >= data.action_low).all() and (ep.actions <= data.action_high).all()


def test_available_names() -> None:
    names = available_datasets()
    expected = {"pointmaze-umaze", "pointmaze-medium", "pointmaze-large", "metaworld-push"}
    assert expected <= set(names)


def test_pointmaze_loads_with_minari_and_ours(maze_path: str, root: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    raw = minari.load_dataset("pa-rl/pointmaze-umaze-v0")
    assert raw.total_steps == MAZE_SIZE
    assert raw.observation_space.shape == (4,)
    by_id = load_dataset("pa-rl/pointmaze-umaze-v0")
    by_path = load_dataset(maze_path)
    assert by_id.dataset_id == by_path.dataset_id == "pa-rl/pointmaze-umaze-v0"
    _check_episode_layout(by_path, obs_dim=4, act_dim=2, size=MAZE_SIZE)
    assert np.array_equal(by_id.episodes[0].observations, by_path.episodes[0].observations)


def test_a_built_in_data_set_is_trusted_in_a_fresh_process(maze_path: str) -> None:
    # As `pa-rl train --resume` loads it: by path, before anything has imported gymnasium-robotics.
    code = f"from pa_rl.data.minari_io import load_dataset; print(load_dataset({maze_path!r}).num_transitions)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(MAZE_SIZE), proc.stderr


def test_pointmaze_rewards_are_against_the_fixed_eval_goal(maze_path: str) -> None:
    data = load_dataset(maze_path)
    task = MAZES["umaze"]
    goal_xy = np.array([task.goal[1] + 0.5 - 2.5, 2.5 - (task.goal[0] + 0.5)])  # 5x5 unit cells
    rewards = np.concatenate([ep.rewards for ep in data.episodes])
    assert set(np.unique(rewards)) <= {0.0, 1.0} and rewards.sum() > 0
    for ep in data.episodes:
        # Reward 1 exactly at the terminal step, which lies within 0.45 of the (±0.25-noised) goal.
        assert np.array_equal(ep.rewards == 1.0, ep.terminations)
        if ep.terminations[-1]:
            assert np.linalg.norm(ep.observations[-1, :2] - goal_xy) <= 0.45 + 0.25 * np.sqrt(2)
    # The behaviour wanders between random targets: only part of the episodes reach the goal.
    assert 0.1 < dataset_info(maze_path)["success_rate"] < 0.9


def test_pointmaze_eval_env_fixed_start_and_success(maze_path: str) -> None:
    data = load_dataset(maze_path)
    env = data.make_env()
    task = MAZES["umaze"]
    assert env.observation_space.shape == (4,) and env.spec.max_episode_steps == 300
    controller = WaypointController(env.unwrapped.maze)
    controller.set_target(task.goal)
    obs, info = env.reset(seed=3)
    start_xy = env.unwrapped.maze.cell_rowcol_to_xy(np.array(task.start))
    assert obs.shape == (4,) and np.abs(obs[:2] - start_xy).max() <= 0.25 + 1e-9
    for _ in range(300):
        obs, reward, terminated, truncated, info = env.step(controller(obs).astype(np.float32))
        if terminated or truncated:
            break
    assert terminated and info["success"] and reward == 1.0
    env.close()


@pytest.mark.parametrize("maze", sorted(MAZES))
def test_noise_free_controller_reaches_targets(maze: str) -> None:
    """The noise-free controller reaches ≥ 90 % of random targets (measured: 100 %)."""
    env = gym.make(MAZES[maze].env_id, continuing_task=True, reset_target=False)
    controller = WaypointController(env.unwrapped.maze)
    rng = np.random.default_rng(0)
    obs = env.reset(seed=0)[0]["observation"]
    reached, n_targets = 0, 15
    for _ in range(n_targets):
        candidates = [c for c in controller.cells if c != controller.target]
        controller.set_target(candidates[rng.integers(len(candidates))])
        for _ in range(300):  # longest BFS path is 19 cells, ~12 steps per cell
            if controller.reached(obs[:2]):
                reached += 1
                break
            obs = env.unwrapped.step(controller(obs).astype(np.float32))[0]["observation"]
    env.close()
    assert reached / n_targets >= 0.9, f"{maze}: reached {reached}/{n_targets} targets"


def test_metaworld_dataset(metaworld_path: str, root: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    raw = minari.load_dataset("pa-rl/metaworld-push-v0")
    assert raw.total_steps == METAWORLD_SIZE
    data = load_dataset("pa-rl/metaworld-push-v0")
    _check_episode_layout(data, obs_dim=39, act_dim=4, size=METAWORLD_SIZE)
    assert len(data.episodes) >= 3
    for ep in data.episodes:
        assert len(ep) <= 200
        assert set(np.unique(ep.rewards)) <= {-1.0, 0.0}
        # 0 only at the success step, which ends the episode.
        assert np.array_equal(ep.rewards == 0.0, ep.terminations)
    assert any(ep.terminations[-1] for ep in data.episodes)
    env = data.make_env()
    assert env.spec.max_episode_steps == 200
    obs, _ = env.reset(seed=0)
    for _ in range(3):  # the env rewards as the data do (success - 1), not Meta-World's dense reward
        obs, reward, _, _, info = env.step(env.action_space.sample())
        assert obs.shape == (39,)
        assert reward == float(info["success"]) - 1.0
    # A seeded reset picks the configuration from its seed (MT1's own draw ignores the seed, so
    # parallel evaluation envs built alike all ran one configuration).
    other = data.make_env()
    goals = [tuple(env.reset(seed=seed)[0][-3:]) for seed in range(8)]
    assert len(set(goals)) >= 4
    assert tuple(other.reset(seed=5)[0][-3:]) == goals[5]
    env.close()
    other.close()


def test_dataset_info(maze_path: str) -> None:
    info = dataset_info(maze_path)
    assert info["transitions"] == MAZE_SIZE and info["observation_dim"] == 4
    assert info["action_dim"] == 2 and info["path"] == maze_path
    assert info["return_min"] == 0.0 and info["return_max"] == 1.0
    assert info["success_rate"] == pytest.approx(info["terminated_fraction"])


def test_existing_dataset_is_kept_unless_overwrite(maze_path: str, root: Path) -> None:
    with pytest.raises(DataError, match=r"already exists at .*pass --overwrite \(overwrite=True in Python\)"):
        make_dataset("pointmaze-umaze", out_dir=str(root), size=MAZE_SIZE, progress=False)
    assert load_dataset(maze_path).num_transitions == MAZE_SIZE


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    real = minari.create_dataset_from_buffers

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("crash after writing")

    monkeypatch.setattr(minari_io.minari, "create_dataset_from_buffers", crash)
    with pytest.raises(RuntimeError, match="crash"):
        make_dataset("pointmaze-umaze", out_dir=str(tmp_path), size=50, progress=False)
    leftovers = [p for p in tmp_path.rglob("*") if p.name != "pa-rl"]
    assert leftovers == []
    with pytest.raises(DataError, match="No data set named"):
        load_dataset(str(tmp_path / "pa-rl" / "pointmaze-umaze-v0"))


def test_a_killed_write_leaves_nothing_behind_for_long(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID no process has any more, as a killed `data make` leaves behind
    orphan, live = tmp_path / f".pa-rl-tmp-{gone.pid}-abc", tmp_path / f".pa-rl-tmp-{os.getpid()}-def"
    for folder in (orphan, live):
        (folder / "pa-rl").mkdir(parents=True)
    make_dataset("pointmaze-umaze", out_dir=str(tmp_path), size=50, progress=False)
    assert not orphan.exists() and live.exists()  # a write under way keeps its folder


def test_overwrite_replaces(tmp_path: Path) -> None:
    make_dataset("pointmaze-umaze", out_dir=str(tmp_path), size=40, progress=False)
    path = make_dataset(
        "pointmaze-umaze", out_dir=str(tmp_path), size=60, progress=False, overwrite=True
    )
    assert load_dataset(path).num_transitions == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pa-rl"]


# ---- error messages -------------------------------------------------------------------------


def _write(root: Path, monkeypatch, dataset_id, buffers, obs_space, act_space, env=None) -> str:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env, observation_space=obs_space, action_space=act_space
    )
    return str(root / dataset_id)


def _box_episode(t: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> EpisodeBuffer:
    rng = np.random.default_rng(seed)
    return EpisodeBuffer(
        observations=rng.standard_normal((t + 1, obs_dim)),
        actions=rng.uniform(-1, 1, (t, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(t),
        terminations=np.zeros(t, bool),
        truncations=np.eye(1, t, t - 1, dtype=bool)[0],
    )


BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def test_missing_dataset_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DataError, match="pa-rl data make") as err:
        load_dataset("pa-rl/pointmaze-huge-v0")
    assert str(tmp_path / "pa-rl" / "pointmaze-huge-v0" / "data") in str(err.value)
    with pytest.raises(DataError, match="holds no Minari dataset"):
        load_dataset(str(tmp_path))


def test_mistyped_name_message(maze_path: str, root: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    for typo in ("pointmaze-umze", "pa-rl/pointmaze-umaze"):  # the second is an id without its version
        with pytest.raises(DataError) as err:
            load_dataset(typo)
        message = str(err.value)
        assert message.startswith(f"No data set named {typo!r} (close names: ")
        assert "pa-rl/pointmaze-umaze-v0" in message.split(f"Local Minari ids under {root}: ")[1].split(". ")[0]
        assert "`pa-rl data make NAME`" in message
    assert "pointmaze-umaze," in message and "pa-rl/pointmaze-umaze-v0" in message.split("; looked at")[0]


def test_unknown_name_message() -> None:
    with pytest.raises(DataError, match="Unknown dataset name 'pointmaze-tiny'.*pointmaze-umaze"):
        make_dataset("pointmaze-tiny")
    with pytest.raises(DataError, match="positive"):
        make_dataset("pointmaze-umaze", size=0)


def test_nan_message(tmp_path: Path, monkeypatch) -> None:
    bad = _box_episode(5, seed=1)
    bad.observations[2, 1] = np.nan
    path = _write(tmp_path, monkeypatch, "test/nan-v0", [_box_episode(4), bad], BOX_OBS, BOX_ACT)
    with pytest.raises(DataError, match="episode 1: non-finite observations"):
        load_dataset(path)


def test_action_bounds_message(tmp_path: Path, monkeypatch) -> None:
    bad = _box_episode(5)
    bad.actions[3, 0] = 1.5
    path = _write(tmp_path, monkeypatch, "test/bounds-v0", [bad], BOX_OBS, BOX_ACT)
    with pytest.raises(DataError, match=r"episode 0: action\[3\]\[0\] = 1.5 is outside"):
        load_dataset(path)
    bad.actions[3, 0] = 1.0 + 5e-7  # within tolerance
    path = _write(tmp_path, monkeypatch, "test/tolerance-v0", [bad], BOX_OBS, BOX_ACT)
    assert load_dataset(path).num_transitions == 5


def test_non_box_action_message(tmp_path: Path, monkeypatch) -> None:
    episode = EpisodeBuffer(
        observations=np.zeros((4, 3)),
        actions=np.array([0, 1, 2]),
        rewards=np.zeros(3),
        terminations=np.array([False, False, True]),
        truncations=np.zeros(3, bool),
    )
    discrete = gym.spaces.Discrete(3)
    path = _write(tmp_path, monkeypatch, "test/discrete-v0", [episode], BOX_OBS, discrete)
    with pytest.raises(DataError, match="Discrete action space; pa-rl needs continuous Box"):
        load_dataset(path)


def test_wrong_action_dimension_message(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, monkeypatch, "test/actdim-v0", [_box_episode(450, act_dim=4)], BOX_OBS,
                  gym.spaces.Box(-1.0, 1.0, (4,), np.float32))
    metadata_path = Path(path) / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["action_space"] = minari.serialization.serialize_space(BOX_ACT)  # now says 2-d
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=r"episode 0: stored actions of shape \(4,\), the action space says \(2,\)"):
        load_dataset(path)


def test_empty_dataset_message(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, monkeypatch, "test/empty-v0", [], BOX_OBS, BOX_ACT)
    with pytest.raises(DataError, match="has no episodes"):
        load_dataset(path)


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_malformed_dataset_message(tmp_path: Path, monkeypatch, damage: str) -> None:
    path = _write(tmp_path, monkeypatch, "test/broken-v0", [_box_episode(40), _box_episode(30)], BOX_OBS, BOX_ACT)
    data = Path(path) / "data" / "main_data.hdf5"
    data.write_bytes(b"not hdf5" if damage == "overwritten" else data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DataError, match="malformed or unreadable"):
        load_dataset(path)


def test_env_observation_dim_mismatch_message(tmp_path: Path, monkeypatch) -> None:
    # Pendulum has 3-d observations; this data claims 5-d ones.
    obs_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float64)
    act_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    path = _write(
        tmp_path, monkeypatch, "test/mismatch-v0", [_box_episode(4, obs_dim=5, act_dim=1)],
        obs_space, act_space, env="Pendulum-v1",
    )
    data = load_dataset(path)
    with pytest.raises(DataError, match="3-d flat observations but the dataset has 5-d"):
        data.make_env()


def test_nested_dict_observations_flatten_like_gymnasium(tmp_path: Path, monkeypatch) -> None:
    obs_space = gym.spaces.Dict(
        {
            "b": gym.spaces.Box(-1, 1, (2,)),
            "a": gym.spaces.Dict(
                {"y": gym.spaces.Box(-1, 1, (1,)), "x": gym.spaces.Box(-1, 1, (2, 2))}
            ),
        }
    )
    t = 4
    rng = np.random.default_rng(0)
    samples = [obs_space.sample() for _ in range(t + 1)]
    stacked = {
        "b": np.stack([s["b"] for s in samples]),
        "a": {k: np.stack([s["a"][k] for s in samples]) for k in ("x", "y")},
    }
    episode = EpisodeBuffer(
        observations=stacked,
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
        rewards=np.zeros(t),
        terminations=np.zeros(t, bool),
        truncations=np.eye(1, t, t - 1, dtype=bool)[0],
    )
    path = _write(tmp_path, monkeypatch, "test/dict-v0", [episode], obs_space, BOX_ACT)
    data = load_dataset(path)
    expected = np.stack([gym.spaces.flatten(obs_space, s) for s in samples]).astype(np.float32)
    assert data.obs_spec == 7
    assert np.array_equal(data.episodes[0].observations, expected)
