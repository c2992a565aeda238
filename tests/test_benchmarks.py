"""The benchmark suite end to end at a tiny budget: one cell → its JSON → the report's tables and PNG."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pa_rl.cli import main as pa_rl
from pa_rl.runs import lock_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import report  # noqa: E402
import suite  # noqa: E402

TINY = ["--bc-steps", "20", "--offline-steps", "10", "--online-env-steps", "60", "--eval-every", "30",
        "--online-eval-every", "30",
        "--eval-episodes", "2", "--batch-size", "32", "--max-episode-steps", "30", "--warmup-env-steps", "0",
        "--threads", "1"]  # one thread: two stall each other when the machine is busy


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # suite.main sets them for the whole process
    yield
    torch.set_num_threads(threads)


def test_one_cell_then_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert pa_rl(["data", "make", "pointmaze-umaze", "--size", "3000", "--out", str(tmp_path / "datasets")]) == 0
    results = tmp_path / "results"
    argv = ["--tasks", "pointmaze-umaze", "--methods", "bestofn-diffusion", "--seeds", "0", "--results", str(results),
            "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "datasets"), *TINY]
    suite.main(argv)
    cell = json.loads((results / "pointmaze-umaze__bestofn-diffusion__s0.json").read_text())
    assert (cell["task"], cell["method"], cell["seed"], cell["score_mode"]) == ("pointmaze-umaze", "bestofn-diffusion",
                                                                              0, "pa_rl")
    assert 0 <= cell["offline_score"] <= 1 and 0 <= cell["online_score"] <= 1
    assert cell["config"]["agent"]["objective"] == "iql"
    assert cell["config"]["agent"]["optimizer"]["local_steps"] == 0
    assert cell["config"]["train"]["bc_steps"] == 20 and cell["config"]["train"]["reward_bias"] == -1
    assert cell["online_env_steps"] == 60 and cell["wall_clock_s"] > 0 and cell["machine"]["torch_threads"] == 1
    assert cell["peak_rss_mb"] > 50 and cell["peak_cuda_mb"] is None  # this cell's own peak (VmHWM reset at its start)
    assert [e["env_steps"] for e in cell["evaluations"] if e["phase"] == "online"] == [30, 60]
    assert "eval/pa_rl_success" in cell["evaluations"][-1] and "--methods bestofn-diffusion" in cell["command"]

    # A cell resumed from its checkpoint counts its earlier sessions' training in its wall clock.
    (results / "pointmaze-umaze__bestofn-diffusion__s0.json").unlink()
    suite.main(argv)
    resumed = json.loads((results / "pointmaze-umaze__bestofn-diffusion__s0.json").read_text())
    assert resumed["evaluations"] == cell["evaluations"] and resumed["online_score"] == cell["online_score"]
    assert resumed["train_wall_clock_s"] == pytest.approx(cell["train_wall_clock_s"], rel=0.05)
    assert resumed["wall_clock_s"] >= cell["train_wall_clock_s"]  # this session's few seconds, and the first's
    suite.main(argv)  # a finished cell is skipped, not re-run
    assert "skip pointmaze-umaze__bestofn-diffusion__s0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="1 cell\\(s\\) failed"):  # ...unless its budget changed
        suite.main([*argv, "--bc-steps", "21"])
    assert "another config" in capsys.readouterr().err

    out, png = tmp_path / "report.md", tmp_path / "curves.png"
    report.main(["--results", str(results), "--out", str(out), "--png", str(png)])
    text = out.read_text()
    assert "| pointmaze-umaze | bestofn-diffusion | pa_rl |" in text  # the score table
    assert "| pointmaze-umaze | bestofn-diffusion: " in text  # the sample-efficiency table (its own target)
    assert "| pointmaze-umaze | bestofn-diffusion | " in text.split("### Phases and peak memory")[1]  # with its memory
    # The stability row: best offline evaluation, end of online, drop; and an interval beside each mean.
    assert "| pointmaze-umaze | bestofn-diffusion | 0 |" in text and "more than 15 points below" in text
    assert png.stat().st_size > 1000


def test_intervals_see_episode_noise_and_seeds_that_disagree() -> None:
    assert report.wilson(0.5, 100) == pytest.approx((0.404, 0.596), abs=1e-3)
    # Seeds that agree: the episodes' Wilson interval. Seeds that disagree: the t-interval over seeds is wider.
    assert report.interval([0.5, 0.5, 0.5], 50) == pytest.approx(report.wilson(0.5, 150))
    low, high = report.interval([0.1, 0.9, 0.7], 50)
    half = 4.303 * statistics.stdev([0.1, 0.9, 0.7]) / 3 ** 0.5
    assert (low, high) == pytest.approx((max(0.0, 0.5667 - half), min(1.0, 0.5667 + half)), abs=1e-3)
    assert high - low > 0.5 > report.wilson(0.5667, 150)[1] - report.wilson(0.5667, 150)[0]
    assert report.t975(30) == pytest.approx(2.042, abs=0.01)


def test_parallel_jobs_give_the_cells_of_a_sequential_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert pa_rl(["data", "make", "pointmaze-umaze", "--size", "3000", "--out", str(tmp_path / "datasets")]) == 0
    common = ["--tasks", "pointmaze-umaze", "--methods", "bc-gaussian", "--data-dir", str(tmp_path / "datasets"), *TINY]
    suite.main([*common, "--seeds", "1", "--results", str(tmp_path / "one"), "--runs-dir", str(tmp_path / "r1")])
    # Seed 2's result is another run's (seed 1's): that cell fails at once, and the others still run.
    (tmp_path / "two").mkdir()
    shutil.copy(tmp_path / "one" / "pointmaze-umaze__bc-gaussian__s1.json",
                tmp_path / "two" / "pointmaze-umaze__bc-gaussian__s2.json")
    with pytest.raises(SystemExit, match="1 cell\\(s\\) failed.*: pointmaze-umaze__bc-gaussian__s2$"):
        suite.main([*common, "--seeds", "2", "0", "1", "--jobs", "2", "--results", str(tmp_path / "two"),
                    "--runs-dir", str(tmp_path / "r2")])
    assert "another config" in capsys.readouterr().err
    alone, beside = (json.loads((tmp_path / d / "pointmaze-umaze__bc-gaussian__s1.json").read_text()) for d in ("one", "two"))
    assert (tmp_path / "two" / "pointmaze-umaze__bc-gaussian__s0.json").exists()
    assert beside["summary"]["bc"] == alone["summary"]["bc"] and beside["evaluations"] == alone["evaluations"]
    assert beside["machine"]["torch_threads"] == 1  # each worker process keeps --threads
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        suite.main([*common, "--jobs", "0"])


def test_a_cell_another_process_is_writing_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    with lock_run(runs / "pointmaze-umaze__bc-gaussian__s0"):  # as a second suite running the same cell holds it
        with pytest.raises(SystemExit, match=r"1 cell\(s\) failed.*: pointmaze-umaze__bc-gaussian__s0$"):
            suite.main(["--tasks", "pointmaze-umaze", "--methods", "bc-gaussian", "--seeds", "0", "--results",
                        str(tmp_path / "results"), "--runs-dir", str(runs), "--data-dir", str(tmp_path), *TINY])
    assert "is in use by process" in capsys.readouterr().err


def test_unknown_names_stop_with_the_valid_ones() -> None:
    with pytest.raises(SystemExit, match="unknown method 'parl-mlp'; valid: parl-diffusion"):
        suite.main(["--methods", "parl-mlp"])
    with pytest.raises(SystemExit, match="unknown task 'antmaze'"):
        suite.main(["--tasks", "antmaze"])


def test_methods_change_only_what_they_name() -> None:
    def config(method: str) -> suite.RunConfig:
        return suite.cell_config("pointmaze-umaze", method, 1, suite.Budgets(bc_steps=7), Path("r"), Path("d"))

    parl, calql, iql = config("parl-diffusion"), config("calql-gaussian"), config("iql-gaussian")
    assert parl.train.bc_steps == iql.train.bc_steps == 7
    assert parl.train.online_env_steps == calql.train.online_env_steps == suite.cpu().train.online_env_steps
    # The baselines act with their own actor and train it offline by the library's defaults for them;
    # Cal-QL as d3rlpy's defaults: no BC pre-training, conservative weight 5, one actor draw per state.
    assert (calql.policy, calql.agent.policy_improvement, calql.train.collect_mode) == ("gaussian", "reparam", None)
    assert (calql.train.bc_steps, calql.agent.cql_alpha) == (0, 5.0)
    optimizer = calql.agent.optimizer
    assert (optimizer.num_samples, optimizer.top_k, optimizer.local_steps, optimizer.objective) == (1, 1, 0, "min")
    assert suite.METHODS["calql-gaussian"].score_mode == suite.METHODS["iql-gaussian"].score_mode == "deterministic"
    assert (iql.agent.objective, iql.agent.policy_improvement) == ("iql", "awr")
    assert config("bc-diffusion").train.online_env_steps == 0
    n16 = config("parl-diffusion-n16").agent.optimizer
    assert (n16.num_samples, n16.top_k, n16.local_steps) == (16, 8, parl.agent.optimizer.local_steps)
    # −1 per step until the goal everywhere: the mazes' 0/1 reward is biased, Meta-World's success − 1 is not.
    assert parl.train.reward_bias == -1.0
    assert suite.cell_config("metaworld-push", "parl-diffusion", 1, suite.Budgets(), Path("r"), Path("d")
                             ).train.reward_bias == 0.0


def test_hf_cells_build_their_tiny_llama_once_under_the_data_dir(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    parl, bc = (suite.cell_config("pointmaze-umaze", method, 0, suite.Budgets(), Path("r"), tmp_path)
                for method in ("parl-hf", "bc-hf"))
    assert parl.policy == bc.policy == "hf" and parl.hf.model == bc.hf.model == str(tmp_path / "hf-models/tiny-llama")
    assert parl.hf.lora_rank == 8 and parl.hf.instruction == "reach the goal at the top-left end of the U"
    assert (parl.agent.objective, parl.agent.policy_improvement) == ("calql", "distill")
    assert bc.train.offline_steps == bc.train.online_env_steps == 0
    suite.ensure_hf_model(parl)
    weights = tmp_path / "hf-models" / "tiny-llama" / "model.safetensors"
    built = weights.stat().st_mtime_ns
    suite.ensure_hf_model(bc)  # the same folder: kept, not rebuilt
    assert weights.stat().st_mtime_ns == built and [p.name for p in weights.parent.parent.iterdir()] == ["tiny-llama"]


def test_the_suite_runs_its_own_batch_and_a_flag_overrides_it() -> None:
    def batch(budgets: suite.Budgets) -> int:
        return suite.cell_config("pointmaze-umaze", "parl-diffusion", 0, budgets, Path("r"), Path("d")).train.batch_size

    assert suite.cpu().train.batch_size == 256  # the preset users get
    assert batch(suite.Budgets()) == suite.SUITE_BATCH_SIZE == 128
    assert batch(suite.Budgets(batch_size=64)) == 64


def test_stop_by_is_the_next_occurrence_of_that_time() -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    earlier, later = now - datetime.timedelta(minutes=2), now + datetime.timedelta(minutes=2)
    assert now < suite.next_utc_time(f"{earlier:%H:%M}") <= now + datetime.timedelta(days=1)  # after midnight
    assert now < suite.next_utc_time(f"{later:%H:%M}") <= later
    with pytest.raises(argparse.ArgumentTypeError, match="expected HH:MM"):
        suite.next_utc_time("noon")


def test_expected_time_falls_back_to_similar_cells_then_other_tasks(tmp_path: Path) -> None:
    def finished(task: str, method: str, seconds: float) -> None:
        cell = {"task": task, "method": method, "wall_clock_s": seconds}
        (tmp_path / f"{suite.cell_name(task, method, 0)}.json").write_text(json.dumps(cell))

    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-diffusion") == 0.0
    finished("pointmaze-medium", "parl-diffusion", 500.0)
    # A task without finished cells (a fresh data set) is not free: the method's time elsewhere counts.
    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-diffusion") == 500.0
    finished("pointmaze-umaze", "parl-diffusion-n4", 300.0)
    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-diffusion") == 300.0
    finished("pointmaze-umaze", "parl-diffusion", 600.0)
    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-diffusion") == 600.0
    cell = {"task": "pointmaze-umaze", "method": "parl-flow", "wall_clock_s": 90.0, "machine": {"device": "cuda"}}
    (tmp_path / "gpu.json").write_text(json.dumps(cell))  # a GPU cell says nothing about a CPU run's time
    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-flow") == 0.0  # no CPU flow cell yet
    assert suite.expected_seconds(tmp_path, "pointmaze-umaze", "parl-flow", "cuda") == 90.0


def test_report_keeps_gpu_timings_apart_from_cpu_ones() -> None:
    def cell(device: str, seconds: float) -> report.Result:
        return {"machine": {"device": device}, "wall_clock_s": seconds, "updates_per_s": 1000 / seconds}

    runs = [cell("cuda", 50.0), cell("cpu", 100.0), cell("cpu", 200.0)]
    assert report.per_device(runs, "wall_clock_s") == "150 (100–200); 50 on cuda"
    assert report.per_device(runs, "updates_per_s", digits=1, spread=False) == "7.5; 20.0 on cuda"


def test_the_full_suite_covers_every_task_and_method_and_runs_the_long_mazes_offline_only() -> None:
    assert {t for tasks, _ in suite.FULL_SUITE for t in tasks} == set(suite.TASKS)
    assert {m for _, methods in suite.FULL_SUITE for m in methods} == (
        set(suite.METHODS) - set(suite.GROUPS["stability"]) - set(suite.GROUPS["hf"])
        - set(suite.GROUPS["raw-observations"]))
    assert suite.GROUPS["stability"] and set(suite.GROUPS["hf"]) == {"parl-hf", "bc-hf"}
    assert sum(len(tasks) * len(methods) for tasks, methods in suite.FULL_SUITE) == 53  # cells per seed

    def online_steps(task: str) -> int:
        return suite.cell_config(task, "parl-diffusion", 0, suite.Budgets(), Path("r"), Path("d")).train.online_env_steps

    assert online_steps("pointmaze-large") == online_steps("pointmaze-medium") == 0
    assert online_steps("pointmaze-umaze") == online_steps("metaworld-push") == suite.cpu().train.online_env_steps
    assert suite.has_online_phase("pointmaze-umaze", "parl-diffusion")
    assert not suite.has_online_phase("pointmaze-large", "parl-diffusion")
    assert not suite.has_online_phase("pointmaze-umaze", "bc-diffusion")


def test_report_says_n_a_for_a_task_without_online_phase() -> None:
    evaluation = {"eval/pa_rl_success": 0.5, "eval/policy_success": 0.25}
    run = {"task": "pointmaze-large", "method": "parl-diffusion", "seed": 0, "score_mode": "pa_rl",
           "offline_score": 0.5, "online_score": None, "online_env_steps": 0, "updates": 4000,
           "config": {"train": {"bc_steps": 3000, "offline_steps": 1000}},
           "summary": {"bc": {"eval/policy_success": 0.25}, "offline": evaluation},
           "evaluations": [{"phase": "offline", "step": 4000, "env_steps": 0, **evaluation}],
           "machine": {"device": "cpu"}, "wall_clock_s": 100.0, "updates_per_s": 40.0}
    cells = {("pointmaze-large", "parl-diffusion"): [run]}
    assert "| 50 ± 0 % | n/a (no online phase) | – |" in report.scores_table(cells, ["pointmaze-large"], ["parl-diffusion"])
    modes = report.modes_table(cells, ["pointmaze-large"], ["parl-diffusion"])
    assert "| pointmaze-large | parl-diffusion | 50 ± 0 % | 25 ± 0 % | n/a | n/a |" in modes


def test_the_long_tier_runs_its_budgets_with_an_online_phase_on_every_task() -> None:
    budgets = suite.Budgets(eval_episodes=7).over(suite.LONG_BUDGETS)  # a flag still overrides
    config = suite.cell_config("pointmaze-medium", "parl-diffusion", 0, budgets, Path("r"), Path("d"), tier="long")
    assert (config.train.bc_steps, config.train.offline_steps, config.train.online_env_steps,
            config.train.eval_episodes) == (20_000, 20_000, 10_000, 7)
    assert config.train.batch_size == 256 and suite.has_online_phase("pointmaze-medium", "parl-diffusion", "long")
    assert suite.cell_config("pointmaze-medium", "bc-diffusion", 0, budgets, Path("r"), Path("d"),
                             tier="long").train.online_env_steps == 0
