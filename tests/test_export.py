"""`pa-rl export`: π̂ as one torch.export program that plain torch (no pa_rl) loads, giving
`agent.act(obs, "argmax")`'s action under the same seed."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_POLICY_CONFIGS, TINY_TRAIN, GridPolicy
from safetensors.torch import load_file

from pa_rl import Agent, AgentConfig, CriticConfig, OptimizerConfig, make_policy
from pa_rl.cli import main
from pa_rl.export import export_agent
from pa_rl.observations import Field, encode_text

LOW, HIGH = np.array([-1.0, -2.0], np.float32), np.array([1.0, 0.5], np.float32)
# Large steps and a wide critic head, so the local steps move the actions and the check sees them.
OPTIMIZER = OptimizerConfig(num_samples=8, top_k=4, local_steps=3, step_size=0.5)
CRITIC = CriticConfig(ensemble_size=3, hidden_dims=(32, 32), final_init_scale=1.0)
PIXELS = {"pixels": Field("image", (12, 12, 3)), "instruction": Field("text", (64,)), "arm": Field("vector", (3,))}

# Runs in a fresh interpreter where pa_rl cannot be imported: loads the program, calls it once per seed.
PLAIN_TORCH = """
import sys
sys.modules["pa_rl"] = None  # any import of pa_rl fails
import torch
torch.set_num_threads(int(sys.argv[4]))  # as many as the agent had: threads can change a sum's rounding
program = torch.export.load(sys.argv[1]).module()
observations = torch.load(sys.argv[2])
actions = []
for seed, obs in enumerate(observations):
    torch.manual_seed(seed)
    actions.append(program(obs))
torch.save(actions, sys.argv[3])
assert not any(name == "pa_rl" or name.startswith("pa_rl.") for name, m in sys.modules.items() if m is not None)
"""


@pytest.fixture(autouse=True)
def _no_trace_logs(caplog: pytest.LogCaptureFixture) -> None:
    """torch's tracing logs every fake tensor at DEBUG; pytest capturing those doubles an export's time."""
    caplog.set_level(logging.INFO, logger="torch.__trace")


def plain_torch_actions(program: Path, observations: list, tmp_path: Path) -> list[torch.Tensor]:
    """Actions of the program for observations[i] under seed i, computed without pa_rl."""
    torch.save(observations, tmp_path / "obs.pt")
    subprocess.run([sys.executable, "-c", PLAIN_TORCH, str(program), str(tmp_path / "obs.pt"), str(tmp_path / "a.pt"),
                    str(torch.get_num_threads())],
                   check=True, cwd=tmp_path)
    return torch.load(tmp_path / "a.pt")


def agent_actions(agent: Agent, observations: list) -> list[torch.Tensor]:
    actions = []
    for seed, obs in enumerate(observations):
        torch.manual_seed(seed)
        numpy_obs = {k: v.numpy() for k, v in obs.items()} if isinstance(obs, dict) else obs.numpy()
        actions.append(agent.act(numpy_obs, "argmax"))
    return actions


def observation(spec: object, rng: np.random.Generator, instruction: str = "push the block") -> object:
    if isinstance(spec, int):
        return torch.from_numpy(rng.normal(size=spec).astype(np.float32))
    return {"pixels": torch.from_numpy(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
            "instruction": torch.from_numpy(encode_text([instruction])[0]),
            "arm": torch.from_numpy(rng.normal(size=3).astype(np.float32))}


def make_agent(name: str, spec: object = 4, chunk: int = 1, variant: str = "") -> Agent:
    """``variant``: "gate" (the agreement gate), "target" (π̂ acts with the target critic), or ""."""
    policy = make_policy(name, spec, LOW, HIGH, SMALL_POLICY_CONFIGS[name], chunk)
    optimizer = dataclasses.replace(OPTIMIZER, agreement_gate=variant == "gate")
    config = AgentConfig(chunk=chunk, critic=CRITIC, optimizer=optimizer,
                         act_critic="target" if variant == "target" else "critic")
    agent = Agent(policy, spec, LOW, HIGH, config)
    with torch.no_grad():  # trained-looking weights (critic and target apart): policy and critic both matter
        for param in agent.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return agent


@pytest.mark.parametrize(("name", "spec", "chunk", "variant"), [
    ("diffusion", 4, 1, ""), ("flow", 4, 3, ""), ("gaussian", 4, 1, "gate"), ("token", 4, 2, ""),
    ("diffusion", PIXELS, 1, ""), ("diffusion", 4, 1, "target"),
], ids=["diffusion", "flow-chunk3", "gaussian-agreement-gate", "token-chunk2", "diffusion-images-text",
        "diffusion-acting-with-the-target-critic"])
def test_the_program_gives_act_s_action_in_plain_torch(name: str, spec: object, chunk: int, variant: str,
                                                       tmp_path: Path) -> None:
    agent = make_agent(name, spec, chunk, variant)
    exported = export_agent(agent, tmp_path / "out", calls=3)
    assert exported.path == tmp_path / "out" / "policy.pt2" and exported.latency_ms > 0
    rng = np.random.default_rng(0)
    observations = [observation(spec, rng, text) for text in ("push the block", "open the drawer", "", "go")]
    expected = agent_actions(agent, observations)
    got = plain_torch_actions(exported.path, observations, tmp_path)
    assert got[0].shape == ((chunk, 2) if chunk > 1 else (2,))
    for a, b in zip(got, expected):
        assert torch.equal(a, b), (a, b)
    assert len({tuple(a.flatten().tolist()) for a in got}) > 1  # the observations matter
    if variant != "gate":  # the local steps are in the program: with them off, π̂ (best of N) chooses other actions
        agent.action_optimizer.config = dataclasses.replace(OPTIMIZER, local_steps=0)
        assert not all(torch.equal(a, b) for a, b in zip(got, agent_actions(agent, observations)))
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["policy"] == name and info["output_shape"] == list(got[0].shape)
    assert info["optimizer"]["local_steps"] == 3 and info["latency_calls"] == 3


def test_a_policy_the_program_cannot_hold_is_refused(tmp_path: Path) -> None:
    agent = Agent(GridPolicy(4, LOW, HIGH), 4, LOW, HIGH, AgentConfig(critic=CRITIC, optimizer=OPTIMIZER))
    with pytest.raises(TypeError, match=r"pa-rl export takes the diffusion, flow, gaussian, token policies .*; "
                                        r"GridPolicy samples through Python-side code"):
        export_agent(agent, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `pa-rl train` run of a few seconds on a small pointmaze-umaze."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "make", "pointmaze-umaze", "--size", "3000", "--seed", "1", "--out", str(root / "data")]) == 0
    assert main(["train", "--name", "tiny", "--runs-dir", str(root / "runs"), "--data-dir", str(root / "data"),
                 *TINY_TRAIN, "--train.online-env-steps", "20", "--train.eval-episodes", "1"]) == 0
    return root / "runs" / "tiny"


def test_export_cli_on_a_trained_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "deploy"), "--calls", "5"]) == 0
    out = capsys.readouterr().out
    assert "wrote " + str(tmp_path / "deploy" / "policy.pt2") in out and "diffusion policy, N=8 samples" in out
    assert "batch-1 latency on cpu: " in out and "ms (median of 5 calls after 10 warm-up calls)" in out
    # The run's agent, as Agent.from_pretrained loads a run folder: its final weights.
    agent = Agent.from_pretrained(tiny_run)
    final = load_file(str(tiny_run / "checkpoints" / "final.safetensors"))
    assert all(torch.equal(agent.state_dict()[key], value) for key, value in final.items())
    rng = np.random.default_rng(1)
    observations = [observation(agent.obs_spec, rng) for _ in range(3)]
    for a, b in zip(plain_torch_actions(tmp_path / "deploy" / "policy.pt2", observations, tmp_path),
                    agent_actions(agent, observations)):
        assert torch.equal(a, b)
    assert main(["export", str(tiny_run)]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
