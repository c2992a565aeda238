"""Tiny Hugging Face models built from configs and saved with ``save_pretrained``: what the tests and
the CPU benchmarks of ``--policy hf`` load by path (nothing is downloaded).

    python benchmarks/make_tiny_hf.py OUT_DIR [--vlm] [--seed 0]
    python benchmarks/make_tiny_hf.py OUT_DIR --hidden 1024 --layers 24 --heads 16 --kv-heads 8 \
        --intermediate 5632 --init-range 0.02    # a 0.49B Llama of the same kind (benchmarks/gpu.sh)

``OUT_DIR`` then holds a model folder that ``pa-rl train --policy hf --hf.model OUT_DIR`` loads as a
user's: a 2-layer Llama with a byte-level BPE tokenizer trained here, or (``--vlm``) a Llava whose
vision tower is a 2-layer CLIP over 16 × 16 images, with its processor. Random weights: they test
the plumbing and learn small tasks from scratch, not what a pretrained model knows. The vocabulary is
the tokenizer's plus 256 spare ids at its end, which the policy's default 256 action bins take.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

ACTION_IDS = 256  # spare ids after the tokenizer's: the policy's action bins (HFConfig.bins ≤ this)
SPECIAL = ["<pad>", "</s>", "<image>"]
# What the tokenizer is trained on: the default prompt and the instructions of pa-rl's data sets and tests.
CORPUS = ["In: What action should the robot take to reach the goal?\nOut:",
          "reach the goal at the top-left end of the U", "move the dot to the right edge",
          "push the block to the left", "pick up the cup and place it on the shelf"]


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (any UTF-8 text tokenizes) trained on :data:`CORPUS`, with ``<pad>``,
    ``</s>`` (end of sequence) and ``<image>`` (a VLM's image placeholder) as its first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                  extra_special_tokens={"image_token": "<image>"})


def text_config(tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate: int | None = None, init_range: float = 0.2):
    """A Llama config over the tokenizer's ids plus the action ids. The tiny default's large init range
    (0.2) keeps its logits from being near-uniform; a deep model needs Llama's own 0.02 to stay finite."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer) + ACTION_IDS, hidden_size=hidden,
                       intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                       initializer_range=init_range, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def make_text_model(out: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, intermediate: int | None = None, init_range: float = 0.2) -> Path:
    """A Llama causal LM (``layers`` × ``hidden``) and its tokenizer, saved to ``out``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model = LlamaForCausalLM(text_config(tokenizer, hidden, layers, heads, kv_heads, intermediate, init_range))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def make_vlm(out: str | Path, seed: int = 0, hidden: int = 32, image_size: int = 16, patch: int = 8) -> Path:
    """A Llava vision-language model (CLIP tower over ``image_size``² images in ``patch``² patches, a
    2-layer Llama) and its processor (PIL image processor: torchvision is not needed), saved to ``out``."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch)
    config = LlavaConfig(vision_config=vision, text_config=text_config(tokenizer, hidden),
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).save_pretrained(out)
    images = CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False)
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(out)
    return Path(out)


def parameter_count(folder: str | Path) -> int:
    """Parameters in a saved model folder, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    count = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            count += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--vlm", action="store_true", help="a Llava vision-language model instead of a text LM")
    parser.add_argument("--seed", type=int, default=0)
    text = parser.add_argument_group("the text model's size (not with --vlm)")
    text.add_argument("--hidden", type=int, default=32)
    text.add_argument("--layers", type=int, default=2)
    text.add_argument("--heads", type=int, default=4)
    text.add_argument("--kv-heads", type=int, default=2)
    text.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 2 × hidden)")
    text.add_argument("--init-range", type=float, default=0.2, help="std of the random weights")
    args = parser.parse_args()
    if args.vlm:
        make_vlm(args.out, args.seed)
    else:
        make_text_model(args.out, args.seed, args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate,
                        args.init_range)
    print(f"wrote {args.out}: {parameter_count(args.out) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
