"""Reliability: SIGKILL at any point then resume gives the uninterrupted run's results; damaged or
foreign checkpoints are refused or skipped with a message; environment faults lose no data."""

from __future__ import annotations

import argparse
import csv
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pa_rl
from pa_rl import ReplayBuffer, TrainConfig, train
from pa_rl.checkpoint import CheckpointError, CheckpointStore, WriteError, encode
from pa_rl.cli import main
from pa_rl.progress import progress_bar
from pa_rl.runs import RunError, load_weights, save_weights
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.train import EnvironmentFault, Trainer

from helpers import kill_at_first_checkpoint, same_threads
from resume_worker import CONFIG, make_agent

WORKER = Path(__file__).with_name("resume_worker.py")


def run_worker(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), str(run_dir), *args], capture_output=True, text=True,
                          timeout=300)


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    weights_a, weights_b = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_sigkill_in_every_phase_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_worker(reference).returncode == 0
    # Each launch dies at one point: mid-BC, as the BC evaluation starts, mid-offline (after an
    # offline evaluation), mid-episode online; the last one finishes the run.
    for i, kill in enumerate(["bc_update:13", "evaluate:1", "update:25", "env_step:50"]):
        proc = run_worker(killed, *(["--resume"] if i else []), "--kill-at", kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stderr)
    # The newest checkpoint is damaged (as by a full disk): skipped, with a message, for the previous one.
    newest = CheckpointStore(killed / "checkpoints").paths()[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    proc = run_worker(killed, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert f"skipping checkpoint {newest}" in proc.stderr and "checksum does not match" in proc.stderr
    assert_same_run(reference, killed)
    assert len(CheckpointStore(killed / "checkpoints").paths()) == CONFIG.keep_checkpoints
    phases = {row["phase"] for row in csv.DictReader((killed / "metrics.csv").open())}
    assert phases == {"bc", "offline", "online"}


def test_sigkill_with_images_and_chunks_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_worker(reference, "--pixels").returncode == 0
    for i, kill in enumerate(["update:25", "env_step:50"]):  # mid-offline, then mid-episode online
        proc = run_worker(killed, "--pixels", *(["--resume"] if i else []), "--kill-at", kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stderr)
    assert run_worker(killed, "--pixels", "--resume").returncode == 0
    assert_same_run(reference, killed)


def test_cli_resume_after_an_external_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert main(["data", "make", "pointmaze-umaze", "--size", "2000", "--out", "datasets"]) == 0
    args = ["--data-dir", "datasets", "--train.bc-steps", "300", "--train.offline-steps", "40",
            "--train.online-env-steps", "60", "--train.eval-episodes", "2", "--train.eval-every", "1000",
            "--train.warmup-env-steps", "0", "--train.batch-size", "32", "--train.max-episode-steps", "30",
            "--train.checkpoint-every", "20", "--train.log-every", "5", "--train.no-progress",
            "--diffusion.hidden-dim", "32", "--agent.critic.hidden-dims", "32", "32"]
    cli = [sys.executable, "-m", "pa_rl.cli", "train"]
    kill_at_first_checkpoint(["--name", "killed", *args], tmp_path / "runs" / "killed")  # mid-BC
    # A resume takes the run's own config; other options are refused.
    assert main(["train", "--resume", "runs/killed", "--train.bc-steps", "5"]) == 2
    done = subprocess.run([*cli, "--resume", "runs/killed"], capture_output=True, text=True, timeout=300,
                          env=same_threads())
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    assert main(["train", "--name", "whole", *args]) == 0
    assert (tmp_path / "runs/killed/metrics.csv").read_text() == (tmp_path / "runs/whole/metrics.csv").read_text()


def small_run(tmp_path: Path, make_env=lambda: gym.make("pa_rl/PointGoal-v0"), resume: bool = False,
              **overrides) -> Trainer:
    """The worker's agent and config with shorter phases, in ``tmp_path / "run"``."""
    config = TrainConfig(**{**vars(CONFIG), "bc_steps": 8, "offline_steps": 8, "online_env_steps": 60, **overrides})
    return Trainer(make_agent(), collect_episodes(6, seed=1), make_env, config, tmp_path / "run", resume)


def test_a_checkpoint_from_another_config_or_version_is_refused(tmp_path: Path, monkeypatch) -> None:
    small_run(tmp_path).run()
    # Small networks and 60 online transitions: the 1M-transition buffer's empty rows are not saved.
    assert max(p.stat().st_size for p in CheckpointStore(tmp_path / "run" / "checkpoints").paths()) < 1e6
    with pytest.raises(CheckpointError, match=r"another config: train\.batch_size \(checkpoint 32, now 16\)"):
        small_run(tmp_path, resume=True, batch_size=16)
    written_by = re.escape(pa_rl.__version__)
    monkeypatch.setattr(pa_rl, "__version__", "9.9.9")
    with pytest.raises(CheckpointError, match=rf"written by pa-rl {written_by}, this is 9\.9\.9"):
        small_run(tmp_path, resume=True)


def test_a_checkpoint_from_before_a_field_existed_reads_it_as_its_default(tmp_path: Path) -> None:
    """A config field added later (its default is the behaviour from before it) keeps older checkpoints
    resumable, and so does one that says only how to compute; a run that sets a new field otherwise is
    still told apart."""
    small_run(tmp_path).run()
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    _, checkpoint = store.load_latest()
    del checkpoint["configs"]["train"]["reward_scale"]  # 1.0 in this run: its default
    checkpoint["configs"]["agent"]["compile_critic"] = True  # how the critic runs, not which run this is
    store.save(checkpoint)
    small_run(tmp_path, resume=True)
    del checkpoint["configs"]["agent"]["critic"]["ensemble_size"]  # 2 in this run, 10 by default
    store.save(checkpoint)
    with pytest.raises(CheckpointError, match=r"another config: agent\.critic\.ensemble_size \(checkpoint 10, now 2\)"):
        small_run(tmp_path, resume=True)


def test_store_keeps_the_newest_k_and_falls_back_past_damaged_files(tmp_path: Path, caplog) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(4):
        store.save({"i": torch.tensor(i)})
    (tmp_path / ".ckpt-000005.pt.tmp").write_bytes(b"half a checkpoint")  # a write killed before its rename
    assert [p.name for p in store.paths()] == ["ckpt-000003.pt", "ckpt-000004.pt"]
    store.paths()[-1].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="pa_rl"):
        path, state = store.load_latest()
    assert path.name == "ckpt-000003.pt" and state["i"] == 2
    assert "ckpt-000004.pt: " in caplog.text and "not a pa-rl checkpoint" in caplog.text
    store.save({"i": torch.tensor(5)})
    assert not list(tmp_path.glob(".*.tmp"))


class FaultyEnv(gym.Wrapper):
    """Raises, or returns a NaN observation, at its ``at``-th step (counted over all its episodes)."""

    def __init__(self, env: gym.Env, at: int, fault: str) -> None:
        super().__init__(env)
        self.at, self.fault, self.steps = at, fault, 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.steps == self.at:
            if self.fault == "raise":
                raise RuntimeError("simulator exploded")
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("fault, message", [("raise", "env.step raised RuntimeError: simulator exploded"),
                                            ("nan", "env.step returned a non-finite observation")])
def test_an_env_fault_online_keeps_the_data_checkpoints_and_reports(tmp_path: Path, fault: str, message: str) -> None:
    envs = iter([gym.make("pa_rl/PointGoal-v0") for _ in range(2)]  # the evaluation envs stay healthy
                + [FaultyEnv(gym.make("pa_rl/PointGoal-v0"), at=25, fault=fault)])
    trainer = small_run(tmp_path, lambda: next(envs), diagnostic_pairs=0)
    with pytest.raises(EnvironmentFault) as error:
        trainer.run()
    assert message in str(error.value) and "at online env step 25" in str(error.value)
    assert "resume with `pa-rl train --resume RUN`" in str(error.value)
    # Steps 1–24 are kept (a truncated episode where the fault cut one), the faulty step dropped.
    assert len(trainer.online) == 24 == trainer.progress.env_steps
    assert all(torch.isfinite(t[:24]).all() for t in trainer.online.storage.values())
    # The checkpoint holds them, and a resume with a healthy env finishes the run.
    resumed = small_run(tmp_path, resume=True, diagnostic_pairs=0)
    assert len(resumed.online) == 24
    assert resumed.run().summary["env_steps"] == 60


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_replay_buffer_memory_is_preallocated_and_bounded() -> None:
    # Meta-World sizes: 39-d observations, 4-d actions; 4 · 39 + 4 · (4 + 5) + 1 = 193 bytes a slot.
    buffer = ReplayBuffer(1_000_000, 39, 4)
    assert ReplayBuffer.bytes_per_slot(39, 4) == 193 and buffer.nbytes == 193_000_000
    allocated = resident_bytes()
    for tensor in [buffer.obs, *buffer.storage.values()]:  # writing every row costs no new memory: all taken at once
        tensor.fill_(1)
    assert resident_bytes() - allocated < 10e6
    del buffer
    episodes = collect_episodes(3, seed=0)
    small = ReplayBuffer(50, 2, 2)
    before = small.nbytes
    for _ in range(10):
        for episode in episodes:
            small.add_episode(episode, 0.99, -1.0)
    assert small.size == 50 and small.nbytes == before  # full, overwritten in place, never grown


def test_final_weights_carry_a_sha256_that_catches_a_flipped_bit(tmp_path: Path) -> None:
    agent, path = make_agent(), tmp_path / "final.safetensors"
    save_weights(agent, path)
    load_weights(make_agent(), path)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x10  # one bit of the last tensor's bytes
    path.write_bytes(bytes(blob))
    with pytest.raises(RunError, match="is damaged: its contents do not match the SHA-256 it carries"):
        load_weights(agent, path)
    save_file({k: v.contiguous() for k, v in agent.state_dict().items()}, str(path))  # no checksum
    with pytest.raises(RunError, match="carries no SHA-256"):
        load_weights(agent, path)


def test_a_full_disk_names_the_file_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"i": torch.tensor(1)})

    def disk_full(path: Path, data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(WriteError, match=r"could not write .*ckpt-000002\.pt \(No space left on device\); the files "
                                         r"written before it, the last good checkpoint among them, are intact"):
        store.save({"i": torch.tensor(2)})
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    path, state = store.load_latest()
    assert path.name == "ckpt-000001.pt" and state["i"] == 1


def test_a_checkpoint_whose_unpickling_is_refused_is_skipped(tmp_path: Path, caplog) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save({"i": torch.tensor(1)})
    # A valid header and checksum around a pickle that names a class: weights_only refuses it.
    (tmp_path / "ckpt-000002.pt").write_bytes(encode({"i": argparse.Namespace(code="runs")}))
    with caplog.at_level(logging.WARNING, logger="pa_rl"):
        path, state = store.load_latest()
    assert path.name == "ckpt-000001.pt" and state["i"] == 1
    assert "ckpt-000002.pt: " in caplog.text and "was refused unread" in caplog.text
    assert "weights_only=False" not in caplog.text


def test_checkpoints_by_wall_clock_keep_a_killed_phase_and_resume_exactly(tmp_path: Path, monkeypatch) -> None:
    # Never by count (checkpoint_every beyond the phase), only by wall clock: here after every update. BC alone.
    clock = {"bc_steps": 12, "offline_steps": 0, "online_env_steps": 0, "checkpoint_every": 10_000,
             "checkpoint_minutes": 1e-9}
    reference = small_run(tmp_path / "reference", **clock)
    reference.run()
    real = pa_rl.Agent.bc_update
    calls = iter(range(1, 100))

    def killed_at_the_ninth(agent, batch):
        if next(calls) == 9:
            raise KeyboardInterrupt  # stands for a kill late in BC
        return real(agent, batch)

    monkeypatch.setattr(pa_rl.Agent, "bc_update", killed_at_the_ninth)
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path / "killed", **clock).run()
    monkeypatch.undo()
    _, state = CheckpointStore(tmp_path / "killed" / "run" / "checkpoints").load_latest()
    assert (state["progress"]["phase"], state["progress"]["step"]) == ("bc", 8)  # the phase's work is kept
    resumed = small_run(tmp_path / "killed", resume=True, **clock)
    resumed.run()
    assert (tmp_path / "killed/run/metrics.csv").read_text() == (tmp_path / "reference/run/metrics.csv").read_text()
    assert all(torch.equal(a, b) for a, b in zip(resumed.agent.state_dict().values(),
                                                  reference.agent.state_dict().values()))


def test_a_resume_leaves_one_tensorboard_point_per_metric_and_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pa_rl.logging import MetricsLogger

    logger = MetricsLogger(tmp_path)
    logger.log("offline", 1, 0, {"loss": 1.0})
    logger.log("offline", 2, 0, {"loss": 2.0})
    rows = logger.rows  # a checkpoint at update 2 ...
    logger.log("online", 2, 40, {"episode_return": -3.0})  # ... then a warm-up episode logged at the same update
    logger.log("online", 3, 80, {"loss": 4.0})
    logger.close()
    time.sleep(1.1)  # TensorBoard names event files by the second
    resumed = MetricsLogger(tmp_path, rows, [], step=2)  # killed and resumed from that checkpoint
    resumed.log("online", 2, 40, {"episode_return": -3.0})
    resumed.log("online", 3, 80, {"loss": 4.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 4.0)]
    assert [(e.step, e.value) for e in events.Scalars("episode_return")] == [(2, -3.0)]


def test_progress_in_a_log_file_is_lines_not_bar_frames(tmp_path: Path, capsys, monkeypatch) -> None:
    small_run(tmp_path, progress=True, online_env_steps=0).run()  # stderr is captured here: not a terminal
    assert "\r" not in capsys.readouterr().err
    monkeypatch.setattr(time, "monotonic", iter(range(0, 1000, 20)).__next__)  # 20 s between calls
    with progress_bar(300, "bc") as bar:
        bar.set_postfix({"loss": 0.123456, "phase": "bc"})
        bar.update(100)
    assert capsys.readouterr().err == "bc: 100/300 (33%), 5/s, loss=0.123, phase=bc\n"
