"""Reading a LeRobotDataset folder (lerobot's v3.0 on-disk layout) into :class:`Episode` lists.

The layout, as lerobot writes it (``lerobot/datasets/utils.py``, ``lerobot_dataset.py``):

- ``meta/info.json``: ``codebase_version`` ("v3.0"), ``fps``, ``data_path`` and ``video_path`` templates
  (``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet``,
  ``videos/{video_key}/chunk-…/file-….mp4``) and ``features``: name → ``dtype`` ("video", "image",
  "float32", ...) and ``shape`` (images (H, W, C)).
- ``meta/episodes/chunk-*/file-*.parquet``: one row per episode: ``episode_index``, ``length``,
  ``data/chunk_index``, ``data/file_index`` and, per camera, ``videos/<key>/chunk_index``,
  ``videos/<key>/file_index`` and ``videos/<key>/from_timestamp`` (episodes are concatenated in one mp4).
- ``meta/tasks.parquet``: task strings (the pandas index) with their ``task_index``.
- ``data/…parquet``: one row per frame: ``episode_index``, ``frame_index``, ``timestamp``,
  ``task_index``, ``action``, ``observation.*`` and optional ``next.reward`` / ``next.done`` /
  ``next.success``; an ``image`` feature is a PNG in the row, a ``video`` feature lives in the mp4.

Nothing of lerobot is imported: parquet is read with ``pyarrow``, video decoded with PyAV (``av``),
both in the ``pa-rl[lerobot-data]`` extra. A folder is named ``lerobot:PATH[,OPTION=VALUE...]``
(:class:`LeRobotSource`). LeRobot records no environment, so these data train offline only
(BC and offline RL; ``Trainer`` with no env).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pa_rl.data.episodes import DataError, Episode, check_episode, check_observations
from pa_rl.data.minari_io import LoadedDataset
from pa_rl.observations import TEXT_LENGTH, Field, encode_text

PREFIX = "lerobot:"
OBS_PREFIX = "observation."
TASK_KEY = "task"  # the pa-rl key of the instruction (lerobot's batch key for it, too)


def is_lerobot_name(name: str) -> bool:
    return name.startswith(PREFIX)


def pa_rl_key(feature: str) -> str:
    """``observation.images.top`` → ``observation/images/top``: pa-rl joins nested keys with '/', and a
    key may not hold '.' (encoders keep one module per key)."""
    return feature.replace(".", "/")


@dataclass(frozen=True)
class LeRobotSource:
    """A LeRobotDataset folder and how to read its rewards, written ``lerobot:PATH[,OPTION=VALUE...]``.

    Options: ``reward=COLUMN`` (per-step rewards from a data column; the default is ``next.reward``
    when the data have it), or ``success=COLUMN|all`` (a 0/1 reward: on each step whose per-frame
    boolean COLUMN holds, or on the last step of each episode whose per-episode COLUMN in
    ``meta/episodes`` holds, or of every episode with ``all``; an episode whose last step succeeds
    terminates there), and ``image-size=HxW`` (frames resized as they are decoded).
    """

    folder: Path
    reward: str | None = None
    success: str | None = None
    image_size: tuple[int, int] | None = None

    @classmethod
    def parse(cls, name: str) -> LeRobotSource:
        body = name[len(PREFIX):]
        options: dict[str, str] = {}
        while "," in body:  # options are taken from the right, so a folder name may hold a comma
            head, _, tail = body.rpartition(",")
            key, eq, value = tail.partition("=")
            if not eq:
                break
            if key not in ("reward", "success", "image-size") or not value:
                raise DataError(f"{name!r}: unknown or empty option {tail!r}; options are reward=COLUMN, "
                                "success=COLUMN|all and image-size=HxW (e.g. lerobot:/data/pusht,reward=next.reward)")
            options[key] = value
            body = head
        if not body:
            raise DataError(f"{name!r} names no folder: write lerobot:PATH[,reward=COLUMN|,success=COLUMN|all]")
        if "reward" in options and "success" in options:
            raise DataError(f"{name!r}: give a reward column or a success rule, not both")
        size = None
        if "image-size" in options:
            parts = options["image-size"].lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise DataError(f"{name!r}: image-size must be HEIGHTxWIDTH in pixels, e.g. 96x96")
            size = (int(parts[0]), int(parts[1]))
        return cls(Path(body).expanduser().resolve(), options.get("reward"), options.get("success"), size)

    def __str__(self) -> str:
        options = [f"reward={self.reward}"] * bool(self.reward) + [f"success={self.success}"] * bool(self.success)
        if self.image_size:
            options.append(f"image-size={self.image_size[0]}x{self.image_size[1]}")
        return ",".join([f"{PREFIX}{self.folder}", *options])


@dataclass
class LeRobotLoaded(LoadedDataset):
    """A loaded LeRobotDataset: no environment, and per-episode successes from its success rule."""

    successes: np.ndarray | None = None

    def fingerprint(self) -> dict[str, object]:
        # the name with its options, which a resume loads again (a bare folder would read as Minari's)
        return {**super().fingerprint(), "path": self.path}

    def episode_successes(self) -> np.ndarray | None:
        return self.successes

    @property
    def records_env(self) -> bool:
        return False

    def make_env(self, *, eval_env: bool = True, render_mode: str | None = None) -> Any:
        raise DataError(f"{self.dataset_id!r} is a LeRobotDataset, which records no environment to evaluate in or "
                        "fine-tune online; train on it offline: pa-rl train --dataset lerobot:PATH "
                        "--train.online-env-steps 0 (Python: train(agent, data.episodes, None, config))")


def load_lerobot(name: str) -> LeRobotLoaded:
    """Load ``lerobot:PATH[,OPTION=VALUE...]`` (see :class:`LeRobotSource`) and validate it.

    Observations keep lerobot's feature names with '/' for '.' (``observation/state``,
    ``observation/images/<camera>`` uint8 (H, W, 3)) plus ``task`` (the frame's instruction); each
    episode of L frames gives L transitions, its last frame repeated as the final next observation
    (lerobot records no frame after the last action; a terminal step never bootstraps from it).
    Action bounds are the data's per-dimension minimum and maximum. Raises :class:`DataError` naming
    the file, column, episode and step of anything missing or malformed.
    """
    source = LeRobotSource.parse(name)
    root = source.folder
    info = _read_info(root)
    features: dict[str, dict] = info["features"]
    action_dim = _action_dim(features, root)
    spec, cameras = _observation_spec(features, root, source.image_size)
    episodes_meta = _read_episodes_meta(root, [key for key in cameras if features[key]["dtype"] == "video"])
    frames = _read_frames(root, info, episodes_meta)
    tasks = _read_tasks(root, frames) if "task_index" in frames.columns else None
    if tasks is not None:
        spec[TASK_KEY] = Field("text", (TEXT_LENGTH,))
    rewards_of, successes = _reward_rule(source, frames, episodes_meta, root)
    images = {key: _decode_camera(root, info, key, episodes_meta, frames, source.image_size) for key in cameras}
    obs_spec = {pa_rl_key(feature): field for feature, field in spec.items()}

    episodes: list[Episode] = []
    for i, ep_index in enumerate(episodes_meta["episode_index"].tolist()):
        rows = frames.rows[ep_index]
        where = f"LeRobot dataset {str(root)!r}, episode {ep_index}"
        observations: dict[str, np.ndarray] = {}
        for feature, field in spec.items():
            if field.kind == "image":
                values = images[feature][ep_index]
            elif feature == TASK_KEY:
                values = encode_text([tasks[t] for t in frames.columns["task_index"].to_numpy()[rows].tolist()])
            else:
                values = frames.vectors(feature, rows, field.shape[0], where)
            observations[pa_rl_key(feature)] = np.concatenate([values, values[-1:]])
        check_observations(observations, obs_spec, len(rows) + 1, where)
        actions = frames.vectors("action", rows, action_dim, where)
        rewards, terminations = rewards_of(i, rows, where)
        episodes.append(Episode(observations, actions, rewards, terminations, ~terminations & _last(len(rows))))
    low, high = _action_bounds(episodes)
    for ep_index, episode in zip(episodes_meta["episode_index"].tolist(), episodes, strict=True):
        check_episode(episode, f"LeRobot dataset {str(root)!r}, episode {ep_index}", low, high)
    return LeRobotLoaded(dataset_id=f"lerobot/{root.name}", episodes=episodes, obs_spec=obs_spec, action_low=low,
                         action_high=high, path=str(source), _minari=None, successes=successes)


# ---- metadata -------------------------------------------------------------------------------------
def _read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        what = "is not a directory" if not root.is_dir() else f"holds no {path.relative_to(root)}"
        raise DataError(f"{str(root)!r} {what}: a LeRobotDataset folder has meta/info.json, meta/episodes/, "
                        "meta/tasks.parquet, data/ and videos/ (lerobot's v3.0 layout).")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}).") from None
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise DataError(f"{path}: codebase_version {version!r}; pa-rl reads lerobot's v3.0 layout. Convert older "
                        "folders with lerobot's own converter (lerobot.datasets.v30.convert_dataset_v21_to_v30).")
    missing = [key for key in ("fps", "features", "data_path") if key not in info]
    if missing:
        raise DataError(f"{path} lacks {missing}, which lerobot's v3.0 info.json records.")
    return info


def _action_dim(features: dict[str, dict], root: Path) -> int:
    feature = features.get("action")
    if feature is None:
        raise DataError(f"LeRobot dataset {str(root)!r}: meta/info.json has no 'action' feature "
                        f"(features: {sorted(features)}).")
    if feature.get("dtype") in ("video", "image", "string") or len(feature.get("shape", ())) != 1:
        raise DataError(f"LeRobot dataset {str(root)!r}: feature 'action' is {feature.get('dtype')} of shape "
                        f"{tuple(feature.get('shape', ()))}; pa-rl needs a 1-d float vector per frame.")
    return int(feature["shape"][0])


def _observation_spec(features: dict[str, dict], root: Path,
                      image_size: tuple[int, int] | None) -> tuple[dict[str, Field], list[str]]:
    """Fields of the ``observation.*`` features (lerobot names), and which of them are images."""
    spec: dict[str, Field] = {}
    for name, feature in features.items():
        if not name.startswith(OBS_PREFIX):
            continue
        shape = tuple(int(s) for s in feature.get("shape", ()))
        if feature.get("dtype") in ("video", "image"):
            if len(shape) != 3 or shape[2] not in (1, 3):
                raise DataError(f"LeRobot dataset {str(root)!r}: image feature {name!r} has shape {shape}; "
                                "expected (height, width, channels) with 1 or 3 channels.")
            spec[name] = Field("image", (*image_size, 3) if image_size else (*shape[:2], 3))
        elif len(shape) == 1 and feature.get("dtype") not in ("string",):
            spec[name] = Field("vector", shape)
        else:
            raise DataError(f"LeRobot dataset {str(root)!r}: observation feature {name!r} is {feature.get('dtype')} "
                            f"of shape {shape}; pa-rl takes 1-d vectors and (H, W, C) images.")
    if not spec:
        raise DataError(f"LeRobot dataset {str(root)!r} has no observation.* feature (features: {sorted(features)}).")
    return spec, [name for name, field in spec.items() if field.kind == "image"]


def _read_parquet(paths: Sequence[Path], root: Path) -> dict[str, Any]:
    """Columns (pyarrow ChunkedArrays) of the concatenated parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not paths:
        raise DataError(f"LeRobot dataset {str(root)!r}: no parquet files where the layout puts them.")
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"LeRobot dataset {str(root)!r}: {path.relative_to(root)} is missing or not readable "
                            f"parquet ({e}).") from None
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise DataError(f"LeRobot dataset {str(root)!r}: its parquet files disagree in columns ({e}).") from None
    return {name: table.column(name) for name in table.column_names}


def _require(columns: dict[str, Any], names: Sequence[str], what: str, root: Path) -> None:
    missing = [name for name in names if name not in columns]
    if missing:
        raise DataError(f"LeRobot dataset {str(root)!r}: {what} lacks column(s) {missing} (has {sorted(columns)}).")


def _read_episodes_meta(root: Path, videos: Sequence[str]) -> dict[str, np.ndarray]:
    """The per-episode numbers of meta/episodes (list and stats columns left out), by episode_index."""
    import pyarrow as pa

    columns = _read_parquet(sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")), root)
    needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    needed += [f"videos/{key}/{part}" for key in videos for part in ("chunk_index", "file_index", "from_timestamp")]
    _require(columns, needed, "meta/episodes", root)
    meta = {name: column.to_numpy() for name, column in columns.items() if not name.startswith("stats/")
            and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                 or pa.types.is_boolean(column.type))}
    order = np.argsort(meta["episode_index"], kind="stable")
    return {name: values[order] for name, values in meta.items()}


@dataclass
class _Frames:
    """The data parquet's columns and each episode's rows in frame order."""

    columns: dict[str, Any]
    rows: dict[int, np.ndarray]

    def vectors(self, name: str, rows: np.ndarray, dim: int, where: str) -> np.ndarray:
        """Float32 [len(rows), dim] of a column, its width checked against meta/info.json's shape."""
        import pyarrow as pa

        if name not in self.columns:
            raise DataError(f"{where}: the data parquet lacks column {name!r} (has {sorted(self.columns)}).")
        column = self.columns[name]
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
                or pa.types.is_fixed_size_list(column.type):
            cells = column.combine_chunks().take(rows)
            widths = (np.full(len(rows), column.type.list_size) if pa.types.is_fixed_size_list(column.type)
                      else cells.value_lengths().to_numpy(zero_copy_only=False))
            bad = np.flatnonzero(widths != dim)
            if len(bad):
                raise DataError(f"{where}, step {int(bad[0])}: column {name!r} holds {int(widths[bad[0]])} values a "
                                f"frame, meta/info.json says shape ({dim},).")
            values = cells.flatten()
        elif dim == 1:
            values = column.combine_chunks().take(rows)
        else:
            raise DataError(f"{where}: column {name!r} holds one value a frame, meta/info.json says shape ({dim},).")
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
                or pa.types.is_boolean(values.type)):
            raise DataError(f"{where}: column {name!r} holds {values.type}, not numbers.")
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(rows), dim)

    def flags(self, name: str, rows: np.ndarray, where: str) -> np.ndarray:
        """A per-frame column as booleans (non-zero is true)."""
        return self.vectors(name, rows, 1, where)[:, 0] != 0


def _read_frames(root: Path, info: dict, episodes_meta: dict[str, np.ndarray]) -> _Frames:
    files = sorted(set(zip(episodes_meta["data/chunk_index"].tolist(), episodes_meta["data/file_index"].tolist())))
    columns = _read_parquet([root / info["data_path"].format(chunk_index=c, file_index=f) for c, f in files], root)
    _require(columns, ["episode_index", "frame_index", "action"], "the data parquet", root)
    episode_of = columns["episode_index"].to_numpy()
    order = np.lexsort((columns["frame_index"].to_numpy(), episode_of))
    starts = np.searchsorted(episode_of[order], episodes_meta["episode_index"], side="left")
    ends = np.searchsorted(episode_of[order], episodes_meta["episode_index"], side="right")
    rows = {}
    for ep_index, length, start, end in zip(episodes_meta["episode_index"].tolist(), episodes_meta["length"].tolist(),
                                            starts.tolist(), ends.tolist(), strict=True):
        if end - start != length or length == 0:
            raise DataError(f"LeRobot dataset {str(root)!r}, episode {ep_index}: meta/episodes says {length} frames, "
                            f"the data files hold {end - start}" + (" (an episode needs one)." if not length else "."))
        rows[ep_index] = order[start:end]
    return _Frames(columns, rows)


def _read_tasks(root: Path, frames: _Frames) -> dict[int, str]:
    """task_index → task string, from meta/tasks.parquet (the strings are its pandas index column)."""
    import pyarrow as pa

    columns = _read_parquet([root / "meta" / "tasks.parquet"], root)
    _require(columns, ["task_index"], "meta/tasks.parquet", root)
    text = [name for name, column in columns.items()
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)]
    if not text:
        raise DataError(f"LeRobot dataset {str(root)!r}: meta/tasks.parquet holds no task strings "
                        f"(columns {sorted(columns)}).")
    tasks = dict(zip(columns["task_index"].to_pylist(), columns[text[0]].to_pylist(), strict=True))
    unknown = sorted(set(np.unique(frames.columns["task_index"].to_numpy()).tolist()) - set(tasks))
    if unknown:
        raise DataError(f"LeRobot dataset {str(root)!r}: frames name task_index {unknown[:5]}, which "
                        "meta/tasks.parquet does not list.")
    return tasks


# ---- rewards -------------------------------------------------------------------------------------
RewardRule = Callable[[int, np.ndarray, str], tuple[np.ndarray, np.ndarray]]


def _last(length: int) -> np.ndarray:
    flags = np.zeros(length, dtype=bool)
    flags[-1] = True
    return flags


def _reward_rule(source: LeRobotSource, frames: _Frames, episodes_meta: dict[str, np.ndarray],
                 root: Path) -> tuple[RewardRule, np.ndarray | None]:
    """``rule(i, rows, where) -> (rewards, terminations)`` for the i-th episode, and each episode's success
    (None when rewards come from a column)."""
    where = f"LeRobot dataset {str(root)!r}"
    if source.success is None:
        column = source.reward or "next.reward"
        if column not in frames.columns:
            hint = ("" if source.reward else " Name a reward column with lerobot:PATH,reward=COLUMN, or give a "
                    "success rule: ,success=COLUMN (a per-frame or per-episode boolean) or ,success=all (every "
                    "episode succeeds at its last step).")
            raise DataError(f"{where}: no reward column {column!r} in the data parquet (columns: "
                            f"{sorted(frames.columns)}).{hint}")
        done = "next.done" in frames.columns

        def from_column(i: int, rows: np.ndarray, at: str) -> tuple[np.ndarray, np.ndarray]:
            terminal = frames.flags("next.done", rows, at) if done else np.zeros(len(rows), dtype=bool)
            return frames.vectors(column, rows, 1, at)[:, 0], terminal

        return from_column, None
    if source.success in frames.columns:
        def from_frames(i: int, rows: np.ndarray, at: str) -> tuple[np.ndarray, np.ndarray]:
            success = frames.flags(source.success, rows, at)
            return success.astype(np.float32), success & _last(len(rows))

        return from_frames, np.array([frames.flags(source.success, rows, where)[-1] for rows in frames.rows.values()])
    if source.success == "all":
        successes = np.ones(len(episodes_meta["episode_index"]), dtype=bool)
    elif source.success in episodes_meta:
        successes = episodes_meta[source.success] != 0
    else:
        raise DataError(f"{where}: success column {source.success!r} is neither in the data parquet (columns: "
                        f"{sorted(frames.columns)}) nor a number column of meta/episodes (columns: "
                        f"{sorted(episodes_meta)}); name one of them, or success=all.")

    def from_episodes(i: int, rows: np.ndarray, at: str) -> tuple[np.ndarray, np.ndarray]:
        terminal = _last(len(rows)) & successes[i]
        return terminal.astype(np.float32), terminal

    return from_episodes, successes


def _action_bounds(episodes: Sequence[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """The data's per-dimension range; a dimension that never varies gets ±1 around its value, since
    policies scale actions into their bounds."""
    actions = np.concatenate([ep.actions for ep in episodes])
    low, high = actions.min(0), actions.max(0)
    flat = high <= low
    return np.where(flat, low - 1, low).astype(np.float32), np.where(flat, high + 1, high).astype(np.float32)


# ---- images --------------------------------------------------------------------------------------
def _decode_camera(root: Path, info: dict, key: str, episodes_meta: dict[str, np.ndarray], frames: _Frames,
                   image_size: tuple[int, int] | None) -> dict[int, np.ndarray]:
    """uint8 [L, H, W, 3] frames of camera ``key`` for each episode: the video frame nearest each row's
    ``from_timestamp + timestamp`` (as lerobot queries them), refused beyond half a frame period."""
    feature = info["features"][key]
    if feature["dtype"] == "image":
        return _png_frames(root, key, frames, image_size)
    _require(frames.columns, ["timestamp"], f"the data parquet (it places each frame of video {key!r})", root)
    if not info.get("video_path"):
        raise DataError(f"LeRobot dataset {str(root)!r}: feature {key!r} is a video but meta/info.json has no "
                        "video_path.")
    shape = image_size or tuple(feature["shape"][:2])
    timestamps = frames.columns["timestamp"].to_numpy()
    by_file: dict[tuple[int, int], list[int]] = {}
    for i in range(len(episodes_meta["episode_index"])):
        file = (int(episodes_meta[f"videos/{key}/chunk_index"][i]), int(episodes_meta[f"videos/{key}/file_index"][i]))
        by_file.setdefault(file, []).append(i)
    out: dict[int, np.ndarray] = {}
    for (chunk, file), members in by_file.items():
        path = root / info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
        times, decoded = _decode_video(path, root, shape)
        for i in members:
            ep_index = int(episodes_meta["episode_index"][i])
            wanted = float(episodes_meta[f"videos/{key}/from_timestamp"][i]) + timestamps[frames.rows[ep_index]]
            right = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
            left = np.maximum(right - 1, 0)
            nearest = np.where(np.abs(times[left] - wanted) <= np.abs(times[right] - wanted), left, right)
            off = np.flatnonzero(np.abs(times[nearest] - wanted) > 0.5 / float(info["fps"]))
            if len(off):
                step = int(off[0])
                raise DataError(f"LeRobot dataset {str(root)!r}, episode {ep_index}, step {step}: video {key!r} has no "
                                f"frame at {wanted[step]:.4f} s in {path.relative_to(root)} (nearest "
                                f"{times[nearest[step]]:.4f} s of {len(times)} frames); the mp4 and the data disagree.")
            out[ep_index] = decoded[nearest]
    return out


def _decode_video(path: Path, root: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Presentation times (s) and RGB frames [N, H, W, 3] of a video file, scaled to ``shape``."""
    import av

    try:
        with av.open(str(path)) as container:
            times, images = [], []
            for frame in container.decode(container.streams.video[0]):
                times.append(float(frame.time))
                images.append(frame.to_ndarray(format="rgb24", height=shape[0], width=shape[1]))
    except (OSError, av.FFmpegError, IndexError) as e:
        raise DataError(f"LeRobot dataset {str(root)!r}: {path.relative_to(root)} is missing or not a readable "
                        f"video ({type(e).__name__}: {e}).") from None
    if not images:
        raise DataError(f"LeRobot dataset {str(root)!r}: {path.relative_to(root)} holds no video frames.")
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.stack(images)[order]


def _png_frames(root: Path, key: str, frames: _Frames, image_size: tuple[int, int] | None) -> dict[int, np.ndarray]:
    """Frames of an ``image`` feature: encoded images (lerobot embeds PNGs) in the data parquet."""
    from PIL import Image

    _require(frames.columns, [key], "the data parquet", root)
    cells = frames.columns[key].to_pylist()
    out: dict[int, np.ndarray] = {}
    for ep_index, rows in frames.rows.items():
        images = []
        for step, row in enumerate(rows.tolist()):
            cell = cells[row]
            try:
                image = Image.open(io.BytesIO(cell["bytes"] if isinstance(cell, dict) else cell)).convert("RGB")
            except (OSError, TypeError, ValueError, KeyError):
                raise DataError(f"LeRobot dataset {str(root)!r}, episode {ep_index}, step {step}: image column {key!r} "
                                "does not hold an encoded image.") from None
            if image_size:
                image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.uint8))
        out[ep_index] = np.stack(images)
    return out
