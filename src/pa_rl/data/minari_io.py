"""Reading any Minari dataset into :class:`Episode` lists, and writing our generated datasets.

Minari lays a dataset out as ``<root>/<namespace>/<name>-v<N>/data/{metadata.json, main_data.hdf5}``
where ``<root>`` is ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Everything here
works offline: nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import minari
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path

from pa_rl.data.episodes import DataError, Episode, check_episode
from pa_rl.observations import (TEXT_LENGTH, ObsSpec, SpecObservation, convert_batch, is_image_space, key_name,
                                leaves, spec_of_space)

__all__ = ["DataError", "LoadedDataset", "load_dataset", "write_dataset", "datasets_root"]

TMP_PREFIX = ".pa-rl-tmp-"  # then the writer's PID: .pa-rl-tmp-<pid>-<random>/


def datasets_root() -> Path:
    """Minari's local dataset root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(get_dataset_path())


@dataclass
class LoadedDataset:
    """A validated dataset in our in-memory form, plus a handle to recover its environment.

    ``obs_spec`` (see :mod:`pa_rl.observations`) says which form the observations take. Box data and
    Dicts of vectors only are flat float32 vectors (``obs_spec`` is their size), flattened with
    ``gymnasium.spaces.flatten`` semantics: sub-spaces are concatenated in the Dict space's key
    order (gymnasium sorts plain-dict keys alphabetically; nested Dicts recurse in place), each
    sub-array raveled in C order. This is exactly the layout that
    ``gymnasium.wrappers.FlattenObservation`` produces on the recovered env. Data holding an image
    (uint8 (H, W, C) Box) or a Text instruction keep one array per key (nested keys joined by '/'):
    images uint8, vectors float32, instructions as zero-padded UTF-8 bytes; the recovered env is
    wrapped in :class:`~pa_rl.observations.SpecObservation`, which gives the same form.
    """

    dataset_id: str
    episodes: list[Episode]
    obs_spec: ObsSpec
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
            if isinstance(ep.observations, Mapping):  # each key's name, then its arrays, in sorted key order
                for key in sorted(ep.observations):
                    digest.update(key.encode())
                    digest.update(np.ascontiguousarray(ep.observations[key]).tobytes())
            else:
                digest.update(np.ascontiguousarray(ep.observations).tobytes())
            for array in (ep.actions, ep.rewards, ep.terminations, ep.truncations):
                digest.update(np.ascontiguousarray(array).tobytes())
        return {"path": str(Path(self.path).resolve()), "episodes": len(self.episodes),
                "transitions": self.num_transitions, "sha256": digest.hexdigest()}

    @property
    def records_env(self) -> bool:
        """Whether the data record an environment :meth:`make_env` can recover (without one, training is
        offline only and nothing can be evaluated by rollout)."""
        return self._minari.env_spec is not None or self._minari.storage.metadata.get("eval_env_spec") is not None

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

        Falls back to the collection env when the dataset records no eval env. Its observations
        match ``episodes`` row for row: flat Dicts are wrapped in ``FlattenObservation``, data with
        images or text in :class:`~pa_rl.observations.SpecObservation` (one array per key).
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
        if isinstance(env.observation_space, gym.spaces.Dict) or isinstance(self.obs_spec, dict):
            if _layout(env.observation_space) != _layout(recorded):
                env.close()
                raise DataError(
                    f"The recovered env's dict observation layout {_layout(env.observation_space)} "
                    f"differs from the dataset's {_layout(recorded)} ({self.dataset_id!r}); the "
                    "dataset was recorded with a different env version or wrappers."
                )
        if isinstance(self.obs_spec, dict):
            try:
                env_spec = spec_of_space(env.observation_space)
            except ValueError as e:
                env_spec = str(e)
            if env_spec != self.obs_spec:
                env.close()
                raise DataError(
                    f"The recovered env of {self.dataset_id!r} gives observations {_describe(env_spec)} but the "
                    f"dataset has {_describe(self.obs_spec)}; the recorded env spec does not match the data "
                    "(wrong env version, or wrappers missing from the spec)."
                )
            return SpecObservation(env, self.obs_spec)
        if isinstance(env.observation_space, gym.spaces.Dict):
            env = gym.wrappers.FlattenObservation(env)
        env_dim = gym.spaces.flatdim(env.observation_space)
        if env_dim != self.obs_spec:
            env.close()
            raise DataError(
                f"The recovered env of {self.dataset_id!r} has {env_dim}-d flat observations but "
                f"the dataset has {self.obs_spec}-d ones; the recorded env spec does not "
                "match the data (wrong env version, or wrappers missing from the spec)."
            )
        return env


def load_dataset(id_or_path: str, trust_env: Sequence[str] = ()) -> LoadedDataset:
    """Load and validate a local Minari dataset by id or by directory.

    ``id_or_path`` is either a directory (the dataset directory holding ``data/``, or ``data/``
    itself) or a Minari dataset id resolved under :func:`datasets_root`. Rewards are returned as
    recorded (``TrainConfig.reward_scale``/``reward_bias`` transform data and env alike). Raises :class:`DataError` for anything that would
    silently corrupt training: missing/unreadable data, non-Box actions, unsupported
    observation spaces, empty data, non-finite values, actions outside the action bounds, stored
    observations that do not fit their space (a missing key, an image of another shape or dtype,
    numbers where the space says Text, text in a Box); a message names the key, episode and step.
    An instruction longer than ``TEXT_LENGTH`` UTF-8 bytes is cut, with a warning.

    A data set is untrusted input: the env specs it records name entry points that building its
    environment imports and calls. One that is not a registered gymnasium id's own or pa-rl's
    own is refused unless listed in ``trust_env`` (``"module:callable"``), before anything is
    imported.

    ``lerobot:PATH[,OPTION=VALUE...]`` names a LeRobotDataset folder instead
    (:func:`pa_rl.data.lerobot_io.load_lerobot`).
    """
    if id_or_path.startswith("lerobot:"):
        from pa_rl.data.lerobot_io import load_lerobot  # it builds on this module

        return load_lerobot(id_or_path)
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
        episode_ids = [int(i) for i in dataset.episode_indices]
    except _READ_ERRORS as e:
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
    obs_spec = _obs_spec(observation_space, dataset_id)
    action_low = action_space.low.astype(np.float32)
    action_high = action_space.high.astype(np.float32)

    if not episode_ids:
        raise DataError(f"Dataset {dataset_id!r} ({data_dir}) has no episodes.")
    episodes: list[Episode] = []
    cut: set[str] = set()  # instruction keys warned of as too long
    for ep in _read_episodes(dataset, episode_ids, data_dir):
        episode = _convert_episode(ep, observation_space, obs_spec, action_space, dataset_id, cut)
        check_episode(episode, f"Dataset {dataset_id!r}, episode {ep.id}", action_low, action_high)
        episodes.append(episode)
    if sum(len(ep) for ep in episodes) == 0:
        raise DataError(f"Dataset {dataset_id!r} ({data_dir}) has zero transitions.")
    return LoadedDataset(
        dataset_id=dataset_id,
        episodes=episodes,
        obs_spec=obs_spec,
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
    raw_images: bool = False,
) -> str:
    """Write episode buffers as a Minari dataset under ``out_dir`` and return its directory.

    Uses ``minari.create_dataset_from_buffers`` (no jax). The dataset is written into a hidden
    temporary root next to the destination and renamed into place only once complete, so a crash
    never leaves a partial dataset under a loadable id; the next write into that root removes a
    killed write's temporary root.

    ``raw_images`` stores image observations as they are (uint8 arrays, gzip-compressed in the HDF5
    file) instead of minari's default lossy JPEG, so that loaded frames equal the env's renders.
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
                **_raw_images_option(raw_images),
            )
        if raw_images:
            _compress_images(tmp_root / dataset_id / "data")
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


_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AssertionError, AttributeError, json.JSONDecodeError)


def _raw_images_option(raw_images: bool) -> dict[str, bool]:
    """``jpeg_encoding=False`` where minari has the option (0.5.4 on; earlier versions store images raw)."""
    if raw_images and "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
        return {"jpeg_encoding": False}
    return {}


def _compress_images(data_dir: Path) -> None:
    """Rewrite ``main_data.hdf5`` with its image arrays (uint8, [N, H, W, C]) gzip-compressed (h5py
    reads them back transparently), then update the size minari records in ``metadata.json``."""
    path = data_dir / "main_data.hdf5"
    packed = data_dir / "main_data.hdf5.packing"

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name, track_order=True))
            elif item.dtype == np.uint8 and item.ndim == 4 and len(item):
                target.create_dataset(name, data=item[()], chunks=(min(len(item), 64), *item.shape[1:]),
                                      maxshape=(None, *item.shape[1:]), compression="gzip", compression_opts=4)
                target[name].attrs.update(item.attrs)
            else:
                source.copy(item, target, name=name)

    with h5py.File(path, "r") as source, h5py.File(packed, "w", track_order=True) as target:
        copy(source, target)
    packed.replace(path)
    metadata_path = data_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    if "dataset_size" in metadata:  # minari's own measure: MB of the data folder, one decimal
        metadata["dataset_size"] = round(sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file()) / 1e6, 1)
        metadata_path.write_text(json.dumps(metadata))


def _obs_spec(space: gym.spaces.Space, dataset_id: str) -> ObsSpec:
    try:
        return spec_of_space(space)
    except ValueError as e:
        raise DataError(
            f"Dataset {dataset_id!r}: {e}. Convert that key (a Discrete one to a one-hot Box, say) or drop it, and "
            "rewrite the dataset."
        ) from None


def _describe(spec: ObsSpec | str) -> str:
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{key!r}: {field.describe()}" for key, field in spec.items()) + "}"
    return f"of {spec} flat dimensions" if isinstance(spec, int) else f"pa-rl cannot take ({spec})"


def _layout(space: gym.spaces.Space) -> list[tuple[str, Any]]:
    """(key path, shape) of each leaf in flatten order (a Text leaf: 'Text'), to compare two Dict layouts."""
    return [("/" + key, tuple(sub.shape) if isinstance(sub, gym.spaces.Box) else type(sub).__name__)
            for key, sub in leaves(space)]


def _read_episodes(dataset: minari.MinariDataset, episode_ids: list[int],
                   data_dir: Path) -> Iterator[minari.EpisodeData]:
    """The data set's episodes one by one (one in memory at a time); one that minari cannot decode is
    diagnosed from the file, so that the message names its key, episode and step."""
    episodes = dataset.iterate_episodes(episode_ids)
    for episode_id in episode_ids:
        try:
            episode = next(episodes)
        except _READ_ERRORS as e:
            problem = _diagnose(data_dir / "main_data.hdf5", episode_id, dataset.observation_space,
                                bool(getattr(dataset.storage, "jpeg_encoding", False)))
            if problem is None:
                raise _malformed(data_dir, e) from e
            raise DataError(f"Dataset {dataset.id!r}, episode {episode_id}{problem}") from None
        yield episode


_TEXT_FIX = ("Store instructions as strings in a gymnasium Text sub-space of the observation Dict, numbers in Box "
             "sub-spaces, and rewrite the dataset.")


def _diagnose(path: Path, episode_id: int, space: gym.spaces.Space, jpeg: bool) -> str | None:
    """Why minari could not decode this episode's observations, read from the HDF5 file (None if not
    found there): the rest of a message that starts with the data set and episode."""
    try:
        with h5py.File(path, "r") as file:
            return _stored_problem(file[f"episode_{episode_id}/observations"], space, "", jpeg)
    except (OSError, KeyError, ValueError):
        return None


def _stored_problem(ref: h5py.Group | h5py.Dataset, space: gym.spaces.Space, path: str, jpeg: bool) -> str | None:
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(ref, h5py.Group):
            return (f": observation key {path or '/'!r} is stored as one array but the observation space says Dict "
                    f"with keys {list(space.spaces)}. Record the observations of that space and rewrite the dataset.")
        extra = [key for key in ref if key not in space.spaces]
        if extra:
            return (f": stored observation key {f'{path}/{extra[0]}'.lstrip('/')!r} is not in the observation space "
                    f"(its keys: {list(space.spaces)}). Add it to the recorded observation space or drop it from the "
                    "data, and rewrite the dataset.")
        for key, sub in space.spaces.items():
            if key in ref:
                problem = _stored_problem(ref[key], sub, f"{path}/{key}".lstrip("/"), jpeg)
                if problem is not None:
                    return problem
        return None
    key = key_name(path, space)
    if not isinstance(ref, h5py.Dataset):
        return f": observation key {key!r} is stored as a group but the space says {space}. Rewrite the dataset."
    if isinstance(space, gym.spaces.Text):
        if h5py.check_string_dtype(ref.dtype) is None and ref.dtype.kind not in "SO":
            example = ref[0] if len(ref) else None
            return (f", step 0: observation key {key!r} holds {ref.dtype} numbers (e.g. {example!r}) where the "
                    f"observation space says Text (an instruction). {_TEXT_FIX}")
        return None
    if jpeg and isinstance(space, gym.spaces.Box) and _minari_image(space):
        from PIL import Image

        for step, raw in enumerate(ref):
            try:
                image = np.asarray(Image.open(io.BytesIO(np.asarray(raw, dtype=np.uint8).tobytes())))
            except (OSError, ValueError):
                return (f", step {step}: observation key {key!r} holds bytes that are not a JPEG image (the data set "
                        "says its images are JPEG-encoded). Regenerate the dataset.")
            if image.shape != tuple(space.shape):
                return (f", step {step}: observation key {key!r} holds a {image.shape} image, the observation space "
                        f"says {tuple(space.shape)}. Record images of one shape (resize them) and rewrite the dataset.")
    return None


def _minari_image(space: gym.spaces.Box) -> bool:
    """Whether minari JPEG-encodes this space's arrays (when the data set says it encodes images)."""
    from minari.dataset.minari_storage import is_image_space as minari_image_space

    return bool(minari_image_space(space))


def _check_stored(space: gym.spaces.Space, data: Any, path: str, where: str, cut: set[str]) -> None:
    """Raise :class:`DataError` naming the key (and step) where decoded observations do not fit their space;
    warn of the first instruction of each key (``cut`` holds those warned of) that is too long to keep whole."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: observation key {path or '/'!r} holds a {type(data).__name__} where the "
                            f"observation space says Dict with keys {list(space.spaces)}. Record the observations "
                            "of that space and rewrite the dataset.")
        for key, sub in space.spaces.items():
            name = f"{path}/{key}".lstrip("/")
            if key not in data:
                raise DataError(f"{where}: observation key {name!r} is missing (stored keys: {sorted(data)}). Record "
                                "every key of the observation space (or drop it from the space) and rewrite the "
                                "dataset.")
            _check_stored(sub, data[key], name, where, cut)
        return
    key = key_name(path, space)
    if isinstance(space, gym.spaces.Text):
        for step, text in enumerate(data):
            if not isinstance(text, (str, bytes)):
                raise DataError(f"{where}, step {step}: observation key {key!r} holds {type(text).__name__} "
                                f"{text!r} where the observation space says Text (an instruction). {_TEXT_FIX}")
            size = len(text.encode("utf-8") if isinstance(text, str) else text)
            if size > TEXT_LENGTH and key not in cut:
                cut.add(key)
                warnings.warn(f"{where}, step {step}: instruction key {key!r} has {size} UTF-8 bytes; pa-rl keeps the "
                              f"first {TEXT_LENGTH} (this and any other longer one is cut).", stacklevel=2)
                break
        return
    if not isinstance(space, gym.spaces.Box):  # refused by _obs_spec before any episode is read
        raise DataError(f"{where}: observation key {key!r} is a {type(space).__name__} space, which pa-rl cannot take.")
    array = np.asarray(data)
    if array.dtype.kind in "SUO":
        flat = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        step = next((i for i, row in enumerate(flat) if any(isinstance(v, (str, bytes)) for v in row)), 0)
        example = next((v for v in flat[step] if isinstance(v, (str, bytes))), flat[step][0])
        raise DataError(f"{where}, step {step}: observation key {key!r} holds text ({example!r}) where the observation "
                        f"space says Box {tuple(space.shape)} {space.dtype}. {_TEXT_FIX}")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}, step 0: observation key {key!r} holds {array.dtype} values where the observation "
                        f"space says Box {tuple(space.shape)} {space.dtype}. Store numbers and rewrite the dataset.")
    image = is_image_space(space)
    what = "images" if image else "observations"
    if array.ndim == 0 or array.shape[1:] != tuple(space.shape):
        shape = array.shape[1:] if array.ndim else ()
        raise DataError(f"{where}, step 0: observation key {key!r} holds {what} of shape {shape}, the observation "
                        f"space says {tuple(space.shape)}. Record {what} of the space's shape (or record the space "
                        "they have) and rewrite the dataset.")
    if image and array.dtype != np.uint8:
        raise DataError(f"{where}, step 0: observation key {key!r} holds {array.dtype} images; images must be uint8 "
                        "(H, W, C) values 0-255, as the observation space says. Convert them (e.g. "
                        "np.round(x * 255).astype(np.uint8) for [0, 1] floats) and rewrite the dataset.")


def _convert_episode(
    ep: minari.EpisodeData,
    observation_space: gym.spaces.Space,
    obs_spec: ObsSpec,
    action_space: gym.spaces.Box,
    dataset_id: str,
    cut: set[str],
) -> Episode:
    where = f"Dataset {dataset_id!r}, episode {ep.id}"
    _check_stored(observation_space, ep.observations, "", where, cut)
    try:
        observations = convert_batch(observation_space, ep.observations, obs_spec)
    except ValueError as e:
        raise DataError(f"{where}: {e}. Record observations that fit the observation space and rewrite the dataset.") \
            from None
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
    rows = {len(value) for value in observations.values()} if isinstance(observations, dict) else {len(observations)}
    if rows != {steps + 1} or lengths != (steps,) * 3:
        raise DataError(
            f"Dataset {dataset_id!r}, episode {ep.id} is malformed: {'/'.join(map(str, sorted(rows)))} "
            f"observations, {steps} actions, {len(rewards)} rewards, {len(terminations)} "
            f"terminations, {len(truncations)} truncations (Minari stores T+1 observations for "
            "T steps)."
        )
    return Episode(observations, actions, rewards, terminations, truncations)
