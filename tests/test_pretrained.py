"""save_pretrained / from_pretrained: a whole agent through a folder (config.json + model.safetensors),
rebuilt with the same parameters and acting alike under the same seed; hf policies keep only their
trainable weights and refuse another base. push_to_hub needs the network and is not exercised here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_POLICY_CONFIGS, GridPolicy
from safetensors.torch import load_file

from pa_rl import Agent, AgentConfig, CriticConfig, OptimizerConfig, make_policy
from pa_rl.observations import Field, encode_text
from pa_rl.policies import HFConfig
from pa_rl.runs import RunError

LOW, HIGH = np.array([-1.0, -2.0], np.float32), np.array([1.0, 0.5], np.float32)
PIXELS = {"pixels": Field("image", (12, 12, 3)), "instruction": Field("text", (64,))}


def small_agent(name: str, spec: object = 4, chunk: int = 1, policy_config: object = None, **agent: object) -> Agent:
    policy = make_policy(name, spec, LOW, HIGH, policy_config or SMALL_POLICY_CONFIGS[name], chunk)
    config = AgentConfig(chunk=chunk, critic=CriticConfig(ensemble_size=3, hidden_dims=(32, 32)),
                         optimizer=OptimizerConfig(num_samples=8, top_k=4, local_steps=2, step_size=0.1), **agent)
    agent = Agent(policy, spec, LOW, HIGH, config)
    with torch.no_grad():  # weights unlike a fresh build's, so loading them is what makes the copy equal
        for name, param in agent.named_parameters():
            if param.requires_grad or not name.startswith("policy.model."):  # an hf base stays as loaded
                param.add_(0.3 * torch.randn_like(param))
    return agent


def observations(spec: object, count: int = 3) -> object:
    rng = np.random.default_rng(0)
    if isinstance(spec, int):
        return rng.normal(size=(count, spec)).astype(np.float32)
    return {"pixels": rng.integers(0, 256, (count, 12, 12, 3), dtype=np.uint8),
            "instruction": encode_text(["open the drawer"] * count)}


def assert_same_agent(a: Agent, b: Agent, spec: object) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    for mode in ("argmax", "policy"):
        torch.manual_seed(3)
        expected = a.act(observations(spec), mode)
        torch.manual_seed(3)
        assert torch.equal(b.act(observations(spec), mode), expected)


@pytest.mark.parametrize(("name", "spec", "chunk", "agent"), [
    ("diffusion", 4, 1, {}), ("flow", 4, 3, {}), ("token", PIXELS, 2, {}),
    ("gaussian", 4, 1, {"objective": "iql", "policy_improvement": "awr"}),
], ids=["diffusion", "flow-chunk3", "token-images-text-chunk2", "gaussian-iql-awr"])
def test_a_saved_agent_loads_with_the_same_parameters_and_actions(name: str, spec: object, chunk: int, agent: dict,
                                                                   tmp_path: Path) -> None:
    saved = small_agent(name, spec, chunk, **agent)
    assert saved.save_pretrained(tmp_path / "agent") == tmp_path / "agent"
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    assert config["policy"] == name and config["agent"]["chunk"] == chunk
    loaded = Agent.from_pretrained(tmp_path / "agent")
    assert type(loaded.policy) is type(saved.policy) and loaded.config == saved.config
    assert loaded.obs_spec == saved.obs_spec and loaded.action_shape == saved.action_shape
    assert_same_agent(saved, loaded, spec)


def test_a_policy_that_cannot_be_rebuilt_by_name_is_refused(tmp_path: Path) -> None:
    agent = Agent(GridPolicy(4, LOW, HIGH), 4, LOW, HIGH, AgentConfig(critic=CriticConfig(ensemble_size=2)))
    with pytest.raises(TypeError, match=r"only the built-in classes \(diffusion, gaussian, token, flow, hf\) allow; "
                                        r"GridPolicy is not one"):
        agent.save_pretrained(tmp_path / "grid")
    assert not (tmp_path / "grid").exists()


def test_folders_that_hold_no_agent_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="holds no config.json"):
        Agent.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(RunError, match="neither a saved pa-rl agent nor a training run"):
        Agent.from_pretrained(tmp_path)
    saved = small_agent("gaussian").save_pretrained(tmp_path / "agent")
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # damaged in the last tensor's bytes
    with pytest.raises(RunError, match="is damaged"):
        Agent.from_pretrained(saved)


def test_core_package_imports_without_huggingface_hub() -> None:
    code = ("import sys; sys.modules['huggingface_hub'] = None\n"
            "import pa_rl, pa_rl.pretrained, pa_rl.export, pa_rl.cli\n"
            "try:\n    pa_rl.pretrained.import_hub()\nexcept ImportError as error:\n    print(error)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "pip install 'pa-rl[hf]'" in out


def test_an_hf_agent_saves_its_adapters_and_refuses_another_base(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import make_tiny_hf

    base = str(make_tiny_hf.make_text_model(tmp_path / "base"))
    saved = small_agent("hf", 3, policy_config=HFConfig(model=base, bins=32, lora_rank=4))
    folder = saved.save_pretrained(tmp_path / "agent")
    weights = load_file(str(folder / "model.safetensors"))
    trainable = {f"policy.model.{n}" for n, p in saved.policy.model.named_parameters() if p.requires_grad}
    assert {k for k in weights if k.startswith("policy.model.")} == trainable  # adapters only, no base weights
    assert any("lora_A" in key for key in trainable)
    config = json.loads((folder / "config.json").read_text())
    assert config["base_model"]["model"] == base
    assert config["base_model"]["sha256"] == bytes(saved.policy.base_sha256.tolist()).hex()
    assert_same_agent(saved, Agent.from_pretrained(folder), 3)
    # The same base elsewhere (a copy of the folder) takes the adapters; another base is refused.
    shutil.copytree(base, tmp_path / "copy")
    assert_same_agent(saved, Agent.from_pretrained(folder, base_model=str(tmp_path / "copy")), 3)
    other = str(make_tiny_hf.make_text_model(tmp_path / "other", seed=1))
    with pytest.raises(ValueError, match=r"trained on a base model .* with SHA-256 [0-9a-f]{64}, but it now loads"):
        Agent.from_pretrained(folder, base_model=other)
