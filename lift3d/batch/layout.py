"""Where a batch job's files live, and its markers, written atomically.

    <batch>/<job>/job.json        the job as the manifest defined it (with its fingerprint)
    <batch>/<job>/status.json     the latest state: queued | running | done | failed | interrupted
    <batch>/<job>/done.json       the done marker: present only when the job finished; a rerun skips it
    <batch>/<job>/logs/attempt-<n>.log   stdout + stderr of every command of attempt n
    <batch>/<job>/trial/          launch.py's trial folder (exp_root_dir=<batch>, name=<job>, tag=trial):
                                  configs/, ckpts/last.ckpt, save/it<N>-test.mp4, save/it<N>-export/model.glb

Markers are written to a temporary file in the same folder and renamed over the old one, so a
reader (or a rerun after a kill) sees the old or the new file, never half of one.
"""
from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

TRIAL_TAG = "trial"


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fp:
            json.dump(data, fp, indent=1, sort_keys=True)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class JobPaths:
    """The files of job `job_id` in batch folder `batch_dir`."""

    def __init__(self, batch_dir: Path, job_id: str):
        self.batch_dir = Path(batch_dir)
        self.job_id = job_id
        self.root = self.batch_dir / job_id
        self.trial = self.root / TRIAL_TAG
        self.job_json = self.root / "job.json"
        self.status_json = self.root / "status.json"
        self.done_json = self.root / "done.json"
        self.logs = self.root / "logs"
        self.last_ckpt = self.trial / "ckpts" / "last.ckpt"
        self.parsed_config = self.trial / "configs" / "parsed.yaml"
        self.train_done = self.root / ".train-done"  # training + test pass finished; only export/score left

    def log(self, attempt: int) -> Path:
        return self.logs / f"attempt-{attempt}.log"

    def done(self) -> Optional[dict]:
        return read_json(self.done_json)

    def status(self) -> Optional[dict]:
        return read_json(self.status_json)

    def launch_keys(self) -> list[str]:
        """The overrides that put launch.py's trial folder at self.trial."""
        return [f"exp_root_dir={self.batch_dir}", f"name={self.job_id}", f"tag={TRIAL_TAG}", "use_timestamp=false"]


def _iteration(name: str) -> int:
    m = re.match(r"it(\d+)-", name)
    return int(m.group(1)) if m else -1


def latest_video(trial: Path) -> Optional[Path]:
    """save/it<N>-test.mp4 with the largest N (the turntable of the final weights)."""
    videos = sorted((trial / "save").glob("it*-test.mp4"), key=lambda p: _iteration(p.name))
    return videos[-1] if videos else None


def latest_export(trial: Path) -> Optional[Path]:
    """save/it<N>-export/model.<fmt> with the largest N; a GLB first when there is one."""
    for pattern in ("it*-export/*.glb", "it*-export/*.obj", "it*-export/*.ply"):
        found = sorted((trial / "save").glob(pattern), key=lambda p: _iteration(p.parent.name))
        if found:
            return found[-1]
    return None


def final_losses(trial: Path) -> dict[str, float]:
    """The last logged value of every train/loss* column of csv_logs/metrics.csv."""
    path = trial / "csv_logs" / "metrics.csv"
    if not path.is_file():
        return {}
    last: dict[str, float] = {}
    with open(path, newline="") as fp:
        for row in csv.DictReader(fp):
            for key, value in row.items():
                if key and key.startswith("train/loss") and value not in ("", None):
                    try:
                        last[key] = float(value)
                    except ValueError:
                        pass
    return last


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])
