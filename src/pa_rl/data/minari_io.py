"""Reading any Minari dataset into :class:`Episode` lists, and writing our generated datasets.

Minari lays a dataset out as ``<root>/<namespace>/<name>-v<N>/data/{metadata.json, main_data.hdf5}``
where ``<root>`` is ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Everything here
works offline: nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path

from pa_rl.data.episodes import DataError, Episode, check_episode

__all__ = ["DataError", "LoadedDataset", "load_dataset", "write_dataset", "datasets_root"]

TMP_PREFIX = ".pa-rl-tmp-"  # then the writer's PID: .pa-rl-tmp-<pid>-<random>/


def datasets_root() -> Path:
    """Minari's local dataset root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(get_dataset_path())


@dataclass
class LoadedDataset:
    """A validated dataset in our in-memory form, plus a handle to recover its environment.

    Observations are flat float32 vectors. Dict observations are flattened with
    ``gymnasium.spaces.flatten`` semantics: sub-spaces are concatenated in the Dict space's key
    order (gymnasium sorts plain-dict keys alphabetically; nested Dicts recurse in place), each
    sub-array raveled in C order. This is exactly the layout that
    ``gymnasium.wrappers.FlattenObservation`` produces on the recovered env.
    """

    dataset_id: str
    episodes: list[Episode]
    observation_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    path: str
    _minari: minari.MinariDataset = field(repr=False)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def num_transitions(self) -> int:
        return sum(len(ep) for ep in self.episodes)

    def fingerprint(self) -> dict[str, object]:
        """What pins a run to these data: their folder, size, and a SHA-256 of their content as loaded
        (every episode's length and arrays), so regenerated or edited data do not pass for the original."""
        digest = hashlib.sha256()
        for ep in self.episodes:
            digest.update(len(ep).to_bytes(8, "little"))
            for array in (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations):
                digest.update(np.ascontiguousarray(array).tobytes())
        return {"path": str(Path(self.path).resolve()), "episodes": len(self.episodes),
                "transitions": self.num_transitions, "sha256": digest.hexdigest()}

    def episode_successes(self) -> np.ndarray | None:
        """Per-episode bool: did ``infos["success"]`` ever hold? None if not recorded."""
        successes = []
        for ep in self._minari.iterate_episodes():
            if not isinstance(ep.infos, dict) or "success" not in ep.infos:
                return None
            successes.append(bool(np.any(ep.infos["success"])))
        return np.array(successes)

    def make_env(self, *, eval_env: bool = True, render_mode: str | None = None) -> gym.Env:
        """Recover the dataset's environment (its evaluation env by default).

        Falls back to the collection env when the dataset records no eval env. Dict observations
        are wrapped in ``FlattenObservation`` so observations match ``episodes`` row for row.
        """
        kwargs = {} if render_mode is None else {"render_mode": render_mode}
        try:
            env = self._minari.recover_environment(eval_env=eval_env, **kwargs)
        except (ValueError, ImportError, gym.error.Error) as e:
            raise DataError(
                f"Cannot recover the environment of dataset {self.dataset_id!r} ({self.path}): "
                f"{e}. The dataset must record an env spec whose packages are installed "
                "(for the built-in benchmarks: pip install 'pa-rl[envs]')."
            ) from e
        recorded = self._minari.observation_space
        if isinstance(env.observation_space, gym.spaces.Dict):
            if _layout(env.observation_space) != _layout(recorded):
                env.close()
                raise DataError(
                    f"The recovered env's dict observation layout {_layout(env.observation_space)} "
                    f"differs from the dataset's {_layout(recorded)} ({self.dataset_id!r}); the "
                    "dataset was recorded with a different env version or wrappers."
                )
            env = gym.wrappers.FlattenObservation(env)
        env_dim = gym.spaces.flatdim(env.observation_space)
        if env_dim != self.observation_dim:
            env.close()
            raise DataError(
                f"The recovered env of {self.dataset_id!r} has {env_dim}-d flat observations but "
                f"the dataset has {self.observation_dim}-d ones; the recorded env spec does not "
                "match the data (wrong env version, or wrappers missing from the spec)."
            )
        return env


def load_dataset(id_or_path: str, trust_env: Sequence[str] = ()) -> LoadedDataset:
    """Load and validate a local Minari dataset by id or by directory.

    ``id_or_path`` is either a directory (the dataset directory holding ``data/``, or ``data/``
    itself) or a Minari dataset id resolved under :func:`datasets_root`. Rewards are returned as
    recorded (``TrainConfig.reward_scale``/``reward_bias`` transform data and env alike). Raises :class:`DataError` for anything that would
    silently corrupt training: missing/unreadable data, non-Box actions, unsupported
    observation spaces, empty data, non-finite values, actions outside the action bounds.

    A data set is untrusted input: the env specs it records name entry points that building its
    environment imports and calls. One that is not a registered gymnasium id's own or pa-rl's
    own is refused unless listed in ``trust_env`` (``"module:callable"``), before anything is
    imported.
    """
    data_dir = _resolve_data_dir(id_or_path)
    try:
        metadata = json.loads((data_dir / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise _malformed(data_dir, e) from e
    _refuse_untrusted_code(metadata, id_or_path, trust_env)
    try:
        dataset = minari.MinariDataset(str(data_dir))
        observation_space = dataset.observation_space
        action_space = dataset.action_space
        dataset_id = dataset.id
        minari_episodes = list(dataset.iterate_episodes())
    except (OSError, ValueError, KeyError, TypeError, AssertionError, json.JSONDecodeError) as e:
        raise _malformed(data_dir, e) from e

    if not isinstance(action_space, gym.spaces.Box):
        raise DataError(
            f"Dataset {dataset_id!r} has a {type(action_space).__name__} action space; pa-rl needs "
            "continuous Box actions. Convert the actions to a Box (e.g. one-hot or embedded "
            "vectors) and rewrite the dataset."
        )
    if len(action_space.shape) != 1:
        raise DataError(
            f"Dataset {dataset_id!r} has actions of shape {action_space.shape}; pa-rl needs 1-d "
            "Box actions. Flatten the actions and rewrite the dataset."
        )
    _check_observation_space(observation_space, dataset_id)
    observation_dim = gym.spaces.flatdim(observation_space)
    action_low = action_space.low.astype(np.float32)
    action_high = action_space.high.astype(np.float32)

    if not minari_episodes:
        raise DataError(f"Dataset {dataset_id!r} ({data_dir}) has no episodes.")
    episodes = []
    for ep in minari_episodes:
        episode = _convert_episode(ep, observation_space, action_space, dataset_id)
        check_episode(episode, f"Dataset {dataset_id!r}, episode {ep.id}", action_low, action_high)
        episodes.append(episode)
    if sum(len(ep) for ep in episodes) == 0:
        raise DataError(f"Dataset {dataset_id!r} ({data_dir}) has zero transitions.")
    return LoadedDataset(
        dataset_id=dataset_id,
        episodes=episodes,
        observation_dim=observation_dim,
        action_low=action_low,
        action_high=action_high,
        path=str(data_dir.parent),
        _minari=dataset,
    )


def write_dataset(
    dataset_id: str,
    buffers: list[EpisodeBuffer],
    *,
    env_spec: EnvSpec,
    eval_env_spec: EnvSpec,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    description: str,
    algorithm_name: str,
    requirements: list[str],
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> str:
    """Write episode buffers as a Minari dataset under ``out_dir`` and return its directory.

    Uses ``minari.create_dataset_from_buffers`` (no jax). The dataset is written into a hidden
    temporary root next to the destination and renamed into place only once complete, so a crash
    never leaves a partial dataset under a loadable id; the next write into that root removes a
    killed write's temporary root.
    """
    namespace = parse_dataset_id(dataset_id)[0]
    root = (Path(out_dir) if out_dir is not None else datasets_root()).resolve()  # minari needs it absolute
    final = root / dataset_id
    refuse_existing(dataset_id, final, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(root)
    tmp_root = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root))
    try:
        with _minari_root(tmp_root), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`(code_permalink|author_email)` is set")
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_spec,
                eval_env=eval_env_spec,
                observation_space=observation_space,
                action_space=action_space,
                algorithm_name=algorithm_name,
                author="pa-rl",
                description=description,
                requirements=requirements,
            )
        if namespace is not None:
            for part in range(1, len(namespace.split("/")) + 1):
                ns = "/".join(namespace.split("/")[:part])
                meta = root / ns / "namespace_metadata.json"
                if not meta.exists():
                    meta.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(tmp_root / ns / "namespace_metadata.json", meta)
        if final.exists():
            final.rename(tmp_root / "replaced")
        (tmp_root / dataset_id).rename(final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return str(final)


def _remove_orphaned_temporaries(root: Path) -> None:
    """Remove the temporary roots of writes whose process is gone (a killed ``pa-rl data make``);
    each is named after its writer's PID, so another write under way keeps its own."""
    for tmp in root.glob(f"{TMP_PREFIX}*"):
        pid = tmp.name[len(TMP_PREFIX):].partition("-")[0]
        if not (pid.isdigit() and _running(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def refuse_existing(dataset_id: str, path: Path, overwrite: bool) -> None:
    """An existing data set is only replaced when asked to (the message names the CLI flag and the argument)."""
    if path.exists() and not overwrite:
        raise DataError(
            f"Dataset {dataset_id!r} already exists at {path}. Delete that directory, choose another --out, or "
            "pass --overwrite (overwrite=True in Python)."
        )


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point minari's dataset root at ``path`` for the duration (minari reads it from the env)."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _resolve_data_dir(id_or_path: str) -> Path:
    """Find the ``data/`` directory (the one holding ``metadata.json``) of a path or an id."""
    looked = []
    candidate = Path(id_or_path).expanduser()
    if candidate.is_dir():
        for data_dir in (candidate / "data", candidate):
            if (data_dir / "metadata.json").is_file():
                return data_dir
        raise DataError(
            f"{candidate} is a directory but holds no Minari dataset (expected "
            f"{candidate / 'data' / 'metadata.json'}). Pass the dataset directory that contains "
            "data/, or generate one with `pa-rl data make NAME`."
        )
    looked.append(str(candidate.resolve()))
    try:
        parse_dataset_id(id_or_path)
        is_id = True
    except (ValueError, TypeError):  # minari raises TypeError for an id without a version
        is_id = False
    if is_id:
        data_dir = datasets_root() / id_or_path / "data"
        if (data_dir / "metadata.json").is_file():
            return data_dir
        looked.append(f"{data_dir} (dataset id under MINARI_DATASETS_PATH={datasets_root()})")
    raise DataError(_no_such_dataset(id_or_path, looked))


def local_dataset_ids() -> list[str]:
    """Ids of the Minari data sets under :func:`datasets_root`."""
    root = datasets_root()
    return sorted(str(meta.parent.parent.relative_to(root)) for meta in root.glob("**/data/metadata.json"))


def _no_such_dataset(name: str, looked: list[str]) -> str:
    """Say what was asked for, the close names that exist, and how to make one."""
    from pa_rl.data.registry import available_datasets  # the registry imports this module

    local = local_dataset_ids()
    close = difflib.get_close_matches(name, available_datasets() + local, n=5, cutoff=0.6)
    shown = ", ".join(local[:10]) + (f" and {len(local) - 10} more" if len(local) > 10 else "") or "none"
    return (f"No data set named {name!r}" + (f" (close names: {', '.join(close)})" if close else "")
            + f"; looked at: {'; '.join(looked)}. Local Minari ids under {datasets_root()}: {shown}. Make a built-in "
            "one with `pa-rl data make NAME` (names: `pa-rl data list`), point MINARI_DATASETS_PATH at the folder "
            "holding yours, or pass the dataset directory. Nothing is downloaded automatically; use `minari "
            "download ID` for remote Minari datasets.")


def _malformed(data_dir: Path, error: Exception) -> DataError:
    return DataError(
        f"Dataset at {data_dir} is malformed or unreadable ({type(error).__name__}: {error}). "
        "Delete it and regenerate it (pa-rl data make NAME) or re-download it with minari."
    )


def _within(entry_point: str, packages: tuple[str, ...]) -> bool:
    module = entry_point.partition(":")[0]
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def untrusted_entry_points(metadata: dict) -> list[str]:
    """Entry points that ``gym.make`` would import for the recorded env specs and that nobody vetted:
    an env entry point other than pa-rl's own or the one its id is registered with in gymnasium,
    and wrappers outside ``gymnasium.wrappers`` and pa-rl."""
    with contextlib.suppress(ImportError):  # registers gymnasium-robotics' ids, whatever was imported before
        import pa_rl.data.pointmaze  # noqa: F401
    found = []
    for key in ("env_spec", "eval_env_spec"):
        if metadata.get(key) is None:
            continue
        spec = json.loads(metadata[key])
        entry = spec.get("entry_point")
        registered = gym.registry.get(spec.get("id"))
        if entry is not None and not (_within(str(entry), ("pa_rl",))
                                      or (registered is not None and registered.entry_point == entry)):
            found.append(str(entry))
        found += [str(wrapper.get("entry_point")) for wrapper in spec.get("additional_wrappers") or []
                  if not _within(str(wrapper.get("entry_point")), ("gymnasium.wrappers", "pa_rl"))]
    return list(dict.fromkeys(found))


def _refuse_untrusted_code(metadata: dict, id_or_path: str, trust_env: Sequence[str]) -> None:
    try:
        refused = [entry for entry in untrusted_entry_points(metadata) if entry not in trust_env]
    except (TypeError, AttributeError, json.JSONDecodeError) as e:
        raise DataError(f"Dataset {id_or_path!r} records a malformed env spec ({type(e).__name__}: {e}).") from e
    if refused:
        named = ", ".join(f"{entry!r} (module {entry.partition(':')[0]!r}, callable {entry.partition(':')[2]!r})"
                          for entry in refused)
        flags = " ".join(f"--trust-env {entry}" for entry in refused)
        raise DataError(
            f"Dataset {id_or_path!r} records the environment entry point(s) {named}, neither a registered "
            "gymnasium environment nor pa-rl's own: building its environment would import and run that code. "
            f"Nothing was imported. If you trust this data set, allow them with {flags} "
            f"(Python: load_dataset(..., trust_env={refused!r}))."
        )


def _check_observation_space(space: gym.spaces.Space, dataset_id: str) -> None:
    if isinstance(space, gym.spaces.Dict):
        for sub in space.spaces.values():
            _check_observation_space(sub, dataset_id)
    elif not isinstance(space, gym.spaces.Box):
        raise DataError(
            f"Dataset {dataset_id!r} has a {type(space).__name__} observation (sub)space; pa-rl "
            "supports Box observations or (nested) Dicts of Box. Convert it and rewrite the "
            "dataset."
        )


def _layout(space: gym.spaces.Space, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """(key path, shape) of each leaf in flatten order, to compare two Dict layouts."""
    if isinstance(space, gym.spaces.Dict):
        return [
            item for key, sub in space.spaces.items() for item in _layout(sub, f"{prefix}/{key}")
        ]
    return [(prefix or "/", tuple(space.shape))]


def _flatten_batch(space: gym.spaces.Space, data: object) -> np.ndarray:
    """Batched ``gymnasium.spaces.flatten`` for Box / nested Dict of Box: [N, ...] -> [N, D]."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(data, dict) or set(data) != set(space.spaces):
            raise DataError(
                f"stored observation keys {sorted(data) if isinstance(data, dict) else type(data)} "
                f"do not match the observation space keys {list(space.spaces)}"
            )
        return np.concatenate(
            [_flatten_batch(sub, data[key]) for key, sub in space.spaces.items()], axis=1
        )
    array = np.asarray(data)
    if array.shape[1:] != space.shape:
        raise DataError(f"stored observations of shape {array.shape[1:]}, space says {space.shape}")
    return array.reshape(len(array), -1).astype(np.float32)


def _convert_episode(
    ep: minari.EpisodeData,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Box,
    dataset_id: str,
) -> Episode:
    try:
        observations = _flatten_batch(observation_space, ep.observations)
    except DataError as e:
        raise DataError(f"Dataset {dataset_id!r}, episode {ep.id}: {e}.") from None
    actions = np.asarray(ep.actions, dtype=np.float32)
    if actions.shape[1:] != action_space.shape:  # not reshaped to fit: 900 4-d values are not 450 2-d actions
        raise DataError(
            f"Dataset {dataset_id!r}, episode {ep.id}: stored actions of shape {actions.shape[1:]}, the action "
            f"space says {action_space.shape}. Record the correct action space and rewrite the dataset."
        )
    rewards = np.asarray(ep.rewards, dtype=np.float32).reshape(-1)
    terminations = np.asarray(ep.terminations, dtype=bool).reshape(-1)
    truncations = np.asarray(ep.truncations, dtype=bool).reshape(-1)
    steps = len(actions)
    lengths = (len(rewards), len(terminations), len(truncations))
    if len(observations) != steps + 1 or lengths != (steps,) * 3:
        raise DataError(
            f"Dataset {dataset_id!r}, episode {ep.id} is malformed: {len(observations)} "
            f"observations, {steps} actions, {len(rewards)} rewards, {len(terminations)} "
            f"terminations, {len(truncations)} truncations (Minari stores T+1 observations for "
            "T steps)."
        )
    return Episode(observations, actions, rewards, terminations, truncations)
