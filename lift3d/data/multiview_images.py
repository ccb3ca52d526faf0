"""`multiview-images-datamodule`: posed RGBA images of one object (a NeuS / NeRF reconstruction
dataset, docs/methods/usd.md §4).

`<data.dataroot>/transforms.json` in the instant-ngp / nerfstudio format, as
`lift3d.utils.rgba_dataset.RGBADatasetWriter` writes it:

    {"w": 128, "h": 128, "fl_x": .., "fl_y": .., "cx": .., "cy": .., (or "camera_angle_x": rad)
     "frames": [{"file_path": "images/0000.png", "transform_matrix": 4x4 (or 3x4) OpenGL c2w,
                 optional per-frame w, h, fl_x, fl_y, cx, cy, camera_angle_x}, ...]}

Per-frame intrinsics override the top-level ones; missing w/h are the image's size; intrinsics
given for another size than the image's are scaled to it. `file_path` is relative to the dataroot
(".png" is appended when it has no suffix, as in the NeRF-synthetic files). Images: RGBA PNGs with
straight (not premultiplied) colour; alpha is the mask (images without alpha: mask = 1).
`img_wh: [W, H]` or `downscale: k` resizes every image (premultiplied area averaging) and scales
the intrinsics with it.

Training batch (random rays across all training views, `train_num_rays` of them, drawn uniformly
over all pixels; the cheapest batch on a CPU): every ray is a 1×1 image, so B = train_num_rays:
  rays_o, rays_d [B,1,1,3] (unit directions), rgb [B,1,1,3] (straight colour), mask [B,1,1,1]
  (alpha in [0,1]), light_positions = camera_positions [B,3] (the ray's camera), height = width = 1.
Validation / test / predict: whole views, one per batch, with the camera keys of
`random_camera.CAMERA_BATCH_KEYS` (light at the camera) + index [B], rgb [B,H,W,3], mask [B,H,W,1].
Validation uses `n_val_views` evenly spaced views (held out of training with `holdout_val_views`);
test uses `n_test_views` evenly spaced views (0: all).

`validate_config` (run before any work) checks the dataroot, the JSON, every frame's pose and
intrinsics and that every image exists and decodes; errors name the key/file and the fix.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lift3d.config import parse_structured
from lift3d.data.cameras import get_mvp_matrix, get_projection_matrix, get_ray_directions, get_rays
from lift3d.data.image_io import resize_rgba
from lift3d.data.random_camera import resolve_seed, train_dataloader
from lift3d.data.seeded_stream import SeededBatchStream
from lift3d.errors import ConfigError
from lift3d.registry import register

COMPONENT = "data module 'multiview-images-datamodule'"
_INTRINSIC_KEYS = ("w", "h", "fl_x", "fl_y", "cx", "cy", "camera_angle_x")


@dataclass
class MultiviewImagesDataModuleConfig:
    dataroot: str = ""  # folder holding transforms.json (required)
    transforms_file: str = "transforms.json"
    img_wh: Optional[List[int]] = None  # [W, H] to resize every image to
    downscale: float = 1.0  # or divide the images' size by this factor
    train_num_rays: int = 1024
    n_val_views: int = 2
    holdout_val_views: bool = False  # exclude the validation views from training
    n_test_views: int = 0  # 0: every view
    eval_batch_size: int = 1
    near: float = 0.01  # projection planes of proj_mtx / mvp_mtx (rays are unbounded)
    far: float = 100.0
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        _fail(f"{where}: {what} = {value!r} is not a finite number. Fix the file (see lift3d/data/multiview_images.py).")
    return float(value)


@dataclass
class Frame:
    """One view as read from transforms.json (intrinsics at the image's original size)."""

    path: Path
    c2w: Tensor  # [4,4] OpenGL camera-to-world
    intrinsics: Dict[str, float]  # w, h (may be absent), fl_x, fl_y, cx, cy (or camera_angle_x)


def read_transforms(dataroot: str, transforms_file: str = "transforms.json", key: str = "data.dataroot") -> List[Frame]:
    """Parse and check `<dataroot>/<transforms_file>`; every error is a ConfigError naming the
    file and the fix. Images are checked to exist (not decoded; see `check_images`)."""
    root_text = "" if dataroot is None else str(dataroot)
    if not root_text.strip():
        _fail(f"{key} is empty: set {key}=<folder with {transforms_file} and its images>, e.g. the "
              f"save/it<N>-test-rgba folder a test pass with system.save_rgba_dataset=true writes.")
    root = Path(root_text)
    if not root.is_dir():
        _fail(f"{key}='{root_text}' is not a folder (looked at '{root.resolve()}'): point {key} at the dataset folder "
              f"that holds {transforms_file}.")
    path = root / transforms_file
    where = str(path)
    if not path.is_file():
        _fail(f"{key}: '{path}' not found: a multi-view dataset needs {transforms_file} (instant-ngp / nerfstudio format, "
              f"as lift3d.utils.rgba_dataset.RGBADatasetWriter writes it) in {key}.")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(f"cannot parse '{path}' (from {key}): not valid JSON ({exc}). Rewrite it, e.g. with RGBADatasetWriter.")
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        _fail(f"'{path}' (from {key}) has no non-empty 'frames' list: each frame needs file_path and transform_matrix.")
    top = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    frames = []
    for i, raw in enumerate(meta["frames"]):
        fw = f"{where}: frames[{i}]"
        if not isinstance(raw, dict) or "file_path" not in raw or "transform_matrix" not in raw:
            _fail(f"{fw} needs 'file_path' and 'transform_matrix' (4x4 OpenGL camera-to-world).")
        try:
            m = np.asarray(raw["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
            _fail(f"{fw}.transform_matrix must be a finite 4x4 (or 3x4) camera-to-world matrix, got shape {m.shape}.")
        c2w = np.eye(4)
        c2w[: m.shape[0]] = m
        intr = {**top, **{k: raw[k] for k in _INTRINSIC_KEYS if k in raw}}
        intr = {k: _number(v, k, fw) for k, v in intr.items()}
        if not ("fl_x" in intr or "camera_angle_x" in intr):
            _fail(f"{fw} has no focal length: give fl_x (and fl_y, cx, cy) or camera_angle_x, per frame or at the top level.")
        if any(intr.get(k, 1.0) <= 0 for k in ("w", "h", "fl_x", "fl_y", "camera_angle_x")):
            _fail(f"{fw}: w, h, fl_x, fl_y and camera_angle_x must be > 0, got {intr}.")
        file = root / str(raw["file_path"])
        if not file.suffix and not file.is_file():
            file = file.with_name(file.name + ".png")
        if not file.is_file():
            _fail(f"{fw}: image '{file}' not found (file_path '{raw['file_path']}' is relative to {key}='{root_text}').")
        frames.append(Frame(file, torch.tensor(c2w, dtype=torch.float32), intr))
    return frames


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGBA") if im.mode != "RGBA" else im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(
            f"cannot read image '{path}': corrupt or not an image ({type(exc).__name__}: {exc}). "
            f"Re-write the dataset (RGBA PNGs)."
        ) from None


def check_images(frames: List[Frame]) -> None:
    """Open every image header (cheap) so that a bad file fails before training starts."""
    for frame in frames:
        try:
            with Image.open(frame.path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ConfigError(
                f"cannot read image '{frame.path}': corrupt or not an image ({type(exc).__name__}: {exc}). "
                f"Re-write the dataset (RGBA PNGs)."
            ) from None


def _target_size(cfg: Any, w0: int, h0: int) -> tuple[int, int]:
    if cfg.img_wh is not None:
        return int(cfg.img_wh[0]), int(cfg.img_wh[1])
    k = float(cfg.downscale)
    return max(1, int(round(w0 / k))), max(1, int(round(h0 / k)))


def load_views(frames: List[Frame], cfg: Any) -> Dict[str, Any]:
    """Decode, resize and stack every view: rgb [V,H,W,3], mask [V,H,W,1] (alpha), c2w [V,4,4],
    focal [V,2] (fx, fy), principal [V,2] (cx, cy) in pixels of the resized images; H, W."""
    rgbs, masks, focals, principals = [], [], [], []
    size = None
    for frame in frames:
        im = _open_image(frame.path)
        w0, h0 = im.size
        W, H = _target_size(cfg, w0, h0)
        if size is None:
            size = (W, H)
        elif size != (W, H):
            _fail(f"data.dataroot: image '{frame.path}' is {w0}x{h0}, which gives {W}x{H}, not {size[0]}x{size[1]} like "
                  f"the first view: give every view the same size, or set data.img_wh=[W, H].")
        intr = frame.intrinsics
        jw, jh = intr.get("w", w0), intr.get("h", h0)  # the size the intrinsics refer to
        fx = intr["fl_x"] if "fl_x" in intr else 0.5 * jw / math.tan(0.5 * intr["camera_angle_x"])
        fy = intr.get("fl_y", fx)
        cx, cy = intr.get("cx", 0.5 * jw), intr.get("cy", 0.5 * jh)
        sx, sy = W / jw, H / jh
        focals.append((fx * sx, fy * sy))
        principals.append((cx * sx, cy * sy))
        arr = np.asarray(resize_rgba(im, H, W), dtype=np.float32) / 255.0  # [H,W,4]
        t = torch.from_numpy(arr.copy())
        rgbs.append(t[..., :3])
        masks.append(t[..., 3:])
    W, H = size
    return {
        "rgb": torch.stack(rgbs), "mask": torch.stack(masks),
        "c2w": torch.stack([f.c2w for f in frames]),
        "focal": torch.tensor(focals, dtype=torch.float32), "principal": torch.tensor(principals, dtype=torch.float32),
        "height": H, "width": W,
    }


def view_rays(views: Dict[str, Any], idx: int) -> tuple[Tensor, Tensor]:
    """World rays of view idx: rays_o, rays_d [H,W,3] (unit directions, pixel centres)."""
    H, W = views["height"], views["width"]
    f, p = views["focal"][idx], views["principal"][idx]
    dirs = get_ray_directions(H, W, (float(f[0]), float(f[1])), principal=(float(p[0]), float(p[1])))
    o, d = get_rays(dirs, views["c2w"][idx][None], keepdim=True, normalize=True)
    return o[0], d[0]


def evenly_spaced(n_views: int, n: int) -> List[int]:
    """n indices spread over range(n_views) (all of them when n <= 0 or n >= n_views)."""
    if n <= 0 or n >= n_views:
        return list(range(n_views))
    return sorted({int(round(i * n_views / n)) % n_views for i in range(n)})


class MultiviewRayDataset(SeededBatchStream):
    """Endless stream of random-ray batches over the training views (module docstring)."""

    def __init__(self, views: Dict[str, Any], view_ids: List[int], num_rays: int, seed: int) -> None:
        super().__init__()
        self.num_rays = int(num_rays)
        self.generator = torch.Generator().manual_seed(seed)
        rays = [view_rays(views, i) for i in view_ids]
        self.rays_o = torch.stack([r[0] for r in rays]).reshape(-1, 3)  # [V*H*W,3]
        self.rays_d = torch.stack([r[1] for r in rays]).reshape(-1, 3)
        self.rgb = views["rgb"][view_ids].reshape(-1, 3)
        self.mask = views["mask"][view_ids].reshape(-1, 1)
        self.camera = views["c2w"][view_ids, :3, 3].repeat_interleave(views["height"] * views["width"], 0)  # [V*H*W,3]

    def sample(self) -> Dict[str, Any]:
        idx = torch.randint(0, self.rays_o.shape[0], (self.num_rays,), generator=self.generator)
        as_pixels = lambda t: t[idx].reshape(self.num_rays, 1, 1, -1)  # noqa: E731
        return {
            "rays_o": as_pixels(self.rays_o), "rays_d": as_pixels(self.rays_d),
            "rgb": as_pixels(self.rgb), "mask": as_pixels(self.mask),
            "camera_positions": self.camera[idx], "light_positions": self.camera[idx],
            "height": 1, "width": 1,
        }



class MultiviewEvalDataset(Dataset):
    """Whole views `view_ids` (items are positions in that list; batches keep the view index)."""

    def __init__(self, views: Dict[str, Any], view_ids: List[int], near: float, far: float) -> None:
        super().__init__()
        self.views, self.view_ids, self.near, self.far = views, view_ids, near, far

    def __len__(self) -> int:
        return len(self.view_ids)

    def __getitem__(self, item: int) -> int:
        if not 0 <= item < len(self.view_ids):
            raise IndexError(item)
        return self.view_ids[item]

    def collate(self, indices: List[int]) -> Dict[str, Any]:
        v = self.views
        H, W = v["height"], v["width"]
        index = torch.as_tensor(indices, dtype=torch.long)  # [B]
        rays = [view_rays(v, i) for i in indices]
        c2w = v["c2w"][index]  # [B,4,4]
        positions = c2w[:, :3, 3]  # [B,3]
        distances = positions.norm(dim=-1)
        elevation = torch.rad2deg(torch.asin((positions[:, 2] / distances.clamp_min(1e-12)).clamp(-1, 1)))
        azimuth = torch.rad2deg(torch.atan2(positions[:, 1], positions[:, 0]))
        fovy = 2.0 * torch.atan(0.5 * H / v["focal"][index, 1])  # [B] radians
        proj = get_projection_matrix(fovy, W / H, self.near, self.far)
        return {
            "rays_o": torch.stack([r[0] for r in rays]), "rays_d": torch.stack([r[1] for r in rays]),
            "mvp_mtx": get_mvp_matrix(c2w, proj), "c2w": c2w, "proj_mtx": proj,
            "camera_positions": positions, "light_positions": positions.clone(),
            "elevation": elevation, "azimuth": azimuth, "camera_distances": distances, "fovy": fovy,
            "height": H, "width": W, "index": index,
            "rgb": v["rgb"][index], "mask": v["mask"][index],
        }


@register("multiview-images-datamodule")
class MultiviewImagesDataModule(pl.LightningDataModule):
    """Posed RGBA views: random rays (train), whole views (val/test/predict); module docstring."""

    Config = MultiviewImagesDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        frames = self.validate_config(self.cfg)
        self.views = load_views(frames, self.cfg)
        n = len(frames)
        self.val_ids = evenly_spaced(n, self.cfg.n_val_views)
        self.test_ids = evenly_spaced(n, self.cfg.n_test_views)
        train_ids = [i for i in range(n) if not (self.cfg.holdout_val_views and i in self.val_ids)]
        self.train_dataset = MultiviewRayDataset(self.views, train_ids, self.cfg.train_num_rays, resolve_seed(self.cfg.seed))
        self.val_dataset = MultiviewEvalDataset(self.views, self.val_ids, self.cfg.near, self.cfg.far)
        self.test_dataset = MultiviewEvalDataset(self.views, self.test_ids, self.cfg.near, self.cfg.far)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> List[Frame]:
        """Raise ConfigError for a bad config or dataset (module docstring); returns the frames."""
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        for name in ("train_num_rays", "n_val_views", "eval_batch_size"):
            if cfg[name] < 1:
                _fail(f"{path}.{name} = {cfg[name]} must be >= 1: use a positive integer.")
        if cfg.n_test_views < 0:
            _fail(f"{path}.n_test_views = {cfg.n_test_views} is negative: use 0 (every view) or a positive count.")
        if cfg.img_wh is not None:
            wh = list(cfg.img_wh)
            if len(wh) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in wh):
                _fail(f"{path}.img_wh = {wh} is not a pair of positive ints: give [W, H], e.g. img_wh=[128,128].")
            if float(cfg.downscale) != 1.0:
                _fail(f"{path}.img_wh and {path}.downscale are both set: keep one (img_wh=[W, H] or downscale=k).")
        if not float(cfg.downscale) > 0:
            _fail(f"{path}.downscale = {cfg.downscale} must be > 0 (e.g. 2 halves the images' size).")
        if not 0 < float(cfg.near) < float(cfg.far):
            _fail(f"{path}.near/far = {cfg.near}/{cfg.far}: need 0 < near < far, e.g. near: 0.01, far: 100.")
        frames = read_transforms(cfg.dataroot, cfg.transforms_file, key=f"{path}.dataroot")
        check_images(frames)
        if cfg.holdout_val_views and len(evenly_spaced(len(frames), cfg.n_val_views)) >= len(frames):
            _fail(f"{path}.holdout_val_views holds out all {len(frames)} views: lower {path}.n_val_views.")
        return frames

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # everything is built in __init__

    def train_dataloader(self) -> DataLoader:
        return train_dataloader(self.train_dataset)

    def _eval_loader(self, dataset: MultiviewEvalDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.eval_batch_size, shuffle=False, num_workers=0,
                          collate_fn=dataset.collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)

    def state_dict(self) -> Dict[str, Any]:
        return {"train_dataset": self.train_dataset.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_dataset.load_state_dict(state_dict.get("train_dataset", {}))
