"""LeRobot interop: a LeRobotDataset folder (v3.0 layout) loads as pa-rl data, and a lerobot policy is a
pa-rl policy through LeRobotPolicy.

The folders are written here the way lerobot writes them (parquet through pyarrow, one AV1 mp4 per
camera through PyAV, as lerobot's own encoder does), and, where the lerobot package imports, by
lerobot's own LeRobotDataset writer too. lerobot needs torchvision, which cannot load next to the CPU
torch that `make install` pins, so the tests that import it run only where it is installed (README).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pa_rl.cli import main
from pa_rl.data import DataError, dataset_info, load_dataset
from pa_rl.observations import decode_text

from helpers import TINY_TRAIN, kill_at_first_checkpoint

av = pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FPS = 10
SIZE = (64, 64)  # SVT-AV1's smallest frame is 64 pixels a side
TASKS = ["push the block", "open the drawer"]
CAMERA = "observation.images.top"


def frame(episode: int, step: int) -> np.ndarray:
    """A flat colour that names its episode and step, so a frame decoded from the wrong time shows."""
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    image[..., 0] = 40 * episode + 20
    image[..., 1] = 10 * step + 5
    image[..., 2] = 128
    return image


def make_episodes(lengths: tuple[int, ...] = (12, 9, 15)) -> list[dict]:
    rng = np.random.default_rng(0)
    episodes = []
    for e, length in enumerate(lengths):
        success = np.zeros(length, dtype=bool)
        if e != 1:  # episode 1 fails
            success[-1] = True
        episodes.append({
            "state": rng.normal(size=(length, 3)).astype(np.float32),
            "action": rng.uniform(-2, 2, size=(length, 2)).astype(np.float32),
            "images": np.stack([frame(e, t) for t in range(length)]),
            "reward": rng.normal(size=length).astype(np.float32),
            "success": success,
            "task": TASKS[e % 2],
        })
    return episodes


def write_video(path: Path, images: np.ndarray) -> None:
    """One AV1 stream at FPS, as lerobot encodes (libsvtav1, yuv420p, g=2, crf=30)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        stream.options = {"g": "2", "crf": "30"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def vector_column(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def write_folder(root: Path, episodes: list[dict], *, video: bool = True) -> Path:
    """A LeRobotDataset folder in lerobot's v3.0 layout (``lerobot/datasets/utils.py``): one data file,
    one episodes file, one mp4 per camera holding every episode one after another."""
    lengths = [len(ep["action"]) for ep in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frames = {
        "observation.state": vector_column(np.concatenate([ep["state"] for ep in episodes])),
        "action": vector_column(np.concatenate([ep["action"] for ep in episodes])),
        "timestamp": pa.array(np.concatenate([np.arange(n) / FPS for n in lengths]).astype(np.float32)),
        "frame_index": pa.array(np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)),
        "episode_index": pa.array(np.repeat(np.arange(len(episodes)), lengths).astype(np.int64)),
        "index": pa.array(np.arange(sum(lengths), dtype=np.int64)),
        "task_index": pa.array(np.repeat([TASKS.index(ep["task"]) for ep in episodes], lengths).astype(np.int64)),
        "next.reward": pa.array(np.concatenate([ep["reward"] for ep in episodes])),
        "next.success": pa.array(np.concatenate([ep["success"] for ep in episodes])),
        "next.done": pa.array(np.concatenate([ep["success"] for ep in episodes])),
    }
    if not video:  # lerobot's use_videos=False: PNGs embedded in the rows
        import io

        from PIL import Image

        def png(image: np.ndarray) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            return buffer.getvalue()

        frames[CAMERA] = pa.array([{"bytes": png(image), "path": None}
                                   for ep in episodes for image in ep["images"]])
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(frames), root / "data" / "chunk-000" / "file-000.parquet")
    meta = {
        "episode_index": pa.array(np.arange(len(episodes), dtype=np.int64)),
        "tasks": pa.array([[ep["task"]] for ep in episodes]),
        "length": pa.array(np.array(lengths, dtype=np.int64)),
        "data/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "data/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "dataset_from_index": pa.array(starts),
        "dataset_to_index": pa.array(starts + np.array(lengths)),
        "meta/episodes/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "meta/episodes/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "stats/action/mean": vector_column(np.stack([ep["action"].mean(0) for ep in episodes])),
    }
    if video:
        meta |= {
            f"videos/{CAMERA}/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
            f"videos/{CAMERA}/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
            f"videos/{CAMERA}/from_timestamp": pa.array(starts / FPS),
            f"videos/{CAMERA}/to_timestamp": pa.array((starts + np.array(lengths)) / FPS),
        }
        write_video(root / "videos" / CAMERA / "chunk-000" / "file-000.mp4",
                    np.concatenate([ep["images"] for ep in episodes]))
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    # pandas writes meta/tasks.parquet with the task strings as its (unnamed) index
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": pa.array(TASKS)}),
                   root / "meta" / "tasks.parquet")
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0", "robot_type": "test", "total_episodes": len(episodes),
        "total_frames": sum(lengths), "total_tasks": len(TASKS), "chunks_size": 1000, "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video else None,
        "features": {
            CAMERA: {"dtype": "video" if video else "image", "shape": [*SIZE, 3],
                     "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": [3], "names": None},
            "action": {"dtype": "float32", "shape": [2], "names": None},
            "next.reward": {"dtype": "float32", **scalar}, "next.success": {"dtype": "bool", **scalar},
            "next.done": {"dtype": "bool", **scalar},
            **{name: {"dtype": "int64", **scalar} for name in ("frame_index", "episode_index", "index", "task_index")},
            "timestamp": {"dtype": "float32", **scalar},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return root


@pytest.fixture(scope="module")
def episodes() -> list[dict]:
    return make_episodes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, episodes: list[dict]) -> Path:
    return write_folder(tmp_path_factory.mktemp("lerobot") / "pusht", episodes)


def check_loaded(data, episodes: list[dict], lossless: bool) -> None:
    """Every frame, state, action and instruction back where the folder put them."""
    assert data.obs_spec["observation/images/top"].shape == (*SIZE, 3)
    assert data.obs_spec["observation/state"].shape == (3,)
    assert [len(ep) for ep in data.episodes] == [len(ep["action"]) for ep in episodes]
    for loaded, written in zip(data.episodes, episodes, strict=True):
        obs = loaded.observations
        assert obs["observation/images/top"].dtype == np.uint8
        assert obs["observation/images/top"].shape == (len(loaded) + 1, *SIZE, 3)
        error = np.abs(obs["observation/images/top"][:-1].astype(int) - written["images"].astype(int))
        assert error.max() == 0 if lossless else error.mean() < 4  # AV1 is lossy; a wrong frame is ≥ 10 off
        np.testing.assert_array_equal(obs["observation/state"][:-1], written["state"])
        np.testing.assert_array_equal(obs["observation/state"][-1], written["state"][-1])  # last frame repeated
        np.testing.assert_array_equal(loaded.actions, written["action"])
        assert {decode_text(row) for row in obs["task"]} == {written["task"]}
    actions = np.concatenate([ep["action"] for ep in episodes])
    np.testing.assert_array_equal(data.action_low, actions.min(0))
    np.testing.assert_array_equal(data.action_high, actions.max(0))


def test_a_lerobot_folder_loads_images_state_actions_episodes_and_instructions(folder: Path,
                                                                                episodes: list[dict]) -> None:
    data = load_dataset(f"lerobot:{folder}")
    check_loaded(data, episodes, lossless=False)
    for loaded, written in zip(data.episodes, episodes, strict=True):  # next.reward, ended by next.done
        np.testing.assert_array_equal(loaded.rewards, written["reward"])
        np.testing.assert_array_equal(loaded.terminations, written["success"])
        last = np.arange(len(loaded)) == len(loaded) - 1
        np.testing.assert_array_equal(loaded.truncations, ~written["success"] & last)
    assert data.dataset_id == "lerobot/pusht" and data.episode_successes() is None
    assert data.fingerprint()["path"] == f"lerobot:{folder}"


def test_rewards_from_a_named_column_or_a_success_rule(folder: Path, episodes: list[dict]) -> None:
    named = load_dataset(f"lerobot:{folder},reward=next.success")
    np.testing.assert_array_equal(named.episodes[0].rewards, episodes[0]["success"].astype(np.float32))

    per_frame = load_dataset(f"lerobot:{folder},success=next.success")
    np.testing.assert_array_equal(per_frame.episode_successes(), [True, False, True])
    for loaded, written in zip(per_frame.episodes, episodes, strict=True):
        np.testing.assert_array_equal(loaded.rewards, written["success"].astype(np.float32))
        assert loaded.terminations[-1] == written["success"][-1] and loaded.truncations[-1] != loaded.terminations[-1]

    every = load_dataset(f"lerobot:{folder},success=all")
    assert [float(ep.rewards.sum()) for ep in every.episodes] == [1.0, 1.0, 1.0]
    assert all(ep.rewards[-1] == 1 and ep.terminations[-1] and not ep.terminations[:-1].any() for ep in every.episodes)

    # a per-episode flag that the user added to meta/episodes
    flagged = write_folder(folder.parent / "flagged", episodes)
    path = flagged / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).append_column("success", pa.array([False, True, True])), path)
    per_episode = load_dataset(f"lerobot:{flagged},success=success")
    assert [float(ep.rewards.sum()) for ep in per_episode.episodes] == [0.0, 1.0, 1.0]
    assert [bool(ep.terminations[-1]) for ep in per_episode.episodes] == [False, True, True]
    assert dataset_info(f"lerobot:{flagged},success=success")["success_rate"] == pytest.approx(2 / 3)


def test_embedded_png_images_and_resizing(tmp_path: Path, episodes: list[dict], folder: Path) -> None:
    check_loaded(load_dataset(f"lerobot:{write_folder(tmp_path / 'png', episodes, video=False)}"), episodes,
                 lossless=True)
    small = load_dataset(f"lerobot:{folder},image-size=32x48")
    assert small.obs_spec["observation/images/top"].shape == (32, 48, 3)
    assert small.episodes[2].observations["observation/images/top"].shape == (16, 32, 48, 3)


def test_the_agent_trains_offline_on_lerobot_data(folder: Path) -> None:
    from pa_rl import Agent, AgentConfig, CriticConfig, EncoderConfig, OptimizerConfig, make_policy
    from pa_rl.buffer import ReplayBuffer
    from pa_rl.policies import DiffusionConfig

    data = load_dataset(f"lerobot:{folder},success=all")
    encoder = EncoderConfig(conv_channels=8, image_features=16, text_features=8)
    policy = make_policy("diffusion", data.obs_spec, data.action_low, data.action_high,
                         DiffusionConfig(hidden_dim=32, num_blocks=1, time_dim=8, encoder=encoder), chunk=2)
    config = AgentConfig(chunk=2, encoder=encoder, critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
                         optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1))
    agent = Agent(policy, data.obs_spec, data.action_low, data.action_high, config)
    buffer = ReplayBuffer.from_episodes(data.episodes, 0.99, horizon=2, chunk=2, obs_spec=data.obs_spec)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        metrics = agent.update(buffer.sample(8, generator), distill=True)
    assert all(torch.isfinite(value).all() for value in metrics.values())


def test_data_info_reads_a_lerobot_folder_and_train_asks_for_no_online_budget(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "info", f"lerobot:{folder}"]) in (0, None)
    shown = capsys.readouterr().out
    assert "observation/images/top" in shown and "push the block" in shown
    # The cpu preset's online budget needs an environment, which LeRobot data do not record.
    assert main(["train", "--dataset", f"lerobot:{folder}", "--runs-dir", str(tmp_path), "--name", "r"]) == 2
    error = capsys.readouterr().err
    assert "online fine-tuning (online_env_steps=1000) needs an environment" in error
    assert "--train.online-env-steps 0" in error
    assert not (tmp_path / "r").exists()


def test_pa_rl_train_runs_offline_on_a_lerobot_folder_resumes_exactly_and_eval_says_there_is_no_env(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """BC → offline PA-RL from the command line on recorded data alone: killed at its first checkpoint and
    resumed, it writes the uninterrupted run's metrics.csv, with the critic's held-out calibration and no
    rollout metric; `pa-rl eval` has no environment to evaluate in."""
    monkeypatch.chdir(tmp_path)
    small = [option for name in ("diffusion", "agent") for option in (
        f"--{name}.encoder.conv-channels", "4", f"--{name}.encoder.image-features", "8",
        f"--{name}.encoder.text-features", "4")]
    online = TINY_TRAIN.index("--train.online-env-steps") + 1
    tiny = [*TINY_TRAIN[:online], "0", *TINY_TRAIN[online + 1:]]
    # One of the three episodes held out; an evaluation mid-offline and at its end; a checkpoint mid-BC.
    args = ["--dataset", f"lerobot:{folder},success=next.success", *tiny, *small, "--train.bc-steps", "40",
            "--train.eval-every", "10", "--train.held-out-fraction", "0.34", "--train.checkpoint-every", "10",
            "--train.log-every", "5"]
    kill_at_first_checkpoint(["--name", "killed", *args], tmp_path / "runs" / "killed")
    assert main(["train", "--resume", "runs/killed"]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert main(["train", "--name", "whole", *args]) == 0
    out = capsys.readouterr().out
    assert "| offline PA-RL |" in out and "success, return and the critic's ranking by rollout were not measured" in out
    run = tmp_path / "runs" / "whole"
    for name in ("metrics.csv", "checkpoints/final.safetensors"):
        assert (tmp_path / "runs" / "killed" / name).read_bytes() == (run / name).read_bytes(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {int(r["step"]) for r in rows if r["metric"] == "diag/q_mc_spearman"} == {50, 60}
    assert not [r for r in rows if r["metric"].startswith(("eval/", "diag/rank"))]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"] is False and summary["env_steps"] == 0 and summary["bc"] == {}
    assert (run / "curves.png").is_file()
    assert main(["eval", str(run)]) == 2
    assert "records no environment: there is none to evaluate in" in capsys.readouterr().err


def broken(folder: Path, tmp_path: Path, edit) -> str:
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    edit(copy)
    return f"lerobot:{copy}"


def rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


DATA = Path("data/chunk-000/file-000.parquet")
EPISODES = Path("meta/episodes/chunk-000/file-000.parquet")
INFO = Path("meta/info.json")


def edit_info(change):
    def edit(root: Path) -> None:
        info = json.loads((root / INFO).read_text())
        change(info)
        (root / INFO).write_text(json.dumps(info))
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (lambda root: (root / INFO).unlink(), "holds no meta/info.json"),
    (edit_info(lambda info: info.update(codebase_version="v2.1")), "codebase_version 'v2.1'"),
    (edit_info(lambda info: info["features"].pop("action")), "no 'action' feature"),
    (edit_info(lambda info: info["features"]["observation.state"].update(shape=[4])),
     "column 'observation.state' holds 3 values a frame, meta/info.json says shape (4,)"),
    (edit_info(lambda info: info["features"][CAMERA].update(shape=[64, 64])), "has shape (64, 64)"),
    (lambda root: rewrite(root / DATA, lambda t: t.drop_columns(["observation.state"])),
     "lacks column 'observation.state'"),
    (lambda root: rewrite(root / DATA, lambda t: t.drop_columns(["next.reward"])),
     "no reward column 'next.reward'"),
    (lambda root: rewrite(root / EPISODES, lambda t: t.drop_columns([f"videos/{CAMERA}/from_timestamp"])),
     f"lacks column(s) ['videos/{CAMERA}/from_timestamp']"),
    (lambda root: rewrite(root / EPISODES, lambda t: t.set_column(2, "length", pa.array([12, 9, 14]))),
     "episode 2: meta/episodes says 14 frames, the data files hold 15"),
    (lambda root: rewrite(root / EPISODES, lambda t: t.set_column(
        t.column_names.index(f"videos/{CAMERA}/from_timestamp"), f"videos/{CAMERA}/from_timestamp",
        pa.array([0.0, 1.2, 5.0]))), "episode 2, step 0: video 'observation.images.top' has no frame at 5.0000 s"),
    (lambda root: (root / "videos" / CAMERA / "chunk-000" / "file-000.mp4").write_bytes(b"not a video"),
     "is missing or not a readable video"),
    (lambda root: (root / "meta" / "tasks.parquet").unlink(), "meta/tasks.parquet is missing"),
])
def test_bad_folders_are_refused_naming_what_is_wrong(folder: Path, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(DataError) as error:
        load_dataset(broken(folder, tmp_path, edit))
    assert message in str(error.value)


@pytest.mark.parametrize(("suffix", "message"), [
    (",success=nothing", "success column 'nothing' is neither in the data parquet"),
    (",reward=nothing", "no reward column 'nothing'"),
    (",reward=next.reward,success=all", "not both"),
    (",image-size=64", "image-size must be HEIGHTxWIDTH"),
    (",colour=red", "unknown or empty option 'colour=red'"),
])
def test_bad_options_are_refused(folder: Path, suffix: str, message: str) -> None:
    with pytest.raises(DataError) as error:
        load_dataset(f"lerobot:{folder}{suffix}")
    assert message in str(error.value)


def test_a_folder_written_by_lerobots_own_writer_loads_as_lerobot_reads_it(tmp_path: Path,
                                                                           episodes: list[dict]) -> None:
    """LeRobotDataset.create / add_frame / save_episode write the folder; every frame pa-rl decodes equals
    the one lerobot's own reader returns for that row."""
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset", exc_type=ImportError)  # README
    features = {
        CAMERA: {"dtype": "video", "shape": (*SIZE, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }
    dataset = lerobot_dataset.LeRobotDataset.create("pa-rl/test", FPS, features, root=tmp_path / "written",
                                                    use_videos=True)
    for ep in episodes:
        for t in range(len(ep["action"])):
            dataset.add_frame({CAMERA: ep["images"][t], "observation.state": ep["state"][t],
                               "action": ep["action"][t], "next.reward": ep["reward"][t:t + 1],
                               "next.success": ep["success"][t:t + 1], "task": ep["task"]})
        dataset.save_episode()
    dataset.finalize()

    data = load_dataset(f"lerobot:{tmp_path / 'written'},success=next.success")
    check_loaded(data, episodes, lossless=False)
    np.testing.assert_array_equal(data.episode_successes(), [True, False, True])
    theirs = lerobot_dataset.LeRobotDataset("pa-rl/test", root=tmp_path / "written", video_backend="pyav")
    start = 0
    for loaded in data.episodes:
        for t in (0, len(loaded) // 2, len(loaded) - 1):
            item = theirs[start + t]
            image = (item[CAMERA].permute(1, 2, 0).numpy() * 255).round()
            np.testing.assert_allclose(loaded.observations["observation/images/top"][t], image, atol=1)
            np.testing.assert_array_equal(loaded.actions[t], item["action"].numpy())
            assert decode_text(loaded.observations["task"][t]) == item["task"]
        start += len(loaded)


# ---- LeRobotPolicy: a real lerobot DiffusionPolicy built from its config (no weights downloaded) -------
CHUNK = 4


def lerobot_diffusion(data, chunk: int = CHUNK):
    pytest.importorskip("lerobot.policies.diffusion.modeling_diffusion", exc_type=ImportError)  # README
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    from pa_rl.policies.lerobot import LeRobotPolicy, lerobot_features, lerobot_stats

    inputs, outputs = lerobot_features(data.obs_spec, data.action_dim)
    config = DiffusionConfig(input_features=inputs, output_features=outputs, n_obs_steps=2, horizon=8,
                             n_action_steps=4, down_dims=(16, 32), diffusion_step_embed_dim=16, kernel_size=3,
                             spatial_softmax_num_keypoints=8, crop_shape=(56, 56), num_train_timesteps=20,
                             device="cpu")
    stats = lerobot_stats(data.episodes, data.obs_spec, data.action_low, data.action_high)
    return LeRobotPolicy.from_config(config, stats, data.obs_spec, chunk)


def some_states(data, count: int = 3) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.stack([ep.observations[key][t] for ep in data.episodes for t in (0, 5)][:count]))
            for key in data.obs_spec}


def test_a_lerobot_diffusion_policy_samples_chunks_in_one_batched_call_and_learns(folder: Path) -> None:
    data = load_dataset(f"lerobot:{folder},success=all")
    policy = lerobot_diffusion(data)
    assert {"observation.images.top", "observation.state", "action"} <= set(
        policy.preprocessor.steps[-1].features)  # lerobot's own normalizer sees every feature
    obs = some_states(data)
    calls, original = [], policy.policy.diffusion.generate_actions

    def generate_actions(batch: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(len(batch["observation.state"]))
        return original(batch, noise)

    policy.policy.diffusion.generate_actions = generate_actions
    samples = policy.sample(obs, 5)
    assert samples.shape == (3, 5, CHUNK, 2) and calls == [15]  # one call for B·N rows
    low, high = torch.as_tensor(data.action_low), torch.as_tensor(data.action_high)
    assert ((samples >= low - 1e-5) & (samples <= high + 1e-5)).all()  # unnormalized into env units
    assert samples.std(1).mean() > 0.05  # fresh noise for every sample
    one = lerobot_diffusion(data, chunk=1).sample(obs, 2)
    assert one.shape == (3, 2, 2)

    targets = torch.as_tensor(np.stack([data.episodes[0].actions[t:t + CHUNK] for t in (0, 1, 2)]))

    def loss_on_fixed_noise() -> float:  # the same noises, timesteps and crops before and after
        losses = []
        for seed in range(8):
            torch.manual_seed(seed)
            with torch.no_grad():
                losses.append(policy.loss(obs, targets).item())
        return float(np.mean(losses))

    before = loss_on_fixed_noise()
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    for _ in range(50):
        loss = policy.loss(obs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert loss_on_fixed_noise() < 0.85 * before


def test_pa_rls_agent_trains_a_lerobot_policy_and_a_saved_one_loads_back(folder: Path, tmp_path: Path) -> None:
    from pa_rl import Agent, AgentConfig, CriticConfig, EncoderConfig, OptimizerConfig
    from pa_rl.buffer import ReplayBuffer
    from pa_rl.policies.lerobot import LeRobotPolicy

    data = load_dataset(f"lerobot:{folder},success=all")
    policy = lerobot_diffusion(data)
    config = AgentConfig(chunk=CHUNK, encoder=EncoderConfig(conv_channels=8, image_features=16, text_features=8),
                         critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32)),
                         optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1))
    agent = Agent(policy, data.obs_spec, data.action_low, data.action_high, config)
    buffer = ReplayBuffer.from_episodes(data.episodes, 0.99, horizon=CHUNK, chunk=CHUNK, obs_spec=data.obs_spec)
    generator = torch.Generator().manual_seed(0)
    before = {name: value.clone() for name, value in policy.policy.state_dict().items()}
    assert torch.isfinite(agent.bc_update(buffer.sample(4, generator))["bc/loss"])
    for _ in range(2):
        metrics = agent.update(buffer.sample(4, generator), distill=True)
    assert all(torch.isfinite(value).all() for value in metrics.values())
    assert any(not torch.equal(before[name], value) for name, value in policy.policy.state_dict().items())
    actions = agent.act({key: value[:1].numpy() for key, value in some_states(data).items()}, "argmax")
    assert actions.shape == (1, CHUNK, 2)

    # lerobot's own save_pretrained (weights, config, processors with their statistics) loads back
    policy.policy.save_pretrained(tmp_path / "saved")
    policy.preprocessor.save_pretrained(tmp_path / "saved")
    policy.postprocessor.save_pretrained(tmp_path / "saved")
    loaded = LeRobotPolicy.from_pretrained(tmp_path / "saved", data.obs_spec, CHUNK)
    obs = some_states(data)
    policy.eval()  # as lerobot's from_pretrained leaves a policy: no random crops
    torch.manual_seed(1)
    expected = policy.sample(obs, 2)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.sample(obs, 2), expected)


def test_pa_rl_observations_map_onto_lerobot_keys() -> None:
    from pa_rl.observations import TEXT_LENGTH, Field
    from pa_rl.policies.lerobot import lerobot_names

    spec = {"pixels": Field("image", (64, 64, 3)), "velocity": Field("vector", (2,)),
            "goal": Field("vector", (2,)), "instruction": Field("text", (TEXT_LENGTH,))}
    assert lerobot_names(spec) == {"pixels": "observation.images.pixels", "velocity": "observation.state",
                                   "goal": "observation.state", "instruction": "task"}
    assert lerobot_names({"observation/images/top": Field("image", (8, 8, 3)),
                          "observation/state": Field("vector", (3,))}) == {
        "observation/images/top": "observation.images.top", "observation/state": "observation.state"}
    assert lerobot_names(7) == {"": "observation.state"}
