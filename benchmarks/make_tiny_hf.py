"""Tiny Hugging Face models built from configs and saved with ``save_pretrained``: what the tests and
the CPU benchmarks of ``--policy hf`` load by path (nothing is downloaded).

    python benchmarks/make_tiny_hf.py OUT_DIR [--vlm] [--seed 0]

``OUT_DIR`` then holds a model folder that ``pa-rl train --policy hf --hf.model OUT_DIR`` loads as a
user's: a 2-layer Llama with a byte-level BPE tokenizer trained here, or (``--vlm``) a Llava whose
vision tower is a 2-layer CLIP over 16 × 16 images, with its processor. Random weights: they test
the plumbing and learn small tasks from scratch, not what a pretrained model knows. The vocabulary is
the tokenizer's plus 256 spare ids at its end, which the policy's default 256 action bins take.
"""

from __future__ import annotations

import argparse
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


def text_config(tokenizer, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer) + ACTION_IDS, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def make_text_model(out: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A Llama causal LM (``layers`` × ``hidden``) and its tokenizer, saved to ``out``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    LlamaForCausalLM(text_config(tokenizer, hidden, layers)).save_pretrained(out)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--vlm", action="store_true", help="a Llava vision-language model instead of a text LM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (make_vlm if args.vlm else make_text_model)(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
