"""Any Hugging Face causal LM or vision-language model as an autoregressive action-token policy.

The OpenVLA recipe: each action dimension (of the flat H·A chunk) is cut into ``bins`` uniform bins
within the action bounds, and bin j of every dimension is the token id ``vocab − bins + j`` (the last
``bins`` ids of the model's output vocabulary). The sequence the model reads is

    [left padding] [prompt tokens: the instruction in a template (VLMs: image placeholders first)]
    [state embeddings] [action tokens]

Language goes through the model's own tokenizer; images of a vision-language model through its own
processor and vision tower; what the LM cannot read as text (vector observations, and images for a
text-only LM through pa-rl's image encoder) is projected by a trainable linear layer into
``state_tokens`` input embeddings, as π0 feeds its state token. ``transformers`` and ``peft`` are
imported only when a policy is built (``pip install 'pa-rl[hf]'``).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.encoders import EncoderConfig, make_encoder
from pa_rl.observations import Obs, ObsSpec, batch_size, decode_text
from pa_rl.optimize import evaluating
from pa_rl.policies.base import ActionScaler, bin_centres, to_bins
from pa_rl.validation import require


@dataclass
class HFConfig:
    """A pretrained model (folder or Hub id) and how it is fine-tuned. ``lora_rank`` 0 turns LoRA off
    and fine-tunes (and saves) every weight of the model; with LoRA the base stays frozen and only the
    adapters and the state projection are trained and saved."""

    model: str = ""  # a local folder or a Hub id (fetched by transformers only where the Hub is reachable)
    revision: str | None = None  # Hub branch, tag or commit; ignored for a folder
    bins: int = 256  # uniform bins per action dimension, taking the last `bins` ids of the vocabulary
    lora_rank: int = 8  # 0 = no LoRA: full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("all-linear",)  # module names, or peft's "all-linear"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    bf16: bool = True  # bfloat16 autocast on CUDA; ignored on CPU, where the model computes in float32
    temperature: float = 1.0
    prompt: str = "In: What action should the robot take to {instruction}?\nOut:"  # OpenVLA's template
    instruction: str = "complete the task"  # for observations without a text field
    state_tokens: int = 2  # input embeddings the non-language observation is projected to
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # images, for a text-only LM

    def __post_init__(self) -> None:
        require(self, "bins", at_least=2)
        require(self, "lora_rank", at_least=0)
        require(self, "lora_alpha", "state_tokens", at_least=1)
        require(self, "lora_dropout", at_least=0, below=1)
        require(self, "temperature", above=0)
        if "{instruction}" not in self.prompt:
            raise ValueError(f"HFConfig.prompt must contain {{instruction}}, got {self.prompt!r}")


def import_hf() -> tuple[Any, Any]:
    """``transformers`` and ``peft``, or an ImportError naming the extra that installs them."""
    try:
        import peft
        import transformers
    except ImportError as error:
        raise ImportError(f"the hf policy needs transformers and peft ({error}): pip install 'pa-rl[hf]'") from error
    return transformers, peft


def state_sha256(model: nn.Module) -> torch.Tensor:
    """SHA-256 of a model's weights as loaded (names, dtypes, shapes, bytes), as 32 uint8."""
    from pa_rl.runs import weights_sha256  # deferred: pa_rl.runs imports this package

    digest = weights_sha256(dict(model.state_dict()))
    return torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8)


class HFPolicy(nn.Module):
    """p(a|s) = Π_i p(tok_i | prompt, state, tok_<i) over the action ids only, by a pretrained model.

    The loss is the cross-entropy of the action tokens under a softmax restricted to the action ids,
    which is exactly the distribution ``sample`` draws from (at temperature 1). Weights: the model is
    loaded in float32 from ``config.model``; its frozen part is not in this module's state dict
    (checkpoints hold the adapters and projection only), but its SHA-256 is, and loading weights onto
    a base that hashes differently is refused.
    """

    def __init__(self, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: HFConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HFConfig()
        if not config.model:
            raise ValueError("the hf policy needs a pretrained model: --hf.model FOLDER_OR_HUB_ID")
        transformers, peft = import_hf()
        self.scaler = ActionScaler(action_low, action_high)
        where = {"revision": config.revision}
        self.vlm = hasattr(transformers.AutoConfig.from_pretrained(config.model, **where), "vision_config")
        auto = transformers.AutoModelForImageTextToText if self.vlm else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(config.model, dtype=torch.float32, **where)
        self.processor = (transformers.AutoProcessor if self.vlm else transformers.AutoTokenizer).from_pretrained(
            config.model, **where)
        self.tokenizer = self.processor.tokenizer if self.vlm else self.processor
        self.tokenizer.padding_side = "left"  # prompts end where the state and actions begin
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.register_buffer("base_sha256", state_sha256(model))

        vocab = model.get_output_embeddings().weight.shape[0]
        if vocab < config.bins:
            raise ValueError(f"{config.model} has {vocab} output tokens, fewer than the {config.bins} action bins "
                             "(--hf.bins)")
        self.first_action_id = vocab - config.bins
        image_token = getattr(model.config, "image_token_id", None)
        if self.vlm and image_token is not None and image_token >= self.first_action_id:
            raise ValueError(f"the image token id {image_token} of {config.model} is among the last {config.bins} "
                             "ids, which the action bins take: use fewer --hf.bins")

        fields = obs_spec if isinstance(obs_spec, dict) else {}
        texts = sorted(key for key, f in fields.items() if f.kind == "text")
        if len(texts) > 1:
            raise ValueError(f"the hf policy reads one instruction, the observation has text keys {texts}")
        self.text_key = texts[0] if texts else None
        # A VLM reads its cameras itself; everything else the LM cannot read is encoded and projected.
        self.image_keys = sorted(key for key, f in fields.items() if f.kind == "image") if self.vlm else []
        state_spec = obs_spec if isinstance(obs_spec, int) else {
            key: f for key, f in fields.items() if key != self.text_key and key not in self.image_keys}
        self.state_keys = None if isinstance(state_spec, int) else sorted(state_spec)
        hidden = model.get_input_embeddings().weight.shape[1]
        self.encoder = self.state_proj = None
        if state_spec:
            self.encoder = make_encoder(state_spec, config.encoder)
            self.state_proj = nn.Linear(self.encoder.out_dim, config.state_tokens * hidden)

        if config.lora_rank:
            lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                   target_modules=(config.lora_target_modules[0] if config.lora_target_modules
                                                   == ("all-linear",) else list(config.lora_target_modules)))
            model = peft.get_peft_model(model, lora).get_base_model()  # the model, adapters injected, base frozen
        if config.gradient_checkpointing:  # non-reentrant: works with frozen inputs (no input grads needed)
            if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.2x on
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.new_cache = transformers.DynamicCache
        # transformers 5 renames the cache argument (past_key_values → cache).
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.frozen_keys = [f"model.{name}" for name, tensor in model.state_dict(keep_vars=True).items()
                            if not (isinstance(tensor, nn.Parameter) and tensor.requires_grad)]
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_pre_hook(_check_and_fill_frozen)

    # ---- inputs ---------------------------------------------------------------------------------
    def _prompts(self, obs: Obs, rows: int) -> list[str]:
        if self.text_key is None:
            instructions = [self.config.instruction] * rows
        else:
            instructions = [decode_text(row) for row in obs[self.text_key].cpu().numpy()]
        images = self.processor.image_token * len(self.image_keys) if self.vlm else ""
        return [images + self.config.prompt.replace("{instruction}", text) for text in instructions]

    def _prefix(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Each state once: (input embeddings [B, P, D], attention mask [B, P], the processor's other
        model inputs, e.g. pixel values)."""
        device = self.model.get_input_embeddings().weight.device
        rows = batch_size(obs)
        prompts = self._prompts(obs, rows)
        if self.vlm:
            images = [[obs[key][row].cpu().numpy() for key in self.image_keys] for row in range(rows)]
            encoded = self.processor(text=prompts, images=images if self.image_keys else None, return_tensors="pt",
                                     padding=True)
        else:
            encoded = self.tokenizer(prompts, return_tensors="pt", padding=True)
        encoded = {name: value.to(device) for name, value in encoded.items()}
        mask = encoded.pop("attention_mask")
        embeds = self.model.get_input_embeddings()(encoded.pop("input_ids"))
        if self.encoder is not None:
            state = self.encoder(obs if self.state_keys is None else {key: obs[key] for key in self.state_keys})
            embeds = torch.cat([embeds, self.state_proj(state).view(rows, self.config.state_tokens, -1)], 1)
            mask = torch.cat([mask, mask.new_ones(rows, self.config.state_tokens)], 1)
        return embeds, mask, encoded

    def _logits(self, embeds: torch.Tensor, mask: torch.Tensor, keep: int, cache: Any = None,
                **extra: torch.Tensor) -> torch.Tensor:
        """Action-id logits (float32) at the last ``keep`` positions. Positions count real tokens only,
        so a left-padded prompt reads as an unpadded one."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        autocast = (torch.autocast("cuda", torch.bfloat16) if self.config.bf16 and embeds.device.type == "cuda"
                    else contextlib.nullcontext())
        with autocast:
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                             use_cache=cache is not None, **({self.cache_arg: cache} if cache is not None else {}),
                             **extra)
        return out.logits[..., self.first_action_id:].float()

    def _embed_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(tokens + self.first_action_id)

    # ---- the policy contract --------------------------------------------------------------------
    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions [B, (H,) A] → bin indices [B, H·A] (token id = first_action_id + index)."""
        return to_bins(self.scaler.normalize(actions), self.config.bins)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin indices [..., H·A] → env actions at the bin centres [..., (H,) A]."""
        return self.scaler.unflatten(self.scaler.unnormalize(bin_centres(tokens, self.config.bins)))

    def loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing in one forward pass: the logits at the state's last position and at each
        action token but the last predict the next action token."""
        tokens = self.tokenize(actions)
        embeds, mask, extra = self._prefix(obs)
        length = tokens.shape[1]
        logits = self._logits(torch.cat([embeds, self._embed_actions(tokens)], 1),
                              torch.cat([mask, mask.new_ones(len(tokens), length)], 1), length + 1, **extra)
        return F.cross_entropy(logits[:, :-1].reshape(-1, self.config.bins), tokens.reshape(-1))

    @torch.no_grad()
    def sample(self, obs: Obs, num_samples: int) -> torch.Tensor:
        """N sequences per state in one batched decoding: the prefix runs once per state, its key/value
        cache is repeated N times, then one step per action token, drawing among the action ids only."""
        with evaluating(self):  # transformers drops the cache of a model checkpointing in training mode
            embeds, mask, extra = self._prefix(obs)
            rows = len(embeds)
            cache = self.new_cache(config=self.model.config)
            logits = self._logits(embeds, mask, 1, cache, **extra)[:, -1]
            cache.batch_repeat_interleave(num_samples)
            logits, mask = logits.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
            tokens: list[torch.Tensor] = []
            for step in range(self.scaler.action_dim):
                tokens.append(torch.multinomial((logits / self.config.temperature).softmax(-1), 1))
                if step + 1 < self.scaler.action_dim:
                    mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
                    logits = self._logits(self._embed_actions(tokens[-1]), mask, 1, cache)[:, -1]
        return self.detokenize(torch.cat(tokens, 1).reshape(rows, num_samples, -1))


def _drop_frozen(module: HFPolicy, state_dict: dict[str, torch.Tensor], prefix: str, _: Any) -> None:
    """State-dict hook: the frozen base weights stay out (they are reloaded from ``config.model``)."""
    for key in module.frozen_keys:
        state_dict.pop(prefix + key, None)


def _check_and_fill_frozen(module: HFPolicy, state_dict: dict[str, torch.Tensor], prefix: str,
                           *_: Any) -> None:
    """Load pre-hook: refuse weights trained on another base, then stand the loaded base's own frozen
    tensors in for the keys a checkpoint leaves out (copying a tensor onto itself is a no-op)."""
    saved = state_dict.get(prefix + "base_sha256")
    if saved is not None and not torch.equal(saved.cpu(), module.base_sha256.cpu()):
        where = module.config.model + (f"@{module.config.revision}" if module.config.revision else "")
        raise ValueError(f"these weights were trained on a base model {where} with SHA-256 {_hex(saved)}, but it "
                         f"now loads with SHA-256 {_hex(module.base_sha256)}: the model changed; restore the one "
                         "they were trained on")
    current = module.model.state_dict(keep_vars=True)
    for key in module.frozen_keys:
        state_dict.setdefault(prefix + key, current[key.removeprefix("model.")])


def _hex(digest: torch.Tensor) -> str:
    return bytes(digest.cpu().tolist()).hex()
