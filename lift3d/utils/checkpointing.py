"""Crash-safe checkpoints and logs that continue after a resume.

- `AtomicCheckpointIO`: a checkpoint is written to a temporary file in the same folder, flushed
  to disk, then renamed over the target (os.replace is atomic on POSIX), so a run killed at any
  moment leaves either the old or the new checkpoint, never a truncated one.
- `ResumableCSVLogger`: Lightning's CSVLogger deletes metrics.csv when its folder exists; this
  one keeps the rows up to the resumed step and appends, so the logged loss continues.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fp:
                torch.save(checkpoint, fp)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def read_checkpoint_step(path: str | Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return int(ckpt.get("global_step", 0))


class _KeepingWriter(_ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # keep the previous metrics; learn their header so new rows extend the same table
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fp:
                header = next(csv.reader(fp), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    def __init__(self, save_dir: str, resume_step: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(save_dir, name="", version="", **kwargs)
        metrics = Path(self.log_dir) / _ExperimentWriter.NAME_METRICS_FILE
        if metrics.is_file():
            if resume_step is None:
                metrics.unlink()
            else:  # drop rows logged after the checkpoint we resume from: they are re-done
                with open(metrics, newline="") as fp:
                    reader = csv.DictReader(fp)
                    fields = reader.fieldnames or []
                    rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < resume_step]
                with open(metrics, "w", newline="") as fp:
                    writer = csv.DictWriter(fp, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
