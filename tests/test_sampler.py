"""The async sampler (--train.sampler async): its draws are the policy's, for the right states, never more
than max_staleness versions old; training runs through it BC → offline → online, resumes after a SIGKILL,
and its worker process is gone after a run, after an error and after the learner is killed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import PixelPointGoal, pixel_episodes
from test_train import small_agent
from torch import nn

from pa_rl import ReplayBuffer, TrainConfig, make_policy, spec_of_space, train
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.samplers import AsyncSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import make_tiny_hf  # noqa: E402

WORKER = Path(__file__).with_name("resume_worker.py")


class VersionPolicy(nn.Module):
    """Deterministic draws that say where they come from: (the state's first coordinate, the weights'
    version / 100), so a test can check which state and which published weights made each one."""

    def __init__(self) -> None:
        super().__init__()
        self.version = nn.Parameter(torch.zeros(()))

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        draw = torch.stack([obs[:, 0], self.version.expand(len(obs)) / 100], -1)
        return draw[:, None].expand(-1, num_samples, -1).clone()

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.version * 0


@pytest.fixture(autouse=True)
def one_thread():
    """The learner on one thread, the worker on another: two busy threads each would fight over two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """An environment variable that this test's processes (the sampler's worker) inherit."""
    value = uuid.uuid4().hex
    monkeypatch.setenv("PA_RL_TEST_MARK", value)
    return value


def workers(mark: str) -> list[int]:
    """Live sampler workers started by this test (marked processes started by multiprocessing's spawn)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and f"PA_RL_TEST_MARK={mark}".encode() in (proc / "environ").read_bytes()
                    and b"spawn_main" in (proc / "cmdline").read_bytes()):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def zombie_children() -> list[int]:
    """Children of this process that exited and were never reaped."""
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies


def buffer_of(count: int = 10) -> ReplayBuffer:
    return ReplayBuffer.from_episodes(collect_episodes(count, seed=0), 0.99)


def wait_idle(sampler: AsyncSampler, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not sampler.idle:
        assert time.monotonic() < deadline, "the worker did not draw the requested states in time"
        time.sleep(0.01)


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_draws_are_the_policys_for_the_batch_states_and_never_staler_than_the_bound(max_staleness: int,
                                                                                     mark: str) -> None:
    buffer, policy = buffer_of(), VersionPolicy()
    generator = torch.Generator().manual_seed(0)
    served, staleness = [], []
    with AsyncSampler(policy, 4, (2,), [buffer], max_staleness) as sampler:
        for block in range(6):
            if block:  # new weights after each block, as distillation makes them
                with torch.no_grad():
                    policy.version.fill_(block)
                sampler.publish()
            assert sampler.version == block
            sampler.begin(lambda: [(buffer, buffer.draw_index(16, generator))], 8)
            for _ in range(8):
                batch = sampler.batch()
                wait_idle(sampler)  # a slow learner's update: the worker draws the batches ahead meanwhile
                for obs, samples in ((batch.obs, batch.policy_samples), (batch.next_obs, batch.next_policy_samples)):
                    assert samples.shape == (16, 4, 2)
                    assert torch.equal(samples[..., 0], obs[:, None, 0].expand(-1, 4))  # each state's own draws
                    behind = block - (samples[..., 1] * 100).round().long()
                    assert (behind >= 0).all() and (behind <= max_staleness).all()
                    staleness.append(behind.float().mean())
                served.append(float(sampler.metrics["sampler/from_cache"]))
                assert 0 <= float(sampler.metrics["sampler/staleness"]) <= max_staleness
    assert np.mean(served) > 0.5, served  # the worker (and the cache) served most states
    if max_staleness:
        assert max(staleness) > 0  # older versions were served while within the bound


def test_the_worker_draws_the_next_batches_ahead_and_drops_overwritten_slots(mark: str) -> None:
    buffer, policy = buffer_of(), VersionPolicy()
    generator = torch.Generator().manual_seed(1)
    with AsyncSampler(policy, 4, (2,), [buffer], max_staleness=0, lookahead=2) as sampler:
        sampler.begin(lambda: [(buffer, buffer.draw_index(32, generator))], 3)
        assert float(sampler.batch().policy_samples.abs().sum()) >= 0
        assert float(sampler.metrics["sampler/from_cache"]) < 1  # nothing was drawn before the first batch
        wait_idle(sampler)  # the two batches drawn ahead have been sent to the worker and drawn
        for _ in range(2):
            sampler.batch()
            assert float(sampler.metrics["sampler/from_cache"]) == 1.0
        sampler.forget(buffer, torch.arange(buffer.size))
        sampler.begin(lambda: [(buffer, buffer.valid_index[:8])], 1)
        sampler.batch()
        assert float(sampler.metrics["sampler/from_cache"]) == 0  # forgotten slots are drawn again
    generator = torch.Generator().manual_seed(1)
    expected = [buffer.draw_index(32, generator) for _ in range(3)]  # the same batches as without a sampler
    generator = torch.Generator().manual_seed(1)
    with AsyncSampler(policy, 4, (2,), [buffer]) as sampler:
        sampler.begin(lambda: [(buffer, buffer.draw_index(32, generator))], 3)
        for index in expected:
            assert torch.equal(sampler.batch().obs, buffer.batch_at(index).obs)
    assert not workers(mark) and not zombie_children()


def test_an_hf_policy_on_image_and_instruction_observations(tmp_path: Path, mark: str) -> None:
    """The expensive policy the sampler is for, on dict observations: the worker's draws are action
    tokens' bin centres within the bounds, for the batch's states."""
    pytest.importorskip("peft")
    from pa_rl.policies import HFConfig

    model = make_tiny_hf.make_text_model(tmp_path / "tiny-llama")
    spec = spec_of_space(PixelPointGoal().observation_space)
    low, high = -np.ones(2, np.float32), np.array([1.0, 3.0], np.float32)
    buffer = ReplayBuffer.from_episodes(pixel_episodes(4, seed=0), 0.99, obs_spec=spec)
    policy = make_policy("hf", spec, low, high, HFConfig(model=str(model), bins=16))
    generator = torch.Generator().manual_seed(0)
    with AsyncSampler(policy, 3, (2,), [buffer]) as sampler:
        sampler.begin(lambda: [(buffer, buffer.draw_index(8, generator))], 3)
        sampler.batch()
        wait_idle(sampler)
        batch = sampler.batch()
        assert float(sampler.metrics["sampler/from_cache"]) == 1.0
    centres = torch.from_numpy(low) + (torch.arange(16)[:, None] + 0.5) / 16 * torch.from_numpy(high - low)
    for samples in (batch.policy_samples, batch.next_policy_samples):
        assert samples.shape == (8, 3, 2)
        assert all(torch.isclose(samples[..., d].reshape(-1, 1), centres[None, :, d]).any(-1).all() for d in range(2))


def test_training_with_the_async_sampler_runs_every_phase_and_leaves_no_process(tmp_path: Path, mark: str) -> None:
    episodes = collect_episodes(20, seed=1)
    config = TrainConfig(batch_size=32, bc_steps=20, offline_steps=30, offline_distill_every=3, online_env_steps=120,
                         eval_every=10_000, eval_episodes=2, diagnostic_pairs=0, log_every=2, progress=False, seed=3,
                         sampler="async", sampler_max_staleness=1)
    result = train(small_agent("flow"), episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config, tmp_path)
    assert [e["phase"] for e in result.evaluations] == ["bc", "offline", "online"]
    assert np.isfinite(result.summary["online"]["eval/pa_rl_return"]) and result.summary["env_steps"] == 120
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    served = [float(r["value"]) for r in rows if r["metric"] == "sampler/from_cache"]
    staleness = [float(r["value"]) for r in rows if r["metric"] == "sampler/staleness"]
    assert {r["phase"] for r in rows if r["metric"] == "sampler/from_cache"} == {"offline", "online"}
    assert max(served) > 0 and all(0 <= s <= 1 for s in staleness)
    assert not workers(mark) and not zombie_children()


def test_an_error_mid_update_stops_the_worker(mark: str) -> None:
    agent = small_agent("flow")
    update, calls = agent.update, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 15:  # online, mid-block: batches drawn ahead, requests queued
            assert workers(mark)
            raise RuntimeError("a bug in an update")
        return update(*args, **kwargs)

    agent.update = failing
    config = TrainConfig(batch_size=32, bc_steps=0, offline_steps=0, online_env_steps=200, warmup_env_steps=0,
                         eval_episodes=1, diagnostic_pairs=0, progress=False, sampler="async")
    with pytest.raises(RuntimeError, match="a bug in an update"):
        train(agent, collect_episodes(10, seed=2), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    assert not workers(mark) and not zombie_children()


def test_sigkill_leaves_no_worker_and_the_run_resumes_with_a_new_one(tmp_path: Path, mark: str) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "killed.log"
    command = [sys.executable, str(WORKER), str(run_dir), "--async-sampler"]
    # Killed offline (distilling every 2 updates), the worker running: seen alive while the run was.
    with log.open("w") as stderr:
        killed, seen = subprocess.Popen([*command, "--kill-at", "update:20"], stderr=stderr), False
        while killed.poll() is None:
            seen = seen or bool(workers(mark))
            time.sleep(0.05)
    assert killed.returncode == -signal.SIGKILL, log.read_text()
    assert seen
    deadline = time.monotonic() + 10
    while workers(mark):  # the orphan notices its learner is gone
        assert time.monotonic() < deadline, "the worker outlived its killed learner"
        time.sleep(0.1)
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr and (run_dir / "final.safetensors").exists()
    phases = {row["phase"] for row in csv.DictReader((run_dir / "metrics.csv").open()) if row["metric"]
              == "sampler/from_cache"}
    assert phases == {"offline", "online"}
    assert not workers(mark)


LEARNER_KILLED_HOLDING_THE_LOCK = """
import os, signal, time
import torch
from pa_rl import ReplayBuffer
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.samplers import DONE, AsyncSampler


class SlowPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def sample(self, obs, num_samples):
        time.sleep(1.0)
        return torch.zeros(len(obs), num_samples, 2)

    def loss(self, obs, actions):
        return self.weight * 0


if __name__ == "__main__":
    buffer = ReplayBuffer.from_episodes(collect_episodes(5, seed=0), 0.99)
    generator = torch.Generator().manual_seed(0)
    sampler = AsyncSampler(SlowPolicy(), 4, (2,), [buffer])
    sampler.begin(lambda: [(buffer, buffer.draw_index(8, generator))], 3)
    sampler.batch()  # the next two batches are asked of the worker
    deadline = time.monotonic() + 60
    while int(sampler.state[DONE]) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.lock.acquire()  # the worker, drawing the second, will wait for it to write its draws
    print(sampler.process.pid, int(sampler.state[DONE]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_learner_killed_while_holding_the_cache_lock_leaves_no_worker(tmp_path: Path, mark: str) -> None:
    script, out = tmp_path / "learner.py", tmp_path / "out.txt"
    script.write_text(LEARNER_KILLED_HOLDING_THE_LOCK)
    with out.open("w") as stdout:  # a file, not a pipe: the worker inherits it and may outlive the learner
        killed = subprocess.run([sys.executable, str(script)], stdout=stdout, stderr=subprocess.STDOUT, timeout=120)
    assert killed.returncode == -signal.SIGKILL, out.read_text()
    worker, done = map(int, out.read_text().split()[-2:])
    assert done == 1  # killed while its worker drew the second request, which it cannot write now
    deadline = time.monotonic() + 10
    while worker in workers(mark):
        if time.monotonic() > deadline:
            os.kill(worker, signal.SIGKILL)  # leave no orphan behind a failed test
            pytest.fail("the worker waits forever for a lock its dead learner held")
        time.sleep(0.1)
