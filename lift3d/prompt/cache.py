"""On-disk cache of text embeddings, keyed by model and prompt (threestudio-conventions.md).

One file per (model, prompt): `<cache_dir>/<sha256 of the key>.pt` holding
{"model": ..., "prompt": ..., "embedding": [77, D] float32}. Writes are atomic (a temporary file
in the same folder, then os.replace), so two runs sharing the cache never read a half-written file;
a file that cannot be read, or that holds another key, counts as a miss and is rewritten.

The model key is the resolved model folder plus a fingerprint of its text-encoder files (name,
size, modification time), so re-generating a model folder at the same path invalidates its entries.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch


def model_fingerprint(model_path: str, subfolders: tuple[str, ...] = ("text_encoder", "tokenizer")) -> str:
    """'<abs path>|<digest of file names, sizes and mtimes of the given subfolders>'."""
    root = Path(model_path)
    digest = hashlib.sha256()
    for sub in subfolders:
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"{root.resolve() if root.exists() else model_path}|{digest.hexdigest()[:16]}"


class TextEmbeddingCache:
    def __init__(self, cache_dir: str | os.PathLike, model_key: str) -> None:
        self.dir = Path(cache_dir)
        self.model_key = model_key

    def path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.model_key}\n{prompt}".encode("utf-8")).hexdigest()
        return self.dir / f"{key}.pt"

    def load(self, prompt: str) -> Optional[torch.Tensor]:
        path = self.path(prompt)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # corrupt or foreign: re-encode and overwrite
        if not isinstance(entry, dict) or entry.get("prompt") != prompt or entry.get("model") != self.model_key:
            return None
        embedding = entry.get("embedding")
        return embedding if isinstance(embedding, torch.Tensor) else None

    def save(self, prompt: str, embedding: torch.Tensor) -> Path:
        path = self.path(prompt)
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = {"model": self.model_key, "prompt": prompt, "embedding": embedding.detach().float().cpu().contiguous()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fp:
                torch.save(entry, fp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


__all__ = ["TextEmbeddingCache", "model_fingerprint"]
