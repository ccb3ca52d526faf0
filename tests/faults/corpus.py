"""The bad-input corpus of tests/faults/cases.yaml: loading the cases, generating the damaged
checkpoints they name, and expanding their arguments (used by tests/test_faults.py and
benchmarks/faults.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

FAULTS = Path(__file__).resolve().parent
REPO = FAULTS.parents[1]
DEFAULT_CONFIG = "configs/reconstruct-nerf.yaml"
CKPT_KINDS = ("empty", "truncated", "random", "not-a-dict", "no-state", "newer-format", "other-config",
              "dmtet-stage", "gan-stage")
# kinds that are whole previous-stage trials: a valid checkpoint with this configs/parsed.yaml beside it
# (a DMTet stage, a stage that trained no geometry), for geometry_convert_from
STAGE_CONFIGS = {
    "dmtet-stage": "name: reconstruct-dmtet\nsystem_type: lift3d-system\nsystem:\n  geometry_type: tetrahedra-sdf-grid\n",
    "gan-stage": "name: toy-gan\nsystem_type: gan-system\nsystem:\n  generator: {}\n",
}

# the reconstruct-nerf run every fault test and benchmark stops or breaks: tiny frames, few samples
RUN_CONFIG = "configs/reconstruct-nerf.yaml"
TINY_RUN = [
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=1", "system.renderer.num_samples_per_ray=16",
    "system.geometry.isosurface_resolution=16", "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=5", "trainer.enable_progress_bar=false",
]


def load_cases() -> list[dict]:
    with open(FAULTS / "cases.yaml") as fp:
        return yaml.safe_load(fp)


def _valid_checkpoint() -> dict:
    """A checkpoint of configs/reconstruct-nerf.yaml's system (untrained), as lift3d writes it."""
    from lift3d.config import load_config
    from lift3d.registry import find
    from lift3d.utils.checkpointing import DIGEST_KEY, FORMAT_KEY, FORMAT_VERSION, config_digest

    cfg = load_config(str(REPO / DEFAULT_CONFIG))
    system = find(cfg.system_type)(cfg.system)
    return {"state_dict": system.state_dict(), "global_step": 5, FORMAT_KEY: FORMAT_VERSION,
            DIGEST_KEY: config_digest(system.cfg)}


def make_checkpoints(folder: Path) -> dict[str, Path]:
    """One damaged checkpoint per kind, each at <folder>/<kind>/ckpts/last.ckpt (a fake trial)."""
    valid = _valid_checkpoint()
    paths = {}
    for kind in CKPT_KINDS:
        path = folder / kind / "ckpts" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            torch.save(valid, path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "random":
            path.write_bytes(os.urandom(4096))
        elif kind == "not-a-dict":
            torch.save([1, 2, 3], path)  # a torch file, not a checkpoint
        elif kind == "no-state":
            torch.save({"global_step": 3}, path)
        elif kind == "newer-format":
            torch.save({**valid, "lift3d_format_version": 99}, path)
        elif kind == "other-config":
            state = dict(valid["state_dict"])
            name = next(k for k, v in state.items() if v.ndim >= 1 and v.shape[0] > 1)
            state[name] = torch.cat([state[name], state[name][:1]])  # one more row: another config's shape
            torch.save({**valid, "state_dict": state, "lift3d_config_digest": "0123456789ab"}, path)
        elif kind in STAGE_CONFIGS:
            torch.save(valid, path)
            (path.parent.parent / "configs").mkdir(exist_ok=True)
            (path.parent.parent / "configs" / "parsed.yaml").write_text(STAGE_CONFIGS[kind])
        paths[kind] = path
    return paths


def expand(text: str, tmp: Path, ckpts: dict[str, Path]) -> str:
    text = text.replace("{tmp}", str(tmp)).replace("{faults}", str(FAULTS))
    for kind, path in ckpts.items():
        text = text.replace(f"{{ckpt:{kind}}}", str(path))
    return text


def launch_args(case: dict, exp_root: Path, ckpts: dict[str, Path]) -> list[str]:
    config = expand(case.get("config", DEFAULT_CONFIG), exp_root, ckpts)
    return ["--config", config, case.get("mode", "--train"), f"exp_root_dir={exp_root}",
            *[expand(a, exp_root, ckpts) for a in case.get("args", [])]]


def _stage_config(kind: str, path: Path) -> bool:
    """path is the configs/ folder make_checkpoints wrote for a stage kind, unchanged."""
    return (kind in STAGE_CONFIGS and path.name == "configs" and [p.name for p in path.iterdir()] == ["parsed.yaml"]
            and (path / "parsed.yaml").read_text() == STAGE_CONFIGS[kind])


def written_trials(exp_root: Path, ckpts: dict[str, Path]) -> list[Path]:
    """Anything a failed run wrote: entries of exp_root, and files beside the fake trials' ckpts/."""
    written = list(exp_root.iterdir()) if exp_root.exists() else []
    for kind, path in ckpts.items():
        written += [p for p in path.parent.parent.iterdir() if p.name != "ckpts" and not _stage_config(kind, p)]
        written += [p for p in path.parent.iterdir() if p.name != "last.ckpt"]
    return written
