"""Resumable pipeline steps: atomic outputs plus done markers (the view-distillation driver).

A step `name` writes into `<work>/<name>.tmp/`; when it returns, the folder is renamed to
`<work>/<name>/` (replacing a stale one) and the marker `<work>/<name>.done.json` is written
atomically (temporary file + rename). The marker records:
  - `settings`: what the step was run with (its config section, models, seeds; JSON);
  - `inputs`: the output digests of the steps it depends on;
  - `digest`: sha256 over its output files (relative paths + contents);
  - `seconds` and any `info` the step returns.
A rerun skips a step when its marker exists, its folder exists, and settings and inputs are
unchanged. So: a crash mid-step leaves no marker and only that step is redone; a changed setting
redoes that step and, when its outputs change, every step that reads them; a redone step whose
outputs come out identical (deterministic seeds) does not invalidate the steps after it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch


def folder_digest(folder: Path) -> str:
    """sha256 of every file under `folder` (sorted relative paths and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class StepRunner:
    work_dir: Path
    log: Callable[[str], None] = print
    seed: int = 0  # the global torch RNG is seeded with it before every step (e.g. LoRA's init)
    statuses: dict[str, str] = field(default_factory=dict)  # name -> "done" | "skipped" (this invocation)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def output(self, name: str) -> Path:
        return self.work_dir / name

    def marker(self, name: str) -> Path:
        return self.work_dir / f"{name}.done.json"

    def read_marker(self, name: str) -> Optional[dict]:
        path = self.marker(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def run(self, name: str, settings: dict, fn: Callable[[Path], Optional[dict]], depends: tuple[str, ...] = ()) -> Path:
        """Runs fn(tmp_folder) unless the step is done with these settings and inputs; returns the output folder."""
        settings = _canonical(settings)
        inputs = {}
        for dep in depends:
            marker = self.read_marker(dep)
            if marker is None:
                raise RuntimeError(f"step {name} needs step {dep}, which has not finished")
            inputs[dep] = marker["digest"]
        out, marker = self.output(name), self.read_marker(name)
        if marker is not None and out.is_dir() and marker.get("settings") == settings and marker.get("inputs") == inputs:
            self.statuses[name] = "skipped"
            self.log(f"[view-distillation] {name}: done before, skipped ({out})")
            return out
        why = ("not run yet" if marker is None else "output missing" if not out.is_dir()
               else "settings changed" if marker.get("settings") != settings else "inputs changed")
        self.log(f"[view-distillation] {name}: running ({why})")
        self.marker(name).unlink(missing_ok=True)
        tmp = self.work_dir / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        info = fn(tmp) or {}
        seconds = time.perf_counter() - start
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        write_json_atomic(self.marker(name), {
            "step": name, "settings": settings, "inputs": inputs, "digest": folder_digest(out),
            "seconds": round(seconds, 3), "info": _canonical(info),
        })
        self.statuses[name], self.seconds[name] = "done", seconds
        self.log(f"[view-distillation] {name}: done in {seconds:.1f} s ({out})")
        return out


__all__ = ["StepRunner", "folder_digest", "write_json_atomic"]
