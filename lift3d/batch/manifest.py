"""Batch manifests: which jobs to run, parsed and checked before any work starts.

A manifest is a YAML file:

    name: toy-prompts                 # the batch folder is <out_dir>/<name> (default: the file's stem)
    out_dir: outputs                  # default outputs
    defaults:                         # every job starts from these; a job's own keys win
      config: configs/demo/text-to-3d.yaml
      overrides: [trainer.max_steps=400]   # concatenated: defaults first, then the job's
      seed: 0
      num_cpus: 1                     # Ray resources of one job
      num_gpus: auto                  # auto: 1 when the cluster has GPUs, else 0; fractions allowed
      retries: 1                      # further attempts after a failure
      export: glb                     # exporter format of the final mesh, or false
    jobs:
      - name: red_cube
        prompt: a red cube            # = override system.prompt_processor.prompt=...
      - name: recon
        stages:                       # a chain: each stage starts from the previous one's checkpoint
          - {name: nerf, config: configs/reconstruct-nerf.yaml}
          - {name: dmtet, config: configs/reconstruct-dmtet.yaml}

A chain expands into one job per stage, `<job>.<stage>`, each with its parent; only the last stage
exports unless a stage says `export:`. Every mistake is a ManifestError naming the job, the key and
the fix, raised before Ray starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Optional, Union

from lift3d.errors import Lift3DError, did_you_mean

REPO = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TOP_KEYS = ("name", "out_dir", "launcher", "defaults", "jobs")
JOB_KEYS = ("name", "config", "prompt", "overrides", "seed", "num_cpus", "num_gpus", "retries", "export",
            "scorer", "stages")
STAGE_KEYS = ("name", "config", "overrides", "seed", "num_cpus", "num_gpus", "retries", "export")
EXPORT_FORMATS = ("glb", "obj", "obj-mtl", "ply")


class ManifestError(Lift3DError, ValueError):
    """A batch manifest (or the --prompts shortcut) is invalid."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One launch.py run (train + test pass, then an optional export) with a fixed folder."""

    id: str                       # folder name under the batch folder; `<job>.<stage>` for chains
    config: str                   # path of the experiment YAML (absolute)
    overrides: tuple[str, ...]    # key=value overrides, in order
    seed: int
    prompt: Optional[str]
    num_cpus: float
    num_gpus: Union[float, str]   # a number, or "auto" (resolved by the runner against the cluster)
    retries: int
    export: Optional[str]         # exporter format or None
    parent: Optional[str] = None  # id of the job whose last checkpoint this one converts from
    scorer: Optional[str] = None  # "module:function" called with (trial_dir, job) after success

    def fingerprint(self) -> str:
        """What the job computes (not how it is scheduled): a changed config re-runs, never skips."""
        what = {"config": self.config, "overrides": list(self.overrides), "seed": self.seed,
                "prompt": self.prompt, "export": self.export, "parent": self.parent}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"overrides": list(self.overrides)}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**(d | {"overrides": tuple(d["overrides"])}))


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    batch_dir: Path
    launcher: Path
    jobs: tuple[Job, ...]

    def job(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)


def _fail(where: str, msg: str) -> ManifestError:
    return ManifestError(f"{where}: {msg}")


def _check_keys(where: str, d: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise _fail(where, f"expected a mapping of keys ({', '.join(allowed)}), got {type(d).__name__}.")
    for key in d:
        if key not in allowed:
            raise _fail(where, f"unknown key '{key}'.{did_you_mean(str(key), allowed)} Valid keys: {', '.join(allowed)}.")
    return d


def _resolve_file(where: str, path: Any, base: Path, what: str) -> Path:
    if not isinstance(path, str) or not path:
        raise _fail(where, f"{what} must be a file path, got {path!r}.")
    for root in (base, REPO, Path.cwd()):
        candidate = (root / path).resolve()
        if candidate.is_file():
            return candidate
    raise _fail(where, f"{what} '{path}' does not exist (looked beside the manifest, in the repository and in "
                       f"the current folder). Fix the path.")


def _number(where: str, key: str, value: Any, minimum: float, integer: bool = False, allow_auto: bool = False):
    if allow_auto and value == "auto":
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        extra = " or 'auto'" if allow_auto else ""
        raise _fail(where, f"{key} must be {kind} >= {minimum}{extra}, got {value!r}.")
    return int(value) if integer else float(value)


def _overrides(where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(where, f"overrides must be a list of key=value strings, got {value!r}.")
    out = []
    for item in value:
        if not isinstance(item, str) or "=" not in item or item.startswith("-") or item.split("=", 1)[0].strip() == "":
            raise _fail(where, f"override {item!r} is not key=value (e.g. trainer.max_steps=400; no dashes).")
        if item.split("=", 1)[0] in ("exp_root_dir", "name", "tag", "use_timestamp", "resume"):
            raise _fail(where, f"override {item!r} is set by the batch runner (it fixes each job's trial folder); "
                               f"remove it.")
        out.append(item)
    return out


def _export(where: str, value: Any) -> Optional[str]:
    if value in (False, None, "none", "false"):
        return None
    if value not in EXPORT_FORMATS:
        raise _fail(where, f"export must be one of {', '.join(EXPORT_FORMATS)} or false, got {value!r}.")
    return value


def _scorer(where: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^[\w.]+:\w+$", value):
        raise _fail(where, f"scorer must be 'package.module:function', got {value!r}.")
    return value


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _fail(where, f"name must be letters, digits, '_' or '-' (it names a folder), got {value!r}.")
    return value


def _build_job(where: str, entry: dict, job_id: str, base: Path, parent: Optional[str],
               export_default: Any, extra_overrides: list[str]) -> Job:
    if "config" not in entry:
        raise _fail(where, "no config: give config: <experiment.yaml> here or in defaults.")
    config = _resolve_file(where, entry["config"], base, "config")
    prompt = entry.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise _fail(where, f"prompt must be a non-empty string, got {prompt!r}.")
    overrides = extra_overrides + _overrides(where, entry.get("overrides"))
    if prompt is not None:
        overrides.append(f"system.prompt_processor.prompt={prompt}")
    return Job(
        id=job_id, config=str(config), overrides=tuple(overrides),
        seed=_number(where, "seed", entry.get("seed", 0), 0, integer=True),
        prompt=prompt,
        num_cpus=_number(where, "num_cpus", entry.get("num_cpus", 1), 0),
        num_gpus=_number(where, "num_gpus", entry.get("num_gpus", "auto"), 0, allow_auto=True),
        retries=_number(where, "retries", entry.get("retries", 1), 0, integer=True),
        export=_export(where, entry.get("export", export_default)),
        parent=parent, scorer=_scorer(where, entry.get("scorer")),
    )


def parse_manifest(data: Any, source: str, base: Path, out_dir: Optional[str] = None,
                   name: Optional[str] = None) -> Manifest:
    """Check a manifest's content (already loaded from YAML) and expand it into jobs."""
    data = _check_keys(source, data, TOP_KEYS)
    batch_name = _name(f"{source}: name", name or data.get("name") or Path(source).stem)
    defaults = _check_keys(f"{source}: defaults", data.get("defaults") or {}, tuple(k for k in JOB_KEYS if k not in ("name", "stages")))
    jobs_in = data.get("jobs")
    if not isinstance(jobs_in, list) or not jobs_in:
        raise _fail(source, "jobs must be a non-empty list (each entry: name, config or stages, prompt, overrides, ...).")
    launcher = _resolve_file(f"{source}: launcher", data.get("launcher", "launch.py"), base, "launcher")
    jobs: list[Job] = []
    for i, raw in enumerate(jobs_in):
        where = f"{source}: jobs[{i}]"
        raw = _check_keys(where, raw, JOB_KEYS)
        if "name" not in raw:
            raise _fail(where, "no name: every job needs a unique name (it names the job's folder).")
        job_name = _name(where, raw["name"])
        where = f"{source}: job '{job_name}'"
        merged = {**defaults, **{k: v for k, v in raw.items() if k != "overrides"}}
        job_overrides = _overrides(f"{source}: defaults", defaults.get("overrides")) + \
            _overrides(where, raw.get("overrides"))
        stages = raw.get("stages")
        if stages is None:
            jobs.append(_build_job(where, {**merged, "overrides": job_overrides}, job_name, base, None,
                                   merged.get("export", "glb"), []))
            continue
        if "config" in raw:
            raise _fail(where, "give either config (one run) or stages (a chain), not both.")
        if not isinstance(stages, list) or not stages:
            raise _fail(where, "stages must be a non-empty list of {name, config, overrides, ...}.")
        parent = None
        stage_names = set()
        for k, stage in enumerate(stages):
            swhere = f"{where}: stages[{k}]"
            stage = _check_keys(swhere, stage, STAGE_KEYS)
            if "name" not in stage or "config" not in stage:
                raise _fail(swhere, "every stage needs a name and a config.")
            stage_name = _name(swhere, stage["name"])
            if stage_name in stage_names:
                raise _fail(swhere, f"stage name '{stage_name}' is used twice in this chain; rename one.")
            stage_names.add(stage_name)
            last = k == len(stages) - 1
            entry = {**{k2: v for k2, v in merged.items() if k2 not in ("stages", "config")},
                     **{k2: v for k2, v in stage.items() if k2 != "overrides"},
                     "overrides": stage.get("overrides")}
            job = _build_job(f"{where}: stage '{stage_name}'", entry, f"{job_name}.{stage_name}", base, parent,
                             stage.get("export", merged.get("export", "glb") if last else False), job_overrides)
            jobs.append(job)
            parent = job.id
    seen: dict[str, int] = {}
    for job in jobs:
        if job.id in seen:
            raise _fail(source, f"job name '{job.id}' is used twice; names must be unique (they name folders).")
        seen[job.id] = 1
    batch_dir = Path(out_dir or data.get("out_dir") or "outputs") / batch_name
    return Manifest(name=batch_name, batch_dir=batch_dir.resolve(), launcher=launcher, jobs=tuple(jobs))


def load_manifest(path: str, out_dir: Optional[str] = None, name: Optional[str] = None) -> Manifest:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest '{path}' does not exist. Pass the path of a batch YAML (docs/batch.md).")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}). Fix the syntax.") from None
    return parse_manifest(data, str(p), p.resolve().parent, out_dir=out_dir, name=name)


def slug(prompt: str) -> str:
    """'a red cube!' -> 'a_red_cube' (a folder name)."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:60]
    return s or "prompt"


def prompts_manifest(prompts_file: str, config: str, overrides: list[str], **defaults) -> dict:
    """The manifest content of the `--prompts FILE --config X` shortcut: one job per prompt line."""
    p = Path(prompts_file)
    if not p.is_file():
        raise ManifestError(f"--prompts '{prompts_file}' does not exist. Pass a text file with one prompt per line.")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ManifestError(f"--prompts '{prompts_file}' has no prompts (one per line; '#' starts a comment).")
    jobs, used = [], {}
    for prompt in prompts:
        base = slug(prompt)
        used[base] = used.get(base, 0) + 1
        jobs.append({"name": base if used[base] == 1 else f"{base}_{used[base]}", "prompt": prompt})
    return {"name": p.stem, "defaults": {"config": config, "overrides": list(overrides),
                                          **{k: v for k, v in defaults.items() if v is not None}},
            "jobs": jobs}
