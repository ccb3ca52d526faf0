"""The batch runner: a manifest's jobs as Ray tasks, with retries, stage chains, resume and Ctrl-C.

Ray is the engine. With no address, `ray.init()` starts a local cluster on this machine; with
`address=` (`--address`) the batch joins an existing cluster and its jobs run on any node (the
repository and the batch folder must be at the same path on every node, e.g. a shared filesystem).
Each job is one task asking for the job's `num_cpus` / `num_gpus`; Ray runs as many at once as the
resources allow and sets CUDA_VISIBLE_DEVICES for each. The driver (this process) only schedules:
it submits a job when its parent (stage chain) is done, re-submits a failed attempt up to the
job's `retries` (not after a config error or a run fault: launch.py exit 2 or 3), prints state changes and the overall
bar, and rebuilds the HTML report whenever a job ends. Ctrl-C (or SIGTERM) cancels the running
tasks, which kill their launch.py; a rerun skips done jobs and resumes the others from their last
checkpoint.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

from lift3d.batch.layout import JobPaths, read_json, tail, write_json_atomic
from lift3d.batch.manifest import REPO, Job, Manifest, ManifestError
from lift3d.batch.progress import Progress, format_duration


def _task(job_dict: dict, batch_dir: str, launcher: str, attempt: int, cwd: str) -> dict:
    from lift3d.batch.job import run_attempt

    return run_attempt(job_dict, batch_dir, launcher, attempt, cwd)


def start_ray(address: Optional[str] = None, num_cpus: Optional[float] = None, num_gpus: Optional[float] = None,
              temp_dir: Optional[str] = None) -> bool:
    """Connect to (address) or start (None) a Ray cluster; False when this process already had one."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if address:
        if num_cpus is not None or num_gpus is not None:
            raise ManifestError("--local-cpus/--local-gpus size a local cluster; with --address the cluster's "
                                "own resources count. Drop one of them.")
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    else:
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # local workers inherit the driver's environment
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir, **kwargs)
    return True


class BatchRunner:
    def __init__(self, manifest: Manifest, stream: Optional[TextIO] = None, poll_s: float = 0.5,
                 report: bool = True):
        self.manifest = manifest
        self.batch_dir = manifest.batch_dir
        self.progress = Progress(len(manifest.jobs), stream=stream)
        self.poll_s = poll_s
        self.report = report
        self.state: dict[str, str] = {}        # job id -> left | queued | running | done | failed
        self.attempts: dict[str, int] = {}
        self.results: dict[str, dict] = {}
        self.walls: list[float] = []
        self.slots = 1

    # ------------------------------------------------------------------ preparation (before any work)
    def _resolve_gpus(self, job: Job, cluster: dict) -> Job:
        import dataclasses

        gpus = job.num_gpus
        if gpus == "auto":
            gpus = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
        if gpus > cluster.get("GPU", 0):
            raise ManifestError(f"job '{job.id}' asks for num_gpus={gpus} but the cluster has {cluster.get('GPU', 0):g} "
                                f"GPU(s); set num_gpus: 0 (a CPU job) or join a GPU cluster with --address.")
        if job.num_cpus > cluster.get("CPU", 0):
            raise ManifestError(f"job '{job.id}' asks for num_cpus={job.num_cpus:g} but the cluster has "
                                f"{cluster.get('CPU', 0):g} CPU(s); lower num_cpus.")
        return dataclasses.replace(job, num_gpus=float(gpus))

    def prepare(self, cluster: dict) -> list[Job]:
        """Resolve resources, write job.json files, find done jobs. Raises before any job starts."""
        jobs = [self._resolve_gpus(j, cluster) for j in self.manifest.jobs]
        self.batch_dir.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            paths = JobPaths(self.batch_dir, job.id)
            done = paths.done()
            if done is not None:
                if done.get("fingerprint") != job.fingerprint():
                    raise ManifestError(
                        f"job '{job.id}' is done in {paths.root} with a different config/overrides/seed/prompt than "
                        f"the manifest now gives; delete that folder to run it again, or give the job a new name.")
                self.state[job.id] = "done"
                self.results[job.id] = done
                continue
            old = read_json(paths.job_json)
            if old is not None and old.get("fingerprint") != job.fingerprint() and paths.trial.exists():
                import shutil  # an unfinished run of an older spec must not be resumed with the new one

                shutil.rmtree(paths.trial)
                paths.train_done.unlink(missing_ok=True)
            write_json_atomic(paths.job_json, job.to_dict() | {"fingerprint": job.fingerprint()})
            self.state[job.id] = "left"
        write_json_atomic(self.batch_dir / "batch.json", {
            "name": self.manifest.name, "jobs": [j.to_dict() for j in jobs]})
        return jobs

    # ------------------------------------------------------------------ the scheduling loop
    def _counts(self) -> tuple[int, int, int, int]:
        values = list(self.state.values())
        return (values.count("done"), values.count("running"), values.count("failed"),
                values.count("left") + values.count("queued"))  # queued: submitted, waiting for resources

    def _bar(self, force: bool = True) -> None:
        self.progress.overall(*self._counts(), walls=self.walls, slots=self.slots, force=force)

    def _rebuild_report(self) -> None:
        if self.report:
            from lift3d.batch.report import build_report

            try:
                build_report(self.batch_dir)
            except Exception as exc:  # the report never stops the batch
                self.progress.line(f"report: could not rebuild ({type(exc).__name__}: {exc})")

    def run(self) -> int:
        """Run every job that is not done. Returns 0 when all are done, 1 when some failed, 130 on Ctrl-C."""
        import ray

        jobs = self.prepare(ray.cluster_resources())
        by_id = {j.id: j for j in jobs}
        n_done = sum(s == "done" for s in self.state.values())
        self.progress.line(f"{self.manifest.name}: {len(jobs)} job(s), {n_done} already done, outputs in {self.batch_dir}")
        self._rebuild_report()
        remote = ray.remote(_task)
        inflight: dict = {}  # ObjectRef -> job id
        announced: set = set()
        cluster = ray.cluster_resources()

        def submit(job: Job) -> None:
            self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
            ref = remote.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=0,
                                 name=f"lift3d-batch:{job.id}").remote(
                job.to_dict(), str(self.batch_dir), str(self.manifest.launcher), self.attempts[job.id], str(REPO))
            inflight[ref] = job.id
            self.state[job.id] = "queued"
            write_json_atomic(JobPaths(self.batch_dir, job.id).status_json,
                              {"job": job.id, "state": "queued", "attempt": self.attempts[job.id]})

        def slots_estimate() -> int:
            per_cpu = [cluster.get("CPU", 1) / max(j.num_cpus, 1e-3) for j in jobs if j.num_cpus > 0]
            per_gpu = [cluster.get("GPU", 0) / j.num_gpus for j in jobs if j.num_gpus > 0]
            return max(1, int(min(per_cpu + per_gpu))) if per_cpu + per_gpu else 1

        self.slots = slots_estimate()
        # Ctrl-C / SIGTERM: KeyboardInterrupt at once, and a flag checked after every wait, for a signal
        # whose KeyboardInterrupt was taken inside Ray's wait (seen under load: the batch ran on)
        signals: list[int] = []

        def on_signal(signum, frame):
            signals.append(signum)
            raise KeyboardInterrupt

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}
        try:
            while True:
                for job in jobs:  # submit every job whose parent is done
                    if self.state[job.id] != "left":
                        continue
                    parent_state = self.state.get(job.parent) if job.parent else "done"
                    if parent_state == "done":
                        submit(job)
                    elif parent_state == "failed":
                        self._fail(job, {"error": f"parent '{job.parent}' failed", "log": None}, tail_text=None)
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
                if signals:
                    raise KeyboardInterrupt
                for job_id in list(inflight.values()):  # announce starts (the task writes status.json)
                    if job_id in announced or self.state[job_id] != "queued":
                        continue
                    st = JobPaths(self.batch_dir, job_id).status() or {}
                    if st.get("state") == "running" and st.get("attempt") == self.attempts[job_id]:
                        announced.add(job_id)
                        self.state[job_id] = "running"
                        extra = ", resuming from its last checkpoint" if st.get("resumed_from_checkpoint") else ""
                        gpus = f", GPUs '{st.get('cuda_visible_devices')}'" if by_id[job_id].num_gpus else ""
                        self.progress.line(f"{job_id}: running (attempt {st['attempt']}{gpus}, host {st.get('host')}{extra})")
                        self._bar()
                for ref in ready:
                    job_id = inflight.pop(ref)
                    announced.discard(job_id)
                    self._collect(by_id[job_id], ref, submit)
                self._bar(force=False)
        except KeyboardInterrupt:
            self._interrupt(inflight)
            return 130
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return self._summary()

    def _collect(self, job: Job, ref, submit) -> None:
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died (OOM kill, node lost) or the task raised
            result = {"state": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                      "retryable": True, "log": str(JobPaths(self.batch_dir, job.id).log(self.attempts[job.id])
                                                    .relative_to(self.batch_dir))}
        if result.get("state") == "done":
            self.state[job.id] = "done"
            self.results[job.id] = result
            self.walls.append(result.get("wall_s", 0.0))
            self.progress.line(f"{job.id}: done in {format_duration(result.get('wall_s'))} "
                               f"(peak RSS {result.get('peak_rss_mb', 0):.0f} MB)")
            self._rebuild_report()
            self._bar()
            return
        attempt = self.attempts[job.id]
        log = self.batch_dir / result["log"] if result.get("log") else None
        if result.get("retryable", True) and attempt <= job.retries:
            self.progress.line(f"{job.id}: failed ({result.get('error')}), retry {attempt}/{job.retries}; log {log}")
            submit(job)
            return
        self._fail(job, result, tail_text=tail(log) if log else None)

    def _fail(self, job: Job, result: dict, tail_text: Optional[str]) -> None:
        self.state[job.id] = "failed"
        self.results[job.id] = result
        paths = JobPaths(self.batch_dir, job.id)
        if (paths.status() or {}).get("state") != "failed":
            write_json_atomic(paths.status_json, {"job": job.id, "state": "failed", "error": result.get("error"),
                                                  "attempt": self.attempts.get(job.id, 0), "log": result.get("log")})
        why = "" if result.get("retryable", True) else " (a config error or a run fault: not retried)"
        self.progress.line(f"{job.id}: FAILED after {self.attempts.get(job.id, 0)} attempt(s): {result.get('error')}{why}")
        if tail_text:
            self.progress.line(f"{job.id}: last lines of {self.batch_dir / result['log']}:\n"
                               + "\n".join("    " + line for line in tail_text.splitlines()))
        self._rebuild_report()
        self._bar()

    def _interrupt(self, inflight: dict) -> None:
        import ray

        self.progress.line(f"interrupted: stopping {len(inflight)} running job(s); their checkpoints stay — "
                           f"rerun the same command to continue")
        for ref in inflight:
            ray.cancel(ref)  # KeyboardInterrupt in the task: it kills its launch.py and marks the job interrupted
        deadline = time.time() + 30
        pending = list(inflight)
        while pending and time.time() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        for ref in pending:
            ray.cancel(ref, force=True)
        for job_id in inflight.values():
            paths = JobPaths(self.batch_dir, job_id)
            if (paths.status() or {}).get("state") in ("queued", "running"):
                write_json_atomic(paths.status_json, {"job": job_id, "state": "interrupted", "ended": time.time()})
        self._rebuild_report()
        self.progress.line("stopped")

    def _summary(self) -> int:
        done, _, failed, _ = self._counts()
        self.progress.line(f"finished: {done} done, {failed} failed of {len(self.state)}; report "
                           f"{self.batch_dir / 'index.html'}")
        for job_id, state in self.state.items():
            if state == "failed":
                self.progress.line(f"  failed: {job_id}: {self.results[job_id].get('error')}")
        self._rebuild_report()
        return 0 if failed == 0 else 1


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_batch(manifest: Manifest, address: Optional[str] = None, local_cpus: Optional[float] = None,
              local_gpus: Optional[float] = None, temp_dir: Optional[str] = None, stream=None) -> int:
    """Start or join Ray, run the batch, shut down what this call started."""
    import ray

    started = start_ray(address, local_cpus, local_gpus, temp_dir)
    try:
        return BatchRunner(manifest, stream=stream or sys.stdout).run()
    finally:
        if started:
            ray.shutdown()
