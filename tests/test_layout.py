"""The layout that shows the architecture (issue #13 item 5): extern/ is self-contained (no import of
lift3d), the framework does not import tools/, HDR I/O and antialias live in modules of their own,
the dead code is gone, and `LAST` checkpoints are looked up under the run's exp_root_dir."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.registry import find
from lift3d.utils.base import BaseObject

REPO = Path(__file__).resolve().parents[1]
CAPSULE = str(REPO / "load/shapes/capsule_bicolor.ply")
TINY_GRID = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 10,
             "base_resolution": 4, "per_level_scale": 2.0}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 8,
            "n_hidden_layers": 1}
NERF_CFG = {"density_blob_scale": 10.0, "density_blob_std": 0.5, "isosurface_threshold": 5.0,
            "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP}


# ------------------------------------------------------------------ imports between the top-level packages
def _imported_packages(folder: str) -> dict[str, set[str]]:
    """{file: top-level packages it imports} for every .py under REPO/folder."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def test_extern_does_not_import_lift3d():
    assert {f: n for f, n in _imported_packages("extern").items() if "lift3d" in n} == {}
    code = ("import sys, extern.zero123.camera, extern.zero123.pipeline, extern.zero123.convert_original_ckpt; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lift3d'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_framework_does_not_import_tools():
    assert {f: n for f, n in _imported_packages("lift3d").items() if "tools" in n} == {}
    assert not (REPO / "lift3d" / "toyworld").exists()


def test_modules_of_their_own():
    import lift3d.config as config
    import lift3d.materials.split_sum as split_sum
    import lift3d.ops.rasterize as rasterize
    from lift3d.ops.antialias import antialias  # noqa: F401
    from lift3d.utils.hdr_io import read_hdr, write_hdr  # noqa: F401

    assert not hasattr(rasterize, "antialias") and "antialias" not in rasterize.__all__
    assert not hasattr(split_sum, "read_hdr") and not hasattr(split_sum, "write_hdr")
    assert not hasattr(config, "to_primitive") and not hasattr(config, "is_finite_number")


# ------------------------------------------------------------------ LAST under exp_root_dir
def _write_trial(folder: Path, geometry_cfg: dict, with_config: bool = True) -> Path:
    geometry = find("implicit-volume")(geometry_cfg)
    (folder / "ckpts").mkdir(parents=True)
    state = {f"geometry.{k}": v for k, v in geometry.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 10}, folder / "ckpts" / "last.ckpt")
    if with_config:
        (folder / "configs").mkdir()
        OmegaConf.save(OmegaConf.create({"system": {"geometry_type": "implicit-volume", "geometry": geometry_cfg}}),
                       folder / "configs" / "parsed.yaml")
    return folder


def test_last_searches_the_runs_exp_root_dir_not_outputs(tmp_path, monkeypatch):
    from lift3d.systems.stage_chain import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    mine = _write_trial(root / "nerf" / "mine", NERF_CFG)
    os.utime(mine / "ckpts" / "last.ckpt", (1, 1))
    # a newer trial in ./outputs, without the config stage chaining needs: picking it would fail
    _write_trial(tmp_path / "outputs" / "nerf" / "newer", NERF_CFG, with_config=False)

    assert resolve_checkpoint("LAST", str(root)) == mine / "ckpts" / "last.ckpt"
    with pytest.raises(ConfigError, match="exp_root_dir is not known"):
        resolve_checkpoint("LAST")

    cfg = OmegaConf.create({
        "geometry_type": "tetrahedra-sdf-grid", "geometry": {"isosurface_resolution": 8},
        "renderer_type": "mesh-rasterizer", "guidance_type": "reference-mesh-guidance",
        "guidance": {"mesh_path": CAPSULE}, "geometry_convert_from": "LAST",
    })
    system_cls = find("lift3d-system")
    system_cls.validate_config(cfg, fitting=False, exp_root_dir=str(root))
    with pytest.raises(ConfigError, match="no config beside it"):  # the default root is ./outputs
        system_cls.validate_config(cfg, fitting=False)
    system = system_cls(cfg, exp_root_dir=str(root))  # builds the DMTet from the trial under runs/
    assert type(system.geometry).__name__ == "TetrahedraSDFGrid"


def test_checkpoint_keys_of_a_component_resolve_last_under_exp_root_dir(tmp_path):
    from lift3d.systems.stage_chain import resolve_checkpoint_keys

    trial = _write_trial(tmp_path / "runs" / "geo" / "t", NERF_CFG)

    class WithCheckpoint(BaseObject):
        checkpoint_keys = ("weights_from",)

    cfg = OmegaConf.create({"weights_from": "LAST", "other": "LAST"})
    resolved = resolve_checkpoint_keys(WithCheckpoint, cfg, "system.guidance", tmp_path / "runs")
    assert resolved.weights_from == str(trial / "ckpts" / "last.ckpt") and resolved.other == "LAST"
    assert cfg.weights_from == "LAST"  # the given section is left as it was
    with pytest.raises(ConfigError, match=r"^system\.guidance\.weights_from=LAST found no trial"):
        resolve_checkpoint_keys(WithCheckpoint, cfg, "system.guidance", tmp_path / "empty")
