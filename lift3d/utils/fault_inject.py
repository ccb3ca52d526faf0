"""Fault injection for the fault tests (tests/test_exact_resume.py, tests/test_faults.py,
benchmarks/faults.py): `LIFT3D_FAULT_INJECT` holds comma-separated faults, none by default.

- `kill-in-checkpoint-write:<n>`: the n-th checkpoint write of the process (1-based) writes half of
  its temporary file, then the process SIGKILLs itself (a power cut in the middle of a write);
- `nan-loss:<step>:<term>`: at training step <step> the loss term `loss_<term>` becomes NaN.
"""
from __future__ import annotations

import os
from typing import Optional

ENV = "LIFT3D_FAULT_INJECT"


def fault_args(kind: str) -> Optional[list[str]]:
    """The arguments of fault `kind` when it is injected, else None."""
    for item in os.environ.get(ENV, "").split(","):
        parts = item.strip().split(":")
        if parts[0] == kind:
            return parts[1:]
    return None
