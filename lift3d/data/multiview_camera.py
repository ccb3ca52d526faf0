"""`multiview-camera-datamodule`: posed photos of a scene (a nerfstudio / blender `transforms.json`)
as whole-image batches — threestudio's data module of the same name (InstructNeRF2NeRF, Control4D;
docs/methods/instructnerf2nerf.md §2).

Reading the dataset is `multiview_images.read_transforms` / `load_views` (the format, its checks and
per-frame intrinsics are described there); this module adds threestudio's keys and their meaning:

  train_downsample_resolution k   training images are  w // k  x  h // k   (a divisor, as threestudio)
  eval_downsample_resolution  k   evaluation images are w // 2**k x h // 2**k (threestudio's eval
                                  dataset uses a power of two: `1` in instructnerf2nerf.yaml halves)
  train_data_interval / eval_data_interval   every n-th frame of transforms.json (frames[::n])
  camera_layout: around   cameras re-centred on their mean position
                 front    ... then moved back by camera_distance along their mean viewing direction
                          (the scene in front of a camera rig, e.g. a face); needs camera_distance > 0
  eval_interpolation: [i0, i1, n]   evaluation views are n poses interpolated between evaluation
                          frames i0 and i1 (rotation slerp, translation lerp of the world-to-camera
                          transforms), with black images; null: the frames themselves
  batch_size / eval_batch_size   views per batch (threestudio supports 1; lift3d any >= 1)

Rays go through pixel corners (threestudio's `use_pixel_centers=False`): the principal point is
moved by half a pixel so lift3d's pixel-centre rays hit the same points. Images are read as colour
only (alpha becomes `mask`, `rgb` is the stored colour, as threestudio's cv2.imread does). Lights sit
at the origin (threestudio's zeros). Near/far of proj_mtx: 0.1 / 1000.

Batches (train: B = batch_size views drawn uniformly, seeded and resumable; eval: the views in order):
  lift3d's camera keys (`random_camera.CAMERA_BATCH_KEYS`), index [B] (the view's position in the
  train or eval list), rgb [B,H,W,3] (also under threestudio's name gt_rgb), mask [B,H,W,1].

Image buffer (dataset editing, InstructNeRF2NeRF's iterative dataset update): the training stream
keeps `original_images` [V,H,W,3] (as loaded, never changed) and `images` [V,H,W,3] (the current
targets); `set_images(index, images)` replaces views. Lightning draws a batch one step ahead, so a
system that edits the buffer reads its targets from `images[index]` at step time rather than from the
batch. Replaced views are part of the data module's `state_dict` (they survive a resume).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from lift3d.config import parse_structured
from lift3d.data.multiview_images import Frame, MultiviewEvalDataset, check_images, load_views, read_transforms
from lift3d.data.random_camera import resolve_seed, train_dataloader
from lift3d.data.seeded_stream import SeededBatchStream
from lift3d.registry import register
from lift3d.utils.config_checks import fail, show

COMPONENT = "data module 'multiview-camera-datamodule'"
CAMERA_LAYOUTS = ("around", "front")
NEAR, FAR = 0.1, 1000.0  # threestudio's projection planes for this data module


@dataclass
class MultiviewCameraDataModuleConfig:
    dataroot: str = ""  # folder holding transforms.json (required)
    train_downsample_resolution: int = 4  # divisor of the training images' size
    eval_downsample_resolution: int = 4  # log2 of the divisor of the evaluation images' size
    train_data_interval: int = 1
    eval_data_interval: int = 1
    batch_size: int = 1
    eval_batch_size: int = 1
    camera_layout: str = "around"  # around | front
    camera_distance: float = -1.0  # front: distance of the rig's look-at point (> 0)
    eval_interpolation: Optional[List[int]] = None  # [i0, i1, n] or null
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)


# ---------------------------------------------------------------- poses
def recentre_cameras(c2w: Tensor, layout: str, distance: float) -> Tensor:
    """threestudio's camera layouts (module docstring): c2w [V,4,4] -> [V,4,4]."""
    c2w = c2w.clone()
    c2w[:, :3, 3] -= c2w[:, :3, 3].mean(dim=0, keepdim=True)
    if layout == "front":
        forward = (c2w[:, :3, :3] @ torch.tensor([0.0, 0.0, -1.0])).mean(dim=0)  # mean viewing direction
        c2w[:, :3, 3] -= forward * distance
    return c2w


def _matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation [3,3] -> unit quaternion (w, x, y, z), the numerically stable branch per case."""
    m = R.double()
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * torch.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * torch.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in q])
    return q / q.norm()


def _quaternion_to_matrix(q: Tensor) -> Tensor:
    w, x, y, z = q.tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float64)


def _slerp(q0: Tensor, q1: Tensor, t: float) -> Tensor:
    dot = float(q0 @ q1)
    if dot < 0.0:  # the shorter arc
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = (1 - t) * q0 + t * q1
    else:
        theta = math.acos(min(1.0, dot))
        q = (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)
    return q / q.norm()


def interpolate_pose(c2w0: Tensor, c2w1: Tensor, ratio: float) -> Tensor:
    """Camera between two c2w [4,4] at `ratio` in [0, 1]: slerp of the world-to-camera rotations and
    lerp of their translations (threestudio's eval_interpolation), returned as c2w [4,4]."""
    w2c0, w2c1 = torch.linalg.inv(c2w0.double()), torch.linalg.inv(c2w1.double())
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = _quaternion_to_matrix(_slerp(_matrix_to_quaternion(w2c0[:3, :3]),
                                               _matrix_to_quaternion(w2c1[:3, :3]), float(ratio)))
    w2c[:3, 3] = (1 - ratio) * w2c0[:3, 3] + ratio * w2c1[:3, 3]
    return torch.linalg.inv(w2c).float()


# ---------------------------------------------------------------- loading
def _source_size(frame: Frame) -> tuple[int, int]:
    if "w" in frame.intrinsics and "h" in frame.intrinsics:
        return int(frame.intrinsics["w"]), int(frame.intrinsics["h"])
    with Image.open(frame.path) as im:
        return im.size


def load_scaled_views(frames: List[Frame], divisor: int, cfg: Any) -> Dict[str, Any]:
    """The frames' views at (w // divisor, h // divisor) (`multiview_images.load_views` dict), poses
    laid out by `camera_layout`, principal points moved half a pixel (pixel-corner rays)."""
    w0, h0 = _source_size(frames[0])
    W, H = max(1, w0 // divisor), max(1, h0 // divisor)
    views = load_views(frames, SimpleNamespace(img_wh=(W, H), downscale=1.0))
    views["c2w"] = recentre_cameras(views["c2w"], cfg.camera_layout, float(cfg.camera_distance))
    views["principal"] = views["principal"] + 0.5
    return views


def interpolated_views(views: Dict[str, Any], i0: int, i1: int, n: int) -> Dict[str, Any]:
    """n views between views i0 and i1 (intrinsics of i0, black images, mask 1)."""
    H, W = views["height"], views["width"]
    ratios = torch.linspace(0.0, 1.0, n).tolist()
    return {
        "c2w": torch.stack([interpolate_pose(views["c2w"][i0], views["c2w"][i1], r) for r in ratios]),
        "focal": views["focal"][i0].expand(n, 2).clone(), "principal": views["principal"][i0].expand(n, 2).clone(),
        "rgb": torch.zeros(n, H, W, 3), "mask": torch.ones(n, H, W, 1), "height": H, "width": W,
    }


def whole_view_batch(views: Dict[str, Any], indices: List[int], images: Optional[Tensor] = None) -> Dict[str, Any]:
    """Camera keys + index, rgb (= gt_rgb), mask of the views `indices` (lights at the origin)."""
    batch = MultiviewEvalDataset(views, list(range(len(views["c2w"]))), NEAR, FAR).collate(indices)
    if images is not None:
        batch["rgb"] = images[batch["index"]]
    batch["gt_rgb"] = batch["rgb"]
    batch["light_positions"] = torch.zeros_like(batch["camera_positions"])
    return batch


# ---------------------------------------------------------------- datasets
class MultiviewCameraIterableDataset(SeededBatchStream):
    """Endless stream of whole training views, `batch_size` drawn uniformly per batch; holds the
    editable image buffer (module docstring)."""

    def __init__(self, views: Dict[str, Any], batch_size: int, seed: int) -> None:
        super().__init__()
        self.views = views
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.original_images: Tensor = views["rgb"]  # [V,H,W,3] as loaded
        self.images: Tensor = views["rgb"].clone()  # [V,H,W,3] current targets
        self.replaced: set[int] = set()

    @property
    def n_views(self) -> int:
        return int(self.images.shape[0])

    def set_images(self, index: Tensor, images: Tensor) -> None:
        """Replace the targets of views `index` [B] with `images` [B,H,W,3] (values in [0, 1])."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if images.shape != (index.numel(), *self.images.shape[1:]):
            raise ValueError(f"set_images: images {tuple(images.shape)} do not match index {tuple(index.shape)} "
                             f"and views {tuple(self.images.shape[1:])}")
        self.images[index] = images.detach().to(self.images)
        self.replaced.update(int(i) for i in index)

    def sample(self) -> Dict[str, Any]:
        index = torch.randint(0, self.n_views, (self.batch_size,), generator=self.generator)
        return whole_view_batch(self.views, index.tolist(), self.images)

    def buffer_state(self) -> Dict[str, Any]:
        ids = sorted(self.replaced)
        return {"index": torch.tensor(ids, dtype=torch.long), "images": self.images[ids].clone()}

    def load_buffer_state(self, state: Dict[str, Any]) -> None:
        if state and len(state["index"]):
            self.set_images(state["index"], state["images"])


class MultiviewCameraEvalDataset(MultiviewEvalDataset):
    """Whole evaluation views in order (items are view indices; `collate` builds the batch)."""

    def __init__(self, views: Dict[str, Any]) -> None:
        super().__init__(views, list(range(len(views["c2w"]))), NEAR, FAR)

    def collate(self, indices: List[int]) -> Dict[str, Any]:
        return whole_view_batch(self.views, indices)


# ---------------------------------------------------------------- the data module
@register("multiview-camera-datamodule")
class MultiviewCameraDataModule(pl.LightningDataModule):
    """Posed photos as whole-image batches (module docstring)."""

    Config = MultiviewCameraDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        frames = self.validate_config(self.cfg)
        train_views = load_scaled_views(frames[:: self.cfg.train_data_interval],
                                        int(self.cfg.train_downsample_resolution), self.cfg)
        eval_views = load_scaled_views(frames[:: self.cfg.eval_data_interval],
                                       2 ** int(self.cfg.eval_downsample_resolution), self.cfg)
        if self.cfg.eval_interpolation is not None:
            i0, i1, n = (int(v) for v in self.cfg.eval_interpolation)
            eval_views = interpolated_views(eval_views, i0, i1, n)
        self.train_dataset = MultiviewCameraIterableDataset(train_views, self.cfg.batch_size,
                                                            resolve_seed(self.cfg.seed))
        self.val_dataset = MultiviewCameraEvalDataset(eval_views)
        self.test_dataset = self.val_dataset  # threestudio: the same evaluation views

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> List[Frame]:
        """Raise ConfigError for a bad config or dataset; returns the frames of transforms.json."""
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        for name in ("train_downsample_resolution", "train_data_interval", "eval_data_interval",
                     "batch_size", "eval_batch_size"):
            if int(cfg[name]) < 1:
                fail(f"{path}.{name}", f"= {cfg[name]} must be >= 1", "use a positive integer")
        if int(cfg.eval_downsample_resolution) < 0:
            fail(f"{path}.eval_downsample_resolution", f"= {cfg.eval_downsample_resolution} is negative",
                 "give k >= 0 (evaluation images are the frames' size / 2**k)")
        if cfg.camera_layout not in CAMERA_LAYOUTS:
            fail(f"{path}.camera_layout", f"= '{cfg.camera_layout}' is unknown", f"use one of {list(CAMERA_LAYOUTS)}")
        if cfg.camera_layout == "front" and not float(cfg.camera_distance) > 0:
            fail(f"{path}.camera_distance", f"= {cfg.camera_distance} with camera_layout=front",
                 "give the distance from the cameras to the scene, > 0")
        frames = read_transforms(cfg.dataroot, "transforms.json", key=f"{path}.dataroot")
        check_images(frames)
        n_eval = len(frames[:: int(cfg.eval_data_interval)])
        if cfg.eval_interpolation is not None:
            interp = list(cfg.eval_interpolation)
            if (len(interp) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in interp)
                    or not all(0 <= v < n_eval for v in interp[:2]) or interp[2] < 1):
                fail(f"{path}.eval_interpolation", f"= {show(cfg.eval_interpolation)} is not [i0, i1, n]",
                     f"give two evaluation frame indices in [0, {n_eval}) and a view count >= 1, or null")
        for name, divisor in (("train_downsample_resolution", int(cfg.train_downsample_resolution)),
                              ("eval_downsample_resolution", 2 ** int(cfg.eval_downsample_resolution))):
            w0, h0 = _source_size(frames[0])
            if w0 // divisor < 1 or h0 // divisor < 1:
                fail(f"{path}.{name}", f"= {cfg[name]} shrinks the {w0}x{h0} frames below one pixel",
                     "use a smaller value")
        return frames

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # everything is built in __init__

    def train_dataloader(self) -> DataLoader:
        return train_dataloader(self.train_dataset)

    def _eval_loader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.cfg.eval_batch_size, shuffle=False, num_workers=0,
                          collate_fn=self.val_dataset.collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def state_dict(self) -> Dict[str, Any]:
        return {"train_dataset": self.train_dataset.state_dict(), "image_buffer": self.train_dataset.buffer_state()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_dataset.load_state_dict(state_dict.get("train_dataset", {}))
        self.train_dataset.load_buffer_state(state_dict.get("image_buffer", {}))
