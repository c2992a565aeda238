"""Built-in dataset names -> generators, plus a summary of any dataset.

Generator modules are imported lazily: each needs its optional simulator package
(``pip install 'pa-rl[envs]'``), and listing names must work without them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pa_rl.data.generator import Generated
from pa_rl.data.minari_io import DataError, datasets_root, load_dataset, refuse_existing
from pa_rl.observations import decode_text

Generator = Callable[..., Generated]


def _generators() -> tuple[dict[str, Generator], list[str]]:
    """Available generators by name, and notes on families whose package is missing."""
    generators: dict[str, Generator] = {}
    missing: list[str] = []
    try:
        from pa_rl.data import pointmaze
    except ImportError as e:
        missing.append(f"pointmaze-* needs {e.name}")
    else:
        for maze in pointmaze.MAZES:
            generators[f"pointmaze-{maze}"] = functools.partial(pointmaze.generate, maze)
        from pa_rl.data.pointmaze_pixels import INSTRUCTIONS

        for maze in INSTRUCTIONS:
            generators[f"pointmaze-{maze}-pixels"] = functools.partial(pointmaze.generate, maze, pixels=True)
    try:
        from pa_rl.data import metaworld
    except ImportError as e:
        missing.append(f"metaworld-<task> needs {e.name}")
    else:
        for task in metaworld.tasks():
            generators[f"metaworld-{task}"] = functools.partial(metaworld.generate, task)
    return generators, missing


def available_datasets() -> list[str]:
    """Names accepted by :func:`make_dataset` (those whose simulator package is installed)."""
    return list(_generators()[0])


def make_dataset(
    name: str,
    *,
    out_dir: str | None = None,
    seed: int = 0,
    size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Generate the built-in dataset ``name`` and return its directory (loadable by path).

    It is written as Minari dataset ``pa-rl/<name>-v0`` under ``out_dir`` (default: minari's
    local root, ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``), where it also loads by id.
    ``size`` is the number of transitions (default per generator). An existing dataset is only
    replaced with ``overwrite=True``.
    """
    generators, missing = _generators()
    if name not in generators:
        hint = ""
        if missing:
            hint = f" Not available here: {'; '.join(missing)} (pip install 'pa-rl[envs]')."
        raise DataError(
            f"Unknown dataset name {name!r}. Valid names: {', '.join(generators)}.{hint}"
        )
    if size is not None and size < 1:
        raise DataError(f"size must be a positive number of transitions, got {size}.")
    dataset_id = f"pa-rl/{name}-v0"
    # checked before, not after, a long generation
    refuse_existing(dataset_id, Path(out_dir if out_dir is not None else datasets_root()) / dataset_id, overwrite)
    generated = generators[name](size=size, seed=seed, progress=progress)
    return generated.write(dataset_id, out_dir=out_dir, overwrite=overwrite)


def dataset_info(id_or_path: str, trust_env: Sequence[str] = ()) -> dict:
    """Summary statistics of a dataset (validated by :func:`load_dataset`).

    Flat observations give ``observation_dim``; mapping ones ``observation``: each key with its kind,
    dtype and shape (a text key with the first instruction as an example). ``success_rate`` is the
    fraction of episodes whose recorded ``infos["success"]`` is ever true, or None when the dataset
    records no success info.
    """
    data = load_dataset(id_or_path, trust_env)
    if isinstance(data.obs_spec, int):
        observation: dict[str, object] = {"observation_dim": data.obs_spec}
    else:
        first = data.episodes[0].observations
        observation = {"observation": {
            key: field.describe() + (f", e.g. {decode_text(first[key][0])!r}" if field.kind == "text" else "")
            for key, field in data.obs_spec.items()}}
    returns = np.array([float(ep.rewards.sum()) for ep in data.episodes])
    lengths = np.array([len(ep) for ep in data.episodes])
    successes = data.episode_successes()
    nonempty = [ep for ep in data.episodes if len(ep)]
    return {
        "dataset_id": data.dataset_id,
        "path": data.path,
        "episodes": len(data.episodes),
        "transitions": int(lengths.sum()),
        **observation,
        "action_dim": data.action_dim,
        "episode_length_mean": float(lengths.mean()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "terminated_fraction": float(np.mean([ep.terminations[-1] for ep in nonempty])),
        "success_rate": None if successes is None else float(successes.mean()),
    }
