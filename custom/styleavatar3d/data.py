"""`styleavatar3d-mesh-render-datamodule`: renders of existing 3D models at StyleAvatar3D's poses with every
ControlNet condition (custom/styleavatar3d/mesh_conditions.py; docs/methods/styleavatar3d.md).

`meshes`: entries `toy:<shape>`, mesh files or folders of them; view i renders mesh i mod M at a pose drawn
uniformly from yaw_range × pitch_range (seeded). Test / predict batches, in order: {"index", "mesh_index",
"image" (shaded preview) [B,3,S,S], "mask" [B,1,S,S], "depth" [B,1,S,S], "normal" [B,3,S,S], "edge" [B,1,S,S],
("landmarks" [B,3,S,S]), "label" [B,25], "yaw" [B], "pitch" [B]}. `labels` [N,25] is public (gan-system reads it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.registry import register

from .mesh_conditions import load_source_mesh, mesh_files, render_conditions, sample_poses


@dataclass
class MeshRenderDataModuleConfig:
    meshes: List[str] = field(default_factory=lambda: ["toy:cube"])
    up_axis: str = "z"  # z | y: the mesh files' up axis (turned to lift3d's z up)
    radius: float = 0.45  # meshes are centred and scaled into a sphere of this radius
    landmarks_file: str = ""  # JSON of marked landmarks (mesh file coordinates) + limbs; "" = none
    n_images: int = 64
    yaw_range: List[float] = field(default_factory=lambda: [-180.0, 180.0])
    pitch_range: List[float] = field(default_factory=lambda: [-30.0, 30.0])
    distance: float = 2.0
    fovy_deg: float = 40.0
    image_size: int = 32
    far: float = 2.9  # depth of the background (the GAN's ray_end)
    seed: int = 0
    eval_batch_size: int = 16


class _Views(Dataset):
    def __init__(self, views: dict[str, torch.Tensor]) -> None:
        self.views = views

    def __len__(self) -> int:
        return self.views["label"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, **{k: v[i] for k, v in self.views.items()}}


@register("styleavatar3d-mesh-render-datamodule")
class MeshRenderDataModule(pl.LightningDataModule):
    Config = MeshRenderDataModuleConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = self.validate_config(cfg)
        c = self.cfg
        sources = [f for spec in c.meshes for f in mesh_files(spec)]
        meshes = [load_source_mesh(s, c.radius, c.up_axis, landmarks_file=c.landmarks_file) for s in sources]
        yaw, pitch = sample_poses(c.n_images, c.seed, tuple(c.yaw_range), tuple(c.pitch_range))
        which = torch.arange(c.n_images) % len(meshes)
        parts = []
        for k, mesh in enumerate(meshes):
            sel = (which == k).nonzero().flatten()
            if len(sel):
                views = render_conditions(mesh, yaw[sel], pitch[sel], c.distance, c.fovy_deg, c.image_size, far=c.far)
                parts.append((sel, views))
        keys = parts[0][1].keys()
        self.views = {}
        for key in keys:
            first = parts[0][1][key]
            full = torch.empty((c.n_images, *first.shape[1:]), dtype=first.dtype)
            for sel, views in parts:
                full[sel] = views[key]
            self.views[key] = full
        self.views["mesh_index"] = which
        self.mesh_names = [m.name for m in meshes]
        self.labels = self.views["label"]

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> Any:
        c = parse_structured(cls.Config, cfg, path=path, component="data module 'styleavatar3d-mesh-render-datamodule'")
        if not c.meshes:
            raise ConfigError(f"{path}.meshes is empty: name mesh files, folders or toy:<shape>.")
        for spec in c.meshes:
            try:
                mesh_files(str(spec))
            except ConfigError as exc:
                raise ConfigError(f"{path}.meshes: {exc}") from None
        if c.up_axis not in ("y", "z"):
            raise ConfigError(f"{path}.up_axis = '{c.up_axis}': use y or z (the mesh files' up axis).")
        for key in ("n_images", "image_size", "eval_batch_size"):
            if c[key] < 1:
                raise ConfigError(f"{path}.{key} = {c[key]} must be >= 1.")
        for key, limit in (("yaw_range", 180.0), ("pitch_range", 90.0)):
            lo, hi = (list(c[key]) + [None, None])[:2]
            if len(c[key]) != 2 or lo > hi or lo < -limit or hi > limit:
                raise ConfigError(f"{path}.{key} = {list(c[key])}: give [low, high] in degrees within ±{limit:g}.")
        if c.landmarks_file and not Path(c.landmarks_file).is_file():
            raise ConfigError(f"{path}.landmarks_file = '{c.landmarks_file}' not found: give the JSON of marked "
                              f"landmarks (docs/methods/styleavatar3d.md) or leave it empty.")
        if c.distance <= c.radius or c.far <= c.distance - c.radius:
            raise ConfigError(f"{path}.distance = {c.distance} must exceed radius = {c.radius}, and far = {c.far} "
                              f"must lie beyond the model (> distance - radius).")
        return c

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Views(self.views), batch_size=self.cfg.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def train_dataloader(self) -> DataLoader:  # nothing to fit; launch.py's --train runs 0 steps then the test pass
        return self.test_dataloader()
