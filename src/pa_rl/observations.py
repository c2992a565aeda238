"""Observations: a flat float vector, or a mapping of named arrays (camera images, proprioception,
an instruction's text).

An :data:`ObsSpec` says which: an ``int`` is a flat float32 vector of that size (every Box data set,
and Dicts of vectors only, flattened as ``gymnasium.spaces.flatten`` does); a ``dict`` maps each key
to a :class:`Field`. Images stay ``uint8`` (H, W, C) until an encoder normalises them; an
instruction is stored as its UTF-8 bytes, zero-padded to :data:`TEXT_LENGTH`, so every key is a
fixed-shape array that the replay buffer and batches carry like any other.

The helpers below work on both forms and on numpy arrays and torch tensors alike, so the rest of the
code never looks inside a mapping: only encoders (and the data layer that builds them) do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import gymnasium as gym
import numpy as np
import torch

TEXT_LENGTH = 64  # bytes kept of an instruction; longer ones are cut (and said so where they are loaded)

FieldKind = Literal["vector", "image", "text"]


@dataclass(frozen=True)
class Field:
    """One key of a mapping observation: ``vector`` float32 [D], ``image`` uint8 [H, W, C],
    ``text`` uint8 [TEXT_LENGTH] (UTF-8 bytes, 0 = padding)."""

    kind: FieldKind
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.kind == "vector" else np.dtype(np.uint8)

    def describe(self) -> str:
        return f"{self.kind} {self.dtype} {tuple(self.shape)}"


ObsSpec = Union[int, dict[str, Field]]
Obs = Union[torch.Tensor, dict[str, torch.Tensor]]


def is_image_space(space: gym.spaces.Space) -> bool:
    """A uint8 Box of rank 3 is a channel-last image (H, W, C)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def leaves(space: gym.spaces.Space, prefix: str = "") -> list[tuple[str, gym.spaces.Space]]:
    """(key path, sub-space) in ``gymnasium.spaces.flatten`` order; nested keys join with '/'."""
    if isinstance(space, gym.spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in leaves(sub, f"{prefix}{key}/")]
    return [(prefix[:-1], space)]


def key_name(key: str, space: gym.spaces.Space) -> str:
    """A leaf's key; a space that is not a Dict is called ``pixels`` (an image) or ``observation``."""
    return key or ("pixels" if is_image_space(space) else "observation")


def spec_of_space(space: gym.spaces.Space) -> ObsSpec:
    """The spec of a gymnasium observation space: flat unless it holds an image or text.

    Raises ``ValueError`` naming the key of a sub-space pa-rl cannot represent."""
    fields: dict[str, Field] = {}
    for key, sub in leaves(space):
        name = key_name(key, sub)
        if isinstance(sub, gym.spaces.Text):
            fields[name] = Field("text", (TEXT_LENGTH,))
        elif is_image_space(sub):
            fields[name] = Field("image", tuple(sub.shape))
        elif isinstance(sub, gym.spaces.Box):
            fields[name] = Field("vector", (int(np.prod(sub.shape)),))
        else:
            raise ValueError(f"observation key {name!r} is a {type(sub).__name__} space; pa-rl takes Box vectors, "
                             "uint8 (H, W, C) Box images and Text instructions")
    if all(f.kind == "vector" for f in fields.values()):
        return sum(f.shape[0] for f in fields.values())
    return fields


def space_of_spec(spec: ObsSpec) -> gym.spaces.Space:
    """The gymnasium space whose observations have this spec's arrays."""
    if isinstance(spec, int):
        return gym.spaces.Box(-np.inf, np.inf, (spec,), np.float32)
    bounds = {"vector": (-np.inf, np.inf), "image": (0, 255), "text": (0, 255)}
    return gym.spaces.Dict({key: gym.spaces.Box(*bounds[f.kind], f.shape, f.dtype) for key, f in spec.items()})


def encode_text(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """Strings → uint8 [len, TEXT_LENGTH]: their UTF-8 bytes, cut or zero-padded."""
    out = np.zeros((len(texts), TEXT_LENGTH), dtype=np.uint8)
    for i, text in enumerate(texts):
        raw = (text.decode() if isinstance(text, bytes) else str(text)).encode("utf-8")[:TEXT_LENGTH]
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_text(tokens: np.ndarray) -> str:
    """One uint8 [TEXT_LENGTH] row back to its string (for display)."""
    return bytes(np.asarray(tokens, dtype=np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


def convert_batch(space: gym.spaces.Space, data: Any, spec: ObsSpec | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Raw observations of ``space`` with a leading batch axis (a Minari episode's, or a stacked env
    batch) → arrays in ``spec`` form (default: ``spec_of_space(space)``): flat float32 [N, D], or one
    array per key. Raises ``ValueError`` naming the key whose data do not fit."""
    spec = spec_of_space(space) if spec is None else spec
    if isinstance(spec, int):
        parts = []
        for key, sub in leaves(space):
            array = np.asarray(_get(data, key))
            if array.shape[1:] != sub.shape:
                raise ValueError(f"key {key_name(key, sub)!r}: shape {array.shape[1:]}, the space says {sub.shape}")
            parts.append(array.reshape(len(array), -1).astype(np.float32))
        return np.concatenate(parts, axis=1)
    out = {}
    for key, sub in leaves(space):
        name = key_name(key, sub)
        field, value = spec[name], _get(data, key)
        if field.kind == "text":
            out[name] = encode_text(list(np.asarray(value, dtype=object).reshape(-1)))
            continue
        array = np.asarray(value)
        if array.shape[1:] != tuple(sub.shape):
            raise ValueError(f"key {name!r}: shape {array.shape[1:]}, the space says {tuple(sub.shape)}")
        if field.kind == "image":
            if array.dtype != np.uint8:
                raise ValueError(f"key {name!r}: images must be uint8, got {array.dtype}")
            out[name] = array
        else:
            out[name] = array.reshape(len(array), -1).astype(np.float32)
    return out


def _get(data: Any, key: str) -> Any:
    for part in key.split("/") if key else []:
        if not isinstance(data, Mapping) or part not in data:
            raise ValueError(f"key {key!r} is missing (found {sorted(data) if isinstance(data, Mapping) else type(data).__name__})")
        data = data[part]
    return data


class SpecObservation(gym.ObservationWrapper):
    """An env whose raw observations (Dict, Text, image Box) are turned into ``spec`` arrays, the form
    the data were loaded in; a flat spec flattens, as ``gymnasium.wrappers.FlattenObservation`` does."""

    def __init__(self, env: gym.Env, spec: ObsSpec | None = None) -> None:
        super().__init__(env)
        self.raw_space = env.observation_space
        self.obs_spec = spec_of_space(env.observation_space) if spec is None else spec
        self.observation_space = space_of_spec(self.obs_spec)

    def observation(self, observation: Any) -> np.ndarray | dict[str, np.ndarray]:
        batched = map_obs(lambda leaf: np.asarray([leaf], dtype=object if isinstance(leaf, str) else None),
                          observation)
        return map_obs(lambda array: array[0], convert_batch(self.raw_space, batched, self.obs_spec))


# ---- one code path for tensors and mappings -------------------------------------------------------
def map_obs(fn: Callable[[Any], Any], obs: Any) -> Any:
    """``fn`` on every array of an observation (recursing into mappings)."""
    if isinstance(obs, Mapping):
        return {key: map_obs(fn, value) for key, value in obs.items()}
    return fn(obs)


def cat_obs(parts: Sequence[Any]) -> Any:
    """Concatenate batches along the first axis (torch tensors or numpy arrays)."""
    first = parts[0]
    if isinstance(first, Mapping):
        return {key: cat_obs([p[key] for p in parts]) for key in first}
    return torch.cat(list(parts)) if isinstance(first, torch.Tensor) else np.concatenate(parts)


def stack_obs(items: Sequence[Any]) -> Any:
    """Single observations → one batch (numpy)."""
    first = items[0]
    if isinstance(first, Mapping):
        return {key: stack_obs([item[key] for item in items]) for key in first}
    return np.stack(items)


def batch_size(obs: Any) -> int:
    """Rows in a batch of observations."""
    while isinstance(obs, Mapping):
        obs = next(iter(obs.values()))
    return len(obs)


def to_tensor(obs: Any, spec: ObsSpec, device: torch.device | str) -> tuple[Obs, bool]:
    """Observations as the agent takes them: tensors on ``device`` (float32 vectors, uint8 images and
    text), with a batch axis; the flag says whether one unbatched observation was given."""
    if isinstance(spec, int):
        tensor = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
        return (tensor[None], True) if tensor.dim() == 1 else (tensor, False)
    if not isinstance(obs, Mapping):
        raise TypeError(f"this agent takes mapping observations with keys {sorted(spec)}, got {type(obs).__name__}")
    missing = sorted(set(spec) - set(obs))
    if missing:
        raise KeyError(f"observation lacks key(s) {missing}; the agent was built for {sorted(spec)}")
    out = {key: torch.as_tensor(np.asarray(obs[key], dtype=field.dtype), device=device) for key, field in spec.items()}
    key, field = next(iter(spec.items()))
    single = out[key].dim() == len(field.shape)
    return ({k: v[None] for k, v in out.items()} if single else out), single
