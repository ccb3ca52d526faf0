"""The process-global random generators as one picklable dict, for exact resume.

Components draw from python's `random` (material/background augmentation), numpy, and torch's
global CPU (and CUDA) generators (the renderer's stratified sampling); a checkpoint stores them all
(`capture`) and a resumed run restores them (`restore`) right before its first training step, so
it draws exactly what the uninterrupted run drew. Only tensors, ints, floats and tuples are stored, so
that Lightning's `weights_only` checkpoint loading accepts them."""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch


def _numpy_state() -> tuple:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def capture() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),  # uint8 tensor
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Dict[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # (another GPU count: the CUDA sequences restart)
