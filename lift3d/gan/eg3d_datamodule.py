"""`eg3d-image-datamodule`: pose-labelled images in EG3D's format (used by EG3D and DATID-3D).

    <dataroot>/dataset.json   {"labels": [["img00000000.png", [25 floats]], ...]}
    <dataroot>/<filename>     square RGB images, all of one size (RGBA is composited on white)

The 25-D label is lift3d.gan.camera_label's (16 OpenCV cam2world + 9 normalised intrinsics). EG3D's
own datasets (FFHQ, AFHQ, ShapeNet cars, from its `dataset_tool.py`) are read unchanged once unzipped
(a zip archive: unzip it first). `validate_config` checks the whole dataset before any work starts;
each problem is a one-line ConfigError naming the file and the fix: no dataset.json or no labels,
labels of the wrong width, a label naming a missing image, images of mixed or non-square sizes.

Batches: train {"image": [B,3,R,R] in [-1,1], "label": [B,25], "index": [B]} (shuffled, seeded);
test: a turntable of `n_test_frames` labels around the scene's up axis (the mean camera up), starting from the dataset
camera nearest the mean camera ({"label": [b,25], "index": [b]}); predict (--export): one batch.
`labels` ([N,25] tensor) is what the GAN system samples generator conditioning from.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from lift3d.config import parse_structured
from lift3d.data.random_camera import resolve_seed
from lift3d.errors import ConfigError
from lift3d.gan.camera_label import LABEL_DIM, orbit_labels, scene_up
from lift3d.registry import register

COMPONENT = "data module 'eg3d-image-datamodule'"
FORMAT = 'dataset.json {"labels": [[filename, [25 floats: 16 cam2world + 9 intrinsics]], ...]}'


@dataclass
class EG3DImageDataModuleConfig:
    dataroot: str = ""  # folder with dataset.json and the images (required)
    dataset_json: str = "dataset.json"
    batch_size: int = 8
    num_workers: int = 0
    n_test_frames: int = 30  # turntable frames of the test pass
    eval_batch_size: int = 8
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def read_eg3d_labels(dataroot: str, dataset_json: str = "dataset.json", key: str = "data.dataroot"
                     ) -> Tuple[List[Path], torch.Tensor, int]:
    """Check an EG3D dataset folder; returns (image paths, labels [N,25], image resolution R).
    Image headers are read (sizes), not the pixels."""
    root_text = "" if dataroot is None else str(dataroot).strip()
    if not root_text:
        _fail(f"{key} is empty: set {key}=<folder with {dataset_json} and its images> "
              f"(python -m tools.toyworld.eg3d_dataset --out <folder> writes a toy one).")
    root = Path(root_text)
    if not root.is_dir():
        _fail(f"{key}='{root_text}' is not a folder: point it at the unzipped EG3D dataset (the folder holding {dataset_json}).")
    path = root / dataset_json
    if not path.is_file():
        _fail(f"{key}: '{path}' not found: an EG3D dataset needs {FORMAT} beside its images.")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(f"cannot parse '{path}' (from {key}): not valid JSON ({exc}); it must be {FORMAT}.")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not labels:
        _fail(f"'{path}' has no labels (missing, null or empty 'labels'): a 3D GAN needs a camera label per image, {FORMAT}.")
    files, values = [], []
    for i, entry in enumerate(labels):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (list, tuple))):
            _fail(f"'{path}': labels[{i}] = {str(entry)[:80]} is not [filename, [25 floats]].")
        name, label = entry
        if len(label) != LABEL_DIM:
            _fail(f"'{path}': labels[{i}] ('{name}') has {len(label)} values, an EG3D camera label has {LABEL_DIM} "
                  f"(16 cam2world + 9 normalised intrinsics): regenerate the labels.")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in label):
            _fail(f"'{path}': labels[{i}] ('{name}') has a value that is not a finite number.")
        image = root / name
        if not image.is_file():
            _fail(f"'{path}': labels[{i}] names '{name}', which is not in {root}: add the image or drop its label.")
        files.append(image)
        values.append(label)
    first_size = None
    for image in files:
        try:
            with Image.open(image) as im:
                size = im.size
        except (UnidentifiedImageError, OSError) as exc:
            _fail(f"cannot read image '{image}' (from '{path}'): {exc}. Replace or drop it.")
        if first_size is None:
            first_size, first = size, image
            if size[0] != size[1]:
                _fail(f"image '{image}' is {size[0]}x{size[1]}: a 3D GAN needs square images of one size "
                      f"(crop/resize them, e.g. with EG3D's dataset_tool.py --resolution).")
        elif size != first_size:
            _fail(f"images of mixed sizes: '{first.name}' is {first_size[0]}x{first_size[1]} but '{image.name}' is "
                  f"{size[0]}x{size[1]}: resize every image to one square size (EG3D's dataset_tool.py --resolution).")
    return files, torch.tensor(values, dtype=torch.float32), first_size[0]


def load_image(path: Path) -> torch.Tensor:
    """An image file -> [3,R,R] float in [-1,1] (RGBA composited on white)."""
    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "P"):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
            rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        else:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous() * 2.0 - 1.0


class EG3DImageDataset(Dataset):
    def __init__(self, files: List[Path], labels: torch.Tensor) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": load_image(self.files[i]), "label": self.labels[i], "index": i}


class LabelDataset(Dataset):
    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"label": self.labels[i], "index": i}


def central_label(labels: torch.Tensor) -> torch.Tensor:
    """The label [25] whose camera position is nearest the mean camera position of labels [N,25]."""
    positions = labels[:, [3, 7, 11]]  # [N,3] translation column of cam2world
    return labels[(positions - positions.mean(0)).norm(dim=1).argmin()]


@register("eg3d-image-datamodule")
class EG3DImageDataModule(pl.LightningDataModule):
    Config = EG3DImageDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        self.files, self.labels, self.resolution = self.validate_config(self.cfg)
        self.train_dataset = EG3DImageDataset(self.files, self.labels)
        self.up = scene_up(self.labels)  # [3] the turntable's axis
        self.test_dataset = LabelDataset(orbit_labels(central_label(self.labels), self.cfg.n_test_frames, self.up))

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> Tuple[List[Path], torch.Tensor, int]:
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        for name in ("batch_size", "n_test_frames", "eval_batch_size"):
            if cfg[name] < 1:
                _fail(f"{path}.{name} = {cfg[name]} must be >= 1.")
        if cfg.num_workers < 0:
            _fail(f"{path}.num_workers = {cfg.num_workers} must be >= 0.")
        files, labels, resolution = read_eg3d_labels(cfg.dataroot, cfg.dataset_json, key=f"{path}.dataroot")
        if cfg.batch_size > len(files):
            _fail(f"{path}.batch_size = {cfg.batch_size} is larger than the dataset ({len(files)} images): lower it.")
        return files, labels, resolution

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(resolve_seed(self.cfg.seed))
        return DataLoader(self.train_dataset, batch_size=self.cfg.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.cfg.num_workers, generator=generator)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=self.cfg.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(LabelDataset(self.test_dataset.labels[:1]), batch_size=1)
