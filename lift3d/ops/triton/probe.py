"""A one-time check that Triton can compile and launch on a CUDA device (lift3d.ops.fast_path).

Triton compiles kernels at first use and builds a small host-side launcher with the system's C
compiler; a machine without one, or a GPU Triton does not support, fails there. The probe runs a
trivial kernel once per device so that such a machine falls back to the PyTorch reference with a
warning instead of failing in the middle of training.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2.0 + 1.0, mask=m)


def probe(device: torch.device) -> None:
    """Raises if a Triton kernel cannot be compiled, launched, or gives a wrong result on ``device``."""
    x = torch.arange(100, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    _axpy_kernel[(1,)](x, y, x.numel(), BLOCK=128)
    if not torch.equal(y, x * 2.0 + 1.0):
        raise RuntimeError("Triton probe kernel returned a wrong result")
