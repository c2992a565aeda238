"""End to end: BC → offline PA-RL → online fine-tuning on PointGoal beats the BC policy it started from."""

from __future__ import annotations

import csv
import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import pa_rl
from pa_rl import Agent, AgentConfig, CriticConfig, OptimizerConfig, TrainConfig, make_policy, train
from pa_rl.envs.point_goal import collect_episodes
from pa_rl.plotting import plot_runs

from helpers import SMALL_POLICY_CONFIGS

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)


def small_agent(policy_name: str = "diffusion", objective: str = "calql") -> Agent:
    policy = make_policy(policy_name, 2, LOW, HIGH, SMALL_POLICY_CONFIGS[policy_name])
    config = AgentConfig(objective=objective, cql_alpha=0.1, bc_warmup_steps=100, distill_lr=1e-4,
                         critic=CriticConfig(ensemble_size=2, hidden_dims=(64, 64)),
                         optimizer=OptimizerConfig(num_samples=8, top_k=4, local_steps=2, step_size=3e-3))
    return Agent(policy, 2, LOW, HIGH, config)


def test_pa_rl_fine_tuning_beats_behaviour_cloning(tmp_path) -> None:
    episodes = collect_episodes(200, seed=0)
    config = TrainConfig(batch_size=128, bc_steps=1000, offline_steps=600, online_env_steps=800, eval_every=10_000,
                         eval_episodes=20, progress=False)
    result = train(small_agent(), episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config, run_dir=tmp_path)
    bc, online = result.summary["bc"], result.summary["online"]
    # Optimal return is about −15 (16 steps); BC imitates the random half of the data too.
    assert online["eval/policy_return"] > bc["eval/policy_return"] + 5, result.summary
    assert online["eval/pa_rl_return"] > bc["eval/policy_return"] + 5, result.summary
    assert online["eval/pa_rl_success"] >= bc["eval/policy_success"]
    assert (tmp_path / "metrics.csv").read_text().count("\n") > 10
    assert (tmp_path / "summary.json").exists()
    assert [e["phase"] for e in result.evaluations] == ["bc", "offline", "online"]


def test_training_is_deterministic_under_a_seed() -> None:
    episodes = collect_episodes(20, seed=1)
    config = TrainConfig(batch_size=32, bc_steps=20, offline_steps=20, online_env_steps=60, warmup_env_steps=0,
                         eval_every=10_000, eval_episodes=2, progress=False, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the same initial weights (as pa-rl train's build_agent seeds them)
        runs.append(train(small_agent("flow"), episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config).evaluations)
    assert runs[0] == runs[1]  # critic diagnostic included: it reads the critic's weights to the last digit


def test_every_objective_and_policy_class_runs_through_all_phases() -> None:
    episodes = collect_episodes(10, seed=2)
    config = TrainConfig(batch_size=16, bc_steps=5, offline_steps=5, online_env_steps=50, warmup_env_steps=0,
                         offline_distill_every=2, online_distill_utd=2.0, eval_every=10_000, eval_episodes=1,
                         critic_return_fit_steps=3,
                         progress=False)
    for policy_name, objective in [("gaussian", "iql"), ("token", "cql"), ("diffusion", "iql")]:
        result = train(small_agent(policy_name, objective), episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config)
        assert np.isfinite(result.summary["online"]["eval/pa_rl_return"])
        assert result.summary["env_steps"] == 50
    assert pa_rl.__version__


def test_online_distillation_waits_for_its_start() -> None:
    """With online_distill_start past the budget, online updates train the critic only."""
    episodes = collect_episodes(10, seed=2)
    for start, policy_moves in ((0, True), (10_000, False)):
        torch.manual_seed(0)
        agent = small_agent("flow")
        policy, critic = ([p.detach().clone() for p in m.parameters()] for m in (agent.policy, agent.critic))
        config = TrainConfig(batch_size=16, bc_steps=0, offline_steps=0, online_env_steps=40, online_distill_start=start,
                             eval_episodes=1, diagnostic_pairs=0, progress=False)
        train(agent, episodes, lambda: gym.make("pa_rl/PointGoal-v0"), config)
        assert any(not torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(policy, agent.policy.parameters())) == policy_moves


def test_online_distillation_can_fit_the_offline_rows_only() -> None:
    """online_distill_states 'offline': the critic trains on the mixed batch, the policy on its offline rows."""
    agent = small_agent("flow")
    policy = [p.detach().clone() for p in agent.policy.parameters()]
    sizes, distill = [], agent.distill
    agent.distill = lambda batch: sizes.append(len(batch)) or distill(batch)
    config = TrainConfig(batch_size=16, bc_steps=0, offline_steps=0, online_env_steps=40, mixing_ratio=0.75,
                         online_distill_states="offline", eval_episodes=1, diagnostic_pairs=0, progress=False)
    train(agent, collect_episodes(10, seed=2), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    assert sizes and set(sizes) == {12}  # round(16 · 0.75) offline rows, every online update
    assert any(not torch.equal(a, b) for a, b in zip(policy, agent.policy.parameters()))
    with pytest.raises(ValueError, match="mixing_ratio > 0"):
        TrainConfig(online_distill_states="offline", mixing_ratio=0.0)


def test_online_updates_tell_the_agent_which_rows_are_offline_data() -> None:
    """Online batches hold round(B · mixing_ratio) offline-data rows first: every update is told so."""
    agent = small_agent("flow")
    rows, update = [], agent.update
    agent.update = lambda batch, distill=False, data_rows=None: (
        rows.append((len(batch), data_rows)) or update(batch, distill, data_rows))
    config = TrainConfig(batch_size=16, bc_steps=0, offline_steps=0, online_env_steps=40, mixing_ratio=0.75,
                         eval_episodes=1, diagnostic_pairs=0, progress=False)
    train(agent, collect_episodes(10, seed=2), lambda: gym.make("pa_rl/PointGoal-v0"), config)
    assert rows and set(rows) == {(16, 12)}
    agent = Agent(agent.policy, 2, LOW, HIGH, dataclasses.replace(agent.config, conservative_states="data"))
    with pytest.raises(ValueError, match="conservative_states 'data' needs"):
        train(agent, collect_episodes(2, seed=2), lambda: gym.make("pa_rl/PointGoal-v0"),
              TrainConfig(online_env_steps=10, mixing_ratio=0.0))


def test_the_data_anchor_adds_the_data_rows_actions_to_distillation() -> None:
    """distill_data_anchor: the policy's loss sees the chosen targets and, as extra rows, the data
    actions of the batch's data rows; without it, the targets alone."""
    from pa_rl.buffer import Batch

    seen = []
    for anchor in (False, True):
        agent = small_agent("flow")
        agent.config = dataclasses.replace(agent.config, distill_data_anchor=anchor)
        loss = agent.policy.loss
        agent.policy.loss = lambda obs, actions: seen.append((obs, actions)) or loss(obs, actions)
        obs, actions = torch.randn(10, 2), torch.rand(10, 2) * 2 - 1
        batch = Batch(obs, actions, torch.zeros(10), torch.randn(10, 2), torch.zeros(10), torch.zeros(10),
                      torch.full((10,), 0.99))
        agent.update(batch, distill=True, data_rows=6)
    (plain_obs, plain), (anchored_obs, anchored) = seen
    assert len(plain) == 10 and len(anchored) == 16
    assert torch.equal(anchored_obs[10:], obs[:6]) and torch.equal(anchored[10:], actions[:6])


def test_recorded_data_alone_train_bc_and_offline_and_log_the_critics_calibration(tmp_path) -> None:
    """No environment: BC and offline PA-RL run, each evaluation logs the held-out calibration and nothing
    a rollout would measure, and the summary says so instead of reporting a success."""
    agent = small_agent("flow")
    policy, critic = ([p.detach().clone() for p in m.parameters()] for m in (agent.policy, agent.critic))
    config = TrainConfig(batch_size=16, bc_steps=10, offline_steps=10, online_env_steps=0, eval_every=5,
                         held_out_fraction=0.2, log_every=5, progress=False)
    result = train(agent, collect_episodes(10, seed=2), None, config, run_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    calibration = [(int(r["step"]), r["metric"]) for r in rows if r["metric"].startswith("diag/q_mc_")]
    assert calibration == [(step, name) for step in (15, 20) for name in ("diag/q_mc_bias", "diag/q_mc_spearman")]
    assert not [r for r in rows if r["metric"].startswith(("eval/", "diag/rank"))]
    assert {r["phase"] for r in rows} == {"bc", "offline"}
    assert result.summary["environment"] is False and result.summary["env_steps"] == 0
    assert result.summary["bc"] == {} and set(result.summary["offline"]) == {
        "diag/q_mc_bias", "diag/q_mc_spearman", "diag/q_mean", "diag/mc_mean"}
    assert json.loads((tmp_path / "summary.json").read_text())["offline"] == result.summary["offline"]
    assert any(not torch.equal(a, b) for a, b in zip(policy, agent.policy.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    assert plot_runs([tmp_path], tmp_path / "curves.png").stat().st_size > 1000  # losses and the diagnostic


def test_an_online_budget_without_an_environment_is_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match=r"online fine-tuning \(online_env_steps=40\) needs an environment.*"
                                         r"--train\.online-env-steps 0"):
        train(small_agent("flow"), collect_episodes(10, seed=2), None,
              TrainConfig(batch_size=16, bc_steps=5, offline_steps=5, online_env_steps=40, progress=False))
