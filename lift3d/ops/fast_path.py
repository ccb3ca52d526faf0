"""Dispatch policy between the PyTorch reference kernels and the Triton fast path.

docs/DESIGN.md ("Numerical kernels: a reference and a fast path"): every kernel has a pure-PyTorch
reference, which is the ground truth and the CPU path; Triton kernels (``lift3d.ops.triton``)
replace it for CUDA tensors. Triton ships with CUDA builds of PyTorch, so nothing is compiled at
install time; the kernels are compiled by Triton's JIT at first use (cached under ``~/.triton``).

``use_triton(tensor)`` is True when

* the environment variable ``LIFT3D_DISABLE_TRITON`` is not set to a true value
  (``1``/``true``/``yes``/``on``), and
* ``triton`` imports, and
* either the tensor lives on a CUDA device (compute capability 7.5 or newer) on which a probe
  kernel compiled and ran once (``lift3d.ops.triton.probe``; if it fails -- no C compiler for
  Triton's launcher, say -- lift3d warns once and uses the reference), or it lives on the CPU while
  ``TRITON_INTERPRET=1`` **and** ``LIFT3D_TRITON_ON_CPU=1`` (the interpreter runs the kernels with
  NumPy: very slow, for tests only, hence the explicit opt-in).

Each call site checks its own extra conditions (dtype float32, supported shapes) and otherwise
falls back to the reference. The environment is read at every call, so it can be switched at run
time (``TRITON_INTERPRET`` itself is read by Triton when a kernel module is first imported: set it
before the first CPU use).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Optional

import torch

_TRUE = {"1", "true", "yes", "on"}

__all__ = ["use_triton", "triton_available", "triton_disabled", "reference_kernels", "interpreter_on_cpu", "describe"]


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
    return _env_true("LIFT3D_DISABLE_TRITON") or reference_kernels()


def reference_kernels() -> bool:
    """``LIFT3D_REFERENCE_KERNELS=1``: every kernel takes its plain PyTorch reference (no Triton, and
    on CPU the loop-per-level hash grid instead of the all-levels one) -- for before/after benchmarks."""
    return _env_true("LIFT3D_REFERENCE_KERNELS")


def interpreter_on_cpu() -> bool:
    """CPU tensors go through the Triton interpreter (tests): both opt-ins must be set."""
    return _env_true("TRITON_INTERPRET") and _env_true("LIFT3D_TRITON_ON_CPU")


MIN_CAPABILITY = (7, 5)  # Turing and newer


@functools.lru_cache(maxsize=None)
def _cuda_device_ok(index: int) -> bool:
    """Once per CUDA device: recent enough, and a probe kernel compiles and runs (else warn, reference)."""
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        warnings.warn(f"lift3d: GPU {index} has compute capability {capability}; the Triton fast path needs "
                      f"{MIN_CAPABILITY} or newer: using the PyTorch reference kernels.")
        return False
    try:
        from lift3d.ops.triton.probe import probe

        probe(torch.device("cuda", index))
    except Exception as exc:  # no C compiler for Triton's launcher, unsupported GPU, ...
        warnings.warn(f"lift3d: Triton cannot run on GPU {index} ({type(exc).__name__}: {exc}); "
                      "using the PyTorch reference kernels (set LIFT3D_DISABLE_TRITON=1 to silence this).")
        return False
    return True


def use_triton(tensor: Optional[torch.Tensor]) -> bool:
    """Whether the Triton fast path should handle an op whose main input is ``tensor``."""
    if tensor is None or triton_disabled():
        return False
    device = tensor.device.type
    if device == "cuda":
        if not triton_available():
            return False
        index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
        return _cuda_device_ok(index)
    if device == "cpu":
        return interpreter_on_cpu() and triton_available()
    return False


def describe() -> str:
    """One line for logs and benchmarks: which path CUDA and CPU tensors take."""
    version = _import_triton()
    if reference_kernels():
        state = "PyTorch reference kernels everywhere (LIFT3D_REFERENCE_KERNELS)"
    elif triton_disabled():
        state = "disabled by LIFT3D_DISABLE_TRITON"
    elif version is None:
        state = "triton not importable: PyTorch reference kernels everywhere"
    else:
        cpu = "interpreter" if interpreter_on_cpu() else "reference"
        state = f"triton {version}: CUDA tensors -> Triton kernels, CPU tensors -> {cpu}"
    return state
