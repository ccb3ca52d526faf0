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


def run_launch(args: list[str], timeout: int = 1800, check: bool = True, fresh_process: bool = False,
               env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch.py *args` in its own process, cwd = the repo; its stdout/stderr are returned.

    By default the process is forked from tests/launch_server.py, which has imported torch,
    Lightning, diffusers and lift3d once per pytest process (a fresh `python launch.py` spends
    ~6 CPU-seconds on those imports); fresh_process=True (or LIFT3D_TEST_FRESH_PROCESS=1) starts
    a new interpreter instead, for a test about start-up itself or an import-time setting.
    env_extra: environment variables added for this run (e.g. OMP_NUM_THREADS, read by the child).
    """
    # timeout: a generous net for a hung process on a loaded machine (#21), never a speed requirement
    env = dict(os.environ, **(env_extra or {}))
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
        self.running: "LaunchProcess | None" = None  # started by start_launch, not yet reaped

    def _request(self, args: list[str], env: dict, out: Path, err: Path) -> int:
        """Send one run; returns the child's pid (its process group too)."""
        if self.running is not None:  # the server answers one run at a time: finish the started one first
            self.running.wait(timeout=1800)
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {"argv": [str(a) for a in args], "cwd": str(REPO), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self._read(None)["pid"])

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
        with tempfile.TemporaryDirectory(prefix="lift3d-launch-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            pid = self._request(args, env, out, err)
            answer = self._read(time.monotonic() + timeout)
            if not answer:  # hung: kill its process group, as subprocess.run's timeout would kill it
                _kill_group(pid)
                self._read(None)
                raise subprocess.TimeoutExpired([sys.executable, "launch.py", *args], timeout,
                                                output=out.read_text(errors="replace"),
                                                stderr=err.read_text(errors="replace"))
            return subprocess.CompletedProcess([sys.executable, str(REPO / "launch.py"), *args], answer["rc"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def start(self, args: list[str], env: dict) -> "LaunchProcess":
        pid = self._request(args, env, Path(os.devnull), Path(os.devnull))
        self.running = LaunchProcess(self, pid)
        return self.running

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.unlink(missing_ok=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LaunchProcess:
    """A launch.py run in the background (start_launch): pid (= its process group), poll(), wait(timeout),
    like the subprocess.Popen(..., start_new_session=True) it replaces; killed by a signal: -signum."""

    def __init__(self, server: _LaunchServer, pid: int):
        self.server, self.pid = server, pid
        self.returncode: int | None = None

    def _answer(self, deadline: float) -> int | None:
        if self.returncode is None:
            answer = self.server._read(deadline)
            if answer:
                self.returncode = int(answer["rc"])
                self.server.running = None
        return self.returncode

    def poll(self) -> int | None:
        return self._answer(time.monotonic())

    def wait(self, timeout: float | None = None) -> int:
        rc = self._answer(time.monotonic() + (1e9 if timeout is None else timeout))
        if rc is None:
            raise subprocess.TimeoutExpired(f"launch.py (pid {self.pid})", timeout)
        return rc


def start_launch(args: list[str], env_extra: dict | None = None) -> LaunchProcess:
    """`python launch.py *args` started in the background, stdout/stderr discarded (for tests that
    kill it mid-run with os.killpg(proc.pid, ...)); forked like run_launch. Finish or kill it before
    the next run_launch/start_launch: it waits for this one first."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return _SERVER.start(args, env)


def _shared_server() -> _LaunchServer:
    """One server per pytest process, though tests import this file as `helpers` and as `tests.helpers`."""
    for name in ("helpers", "tests.helpers"):
        other = getattr(sys.modules.get(name), "_SERVER", None)
        if other is not None:
            return other
    return _LaunchServer()


_SERVER = _shared_server()


def only_trial(root: Path, name: str) -> Path:
    trials = sorted((root / name).iterdir())
    assert len(trials) == 1, trials
    return trials[0]
