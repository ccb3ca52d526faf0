"""One attempt at one batch job, in the process of whichever (Ray) worker runs it.

launch.py runs in a subprocess so that a crash, a bad config or an out-of-memory kill cannot take
the worker or the batch down; its stdout and stderr go to <job>/logs/attempt-<n>.log. The steps:

1. train (+ the test pass: turntable video) — resumed from trial/ckpts/last.ckpt when an earlier
   attempt or run left one; a chained job converts from its parent's last checkpoint;
2. export (`--export`, `system.exporter.fmt=<export>`) from the last checkpoint;
3. the scorer, if any (`module:function(trial_dir, job) -> dict of numbers`).

The child gets its own session (Ctrl-C in the terminal reaches the batch, which cancels the task),
dies with the worker (PR_SET_PDEATHSIG), and is killed with its process group when the task is
cancelled. CUDA_VISIBLE_DEVICES is inherited from the worker, where Ray set it to the job's GPUs.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from lift3d.batch.layout import JobPaths, final_losses, latest_export, latest_video, read_json, write_json_atomic
from lift3d.batch.manifest import Job

# launch.py exit statuses that a retry would only repeat: 2 = a user error (bad config, command line,
# unreadable checkpoint), 3 = a run fault (e.g. a NaN loss; an exact resume reaches it again)
NOT_RETRYABLE = (2, 3)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # a Ray worker may ignore or block signals, and exec keeps both: give launch.py the defaults
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(cmd: list[str], log, env: dict, cwd: str) -> tuple[int, float]:
    """Run cmd with output appended to the open log file; (exit code, peak RSS of the child in MB)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        while True:  # poll, not a blocking wait: Ray's cancel raises KeyboardInterrupt between bytecodes only
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage of this child alone
            if pid:
                break
            time.sleep(0.2)
    except BaseException:  # Ray's cancel (KeyboardInterrupt), worker shutdown: take the child down too
        _kill_group(proc)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0  # Linux: KiB


def train_command(job: Job, paths: JobPaths, launcher: str, parent: Optional[JobPaths]) -> list[str]:
    cmd = [sys.executable, launcher, "--config", job.config, "--train", *job.overrides, f"seed={job.seed}",
           *paths.launch_keys(), "trainer.enable_progress_bar=false"]
    if parent is not None:
        cmd.append(f"system.geometry_convert_from={parent.last_ckpt}")
    if paths.last_ckpt.is_file():  # an earlier attempt or run was interrupted: continue from its checkpoint
        cmd.append(f"resume={paths.last_ckpt}")
    return cmd


def export_command(job: Job, paths: JobPaths, launcher: str) -> list[str]:
    return [sys.executable, launcher, "--config", str(paths.parsed_config), "--export",
            f"resume={paths.last_ckpt}", f"system.exporter.fmt={job.export}", "trainer.enable_progress_bar=false"]


def run_attempt(job_dict: dict, batch_dir: str, launcher: str, attempt: int, cwd: str) -> dict:
    """Run the job's remaining steps; returns the result record (also written as done.json on success)."""
    job = Job.from_dict(job_dict)
    paths = JobPaths(Path(batch_dir), job.id)
    parent = JobPaths(Path(batch_dir), job.parent) if job.parent else None
    env = dict(os.environ)
    threads = str(max(1, int(round(job.num_cpus or 1))))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    env["PYTHONUNBUFFERED"] = "1"
    devices = env.get("CUDA_VISIBLE_DEVICES", "")
    if float(job.num_gpus or 0) == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job stays off the GPUs even on a GPU machine
        devices = ""
    start = time.time()
    resumed = paths.last_ckpt.is_file() and not paths.train_done.exists()
    record = {"job": job.id, "attempt": attempt, "host": socket.gethostname(), "cuda_visible_devices": devices,
              "started": start, "resumed_from_checkpoint": resumed, "state": "running"}
    write_json_atomic(paths.status_json, record)
    paths.logs.mkdir(parents=True, exist_ok=True)
    peak_mb = 0.0
    steps = []
    with open(paths.log(attempt), "a") as log:
        log.write(f"# lift3d batch: job {job.id}, attempt {attempt}, host {record['host']}, "
                  f"CUDA_VISIBLE_DEVICES='{devices}'\n")
        try:
            if not paths.train_done.exists():
                steps.append(("train", train_command(job, paths, launcher, parent)))
            if job.export:
                steps.append(("export", export_command(job, paths, launcher)))
            for step, cmd in steps:
                if step == "export" and not paths.last_ckpt.is_file():
                    return _finish(paths, record, start, peak_mb, "failed", f"no checkpoint {paths.last_ckpt} to export")
                code, rss = run_command(cmd, log, env, cwd)
                peak_mb = max(peak_mb, rss)
                if code != 0:
                    return _finish(paths, record, start, peak_mb, "failed", f"{step} exited with {code}",
                                   retryable=code not in NOT_RETRYABLE)
                if step == "train":
                    paths.train_done.touch()
            scores = {}
            if job.scorer:
                log.write(f"\n# scorer {job.scorer}\n")
                module, func = job.scorer.split(":")
                try:
                    scores = dict(getattr(importlib.import_module(module), func)(paths.trial, job))
                except Exception as exc:  # a scorer bug is reported, the trained result stays done
                    log.write(f"scorer failed: {type(exc).__name__}: {exc}\n")
                    scores = {"scorer_error": f"{type(exc).__name__}: {exc}"}
        except BaseException:
            write_json_atomic(paths.status_json, record | {"state": "interrupted", "ended": time.time()})
            raise
    return _finish(paths, record, start, peak_mb, "done", None, scores=scores)


def _finish(paths: JobPaths, record: dict, start: float, peak_mb: float, state: str, error: Optional[str],
            retryable: bool = True, scores: Optional[dict] = None) -> dict:
    trial = paths.trial
    video, export = latest_video(trial), latest_export(trial)
    out = record | {
        "state": state, "ended": time.time(), "wall_s": round(time.time() - start, 2),
        "peak_rss_mb": round(peak_mb, 1), "losses": final_losses(trial), "error": error, "retryable": retryable,
        "video": str(video.relative_to(paths.batch_dir)) if video else None,
        "export": str(export.relative_to(paths.batch_dir)) if export else None,
        "scores": scores or {}, "log": str(paths.log(record["attempt"]).relative_to(paths.batch_dir)),
    }
    if state == "done":
        spec = read_json(paths.job_json) or {}
        out["fingerprint"] = spec.get("fingerprint")
        write_json_atomic(paths.done_json, out)  # the done marker last: everything it names exists
    write_json_atomic(paths.status_json, out)
    return out
