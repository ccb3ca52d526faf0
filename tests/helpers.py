"""Shared helpers for end-to-end tests that drive launch.py in a separate process."""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# LIFT3D_TEST_FRESH_PROCESS=1: every run_launch starts `python launch.py` afresh (no fork server)
FRESH_ENV = "LIFT3D_TEST_FRESH_PROCESS"


def run_launch(args: list[str], timeout: int = 1800, check: bool = True,
               fresh_process: bool = False) -> subprocess.CompletedProcess:
    """`python launch.py *args` in its own process, cwd = the repo; its stdout/stderr are returned.

    By default the process is forked from tests/launch_server.py, which has imported torch,
    Lightning, diffusers and lift3d once per pytest process (a fresh `python launch.py` spends
    ~6 CPU-seconds on those imports); fresh_process=True (or LIFT3D_TEST_FRESH_PROCESS=1) starts
    a new interpreter instead, for a test about start-up itself or an import-time setting.
    """
    # timeout: a generous net for a hung process on a loaded machine (#21), never a speed requirement
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if fresh_process or os.environ.get(FRESH_ENV, "") not in ("", "0"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "launch.py"), *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
        )
    else:
        proc = _SERVER.run(args, env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


class _LaunchServer:
    """The client side of tests/launch_server.py: started on first use, one per pytest process."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.pop(FRESH_ENV, None)
        self.log = Path(tempfile.mkstemp(prefix="lift3d-launch-server-", suffix=".log")[1])
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "launch_server.py")], cwd=REPO,
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, bufsize=1)
        atexit.register(self.close)
        if self._read(None).get("ready") is not True:
            raise RuntimeError(f"tests/launch_server.py did not start: {self.log.read_text()[-3000:]}")

    def _read(self, deadline: float | None) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        if deadline is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return {}
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/launch_server.py ended: {self.log.read_text()[-3000:] if self.log else ''}")
        return json.loads(line)

    def run(self, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        with tempfile.TemporaryDirectory(prefix="lift3d-launch-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": [str(a) for a in args], "cwd": str(REPO), "env": env, "stdout": str(out),
                       "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._read(None)["pid"]
            answer = self._read(time.monotonic() + timeout)
            if not answer:  # hung: kill its process group, as subprocess.run's timeout would kill it
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._read(None)
                raise subprocess.TimeoutExpired([sys.executable, "launch.py", *args], timeout,
                                                output=out.read_text(errors="replace"),
                                                stderr=err.read_text(errors="replace"))
            return subprocess.CompletedProcess([sys.executable, str(REPO / "launch.py"), *args], answer["rc"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        if self.log is not None:
            self.log.unlink(missing_ok=True)


_SERVER = _LaunchServer()


def only_trial(root: Path, name: str) -> Path:
    trials = sorted((root / name).iterdir())
    assert len(trials) == 1, trials
    return trials[0]
