"""`deep-floyd-prompt-processor`: T5 text embeddings of a prompt, per view direction, for `deep-floyd-guidance`
(docs/methods/deepfloyd-if.md §3).

Everything but the text encoder is the Stable Diffusion prompt processor's (lift3d.prompt.stable_diffusion):
the prompt library (`lib:<words>`), the view-dependent prompts ("<prompt>, front view", ...), the negative
prompt, the on-disk cache (lift3d.prompt.cache, keyed by the IF folder's text_encoder/ and tokenizer/
files) and the `PromptProcessorOutput` it returns. What differs is the encoder:

- the IF folder's `tokenizer/` (T5's SentencePiece vocabulary, read by `AutoTokenizer`) and
  `text_encoder/` (transformers `T5EncoderModel`, T5 v1.1 XXL in DeepFloyd/IF-I-XL-v1.0: D = 4096);
- prompts are padded / cut to 77 tokens (threestudio's and diffusers' IF length) and encoded with the
  attention mask, so padding tokens do not attend to each other's values;
- the T5 encoder is fp16 on a GPU (fp32 T5-XXL alone is ~19 GB), fp32 on the CPU, loaded only for the
  prompts missing from the cache and freed right after.

`get_text_embeddings(elevation, azimuth, camera_distances)` -> [2B, 77, D]: B conditional then B
unconditional embeddings, as for SD.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.models.frozen import default_device, free_memory, resolve_model
from lift3d.prompt.stable_diffusion import KEY, StableDiffusionPromptProcessor, warn_truncated_prompts
from lift3d.registry import register

IF_TEXT_FILES = ("model_index.json", "text_encoder/config.json", "tokenizer")
T5_MAX_LENGTH = 77  # tokens per prompt, as IF's pipeline and threestudio pad / cut them


def if_text_encoder_what(path: str = KEY) -> str:
    return f"DeepFloyd IF text encoder (T5) for {path}.pretrained_model_name_or_path"


def load_t5_tokenizer(model_path: str) -> Any:
    """The IF folder's tokenizer/ (tokenizer.json, or spiece.model which needs the sentencepiece package)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    except (ImportError, ValueError, OSError, RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"{KEY}: cannot read the T5 tokenizer in '{model_path}/tokenizer' ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}). A tokenizer given as spiece.model "
            f"needs `pip install sentencepiece`; otherwise the folder is incomplete: download it again."
        ) from None


def check_tokenizer_readable(model_path: str, path: str = KEY) -> None:
    """ConfigError before any work when the folder's tokenizer is only a SentencePiece model (DeepFloyd's
    published tokenizer/spiece.model) and the `sentencepiece` package that reads it is not installed."""
    import importlib.util
    import os

    folder = os.path.join(model_path, "tokenizer")
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return
    if os.path.isfile(os.path.join(folder, "spiece.model")) and importlib.util.find_spec("sentencepiece") is None:
        raise ConfigError(
            f"{path}.pretrained_model_name_or_path: the T5 tokenizer in '{folder}' is a SentencePiece model "
            f"(spiece.model), which needs the sentencepiece package: pip install sentencepiece."
        )


@torch.no_grad()
def encode_t5_prompts(model_path: str, prompts: list[str], max_length: int = T5_MAX_LENGTH) -> Tensor:
    """[N, max_length, D] float32 CPU T5 embeddings of `prompts` with the IF folder's tokenizer and text
    encoder, loaded for this call (fp16 on CUDA) and freed afterwards."""
    from transformers import T5EncoderModel

    device = default_device()
    tokenizer = load_t5_tokenizer(model_path)
    dtype = {"torch_dtype": torch.float16} if device.type == "cuda" else {}
    text_encoder = T5EncoderModel.from_pretrained(model_path, subfolder="text_encoder", **dtype).to(device)
    text_encoder.eval()
    try:
        warn_truncated_prompts(tokenizer, prompts, max_length)
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        hidden = text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        embeddings = hidden.float().cpu()  # [N, 77, D]
    finally:
        del text_encoder, tokenizer
        free_memory()
    return embeddings


@register("deep-floyd-prompt-processor")
class DeepFloydPromptProcessor(StableDiffusionPromptProcessor):
    @dataclass
    class Config(StableDiffusionPromptProcessor.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = KEY) -> None:
        # the IF folder first, so that a missing one is named as IF's (the SD checks then find it)
        model_path = resolve_model(cfg.pretrained_model_name_or_path, if_text_encoder_what(path), IF_TEXT_FILES)
        check_tokenizer_readable(model_path, path)
        super().validate_config(cfg, path)

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """[N, 77, D_t5] float32 CPU embeddings of `prompts` (cache misses only)."""
        return encode_t5_prompts(self.model_path, prompts)


__all__ = ["DeepFloydPromptProcessor", "IF_TEXT_FILES", "T5_MAX_LENGTH", "check_tokenizer_readable", "encode_t5_prompts",
           "load_t5_tokenizer"]
