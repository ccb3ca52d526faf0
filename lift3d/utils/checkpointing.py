"""Crash-safe checkpoints and logs that continue after a resume.

- `AtomicCheckpointIO`: a checkpoint is written to a temporary file in the same folder, flushed
  to disk, then renamed over the target (os.replace is atomic on POSIX), so a run killed at any
  moment leaves either the old or the new checkpoint, never a truncated one.
- `ResumableCSVLogger`: Lightning's CSVLogger deletes metrics.csv when its folder exists; this
  one keeps the rows up to the resumed step and appends, so the logged loss continues.
- Every checkpoint carries `lift3d_format_version` and `lift3d_config_digest` (the digest of the
  system's structural config, `config_digest`); `read_checkpoint` loads a checkpoint a user names
  (resume=, geometry_convert_from=) and turns an empty, truncated, foreign or newer one into a
  ConfigError; `check_state_matches` explains a checkpoint of another config before any work.
- `clean_stale_tmp`: temporary files of writes killed mid-way are removed when a run starts.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lift3d.errors import ConfigError, RunFault
from lift3d.utils.fault_inject import fault_args

FORMAT_VERSION = 1
FORMAT_KEY = "lift3d_format_version"
DIGEST_KEY = "lift3d_config_digest"
# the system config keys that decide which parameters a checkpoint holds, and their shapes
STRUCTURAL_KEYS = ("geometry_type", "geometry", "material_type", "material", "background_type", "background")
log = logging.getLogger(__name__)


def config_digest(system_cfg: Any) -> str:
    """12 hex digits of sha256 over the structural keys of a system config (OmegaConf or dict)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(system_cfg, resolve=True) if not isinstance(system_cfg, dict) else system_cfg
    picked = {k: data.get(k) for k in STRUCTURAL_KEYS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_checkpoint(path: str | Path, key: str) -> dict:
    """Load a checkpoint the user named at config key `key`; a ConfigError when it is not a
    usable lift3d checkpoint (empty, truncated, not a checkpoint, a newer format)."""
    path = Path(path)
    fix = "Give a ckpts/*.ckpt written by lift3d (an earlier epoch=*-step=*.ckpt of the same trial, if last.ckpt is damaged)."
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}: checkpoint '{path}' is empty (0 bytes). {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of a truncated or foreign file
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(f"{key}: '{path}' is not a readable checkpoint (truncated or not a checkpoint: {reason}). {fix}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "global_step" not in ckpt:
        raise ConfigError(f"{key}: '{path}' is not a Lightning checkpoint (no state_dict / global_step). {fix}")
    version = ckpt.get(FORMAT_KEY, 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{key}: '{path}' has checkpoint format version {version}, newer than this lift3d's "
            f"{FORMAT_VERSION}. Update lift3d, or resume with the version that wrote it."
        )
    return ckpt


def check_state_matches(module: torch.nn.Module, ckpt: dict, path: str | Path, key: str, digest: str,
                        ignore_prefixes: tuple[str, ...] = ("guidance_params.",)) -> None:
    """Load the checkpoint's weights into `module` now, as Lightning will (so a component that
    resizes its buffers from the checkpoint, e.g. custom-mesh, is judged as it loads): a ConfigError
    naming the first parameter that is missing, extra or of another shape (a checkpoint of another
    config), before any work; a warning when only the config digest differs."""
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(ignore_prefixes)}
    saved_digest = ckpt.get(DIGEST_KEY)
    differs = f" (its config digest {saved_digest} differs from this config's {digest})" if saved_digest and saved_digest != digest else ""
    fix = "Resume with the config the checkpoint was trained with: <trial>/configs/parsed.yaml."
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # "size mismatch for <name>: copying a param with shape ... from checkpoint, ..."
        lines = [l.strip() for l in str(exc).splitlines() if "size mismatch" in l] or [str(exc).splitlines()[0]]
        raise ConfigError(f"{key}: '{path}' was written by another config{differs}: {lines[0]} {fix}") from None
    missing = [k for k in missing if not k.startswith(ignore_prefixes)]
    if missing:
        raise ConfigError(f"{key}: '{path}' was written by another config{differs}: it has no '{missing[0]}'. {fix}")
    if unexpected:
        raise ConfigError(f"{key}: '{path}' was written by another config{differs}: it has '{unexpected[0]}', which this config lacks. {fix}")
    if differs:
        log.warning("%s: '%s' was written by a different config%s; its parameters fit, continuing.", key, path, differs)


def clean_stale_tmp(folder: str | Path) -> list[Path]:
    """Remove `.<name>.*.tmp` files of checkpoint writes killed mid-way; returns what was removed.
    Called when a run starts in its (unique) trial folder, so no live write owns them."""
    folder = Path(folder)
    removed = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    writes = 0  # checkpoint writes of this process (for fault injection)

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        AtomicCheckpointIO.writes += 1
        kill_at = fault_args("kill-in-checkpoint-write")
        try:
            with os.fdopen(fd, "wb") as fp:
                if kill_at and int(kill_at[0]) == AtomicCheckpointIO.writes:
                    _die_mid_write(fp, checkpoint)
                torch.save(checkpoint, fp)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunFault(
                    f"disk full while writing checkpoint '{path}' ({exc.strerror}); the previous checkpoint is intact. "
                    f"Free space on {path.parent} (or set exp_root_dir to another disk) and resume from ckpts/last.ckpt."
                ) from None
            raise


def _die_mid_write(fp: Any, checkpoint: dict) -> None:
    """Fault injection: half of the checkpoint reaches the disk, then the process is SIGKILLed."""
    import io
    import signal

    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    fp.flush()
    os.fsync(fp.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


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
