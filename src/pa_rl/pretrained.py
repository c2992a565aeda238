"""A whole agent as a folder: ``config.json`` (what rebuilds it) and ``model.safetensors`` (its weights).

The folder is self-describing, unlike a run's ``final.safetensors``, whose observation spec and
action bounds come from the run's data set: it records the built-in policy class by name with its
config, the agent config, the observation spec and the per-step action bounds, so
:func:`load_pretrained` rebuilds the agent without data or a run. Weights go through
:func:`pa_rl.runs.save_weights` (SHA-256 checked on load). An ``hf`` policy's weights are what its
state dict holds: the adapters and projection, plus the base model's SHA-256; the base is reloaded
from its recorded path or Hub id, and weights trained on another base are refused.

``huggingface_hub`` (extra ``hf``) is imported only to push a folder to the Hub or fetch one from it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import pa_rl
from pa_rl.agent import Agent, AgentConfig
from pa_rl.checkpoint import write_atomically
from pa_rl.observations import Field, ObsSpec
from pa_rl.policies import POLICIES, make_policy
from pa_rl.runs import from_jsonable, load_run, load_weights, save_weights
from pa_rl.train import RunError, to_jsonable

FORMAT = "pa-rl-agent"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def import_hub() -> Any:
    """``huggingface_hub``, or an ImportError naming the extra that installs it."""
    try:
        import huggingface_hub
    except ImportError as error:
        raise ImportError(f"the Hugging Face Hub needs huggingface_hub ({error}): pip install 'pa-rl[hf]'") from error
    return huggingface_hub


def policy_name(agent: Agent) -> str:
    """The registry name of the agent's policy class; only built-in classes can be rebuilt by name."""
    for name, (cls, _) in POLICIES.items():
        if type(agent.policy) is cls:
            return name
    raise TypeError(f"save_pretrained rebuilds the policy from its class name and config, which only the built-in "
                    f"classes ({', '.join(POLICIES)}) allow; {type(agent.policy).__name__} is not one: save "
                    "agent.state_dict() and rebuild the agent with your own code")


def save_pretrained(agent: Agent, directory: str | Path) -> Path:
    """Write ``agent`` to ``directory`` (created if needed); returns the folder."""
    directory = Path(directory)
    name = policy_name(agent)
    spec = agent.obs_spec if isinstance(agent.obs_spec, int) else {k: to_jsonable(f) for k, f in agent.obs_spec.items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "pa_rl_version": pa_rl.__version__,
               "policy": name, "policy_config": to_jsonable(agent.policy.config), "agent": to_jsonable(agent.config),
               "obs_spec": spec, "action_low": agent.action_low.tolist(), "action_high": agent.action_high.tolist()}
    if name == "hf":  # for readers of the folder; the weights carry the hash that loading checks
        cfg = agent.policy.config
        payload["base_model"] = {"model": cfg.model, "revision": cfg.revision,
                                 "sha256": bytes(agent.policy.base_sha256.cpu().tolist()).hex()}
    save_weights(agent, directory / WEIGHTS_NAME)
    write_atomically(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return directory


def load_pretrained(source: str | Path, device: str = "cpu", base_model: str | None = None) -> Agent:
    """An agent from a :func:`save_pretrained` folder, a finished training run's folder (its final
    weights; its data set gives the observation spec and bounds), or a Hub id (downloaded first).
    ``base_model`` loads an ``hf`` policy's adapters onto this folder or id instead of the recorded
    one (e.g. a local copy); it must hash as the base they were trained on."""
    folder = Path(source)
    if not folder.exists():
        folder = _download(str(source))
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{folder} holds no {CONFIG_NAME}: neither a saved pa-rl agent nor a training run")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error})") from error
    if payload.get("format") != FORMAT:
        if "dataset_fingerprint" in payload:  # a training run
            if base_model is not None:
                raise ValueError("base_model applies to saved hf agents; a run's config records its own --hf.model")
            return load_run(folder, device)[2]
        raise RunError(f"{path} is neither a saved pa-rl agent nor a training run's config")
    if payload.get("format_version") != FORMAT_VERSION:
        raise RunError(f"{folder} has agent format {payload.get('format_version')}; this pa-rl reads {FORMAT_VERSION}")
    name = payload["policy"]
    if name not in POLICIES:
        raise RunError(f"{folder} holds a {name!r} policy, which this pa-rl does not have ({', '.join(POLICIES)})")
    policy_config = from_jsonable(POLICIES[name][1], payload["policy_config"])
    if base_model is not None:
        if name != "hf":
            raise ValueError(f"base_model applies to hf policies; {folder} holds a {name} policy")
        policy_config.model, policy_config.revision = base_model, None
    spec: ObsSpec = payload["obs_spec"]
    if isinstance(spec, dict):
        spec = {key: from_jsonable(Field, value) for key, value in spec.items()}
    agent_config = from_jsonable(AgentConfig, payload["agent"])
    low, high = (np.asarray(payload[key], np.float32) for key in ("action_low", "action_high"))
    policy = make_policy(name, spec, low, high, policy_config, agent_config.chunk)
    agent = Agent(policy, spec, low, high, agent_config, device)
    load_weights(agent, folder / WEIGHTS_NAME)
    return agent


def _download(repo_id: str) -> Path:
    """A Hub model repository's files, fetched into the local Hugging Face cache."""
    if not REPO_ID.match(repo_id):
        raise RunError(f"{repo_id} does not exist: give a saved agent's folder, a run's folder or a Hub id")
    hub = import_hub()
    try:
        return Path(hub.snapshot_download(repo_id))
    except Exception as error:  # offline, unknown repository, no access: huggingface_hub's own error types
        raise RunError(f"{repo_id} is no folder here, and it could not be fetched from the Hugging Face Hub "
                       f"({type(error).__name__}: {error})") from error


def push_to_hub(agent: Agent, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload pa-rl agent") -> str:
    """Save ``agent`` to a temporary folder and upload it to the Hub model repository ``repo_id``
    (created if missing); returns the commit's URL. :func:`load_pretrained` reads it back by id."""
    hub = import_hub()
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(agent, folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return commit.commit_url
