"""A fork server for the tests' `launch.py` runs (tests/helpers.py run_launch).

Every end-to-end test used to start `python launch.py ...` afresh, and each start re-imported torch,
Lightning, diffusers, transformers and lift3d: about 6 CPU-seconds per run, a few minutes of the
suite. This process imports them once (and never runs a tensor operation or starts a thread), then
forks one child per request; the child is a new process, like `python launch.py`: its own pid and
process group, the request's cwd, environment, argv and thread count, stdout/stderr to the request's
files, stdin from /dev/null, exit code = launch.main's return value (or SystemExit's code), atexit
handlers run at its exit. What it does not redo is the imports, so an environment variable that a
library reads at import time (rather than when it is used) is the server's: tests that need a
different one run launch.py as a fresh subprocess (run_launch(..., fresh_process=True)).

Protocol, one JSON object per line: the client writes {"argv", "cwd", "env", "stdout", "stderr"};
the server answers {"pid": <child pid>} at once and {"rc": <exit code>} when the child ends
(killed by a signal: minus the signal number, as subprocess reports it).
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What launch.py runs import: the libraries first, then every built-in lift3d component.
PRELOAD = (
    "torch", "numpy", "omegaconf", "pytorch_lightning", "lightning_fabric", "imageio", "PIL.Image",
    "diffusers", "transformers",
)
PRELOAD_NAMES = {  # diffusers/transformers import their classes lazily: touch the ones lift3d loads
    "diffusers": ("UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", "DDIMScheduler", "ControlNetModel"),
    "transformers": ("CLIPTextModel", "CLIPTokenizer", "CLIPTextConfig"),
}


def preload() -> None:
    for name in PRELOAD:
        try:
            module = importlib.import_module(name)
            for attr in PRELOAD_NAMES.get(name, ()):
                getattr(module, attr)
        except Exception as exc:  # the child imports it again and fails as a fresh process would
            print(f"launch_server: preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        from lift3d import registry

        for name in registry.BUILTIN_MODULES:  # registry._builtins_loaded stays False: find() runs as usual
            try:
                importlib.import_module(name)
            except Exception as exc:  # e.g. someone's half-finished edit: the child fails on it as usual
                print(f"launch_server: preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        importlib.import_module("launch")
    except Exception as exc:
        print(f"launch_server: preload lift3d: {type(exc).__name__}: {exc}", file=sys.stderr)


def child(request: dict, default_threads: int, protocol_fd: int) -> None:
    """Runs in the forked child; never returns."""
    rc = 1
    try:
        os.close(protocol_fd)
        os.setpgid(0, 0)  # its own process group, like the tests' Popen(start_new_session=...) runs: killpg-able
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        unbuffered = os.environ.get("PYTHONUNBUFFERED", "") not in ("", "0")
        sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")

        import random

        import numpy as np
        import torch

        random.seed()  # a fresh process draws these from the OS; forked children would share the server's
        np.random.seed()
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)

        sys.argv = [str(REPO / "launch.py"), *request["argv"]]
        import launch

        try:
            rc = launch.main(request["argv"])
        except SystemExit as exc:  # argparse errors
            code = exc.code
            rc = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        rc = 0 if rc is None else int(rc)
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc)


def serve() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the imports print goes to the server's stderr, not into the protocol
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    import torch

    default_threads = torch.get_num_threads()  # as a fresh process without OMP_NUM_THREADS has it
    preload()
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request, default_threads, protocol.fileno())
        protocol.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        protocol.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    protocol.flush()
    os._exit(0)  # the client closed its end: no interpreter teardown of the preloaded libraries needed


if __name__ == "__main__":
    serve()
