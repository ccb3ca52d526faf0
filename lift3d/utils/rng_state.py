"""The process-global random generators as one picklable dict, for exact resume.

Components draw from python's `random` (material/background augmentation), numpy, and torch's
global CPU (and CUDA) generators (the renderer's stratified sampling); a checkpoint stores them all
(`capture`) and a resumed run restores them (`restore`) right before its first training step, so
it draws exactly what the uninterrupted run drew."""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch


def capture() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),  # uint8 tensor
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Dict[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
