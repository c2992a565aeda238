"""The `pa-rl` command end to end on a tiny budget, and its error messages."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN as TINY

from pa_rl.cli import main
from pa_rl.runs import lock_run



@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path


def test_data_make_train_eval_plot(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    # A relative --out, as `make demo` uses it.
    assert main(["data", "make", "pointmaze-umaze", "--size", "3000", "--seed", "1", "--out", "datasets"]) == 0
    assert main(["data", "info", "pointmaze-umaze", "--data-dir", "datasets"]) == 0
    assert "transitions: 3000" in capsys.readouterr().out
    assert main(["train", "--name", "tiny", "--data-dir", "datasets", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| BC pre-training | base policy |" in out and "| online fine-tuning | PA-RL π̂ (argmax) |" in out
    run = workdir / "runs" / "tiny"
    for name in ("config.json", "metrics.csv", "summary.json", "curves.png", "checkpoints/final.safetensors"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt"))  # the training state, for --resume
    assert any((run / "tensorboard").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["train"]["bc_steps"] == 20 and config["dataset_id"] == "pa-rl/pointmaze-umaze-v0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 100 and summary["updates"] > 40
    assert main(["eval", str(run), "--episodes", "2", "--video", str(workdir / "ep.mp4")]) == 0
    result = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert result["episodes"] == 2 and 0.0 <= result["success"] <= 1.0
    assert (workdir / "ep.mp4").stat().st_size > 1000
    assert main(["plot", str(run), str(run), "--out", str(workdir / "both.png")]) == 0
    assert (workdir / "both.png").stat().st_size > 1000
    # A second run under the same name is refused rather than overwritten.
    assert main(["train", "--name", "tiny", *TINY]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["data", "make", "pointmaze-tiny"], "Unknown dataset name 'pointmaze-tiny'. Valid names: pointmaze-umaze"),
    (["data", "info", "nowhere/missing-v0"], "No data set named 'nowhere/missing-v0'; looked at"),
    (["train", "--dataset", str(Path("/nonexistent/ds"))], "No data set named '/nonexistent/ds'"),
    (["train", "--dataset", "pointmaze-umze"], "No data set named 'pointmaze-umze' (close names: pointmaze-umaze"),
    (["eval", "/nonexistent/run"], "is not a pa-rl run"),
    (["plot", "/nonexistent/run"], "has no metrics.csv"),
    (["train", "--agent.optimizer.top-k", "64", "--agent.optimizer.num-samples", "8"], "top_k (64) cannot exceed"),
    (["train", "--train.batch-size", "0"], "batch_size must be ≥ 1"),
    (["train", "--resume", "runs/x", "--preset", "paper"], "drop the other options ['--preset', 'paper']"),
    (["train", "--device", "gpu"], "device must be cpu or cuda[:N], got 'gpu'"),
    pytest.param(["train", "--device", "cuda"], "device 'cuda' asked for, but", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_errors_are_one_clear_line(workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "--train.bc-stepz", "3"], ["train", "--policy", "mlp"], ["nope"]])
def test_typos_exit_nonzero_without_a_traceback(workdir: Path, argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pa_rl.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "MINARI_DATASETS_PATH": str(workdir)})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip()


def untrusted_dataset(root: Path, marker: Path) -> Path:
    """A Pendulum data set whose recorded env specs were edited to run `touch MARKER` when built
    (``root`` is $MINARI_DATASETS_PATH)."""
    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffer = EpisodeBuffer(observations=np.zeros((4, 3)), actions=np.zeros((3, 1), np.float32), rewards=np.zeros(3),
                           terminations=np.array([False, False, True]), truncations=np.zeros(3, bool))
    minari.create_dataset_from_buffers("evil/pendulum-v0", [buffer], env="Pendulum-v1", eval_env="Pendulum-v1",
                                       observation_space=gym.spaces.Box(-8.0, 8.0, (3,)),
                                       action_space=gym.spaces.Box(-2.0, 2.0, (1,)))
    path = root / "evil" / "pendulum-v0"
    metadata_path = path / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    for key in ("env_spec", "eval_env_spec"):
        spec = json.loads(metadata[key])
        spec.update(entry_point="subprocess:Popen", kwargs={"args": ["touch", str(marker)]})
        metadata[key] = json.dumps(spec)
    metadata_path.write_text(json.dumps(metadata))
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_data_set_cannot_run_code_without_trust(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    marker = workdir / "MARKER"
    evil = untrusted_dataset(workdir / "datasets", marker)
    message = "'subprocess:Popen' (module 'subprocess', callable 'Popen'), neither a registered gymnasium"
    for argv in (["train", "--dataset", str(evil), *TINY], ["data", "info", str(evil)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "--trust-env subprocess:Popen" in err and "Traceback" not in err
    # A run folder whose config.json was edited to point at that data set.
    run = workdir / "runs" / "edited"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final.safetensors").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"dataset_path": str(evil), "config": {"dataset": str(evil)}}))
    assert main(["eval", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not marker.exists()
    assert main(["data", "info", str(evil), "--trust-env", "subprocess:Popen"]) == 0  # trusted: it loads


def test_a_second_writer_of_a_run_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run = workdir / "runs" / "busy"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}}))
    with lock_run(run):  # held as a running `pa-rl train` holds it
        for argv in (["train", "--resume", str(run)], ["train", "--name", "busy"]):
            assert main(argv) == 2
            assert f"busy is in use by process {os.getpid()}: wait for it" in capsys.readouterr().err
    with lock_run(run):  # released when its holder ends
        pass


def test_a_resume_is_pinned_to_the_run_s_data(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from pa_rl.data import make_dataset
    from pa_rl.runs import RunConfig, resolve_dataset, write_config

    config = RunConfig(name="pinned", data_dir=workdir / "datasets")
    make_dataset("pointmaze-umaze", out_dir=str(workdir / "datasets"), size=300, progress=False)
    write_config(config, resolve_dataset(config))  # a run started on these data (checkpoints do not matter here)
    for size, seed, differs in ((400, 0, "transitions (run 300, now 400)"), (300, 1, "sha256 (run '")):
        make_dataset("pointmaze-umaze", out_dir=str(workdir / "datasets"), size=size, seed=seed, progress=False,
                     overwrite=True)
        assert main(["train", "--resume", "runs/pinned"]) == 2
        err = capsys.readouterr().err
        assert "differs from the one run runs/pinned was trained on" in err and differs in err
    # Gone: refused, not regenerated at its default size.
    shutil.rmtree(workdir / "datasets" / "pa-rl" / "pointmaze-umaze-v0")
    assert main(["train", "--resume", "runs/pinned"]) == 2
    assert "pointmaze-umaze-v0, is gone: restore it there" in capsys.readouterr().err
    assert not (workdir / "datasets" / "pa-rl" / "pointmaze-umaze-v0").exists()


def test_a_failed_start_leaves_no_run_behind(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    from pa_rl.data import DataError, make_dataset

    make_dataset("pointmaze-umaze", out_dir=str(workdir / "datasets"), size=300, progress=False)

    def unfit(*args: object) -> None:
        raise DataError("the environment does not fit the data")

    monkeypatch.setattr(importlib.import_module("pa_rl.train"), "check_env", unfit)  # fails as the trainer builds its environments
    assert main(["train", "--name", "failed", "--data-dir", "datasets", *TINY]) == 2
    assert "the environment does not fit the data" in capsys.readouterr().err
    assert not (workdir / "runs" / "failed").exists()  # neither blocks the name nor offers a --resume


def test_no_notices_of_other_packages_on_every_command(workdir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pa_rl.cli", "data", "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "pointmaze-umaze" in proc.stdout
    assert proc.stderr == ""  # gymnasium-robotics prints an Adroit reward notice as it is imported


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_output_into_a_closed_pipe_is_not_an_error(workdir: Path, argv: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pa_rl.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()  # the reader is gone before anything is printed, as `| head` is after its lines
    assert proc.wait(timeout=120) == 0
    assert "Broken pipe" not in proc.stderr.read()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_cuda_run_is_evaluated_on_cpu_with_device_cpu(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run = workdir / "runs" / "gpu"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"device": "cuda"}}))
    assert main(["eval", str(run)]) == 2
    assert "device 'cuda' asked for, but" in capsys.readouterr().err
    assert main(["eval", str(run), "--device", "cpu"]) == 2  # past the device: this run has no weights
    assert "has no final weights" in capsys.readouterr().err
