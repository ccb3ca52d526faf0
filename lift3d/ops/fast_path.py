"""Dispatch policy between the PyTorch reference kernels and the Triton fast path.

DESIGN.md ("Numerical kernels: a reference and a fast path"): every kernel has a pure-PyTorch
reference, which is the ground truth and the CPU path; Triton kernels (``lift3d.ops.triton``)
replace it for CUDA tensors. Triton ships with CUDA builds of PyTorch, so nothing is compiled at
install time; the kernels are compiled by Triton's JIT at first use (cached under ``~/.triton``).

``use_triton(tensor)`` is True when

* the environment variable ``LIFT3D_DISABLE_TRITON`` is not set to a true value
  (``1``/``true``/``yes``/``on``), and
* ``triton`` imports, and
* either the tensor lives on a CUDA device, or it lives on the CPU while ``TRITON_INTERPRET=1``
  **and** ``LIFT3D_TRITON_ON_CPU=1`` (the interpreter runs the kernels with NumPy: very slow, for
  tests only, hence the explicit opt-in).

Each call site checks its own extra conditions (dtype float32, supported shapes) and otherwise
falls back to the reference. The environment is read at every call, so it can be switched at run
time (``TRITON_INTERPRET`` itself is read by Triton when a kernel module is first imported: set it
before the first CPU use).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

_TRUE = {"1", "true", "yes", "on"}

__all__ = ["use_triton", "triton_available", "triton_disabled", "interpreter_on_cpu", "describe"]


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


@functools.lru_cache(maxsize=None)
def _import_triton() -> Optional[str]:
    """The installed Triton version, or None when it does not import."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install (missing libs): treat as absent
        return None
    return getattr(triton, "__version__", "unknown")


def triton_available() -> bool:
    return _import_triton() is not None


def triton_disabled() -> bool:
    return _env_true("LIFT3D_DISABLE_TRITON")


def interpreter_on_cpu() -> bool:
    """CPU tensors go through the Triton interpreter (tests): both opt-ins must be set."""
    return _env_true("TRITON_INTERPRET") and _env_true("LIFT3D_TRITON_ON_CPU")


def use_triton(tensor: Optional[torch.Tensor]) -> bool:
    """Whether the Triton fast path should handle an op whose main input is ``tensor``."""
    if tensor is None or triton_disabled():
        return False
    device = tensor.device.type
    if device == "cuda":
        return triton_available()
    if device == "cpu":
        return interpreter_on_cpu() and triton_available()
    return False


def describe() -> str:
    """One line for logs and benchmarks: which path CUDA and CPU tensors take."""
    version = _import_triton()
    if triton_disabled():
        state = "disabled by LIFT3D_DISABLE_TRITON"
    elif version is None:
        state = "triton not importable: PyTorch reference kernels everywhere"
    else:
        cpu = "interpreter" if interpreter_on_cpu() else "reference"
        state = f"triton {version}: CUDA tensors -> Triton kernels, CPU tensors -> {cpu}"
    return state
