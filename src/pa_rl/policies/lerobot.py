"""LeRobotPolicy: any lerobot ``PreTrainedPolicy`` (diffusion, ACT, VQ-BeT, SmolVLA, ...) as a pa-rl policy.

PA-RL needs only ``sample`` and ``loss``, and lerobot policies have both under other names:
``predict_action_chunk`` draws a chunk of actions (called once on the batch repeated N times, so every
sample gets its own noise in one batched call) and ``forward`` returns the policy's own training loss.
What lies between is translation, done here:

- observations: pa-rl's keys become lerobot's batch keys. Data loaded from a LeRobotDataset already use
  lerobot's names with '/' for '.' (``observation/images/top`` → ``observation.images.top``); otherwise an
  image key ``K`` becomes ``observation.images.K``, the vector keys are concatenated (in spec order)
  into ``observation.state``, a text key becomes ``task`` (the instruction string) and a flat
  observation is ``observation.state``. Images go from uint8 [B, H, W, C] to float [B, C, H, W] in [0, 1].
- normalization: lerobot (0.4 on) normalizes outside the model, in the pre-/post-processor pipelines
  that ``make_pre_post_processors`` builds from data statistics (or loads next to saved weights); they
  are applied around every call, so the model sees what it was trained on and pa-rl gets env units.
- time: a policy that looks at ``n_obs_steps`` past observations gets the current one repeated (what
  lerobot does at an episode's start); pa-rl's chunk of H actions fills the first H of the
  ``action_delta_indices`` slots of the training target, the others are flagged ``action_is_pad``.

lerobot is imported lazily (``pip install 'pa-rl[lerobot]'``; README: which versions install).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pa_rl.data.episodes import Episode
from pa_rl.observations import Field, ObsSpec, batch_size, decode_text

STATE = "observation.state"
ENV_STATE = "observation.environment_state"
IMAGES = "observation.images"
TASK = "task"


def _lerobot() -> Any:
    try:
        import lerobot.policies.factory as factory
    except ImportError as e:
        raise ImportError(f"LeRobotPolicy needs the lerobot package ({e}); install it with pip install "
                          "'pa-rl[lerobot]' (README: which lerobot, torch and torchvision versions install together)") \
            from e
    return factory


def lerobot_names(spec: ObsSpec) -> dict[str, str]:
    """pa-rl observation key → lerobot batch key; vectors without a lerobot name share ``observation.state``."""
    if isinstance(spec, int):
        return {"": STATE}
    names = {}
    for key, field in spec.items():
        dotted = key.replace("/", ".")
        if field.kind == "text":
            names[key] = TASK
        elif dotted.startswith(f"{IMAGES}.") or dotted in (STATE, ENV_STATE):
            names[key] = dotted
        else:
            names[key] = f"{IMAGES}.{key}" if field.kind == "image" else STATE
    vectors_in_state = [key for key, name in names.items() if name == STATE]
    if len(vectors_in_state) > 1 and any(key.replace("/", ".") == STATE for key in vectors_in_state):
        raise ValueError(f"keys {vectors_in_state} would all be lerobot's {STATE!r}; rename the others")
    if list(names.values()).count(TASK) > 1:
        raise ValueError(f"lerobot takes one instruction ('task'); the observations have text keys "
                         f"{[k for k, n in names.items() if n == TASK]}")
    return names


def lerobot_features(spec: ObsSpec, action_dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``input_features`` and ``output_features`` of a lerobot policy config for these observations
    and per-step actions (images as (C, H, W), as lerobot declares them)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    fields = {"": Field("vector", (spec,))} if isinstance(spec, int) else spec
    names = lerobot_names(spec)
    inputs: dict[str, Any] = {}
    for key, field in fields.items():
        name = names[key]
        if field.kind == "image":
            inputs[name] = PolicyFeature(FeatureType.VISUAL, (field.shape[2], *field.shape[:2]))
        elif field.kind == "vector":
            width = inputs[name].shape[0] if name in inputs else 0
            kind = FeatureType.ENV if name == ENV_STATE else FeatureType.STATE
            inputs[name] = PolicyFeature(kind, (width + field.shape[0],))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}


def lerobot_stats(episodes: Sequence[Episode], spec: ObsSpec, action_low: np.ndarray,
                  action_high: np.ndarray) -> dict[str, dict[str, torch.Tensor]]:
    """Normalization statistics in lerobot's form (key → mean/std/min/max) from pa-rl episodes.

    Images are per channel in [0, 1], shaped (C, 1, 1) as lerobot's ``compute_stats`` gives them. The
    action's min and max are the action bounds, so lerobot's MIN_MAX scaling maps pa-rl's action box
    onto [-1, 1]; its mean and std come from the data."""
    names = lerobot_names(spec)
    columns: dict[str, list[np.ndarray]] = {}
    for episode in episodes:
        obs = {"": episode.observations} if isinstance(spec, int) else episode.observations
        parts: dict[str, list[np.ndarray]] = {}
        for key, name in names.items():
            if name == TASK:
                continue
            value = obs[key][:-1]
            if value.dtype == np.uint8:  # an image: per-channel pixels in [0, 1]
                value = value.reshape(-1, value.shape[-1]).astype(np.float32) / 255.0
            parts.setdefault(name, []).append(value.astype(np.float32))
        for name, values in parts.items():
            columns.setdefault(name, []).append(np.concatenate(values, axis=-1))
        columns.setdefault("action", []).append(episode.actions)
    stats = {}
    for name, values in columns.items():
        data = torch.as_tensor(np.concatenate(values))
        shape = (-1, 1, 1) if name.startswith(f"{IMAGES}.") else (-1,)
        stats[name] = {"mean": data.mean(0).reshape(shape), "std": data.std(0).reshape(shape),
                       "min": data.amin(0).reshape(shape), "max": data.amax(0).reshape(shape)}
    stats["action"]["min"] = torch.as_tensor(np.asarray(action_low, np.float32))
    stats["action"]["max"] = torch.as_tensor(np.asarray(action_high, np.float32))
    return stats


class LeRobotPolicy(nn.Module):
    """A lerobot ``PreTrainedPolicy`` with its pre-/post-processors, seen through pa-rl's contract.

    ``chunk`` H is pa-rl's ``AgentConfig.chunk``: the first H of the ``n_action_steps`` actions a
    chunk-predicting policy proposes. The lerobot policy's own weights are this module's parameters
    (pa-rl's optimizer trains them); the processors' statistics stay fixed.
    """

    def __init__(self, policy: nn.Module, preprocessor: Any, postprocessor: Any, obs_spec: ObsSpec,
                 chunk: int = 1) -> None:
        super().__init__()
        config = policy.config
        steps = getattr(config, "n_action_steps", 1)
        if chunk > steps:
            raise ValueError(f"chunks of {chunk} actions asked for, but the lerobot policy proposes {steps} at a time "
                             "(its config's n_action_steps)")
        if chunk > 1 and config.action_delta_indices is None:
            raise ValueError(f"the lerobot policy ({type(policy).__name__}) predicts one action per step, not chunks")
        self.policy = policy
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        self.obs_spec, self.chunk = obs_spec, chunk
        self.names = lerobot_names(obs_spec)

    @classmethod
    def from_config(cls, config: Any, stats: Mapping[str, Mapping[str, torch.Tensor]], obs_spec: ObsSpec,
                    chunk: int = 1) -> LeRobotPolicy:
        """A new policy of ``config``'s type (e.g. lerobot's ``DiffusionConfig`` with
        :func:`lerobot_features`), normalized with ``stats`` (e.g. :func:`lerobot_stats`)."""
        factory = _lerobot()
        policy = factory.get_policy_class(config.type)(config)
        preprocessor, postprocessor = factory.make_pre_post_processors(config, dataset_stats=dict(stats))
        return cls(policy, preprocessor, postprocessor, obs_spec, chunk)

    @classmethod
    def from_pretrained(cls, path: str | Path, obs_spec: ObsSpec, chunk: int = 1) -> LeRobotPolicy:
        """A policy saved by lerobot (``save_pretrained`` of the policy and of its processors) in a local
        folder, or a Hub id on a machine with network access."""
        factory = _lerobot()
        from lerobot.configs.policies import PreTrainedConfig

        config = PreTrainedConfig.from_pretrained(path)
        policy = factory.get_policy_class(config.type).from_pretrained(path, config=config)
        preprocessor, postprocessor = factory.make_pre_post_processors(config, pretrained_path=str(path))
        return cls(policy, preprocessor, postprocessor, obs_spec, chunk)

    # ---- the contract -------------------------------------------------------------------------------
    def sample(self, obs: Any, num_samples: int) -> torch.Tensor:
        rows = batch_size(obs)
        batch = self._batch(obs, num_samples)
        device = self._device()
        batch = _to(self.preprocessor(batch), device)
        self.policy.reset()  # no history between calls: each state is an episode's first observation
        actions = self.postprocessor(self.policy.predict_action_chunk(self._fill_queues(batch))).to(device)
        actions = actions if actions.dim() == 3 else actions[:, None]
        if actions.shape[1] < self.chunk:
            raise ValueError(f"the lerobot policy proposed chunks of {actions.shape[1]} actions, fewer than the "
                             f"{self.chunk} asked for (check its config: lerobot's diffusion needs n_action_steps ≤ horizon − "
                             "n_obs_steps + 1)")
        actions = actions[:, : self.chunk]
        actions = actions.reshape(rows, num_samples, self.chunk, -1)
        return actions if self.chunk > 1 else actions[:, :, 0]

    def loss(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        batch = self._batch(obs)
        config = self.policy.config
        chunk = actions if actions.dim() == 3 else actions[:, None]
        offsets = config.action_delta_indices
        if offsets is None:
            batch["action"] = chunk[:, 0]
        else:  # the chunk in slots 0..H-1, the other slots copies of its edges, flagged as padding
            offsets = torch.as_tensor(offsets, device=chunk.device)
            batch["action"] = chunk[:, offsets.clamp(0, chunk.shape[1] - 1)]
            batch["action_is_pad"] = ((offsets < 0) | (offsets >= chunk.shape[1])).expand(len(chunk), -1)
        if config.observation_delta_indices is not None:
            steps = len(config.observation_delta_indices)
            batch = {key: value.unsqueeze(1).expand(-1, steps, *value.shape[1:])
                     if key.startswith("observation.") else value for key, value in batch.items()}
        loss, _ = self.policy.forward(_to(self.preprocessor(batch), self._device()))
        return loss

    # ---- translation ---------------------------------------------------------------------------------
    def _batch(self, obs: Any, repeat: int = 1) -> dict[str, Any]:
        """pa-rl observations → a lerobot batch, each row repeated ``repeat`` times (sample-major)."""
        items = {"": obs} if isinstance(self.obs_spec, int) else obs
        batch: dict[str, Any] = {}
        for key, name in self.names.items():
            value = items[key].repeat_interleave(repeat, dim=0)
            if name == TASK:
                batch[TASK] = [decode_text(row) for row in value.cpu().numpy()]
            elif value.dtype == torch.uint8:
                batch[name] = value.permute(0, 3, 1, 2).float() / 255.0
            else:
                batch[name] = torch.cat([batch[name], value.float()], -1) if name in batch else value.float()
        return batch

    def _fill_queues(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch for ``predict_action_chunk``. Policies that keep an observation history (lerobot's
        diffusion and VQ-BeT) read its observations from their queues: those are filled as
        ``select_action`` does at an episode's start (cameras stacked under ``observation.images``, the
        current observation repeated), and the batch says which keys to read."""
        queues = getattr(self.policy, "_queues", None)
        if queues is None:
            return batch
        from lerobot.policies.utils import populate_queues

        queued = dict(batch)
        cameras = list(getattr(self.policy.config, "image_features", None) or [])
        if cameras:
            queued[IMAGES] = torch.stack([batch[key] for key in cameras], dim=-4)
        populate_queues(queues, queued)
        return queued

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A processed batch on ``device``, less the empty entries the pipeline adds back (an ``action`` of
    None would be queued as an observation)."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
            if value is not None}
