"""A run on disk: its resolved config, its data set, its agent, and safetensors checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pa_rl.agent import Agent, AgentConfig
from pa_rl.checkpoint import write_atomically
from pa_rl.data import LoadedDataset, available_datasets, load_dataset, make_dataset
from pa_rl.data.lerobot_io import LeRobotSource, is_lerobot_name
from pa_rl.data.minari_io import datasets_root
from pa_rl.policies import DiffusionConfig, FlowConfig, GaussianConfig, HFConfig, TokenConfig, make_policy
from pa_rl.train import RunError, TrainConfig, seed_everything, to_jsonable

PolicyName = Literal["diffusion", "gaussian", "token", "flow", "hf"]


@dataclass
class RunConfig:
    """Everything a run needs; written to ``config.json`` so the run can be rebuilt and re-run."""

    dataset: str = "pointmaze-umaze"  # a built-in name (generated on first use), a Minari id, or a path
    policy: PolicyName = "diffusion"
    device: str = "cpu"  # cpu or cuda
    name: str = ""  # run name; default <dataset>-<policy>-<critic>-s<seed>
    runs_dir: Path = Path("runs")
    data_dir: Path | None = None  # where built-in data sets live (default: Minari's local root)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hf: HFConfig = field(default_factory=HFConfig)  # a pretrained Hugging Face model (pip install 'pa-rl[hf]')

    def __post_init__(self) -> None:
        """A device this machine cannot use fails here, before any data set or model is built."""
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {self.device!r} asked for, but {why}; use --device cpu")

    @property
    def run_name(self) -> str:
        stem = Path(self.dataset).name if os.sep in self.dataset else self.dataset.replace("/", "_")
        return self.name or f"{stem}-{self.policy}-{self.agent.objective}-s{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.run_name

    @property
    def policy_config(self) -> Any:
        return getattr(self, self.policy)


def from_jsonable(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``to_jsonable`` output, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise RunError(f"config has unknown fields for {cls.__name__}: {sorted(unknown)} "
                       "(written by another pa-rl version?)")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            value = from_jsonable(hint, value)
        elif origin is tuple:
            value = tuple(value)
        elif value is not None and (hint is Path or (origin in (typing.Union, types.UnionType)
                                                     and Path in typing.get_args(hint))):
            value = Path(value)
        kwargs[name] = value
    return cls(**kwargs)


def ensure_dataset(config: RunConfig) -> str:
    """What to load for the run's data set: a built-in one is generated the first time it is asked
    for (its folder), anything else is a Minari id or path, returned as given."""
    if config.dataset not in available_datasets():
        return config.dataset
    root = Path(config.data_dir) if config.data_dir is not None else datasets_root()
    path = root / "pa-rl" / f"{config.dataset}-v0"
    if not path.exists():
        print(f"generating data set {config.dataset!r} in {root} (first use)", file=sys.stderr)
        make_dataset(config.dataset, out_dir=str(root), seed=0)
    return str(path)


def resolve_dataset(config: RunConfig, trust_env: Sequence[str] = ()) -> LoadedDataset:
    """Load the run's data set, generating a built-in one the first time it is asked for; ``trust_env``
    lists the env entry points (``module:callable``) beyond gymnasium's and pa-rl's it may import."""
    return load_dataset(ensure_dataset(config), trust_env)


def build_agent(config: RunConfig, data: LoadedDataset) -> Agent:
    """The run's agent, its initial weights drawn under the run's seed (same config, same weights)."""
    seed_everything(config.train.seed)
    policy = make_policy(config.policy, data.obs_spec, data.action_low, data.action_high, config.policy_config,
                         config.agent.chunk)
    return Agent(policy, data.obs_spec, data.action_low, data.action_high, config.agent, config.device)


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order), stored in the weights
    file's metadata: safetensors checks the header's layout but not the bytes, so a flipped bit would
    otherwise load silently."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(agent: Agent, path: Path) -> None:
    """Write all weights (policy, critic, target, value) as safetensors with their SHA-256, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in agent.state_dict().items()}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"sha256": weights_sha256(tensors)}))


def load_weights(agent: Agent, path: Path) -> None:
    """Load a weights file into ``agent`` once its SHA-256 matches the one it carries."""
    try:
        with safe_open(str(path), "pt") as handle:
            recorded = (handle.metadata() or {}).get("sha256")
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise RunError(f"{path} cannot be read ({error}): the weights file is damaged") from error
    if recorded is None:
        raise RunError(f"{path} carries no SHA-256 (written by an older pa-rl), so it cannot be verified")
    if weights_sha256(state) != recorded:
        raise RunError(f"{path} is damaged: its contents do not match the SHA-256 it carries (a flipped bit or a "
                       "bad copy); use an intact copy")
    try:
        missing, unexpected = agent.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise RunError(f"{path} does not match this run's config (tensor shapes differ)") from error
    if missing or unexpected:
        raise RunError(f"{path} does not match this run's config: missing {missing[:5]}, unexpected {unexpected[:5]}")


@contextlib.contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder (``.lock``, holding our PID) for as long as a command
    writes to it: a second writer is refused, naming the holder, instead of interleaving its metrics
    and checkpoints with the first's. The kernel drops the lock when the process dies, however it dies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunError(f"run {run_dir} is in use by process {handle.read().strip() or '(unknown)'}: wait for it to "
                           "end or stop it; two writers would interleave its metrics and checkpoints") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def write_config(config: RunConfig, data: LoadedDataset) -> None:
    import pa_rl

    fingerprint = data.fingerprint()
    payload = {"pa_rl_version": pa_rl.__version__, "torch_version": torch.__version__,
               "dataset_path": fingerprint["path"], "dataset_id": data.dataset_id, "dataset_fingerprint": fingerprint,
               "config": to_jsonable(config)}
    write_atomically(config.run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def _read_payload(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a pa-rl run: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error}); the run's config is damaged") from error


def run_dataset(run_dir: Path, trust_env: Sequence[str] = ()) -> LoadedDataset:
    """The data set a run was trained on, for its resume: loaded from the folder its ``config.json``
    records (never re-resolved by name nor regenerated) and refused if it differs from the recorded
    fingerprint, since resuming on other data would quietly train a different run."""
    recorded = _read_payload(run_dir).get("dataset_fingerprint")
    if recorded is None:
        raise RunError(f"{run_dir}/config.json records no fingerprint of its data (written by an older pa-rl): "
                       "its data cannot be checked, so it cannot be resumed; start a new run")
    path = recorded["path"]  # a folder, or lerobot:FOLDER[,OPTIONS] (the options say how its rewards are read)
    if not (LeRobotSource.parse(path).folder if is_lerobot_name(path) else Path(path)).is_dir():
        raise RunError(f"the data set of run {run_dir}, {path}, is gone: restore it there to resume")
    data = load_dataset(path, trust_env)
    changed = [f"{key} (run {recorded[key]!r}, now {value!r})" for key, value in data.fingerprint().items()
               if recorded[key] != value]
    if changed:
        raise RunError(f"the data set {path} differs from the one run {run_dir} was trained on: "
                       f"{'; '.join(changed)}. Restore the original data, or start a new run on these")
    return data


def load_run(run_dir: Path, device: str | None = None, trust_env: Sequence[str] = ()
             ) -> tuple[RunConfig, LoadedDataset, Agent]:
    """A finished run's config, data set and agent with its final weights (what ``pa-rl eval`` and
    ``pa-rl export`` act with); ``device`` replaces the recorded one."""
    config = read_config(run_dir, device)
    weights = Path(run_dir) / "checkpoints" / "final.safetensors"
    if not weights.is_file():
        raise RunError(f"{run_dir} has no final weights ({weights}): the run did not finish")
    data = resolve_dataset(config, trust_env)
    agent = build_agent(config, data)
    load_weights(agent, weights)
    return config, data, agent


def read_config(run_dir: Path, device: str | None = None) -> RunConfig:
    """The run's config; ``device`` replaces the recorded one before it is checked, so a run trained
    on CUDA can be evaluated on a machine without it."""
    recorded = _read_payload(run_dir)["config"]
    config = from_jsonable(RunConfig, recorded if device is None else {**recorded, "device": device})
    return dataclasses.replace(config, runs_dir=Path(run_dir).parent, name=Path(run_dir).name)
