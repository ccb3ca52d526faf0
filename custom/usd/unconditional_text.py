"""Stable Diffusion's embedding of the empty prompt, for image-to-3D USD (no prompt processor there).

Read from, or written to, the text-embedding cache of `stable-diffusion-prompt-processor`
(lift3d.prompt.cache, same key: model fingerprint + prompt), so text-to-3D runs and image-to-3D
runs share the entry. On a miss the processor's own encoder is used (tokenizer and text encoder
loaded, used once, released).
"""
from __future__ import annotations

from torch import Tensor

from lift3d.prompt.cache import TextEmbeddingCache, model_fingerprint
from lift3d.prompt.stable_diffusion import encode_prompts


def prompt_embedding(model_path: str, cache_dir: str, prompt: str = "", use_cache: bool = True) -> Tensor:
    """[1, 77, D] float32 CPU text embedding of `prompt` ("" = unconditional) for the SD folder `model_path`."""
    cache = TextEmbeddingCache(cache_dir, model_fingerprint(model_path))
    embedding = cache.load(prompt) if use_cache else None
    if embedding is None:
        embedding = encode_prompts(model_path, [prompt])[0]
        if use_cache:
            cache.save(prompt, embedding)
    return embedding[None]


__all__ = ["prompt_embedding"]
