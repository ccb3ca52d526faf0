"""PODIA-3D's data modules (docs/methods/podia3d.md):

- `podia3d-toy-source-datamodule`: `eg3d-image-datamodule` on toy renders of one shape family, written to
  `dataroot` first when that folder has no dataset.json (the source GAN's training set, stage 1);
- `podia3d-source-render-datamodule`: renders of a trained source GAN (`generator_path`: a gan-system
  <trial>/ckpts/last.ckpt or a save_generator .pt) at sampled cameras, with depth and mask (PODIA-3D
  step 1, lift3d.gan.source_renders). Cameras: the labels of an EG3D dataset (`labels_from`, drawn with
  replacement) or a sphere looking at the origin (`elevation_range`, azimuth all around, `distance`,
  `fovy_deg`). Train batches (fine-tuning the pose-preserved model): {"image" [B,3,R,R] in [0,1],
  "depth" [B,1,r,r], "index"}; test batches (generation), in order: the same plus "label" [B,25],
  "mask" [B,1,r,r].
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
from lift3d.gan.camera_label import look_at_labels
from lift3d.gan.eg3d_datamodule import EG3DImageDataModule, EG3DImageDataModuleConfig, read_eg3d_labels
from lift3d.gan.pretrained import load_any_generator
from lift3d.gan.source_renders import render_source_set
from lift3d.registry import register


@dataclass
class ToySourceDataModuleConfig(EG3DImageDataModuleConfig):
    shape: str = "cube"
    colour: str = "red"
    n_images: int = 64
    image_size: int = 32
    data_seed: int = 0


@register("podia3d-toy-source-datamodule")
class ToySourceDataModule(EG3DImageDataModule):
    Config = ToySourceDataModuleConfig
    COMPONENT = "data module 'podia3d-toy-source-datamodule'"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data"):
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        root = Path(str(cfg.dataroot))
        if str(cfg.dataroot).strip() and not (root / cfg.dataset_json).exists():
            from tools.toyworld.eg3d_dataset import write_toy_eg3d_dataset  # the toy world ships with the repo
            from tools.toyworld.shapes import COLOURS, SHAPES

            if cfg.shape not in SHAPES or cfg.colour not in COLOURS:
                raise ConfigError(f"{path}.shape/colour = {cfg.shape}/{cfg.colour}: the toy world has shapes "
                                  f"{', '.join(SHAPES)} and colours {', '.join(COLOURS)}.")
            write_toy_eg3d_dataset(root, cfg.shape, cfg.colour, cfg.n_images, cfg.image_size, cfg.data_seed)
        return super().validate_config(cfg, path)


@dataclass
class SourceRenderDataModuleConfig:
    generator_path: str = "load/gan/toy-red-cube-triplane.pt"
    n_images: int = 64
    labels_from: str = ""  # an EG3D dataset folder whose labels are drawn; "" = the sphere below
    elevation_range: List[float] = field(default_factory=lambda: [0.0, 30.0])
    distance: float = 2.0
    fovy_deg: float = 40.0
    truncation_psi: float = 1.0
    seed: int = 0  # cameras and latents
    batch_size: int = 8  # fine-tuning batches
    eval_batch_size: int = 16  # generation batches


class _Renders(Dataset):
    def __init__(self, renders: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
        self.renders, self.keys = renders, keys

    def __len__(self) -> int:
        return self.renders["images"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        names = {"images": "image", "depth": "depth", "labels": "label", "mask": "mask"}
        return {"index": i, **{names[k]: self.renders[k][i] for k in self.keys}}


@register("podia3d-source-render-datamodule")
class SourceRenderDataModule(pl.LightningDataModule):
    Config = SourceRenderDataModuleConfig
    COMPONENT = "data module 'podia3d-source-render-datamodule'"

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = self.validate_config(cfg)
        self.renders = render_source_set(load_any_generator(self.cfg.generator_path), self.camera_labels(),
                                         seed=self.cfg.seed, truncation_psi=self.cfg.truncation_psi)
        self.labels = self.renders["labels"]

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> Any:
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        for key in ("n_images", "batch_size", "eval_batch_size"):
            if cfg[key] < 1:
                raise ConfigError(f"{path}.{key} = {cfg[key]} must be >= 1.")
        if cfg.batch_size > cfg.n_images:
            raise ConfigError(f"{path}.batch_size = {cfg.batch_size} is larger than {path}.n_images = {cfg.n_images}: lower it.")
        if len(cfg.elevation_range) != 2 or cfg.elevation_range[0] > cfg.elevation_range[1]:
            raise ConfigError(f"{path}.elevation_range = {list(cfg.elevation_range)}: give [low, high] in degrees.")
        if not Path(cfg.generator_path).is_file():
            raise ConfigError(f"{path}.generator_path = '{cfg.generator_path}' not found: give the source GAN, a gan-system "
                              f"<trial>/ckpts/last.ckpt (stage custom/podia3d/configs/podia3d-source.yaml) or a "
                              f"save_generator file such as load/gan/toy-red-cube-triplane.pt.")
        if cfg.labels_from:
            read_eg3d_labels(cfg.labels_from, key=f"{path}.labels_from")  # its own one-line errors
        return cfg

    def camera_labels(self) -> torch.Tensor:
        """[n_images,25] rendering cameras (seeded)."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        n = self.cfg.n_images
        if self.cfg.labels_from:
            _files, labels, _res = read_eg3d_labels(self.cfg.labels_from, key="data.labels_from")
            return labels[torch.randint(len(labels), (n,), generator=g)]
        lo, hi = self.cfg.elevation_range
        elevation = lo + (hi - lo) * torch.rand(n, generator=g)
        azimuth = torch.rand(n, generator=g) * 360.0 - 180.0
        return look_at_labels(elevation, azimuth, torch.full((n,), float(self.cfg.distance)), self.cfg.fovy_deg)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(_Renders(self.renders, ("images", "depth")), batch_size=self.cfg.batch_size, shuffle=True,
                          drop_last=True, generator=generator)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Renders(self.renders, ("images", "depth", "labels", "mask")),
                          batch_size=self.cfg.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
