"""Image and language observations in the data layer: Minari data sets with Dict observations (camera
images, vectors, a Text instruction) load as mapping Episodes; bad ones are refused with a message that
names the key, the episode and the step; the built-in pixel PointMaze recipe."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
import torch
from minari import DataCollector
from minari.data_collector.episode_buffer import EpisodeBuffer

from helpers import PixelPointGoal

from pa_rl import Agent, AgentConfig, CriticConfig, OptimizerConfig, TrainConfig, train
from pa_rl.cli import main
from pa_rl.data import DataError, dataset_info, load_dataset, make_dataset
from pa_rl.data.episodes import check_observations
from pa_rl.data.minari_io import untrusted_entry_points
from pa_rl.data.pointmaze_pixels import BALL, INSTRUCTIONS, MazeRenderer
from pa_rl.observations import TEXT_LENGTH, Field, decode_text, spec_of_space, stack_obs
from pa_rl.train import adapt_env

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CHARSET = "abcdefghijklmnopqrstuvwxyz "
INSTRUCTIONS_BY_EPISODE = ["pick up the red block", "open the drawer", "press the button"]
STEPS = 5


class CameraEnv(gym.Env):
    """Two cameras (a 32 x 32 one, which minari stores as JPEG, and a 16 x 16 one, stored raw), a 3-d
    state and an instruction that changes from episode to episode; five steps an episode."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({
            "front": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
            "wrist": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "state": gym.spaces.Box(-10.0, 10.0, (3,), np.float32),
            "instruction": gym.spaces.Text(60, charset=CHARSET),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t, self.episode = 0, 0

    def _obs(self) -> dict:
        front = np.zeros((32, 32, 3), np.uint8)
        front[..., 0] = 40 * self.t  # flat colours: JPEG keeps them to within a few levels
        front[..., 2] = 200
        wrist = np.full((16, 16, 3), self.t + 10 * self.episode, np.uint8)
        state = np.array([self.t, self.episode, -1.0], np.float32)
        return {"front": front, "wrist": wrist, "state": state,
                "instruction": INSTRUCTIONS_BY_EPISODE[self.episode % len(INSTRUCTIONS_BY_EPISODE)]}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t, self.episode = 0, int(seed or 0) % 20  # evaluation seeds are large; pixels stay below 256
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), float(self.t), False, self.t >= STEPS, {}


class FloatCameraEnv(CameraEnv):
    """CameraEnv whose front camera gives floats in [0, 1]: the same layout, not the same observations."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "front": gym.spaces.Box(0.0, 1.0, (32, 32, 3), np.float32)})

    def _obs(self) -> dict:
        obs = super()._obs()
        return {**obs, "front": obs["front"].astype(np.float32) / 255}


CAMERA_ID, FLOAT_CAMERA_ID = "pa_rl_test/Cameras-v0", "pa_rl_test/FloatCameras-v0"
for _id, _entry in ((CAMERA_ID, f"{__name__}:CameraEnv"), (FLOAT_CAMERA_ID, f"{__name__}:FloatCameraEnv")):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry)


def _collect(root: Path, monkeypatch: pytest.MonkeyPatch, episodes: int = 3, eval_env: str | None = None) -> str:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = DataCollector(gym.make(CAMERA_ID))
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(np.array([0.5, -0.5], np.float32))
            done = terminated or truncated
    env.create_dataset("test/cameras-v0", eval_env=eval_env, algorithm_name="constant", author="pa-rl tests",
                       description="two cameras, a state and an instruction")
    env.close()
    return str(root / "test" / "cameras-v0")


# ---- (a) a Dict data set written by minari's own DataCollector ----------------------------------------


def test_collected_dict_data_load_as_mapping_episodes(tmp_path: Path, monkeypatch) -> None:
    path = _collect(tmp_path, monkeypatch)
    raw = minari.load_dataset("test/cameras-v0")
    assert raw.storage.jpeg_encoding  # minari's default: camera images as JPEG
    assert raw[1].observations["instruction"][0] == "open the drawer"  # how minari 0.5 gives Text back: str
    data = load_dataset(path)
    assert data.obs_spec == {"front": Field("image", (32, 32, 3)), "instruction": Field("text", (TEXT_LENGTH,)),
                             "state": Field("vector", (3,)), "wrist": Field("image", (16, 16, 3))}
    assert len(data.episodes) == 3 and data.num_transitions == 3 * STEPS
    for index, episode in enumerate(data.episodes):
        obs = episode.observations
        check_observations(obs, data.obs_spec, STEPS + 1, f"episode {index}")
        assert obs["front"].dtype == np.uint8 and obs["front"].shape == (STEPS + 1, 32, 32, 3)
        assert np.abs(obs["front"][:, 0, 0, 0].astype(int) - 40 * np.arange(STEPS + 1)).max() <= 3  # JPEG
        assert np.array_equal(obs["wrist"][:, 0, 0, 0], np.arange(STEPS + 1) + 10 * index)  # stored raw
        assert obs["state"].dtype == np.float32 and np.array_equal(obs["state"][:, 0], np.arange(STEPS + 1))
        assert obs["instruction"].dtype == np.uint8 and obs["instruction"].shape == (STEPS + 1, TEXT_LENGTH)
        assert {decode_text(row) for row in obs["instruction"]} == {INSTRUCTIONS_BY_EPISODE[index]}
        assert np.array_equal(episode.rewards, np.arange(1, STEPS + 1))
    assert data.fingerprint()["sha256"] == load_dataset(path).fingerprint()["sha256"]
    info = dataset_info(path)
    assert "observation_dim" not in info
    assert info["observation"]["instruction"] == "text uint8 (64,), e.g. 'pick up the red block'"
    assert info["observation"]["front"] == "image uint8 (32, 32, 3)"


def test_collected_env_is_recovered_in_the_data_form(tmp_path: Path, monkeypatch) -> None:
    data = load_dataset(_collect(tmp_path, monkeypatch, episodes=1))  # its env id is registered (above): trusted
    env = data.make_env()
    obs, _ = env.reset(seed=2)
    assert set(obs) == set(data.obs_spec)
    check_observations(stack_obs([obs]), data.obs_spec, 1, "recovered env")
    assert decode_text(obs["instruction"]) == "press the button"
    env.close()


class TwoCameraPolicy(torch.nn.Module):
    """A user's class for this data: both cameras and the state into one Gaussian over 2-d actions."""

    def __init__(self) -> None:
        super().__init__()
        self.front = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.Flatten())
        self.head = torch.nn.Linear(4 * 7 * 7 + 16 * 16 * 3 + 3, 4)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        front = self.front(obs["front"].permute(0, 3, 1, 2).float() / 255)
        x = torch.cat([front, obs["wrist"].flatten(1).float() / 255, obs["state"]], -1)
        mean, log_std = self.head(x).chunk(2, -1)
        return mean.tanh(), log_std.clamp(-4, 0).exp()

    def sample(self, obs: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
        mean, std = self(obs)
        return (mean[:, None] + std[:, None] * torch.randn(len(mean), num_samples, 2)).clamp(-1, 1)

    def loss(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        mean, std = self(obs)
        return (((actions - mean) / std) ** 2 / 2 + std.log()).sum(-1).mean()


def test_collected_data_train_through_the_cli_and_the_python_api(tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    path = _collect(tmp_path, monkeypatch, episodes=6)
    monkeypatch.chdir(tmp_path)
    tiny = ["--train.bc-steps", "10", "--train.offline-steps", "10", "--train.online-env-steps", "10",
            "--train.eval-episodes", "2", "--train.diagnostic-pairs", "1", "--train.batch-size", "8",
            "--train.no-progress", "--diffusion.hidden-dim", "32", "--agent.critic.hidden-dims", "32", "32"]
    assert main(["train", "--dataset", path, "--name", "cameras", "--agent.chunk", "2", *tiny]) == 0
    assert json.loads((tmp_path / "runs" / "cameras" / "summary.json").read_text())["env_steps"] == 10
    data = load_dataset(path)
    agent = Agent(TwoCameraPolicy(), data.obs_spec, data.action_low, data.action_high,
                  AgentConfig(critic=CriticConfig(ensemble_size=2, hidden_dims=(32,)),
                              optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1)))
    result = train(agent, data.episodes, data.make_env, TrainConfig(
        batch_size=8, bc_steps=10, offline_steps=10, online_env_steps=10, eval_episodes=2, diagnostic_pairs=1,
        progress=False))
    assert result.summary["online"]["eval/pa_rl_length"] == STEPS


def test_an_env_whose_observations_differ_from_the_data_is_refused(tmp_path: Path, monkeypatch) -> None:
    data = load_dataset(_collect(tmp_path, monkeypatch, episodes=1, eval_env=FLOAT_CAMERA_ID))
    with pytest.raises(DataError, match=r"gives observations \{'front': vector float32 \(3072,\), .* but the dataset "
                                        r"has \{'front': image uint8 \(32, 32, 3\), "):
        data.make_env()
    data.make_env(eval_env=False).close()  # the collection env fits


def test_fingerprint_covers_every_key(tmp_path: Path, monkeypatch) -> None:
    data = load_dataset(_collect(tmp_path, monkeypatch, episodes=2))
    before = data.fingerprint()["sha256"]
    data.episodes[1].observations["instruction"][3, 0] += 1
    assert data.fingerprint()["sha256"] != before


# ---- (c) bad input ---------------------------------------------------------------------------------


ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
IMAGE = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
TEXT = gym.spaces.Text(40, charset=CHARSET)


def _buffer(observations: dict, steps: int = 4) -> EpisodeBuffer:
    return EpisodeBuffer(observations=observations, actions=np.zeros((steps, 2), np.float32), rewards=np.zeros(steps),
                         terminations=np.zeros(steps, bool), truncations=np.eye(1, steps, steps - 1, dtype=bool)[0])


def _good(steps: int = 4) -> dict:
    return {"camera": np.zeros((steps + 1, 32, 32, 3), np.uint8), "state": np.zeros((steps + 1, 2), np.float32),
            "instruction": ["open the drawer"] * (steps + 1)}


SPACE = gym.spaces.Dict({"camera": IMAGE, "state": gym.spaces.Box(-1, 1, (2,), np.float32), "instruction": TEXT})


def _with(**changes) -> dict:
    observations = _good()
    for key, value in changes.items():
        if value is None:
            del observations[key]
        else:
            observations[key] = value
    return observations


def _mixed_sizes() -> list[np.ndarray]:
    frames = [np.zeros((32, 32, 3), np.uint8)] * 3 + [np.zeros((24, 32, 3), np.uint8)] * 2
    return frames  # a list: minari JPEG-encodes frame by frame


BAD = {
    "image of another shape": (SPACE, _with(camera=np.zeros((5, 24, 24, 3), np.uint8)), {},
                               "episode 1, step 0: observation key 'camera' holds images of shape (24, 24, 3), the "
                               "observation space says (32, 32, 3)"),
    "one frame of another shape": (SPACE, _with(camera=_mixed_sizes()), {},
                                   "episode 1, step 3: observation key 'camera' holds a (24, 32, 3) image, the "
                                   "observation space says (32, 32, 3)"),
    "float images": (SPACE, _with(camera=np.zeros((5, 32, 32, 3), np.float32)), {"jpeg_encoding": False},
                     "episode 1, step 0: observation key 'camera' holds float32 images; images must be uint8"),
    "a missing key": (SPACE, _with(state=None), {},
                      "episode 1: observation key 'state' is missing (stored keys: ['camera', 'instruction'])"),
    "numbers for an instruction": (SPACE, _with(instruction=np.full(5, 0.5)), {},
                                   "episode 1, step 0: observation key 'instruction' holds float64 numbers (e.g. "
                                   "np.float64(0.5)) where the observation space says Text"),
    "an instruction in a Box": (gym.spaces.Dict({"camera": IMAGE, "state": gym.spaces.Box(-1, 1, (2,), np.float32),
                                                 "instruction": gym.spaces.Box(-1, 1, (1,), np.float32)}),
                                _with(), {},
                                "episode 1, step 0: observation key 'instruction' holds text (b'open the drawer') "
                                "where the observation space says Box (1,) float32"),
    "an extra stored key": (SPACE, _with(gripper=np.zeros((5, 1))), {},
                            "episode 1: stored observation key 'gripper' is not in the observation space"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_observations_name_key_episode_and_step(tmp_path: Path, monkeypatch, case: str) -> None:
    space, bad, options, message = BAD[case]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    good = _good() if case != "an instruction in a Box" else {**_good(), "instruction": np.zeros((5, 1), np.float32)}
    minari.create_dataset_from_buffers("test/bad-v0", [_buffer(good), _buffer(bad)], observation_space=space,
                                       action_space=ACT, **options)
    with pytest.raises(DataError) as error:
        load_dataset(str(tmp_path / "test" / "bad-v0"))
    assert str(error.value).startswith("Dataset 'test/bad-v0', episode 1")
    assert message in str(error.value)
    assert "rewrite the dataset" in str(error.value) or "Regenerate" in str(error.value)


@pytest.mark.parametrize("sub", [gym.spaces.Discrete(3), gym.spaces.MultiBinary(4)])
def test_a_sub_space_pa_rl_cannot_take_is_named(tmp_path: Path, monkeypatch, sub: gym.Space) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    space = gym.spaces.Dict({"camera": IMAGE, "mode": sub})
    observations = {"camera": np.zeros((5, 32, 32, 3), np.uint8), "mode": np.stack([sub.sample() for _ in range(5)])}
    minari.create_dataset_from_buffers("test/sub-v0", [_buffer(observations)], observation_space=space,
                                       action_space=ACT)
    with pytest.raises(DataError, match=f"Dataset 'test/sub-v0': observation key 'mode' is a {type(sub).__name__} "
                                        r"space; pa-rl takes Box vectors, .* Convert that key"):
        load_dataset(str(tmp_path / "test" / "sub-v0"))


def test_a_long_instruction_is_cut_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    long = "move " * 20  # 100 bytes
    space = gym.spaces.Dict({"camera": IMAGE, "instruction": gym.spaces.Text(200, charset=CHARSET)})
    observations = {"camera": np.zeros((5, 32, 32, 3), np.uint8), "instruction": ["go"] * 2 + [long] * 3}
    minari.create_dataset_from_buffers("test/long-v0", [_buffer(observations)] * 3, observation_space=space,
                                       action_space=ACT)
    with pytest.warns(UserWarning, match="episode 0, step 2: instruction key 'instruction' has 100 UTF-8 bytes; "
                                         "pa-rl keeps the first 64") as warned:
        data = load_dataset(str(tmp_path / "test" / "long-v0"))
    assert len([w for w in warned if "UTF-8 bytes" in str(w.message)]) == 1  # once, not once an episode
    assert decode_text(data.episodes[2].observations["instruction"][4]) == long.encode()[:TEXT_LENGTH].decode()


def test_the_cli_exits_2_with_the_message_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    minari.create_dataset_from_buffers("test/bad-v0", [_buffer(_with(instruction=np.full(5, 0.5)))],
                                       observation_space=SPACE, action_space=ACT)
    path = tmp_path / "datasets" / "test" / "bad-v0"
    before = set(tmp_path.rglob("*"))
    for argv in (["data", "info", str(path)], ["train", "--dataset", str(path), "--name", "bad"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "episode 0, step 0: observation key 'instruction' holds float64 numbers" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "runs"}  # no run folder (lock_run's empty runs/ at most)


# ---- (d) the pixel PointMaze recipe ------------------------------------------------------------------

SIZE = 700


@pytest.fixture(scope="module")
def pixel_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("datasets")
    pixels = make_dataset("pointmaze-umaze-pixels", out_dir=str(root), size=SIZE, seed=4, progress=False)
    flat = make_dataset("pointmaze-umaze", out_dir=str(root), size=SIZE, seed=4, progress=False)
    return pixels, flat


def _ball_centre(frames: np.ndarray) -> np.ndarray:
    """(column, row) centroid of the ball's red pixels, per frame."""
    red = (frames[..., 0] > 150) & (frames[..., 1] < 120)
    rows, cols = np.indices(frames.shape[1:3])
    return np.stack([(red * cols).sum((1, 2)) / red.sum((1, 2)), (red * rows).sum((1, 2)) / red.sum((1, 2))], 1)


def test_pixel_data_shapes_and_instruction(pixel_paths: tuple[str, str]) -> None:
    data = load_dataset(pixel_paths[0])
    assert data.obs_spec == {"instruction": Field("text", (TEXT_LENGTH,)), "pixels": Field("image", (64, 64, 3)),
                             "velocity": Field("vector", (2,))}
    assert data.num_transitions == SIZE
    for index, episode in enumerate(data.episodes):
        check_observations(episode.observations, data.obs_spec, len(episode) + 1, f"episode {index}")
        assert {decode_text(row) for row in episode.observations["instruction"]} == {INSTRUCTIONS["umaze"]}
    assert INSTRUCTIONS["umaze"] == "reach the goal at the top-left end of the U"
    # Stored raw (uint8, gzip), not as JPEG: loaded frames are the env's frames.
    metadata = json.loads((Path(pixel_paths[0]) / "data" / "metadata.json").read_text())
    assert metadata["jpeg_encoding"] is False
    with h5py.File(Path(pixel_paths[0]) / "data" / "main_data.hdf5") as file:
        stored = file["episode_0/observations/pixels"]
        assert stored.dtype == np.uint8 and stored.shape == (len(data.episodes[0]) + 1, 64, 64, 3)
        assert stored.compression == "gzip"


def test_pixel_data_follow_the_flat_recipe_and_the_ball_follows_the_position(pixel_paths: tuple[str, str]) -> None:
    pixels, flat = (load_dataset(path) for path in pixel_paths)
    assert [len(e) for e in pixels.episodes] == [len(e) for e in flat.episodes]  # one seed, the same trajectories
    for image_episode, flat_episode in zip(pixels.episodes, flat.episodes):
        assert np.array_equal(image_episode.actions, flat_episode.actions)
        assert np.array_equal(image_episode.rewards, flat_episode.rewards)
        assert np.array_equal(image_episode.terminations, flat_episode.terminations)
        assert np.array_equal(image_episode.observations["velocity"], flat_episode.observations[:, 2:4])
    frames = np.concatenate([e.observations["pixels"] for e in pixels.episodes])
    xy = np.concatenate([e.observations[:, :2] for e in flat.episodes])
    centre = _ball_centre(frames)
    assert np.corrcoef(centre[:, 0], xy[:, 0])[0, 1] > 0.99  # right in the maze is right in the frame
    assert np.corrcoef(centre[:, 1], -xy[:, 1])[0, 1] > 0.99  # up in the maze is up in the frame
    assert np.ptp(xy, 0).min() > 1.0  # the ball did travel


def test_renderer_moves_the_ball_by_sub_pixel_steps(pixel_paths: tuple[str, str]) -> None:
    env = load_dataset(pixel_paths[0]).make_env()
    renderer = MazeRenderer(env.unwrapped.maze, np.zeros(2), 64)
    first, moved = renderer(np.array([0.5, -1.5])), renderer(np.array([0.52, -1.5]))
    assert not np.array_equal(first, moved)  # 0.02 units = 0.26 pixel
    assert (first == np.array(BALL, np.uint8)).all(-1).any()
    assert _ball_centre(renderer(np.array([1.0, -1.5]))[None])[0, 0] > _ball_centre(first[None])[0, 0]
    env.close()


def test_pixel_eval_env_gives_the_data_form_and_renders(pixel_paths: tuple[str, str]) -> None:
    data = load_dataset(pixel_paths[0])
    metadata = json.loads((Path(pixel_paths[0]) / "data" / "metadata.json").read_text())
    assert untrusted_entry_points(metadata) == []  # its env is pa-rl's own
    assert json.loads(metadata["env_spec"])["id"] == json.loads(metadata["eval_env_spec"])["id"]
    env = data.make_env()
    assert env.spec.max_episode_steps == 300
    assert spec_of_space(env.unwrapped.observation_space) == env.obs_spec == data.obs_spec
    obs, _ = env.reset(seed=0)
    observations = [obs]
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        observations.append(obs)
    check_observations(stack_obs(observations), data.obs_spec, 6, "eval env")
    assert decode_text(obs["instruction"]) == INSTRUCTIONS["umaze"]
    env.close()
    video = data.make_env(render_mode="rgb_array")
    video.reset(seed=0)
    frame = video.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] >= 64
    video.close()


def test_data_info_shows_the_keys(pixel_paths: tuple[str, str], capsys) -> None:
    assert main(["data", "info", pixel_paths[0]]) == 0
    out = capsys.readouterr().out
    assert "observation_dim" not in out
    assert "observation:\n" in out
    assert "pixels: image uint8 (64, 64, 3)" in out and "velocity: vector float32 (2,)" in out
    assert "instruction: text uint8 (64,), e.g. 'reach the goal at the top-left end of the U'" in out


def test_an_env_whose_observations_differ_from_the_data_is_refused_before_it_steps() -> None:
    spec = spec_of_space(PixelPointGoal().observation_space)
    assert adapt_env(PixelPointGoal(), spec).reset(seed=0)[0]["pixels"].shape == (12, 12, 3)
    with_velocity = {**spec, "velocity": Field("vector", (2,))}
    with pytest.raises(DataError, match="velocity.*use data recorded in this env"):
        adapt_env(PixelPointGoal(), with_velocity)
    bigger = {**spec, "pixels": Field("image", (24, 24, 3))}
    with pytest.raises(DataError, match=r"\(24, 24, 3\)"):
        adapt_env(PixelPointGoal(), bigger)
