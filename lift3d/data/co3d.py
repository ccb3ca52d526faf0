"""`co3d-datamodule`: one sequence of the CO3D dataset (Reizenstein et al., "Common Objects in 3D", ICCV
2021) as threestudio reads it (its configs/experimental/co3d-imagecondition.yaml): posed photos of an
object for the reference losses, plus random cameras for the guidance.

Layout (CO3D's own): `data.root_dir` = <dataset>/<category>/<sequence_name>; the annotations of every
sequence of the category are `<dataset>/<category>/frame_annotations.jgz` (a gzipped JSON list), and
every path in them is relative to <dataset>. A frame is used when its `sequence_name` is the root
folder's name and its `meta.frame_type` (when given) does not contain "unseen":

    {"sequence_name": str, "image": {"path": str, "size": [H, W]},
     "mask": {"path": str}                     (grey PNG, foreground probability x 255; use_mask)
     "depth": {"path": str, "scale_adjustment": float}   (optional here: 16-bit PNG holding float16 bits)
     "viewpoint": {"R": 3x3, "T": [3], "focal_length": [fx, fy], "principal_point": [px, py]},
     "meta": {"frame_type": str}}

Cameras (PyTorch3D's convention, X_view = X_world R + T with row vectors): camera centre -R T, camera
axes the columns of R with x left, y up, z forward; turned into OpenCV's x right, y down. Intrinsics
are NDC: `v2_mode: true` (CO3D v2's "ndc_isotropic") f_px = f min(H, W) / 2, c_px = (W/2, H/2) -
p min(H, W) / 2; `v2_mode: false` (v1's "ndc_norm_image_bounds") f_px = f (W/2, H/2),
c_px = (1 - p) (W/2, H/2).

Selection (threestudio's order): frames of the sequence, repeated poses dropped; inliers kept (image
size within 10% of the median, camera within 5x the median distance of the median position); then the
first `max_num_frames`.

Normalisation (`similarity`, as threestudio's adaptation of PeRFception): the world is rotated so that
the cameras' mean up vector is +z, shifted so that the median of the points of the optical axes
nearest to the origin is the origin, and scaled so that the median camera distance is
`scale_radius`; then positions (and depths) are multiplied by `cam_scale_factor`. Poses end as
OpenGL camera-to-world matrices (lift3d's convention).

Images (`box_crop`): the box of mask > `box_crop_mask_thr` (the threshold lowered by 0.05 until more
than one pixel passes), grown by `box_crop_context` of its size (half on each side), is cut out; the
crop (or, without box_crop, the whole photo) is scaled by min(height / h, width / w) (bilinear) and put
in the top-left corner of a height x width image, the rest zero; the intrinsics follow (shift by the
box corner, scale). threestudio keeps the photos' own size without box_crop; here height x width holds
either way.

Splits: `train_views` given -> "train" = those views, "val" = the others; none -> "val" = every 10th
view, "train" = the rest; "test" = all views. `train_split` / `test_split` pick the views of training
and (when `render_path` is not "circle") of the test pass.

Batches:
- train (threestudio's: one view per step, drawn from a permutation renewed after each pass; B =
  `batch_size` views here): lift3d's camera keys (`random_camera.CAMERA_BATCH_KEYS`, light at the
  camera, elevation / azimuth / distance of the camera position), index [B], rgb [B,H,W,3] (the photo),
  mask = alpha [B,H,W,1] (the continuous foreground mask, or ones without use_mask; the reference
  losses composite the photo with it), depth [B,H,W,1] when every frame has one; with `train_num_rays`
  > 0 and below H W, that many pixels drawn uniformly (threestudio's), as [B,N,1,*]
  (height = N, width = 1); `random_camera`: a batch of `data.random_camera` (use_random_camera).
- val: the turntable of `data.random_camera` (threestudio renders random-camera poses there too);
  test / predict: the turntable with `render_path: circle`, else the `test_split` views.

`load_preprocessed` is accepted and has no effect (threestudio's has none either).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader

from lift3d.config import parse_structured
from lift3d.data.multiview_images import MultiviewEvalDataset
from lift3d.data.random_camera import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraEvalDataset,
    RandomCameraIterableDataset,
    eval_dataloader,
    resolve_seed,
    train_dataloader,
)
from lift3d.data.seeded_stream import SeededBatchStream
from lift3d.registry import register
from lift3d.utils.config_checks import check_scalar, fail

COMPONENT = "data module 'co3d-datamodule'"
ANNOTATIONS = "frame_annotations.jgz"
SPLITS = ("train", "val", "test")
OPENCV_FROM_PYTORCH3D = np.diag([-1.0, -1.0, 1.0, 1.0])  # camera x left, y up -> x right, y down
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # camera y down, z forward -> y up, z backward


@dataclass
class Co3dDataModuleConfig:
    root_dir: str = ""  # <dataset>/<category>/<sequence_name> (required)
    batch_size: int = 1  # views per training step
    height: int = 256
    width: int = 256
    load_preprocessed: bool = False  # accepted, no effect (threestudio's has none)
    cam_scale_factor: float = 0.95
    max_num_frames: int = 300
    v2_mode: bool = True  # CO3D v2 intrinsics (ndc_isotropic); false: v1 (ndc_norm_image_bounds)
    use_mask: bool = True
    box_crop: bool = True
    box_crop_mask_thr: float = 0.4
    box_crop_context: float = 0.3
    train_num_rays: int = -1  # -1: whole images
    train_views: Optional[List[int]] = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    scale_radius: float = 1.0
    use_random_camera: bool = True
    random_camera: RandomCameraDataModuleConfig = field(default_factory=RandomCameraDataModuleConfig)
    rays_noise_scale: float = 0.0
    render_path: str = "circle"  # circle: test on the random-camera turntable; else the test_split views
    eval_batch_size: int = 1  # views per test batch (render_path other than circle)
    near: float = 0.01  # projection planes of proj_mtx / mvp_mtx of the photo views
    far: float = 100.0
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)


# ---------------------------------------------------------------------------------- annotations
@dataclass
class Co3dFrame:
    image: Path
    mask: Optional[Path]
    depth: Optional[Path]
    depth_scale: float
    size: tuple  # (H, W) of the annotation
    c2w: np.ndarray  # [4,4] OpenCV camera-to-world, CO3D's world
    focal: np.ndarray  # [2] pixels
    principal: np.ndarray  # [2] pixels


def _sequence_root(root_dir: str, key: str) -> Path:
    text = "" if root_dir is None else str(root_dir).strip()
    if not text:
        fail(key, "is empty", "set it to a CO3D sequence folder, <dataset>/<category>/<sequence_name>")
    root = Path(text.rstrip("/"))
    if not root.is_dir():
        fail(key, f"= '{text}' is not a folder", "point it at a CO3D sequence folder, <dataset>/<category>/<sequence_name>")
    return root


def read_annotations(root_dir: str, key: str = "data.root_dir") -> List[dict]:
    """The annotations of root_dir's sequence (frames of other sequences and "unseen" frames dropped)."""
    root = _sequence_root(root_dir, key)
    path = root.parent / ANNOTATIONS
    if not path.is_file():
        fail(key, f"= '{root}' has no {ANNOTATIONS} in its category folder ('{path}' not found)",
             "point it at <dataset>/<category>/<sequence_name> of a CO3D download")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fp:
            frames = json.load(fp)
    except (OSError, ValueError, EOFError) as exc:
        fail(key, f": cannot read '{path}' as gzipped JSON ({type(exc).__name__}: {exc})", "re-download the category")
    if not isinstance(frames, list):
        fail(key, f": '{path}' is not a list of frame annotations", "re-download the category")
    name = root.name
    ours = [f for f in frames if isinstance(f, dict) and f.get("sequence_name") == name
            and "unseen" not in str((f.get("meta") or {}).get("frame_type", ""))]
    if not ours:
        seen = sorted({str(f.get("sequence_name")) for f in frames if isinstance(f, dict)})[:5]
        fail(key, f"= '{root}': {path} has no frames of sequence '{name}'",
             f"use a sequence folder of that category (e.g. {', '.join(seen)})")
    return ours


def intrinsics_px(viewpoint: dict, H: int, W: int, v2_mode: bool) -> tuple[np.ndarray, np.ndarray]:
    """(focal [2], principal [2]) in pixels of CO3D's NDC intrinsics (module docstring)."""
    f = np.asarray(viewpoint["focal_length"], dtype=np.float64)
    p = np.asarray(viewpoint["principal_point"], dtype=np.float64)
    if v2_mode:
        half_min = 0.5 * min(H, W)
        return f * half_min, np.array([0.5 * W, 0.5 * H]) - p * half_min
    half = np.array([0.5 * W, 0.5 * H])
    return f * half, (1.0 - p) * half


def opencv_c2w(viewpoint: dict) -> np.ndarray:
    """[4,4] OpenCV camera-to-world of a PyTorch3D viewpoint (R, T; X_view = X_world R + T)."""
    R = np.asarray(viewpoint["R"], dtype=np.float64)
    T = np.asarray(viewpoint["T"], dtype=np.float64)
    c2w = np.eye(4)
    c2w[:3, :3] = R  # rows of X_view = X_world R: R's columns are the camera axes in the world
    c2w[:3, 3] = -R @ T  # camera centre
    return c2w @ OPENCV_FROM_PYTORCH3D


def parse_frames(annotations: List[dict], dataset_root: Path, cfg: Any, key: str) -> List[Co3dFrame]:
    """Frames with resolved paths and pixel intrinsics; ConfigError naming a bad entry or missing file."""
    frames = []
    for i, a in enumerate(annotations):
        where = f"{key}: frame {i} of sequence '{a.get('sequence_name')}'"
        try:
            H, W = (int(v) for v in a["image"]["size"])
            focal, principal = intrinsics_px(a["viewpoint"], H, W, bool(cfg.v2_mode))
            c2w = opencv_c2w(a["viewpoint"])
            image = dataset_root / a["image"]["path"]
        except (KeyError, TypeError, ValueError) as exc:
            fail(where, f"has an incomplete annotation ({type(exc).__name__}: {exc})",
                 "each frame needs image.path/size and viewpoint.R/T/focal_length/principal_point")
        if not np.isfinite(c2w).all() or not (focal > 0).all():
            fail(where, "has a non-finite pose or a non-positive focal length", "check the annotation file")
        if not image.is_file():
            fail(where, f"names image '{image}', which does not exist", f"paths are relative to '{dataset_root}'")
        mask = None
        if cfg.use_mask:
            mask_entry = a.get("mask") or {}
            mask = dataset_root / str(mask_entry.get("path", ""))
            if not mask_entry.get("path") or not mask.is_file():
                fail(where, f"has no mask file ('{mask}')", "set data.use_mask=false or add the masks")
        depth_entry = a.get("depth") or {}
        depth = dataset_root / str(depth_entry["path"]) if depth_entry.get("path") else None
        frames.append(Co3dFrame(image, mask, depth if depth is not None and depth.is_file() else None,
                                float(depth_entry.get("scale_adjustment", 1.0)), (H, W), c2w, focal, principal))
    return frames


def select_frames(frames: List[Co3dFrame], max_num_frames: int) -> List[Co3dFrame]:
    """Repeated poses dropped, inliers kept (size within 10% of the median, camera within 5x the median
    distance of the median position; all kept when that leaves none), the first max_num_frames."""
    unique: List[Co3dFrame] = []
    for frame in frames:
        if not any(np.array_equal(frame.c2w, other.c2w) for other in unique):
            unique.append(frame)
    sizes = np.array([f.size for f in unique], dtype=np.float64)  # [N,2]
    median_size = np.median(sizes, axis=0)
    inlier = (np.abs(sizes - median_size) / median_size < 0.1).all(axis=1)
    positions = np.stack([f.c2w[:3, 3] for f in unique])  # [N,3]
    dists = np.linalg.norm(positions - np.median(positions, axis=0), axis=-1)
    inlier &= dists < 5.0 * np.median(dists)
    kept = [f for f, ok in zip(unique, inlier) if ok] if inlier.any() else unique
    return kept[:max_num_frames]


# ---------------------------------------------------------------------------------- normalisation
def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The rotation [3,3] taking the unit vector `up` to +z (Rodrigues' formula; 180 deg about x for -z)."""
    z = np.array([0.0, 0.0, 1.0])
    c = float(up @ z)
    if c < -1.0 + 1e-9:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(up, z)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def similarity(c2w: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """(transform [4,4], scale) normalising OpenCV cameras c2w [N,4,4] (module docstring)."""
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    up = (R @ np.array([0.0, -1.0, 0.0])).mean(axis=0)  # OpenCV's up is -y
    R_align = rotation_to_z(up / np.linalg.norm(up))
    forward = (R_align @ R) @ np.array([0.0, 0.0, 1.0])  # [N,3] optical axes
    t = t @ R_align.T
    nearest = t + ((-t) * forward).sum(-1, keepdims=True) * forward  # the axis point nearest to the origin
    translate = -np.median(nearest, axis=0)
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = R_align, translate
    return transform, float(radius / np.median(np.linalg.norm(t + translate, axis=-1)))


# ---------------------------------------------------------------------------------- images
def _read(path: Path, what: str, mode: Optional[str]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        fail("data.root_dir", f": cannot read the {what} '{path}' ({type(exc).__name__}: {exc})", "re-download the sequence")


def read_depth(path: Path, scale_adjustment: float) -> np.ndarray:
    """CO3D depth [h,w] float32: a 16-bit PNG whose values are float16 bits, x scale_adjustment (non-finite -> 0)."""
    bits = np.ascontiguousarray(_read(path, "depth map", None).astype(np.uint16))
    depth = bits.view(np.float16).astype(np.float32) * scale_adjustment
    depth[~np.isfinite(depth)] = 0.0
    return depth


def crop_box(mask: np.ndarray, thr: float, context: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of mask [h,w] > thr (lowered by 0.05 until > 1 pixel), grown by `context` of its
    size (half per side), at least 2 pixels, clipped to the image (threestudio's box crop)."""
    h, w = mask.shape
    fg = mask > thr
    while fg.sum() <= 1 and thr > -0.05:
        thr -= 0.05
        fg = mask > thr
    if fg.sum() <= 1:
        return 0, 0, w, h
    ys, xs = np.nonzero(fg)
    bx, by = float(xs.min()), float(ys.min())
    bw, bh = float(xs.max() - xs.min()), float(ys.max() - ys.min())
    bx, by = bx - bw * context / 2, by - bh * context / 2
    bw, bh = max(bw * (1 + context), 2.0), max(bh * (1 + context), 2.0)
    x0, x1 = np.clip([bx, bx + bw + 1], 0, w)
    y0, y1 = np.clip([by, by + bh + 1], 0, h)
    return int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))


def fit_into(image: Tensor, height: int, width: int) -> tuple[Tensor, float]:
    """image [h,w,C] scaled by s = min(height/h, width/w) (bilinear) into the top-left of a zero
    [height,width,C] image; returns (that image, s)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image, 1.0
    s = min(height / h, width / w)
    scaled = F.interpolate(image.permute(2, 0, 1)[None], scale_factor=s, mode="bilinear", align_corners=False,
                           recompute_scale_factor=True)[0].permute(1, 2, 0)
    out = torch.zeros(height, width, image.shape[2], dtype=image.dtype)
    out[: scaled.shape[0], : scaled.shape[1]] = scaled[:height, :width]
    return out, s


def load_co3d_views(frames: List[Co3dFrame], cfg: Any) -> Dict[str, Any]:
    """Decode, normalise, crop and resize the frames: the views dict of lift3d.data.multiview_images
    (rgb [V,H,W,3], mask [V,H,W,1], c2w [V,4,4] OpenGL, focal [V,2], principal [V,2], height, width)
    plus depth [V,H,W,1] when every frame has one."""
    H, W = int(cfg.height), int(cfg.width)
    transform, scale = similarity(np.stack([f.c2w for f in frames]), float(cfg.scale_radius))
    scale *= float(cfg.cam_scale_factor)
    with_depth = all(f.depth is not None for f in frames)
    rgbs, masks, depths, c2ws, focals, principals = [], [], [], [], [], []
    for frame in frames:
        rgb = _read(frame.image, "image", "RGB").astype(np.float32) / 255.0  # [h,w,3]
        h, w = rgb.shape[:2]
        sx, sy = w / frame.size[1], h / frame.size[0]  # a photo stored at another size than annotated
        focal, principal = frame.focal * (sx, sy), frame.principal * (sx, sy)
        mask = (_read(frame.mask, "mask", "L").astype(np.float32) / 255.0 if frame.mask is not None
                else np.ones((h, w), np.float32))
        if mask.shape != (h, w):
            fail("data.root_dir", f": mask of '{frame.image}' is {mask.shape[1]}x{mask.shape[0]}, the image {w}x{h}",
                 "re-download the sequence")
        planes = [rgb, mask[..., None]]
        if with_depth:
            planes.append(read_depth(frame.depth, frame.depth_scale)[..., None] * scale)
        stacked = torch.from_numpy(np.concatenate(planes, axis=-1))  # [h,w,C]
        x0, y0, x1, y1 = crop_box(mask, cfg.box_crop_mask_thr, cfg.box_crop_context) if cfg.box_crop else (0, 0, w, h)
        fitted, s = fit_into(stacked[y0:y1, x0:x1], H, W)
        rgbs.append(fitted[..., :3])
        masks.append(fitted[..., 3:4])
        if with_depth:
            depths.append(fitted[..., 4:5])
        focals.append(focal * s)
        principals.append((principal - (x0, y0)) * s)
        c2w = transform @ frame.c2w
        c2w[:3, 3] *= scale
        c2ws.append(c2w @ OPENGL_FROM_OPENCV)
    views = {
        "rgb": torch.stack(rgbs).float(), "mask": torch.stack(masks).float(),
        "c2w": torch.tensor(np.stack(c2ws), dtype=torch.float32),
        "focal": torch.tensor(np.stack(focals), dtype=torch.float32),
        "principal": torch.tensor(np.stack(principals), dtype=torch.float32), "height": H, "width": W,
    }
    if with_depth:
        views["depth"] = torch.stack(depths).float()
    return views


def split_views(n_views: int, train_views: Optional[List[int]]) -> Dict[str, List[int]]:
    """threestudio's splits (module docstring)."""
    every = list(range(n_views))
    if train_views is None:
        val = every[::10]
        return {"train": [i for i in every if i not in val], "val": val, "test": every}
    train = [int(i) for i in train_views]
    return {"train": train, "val": [i for i in every if i not in train], "test": every}


# ---------------------------------------------------------------------------------- training stream
class Co3dViewStream(SeededBatchStream):
    """Endless training batches: B photo views from a permutation of the training views (renewed after
    each pass), optionally N random pixels of them, plus a random-camera batch."""

    def __init__(self, views: MultiviewEvalDataset, cfg: Any, path: str = "data") -> None:
        super().__init__()
        self.views, self.cfg = views, cfg
        self.generator = torch.Generator().manual_seed(resolve_seed(cfg.seed))
        self.random_camera: Optional[RandomCameraIterableDataset] = None
        if cfg.use_random_camera:
            self.random_camera = RandomCameraIterableDataset(cfg.random_camera, path=f"{path}.random_camera",
                                                             default_seed=resolve_seed(cfg.seed, offset=1))
        self.order: List[int] = []  # positions in `views` still to visit in this pass

    def _next_views(self, B: int) -> List[int]:
        picked = []
        while len(picked) < B:
            if not self.order:
                self.order = torch.randperm(len(self.views), generator=self.generator).tolist()
            picked.append(self.order.pop(0))
        return picked

    def sample(self) -> Dict[str, Any]:
        positions = self._next_views(int(self.cfg.batch_size))
        batch = self.views.collate([self.views[p] for p in positions])  # camera keys, rgb, mask, index
        batch["alpha"] = batch["mask"]
        if "depth" in self.views.views:
            batch["depth"] = self.views.views["depth"][batch["index"]]
        if self.cfg.rays_noise_scale > 0:
            noise = lambda t: float(self.cfg.rays_noise_scale) * torch.randn(t.shape, generator=self.generator)  # noqa: E731
            batch["rays_o"] = batch["rays_o"] + noise(batch["rays_o"])
            batch["rays_d"] = F.normalize(batch["rays_d"] + noise(batch["rays_d"]), dim=-1)
        H, W, N = batch["height"], batch["width"], int(self.cfg.train_num_rays)
        if 0 < N < H * W:  # N pixels (row, column drawn independently, as threestudio): [B,N,1,*]
            ys = torch.randint(0, H, (N,), generator=self.generator)
            xs = torch.randint(0, W, (N,), generator=self.generator)
            for k in ("rays_o", "rays_d", "rgb", "mask", "alpha", "depth"):
                if k in batch:
                    batch[k] = batch[k][:, ys, xs].unsqueeze(2)
            batch["height"], batch["width"] = N, 1
        if self.random_camera is not None:
            batch["random_camera"] = self.random_camera.sample()
        return batch

    def stream_state(self) -> Dict[str, Any]:
        state = {"generator": self.generator.get_state(), "order": list(self.order)}
        if self.random_camera is not None:
            state["random_camera"] = self.random_camera.stream_state()
        return state

    def load_stream_state(self, state: Dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.order = list(state.get("order", []))
        if self.random_camera is not None and "random_camera" in state:
            self.random_camera.load_stream_state(state["random_camera"])


# ---------------------------------------------------------------------------------- the data module
@register("co3d-datamodule")
class Co3dDataModule(pl.LightningDataModule):
    """A CO3D sequence: photo views + random cameras (train), turntables or photo views (eval)."""

    Config = Co3dDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        frames = self.validate_config(self.cfg)
        self.views = load_co3d_views(frames, self.cfg)
        self.splits = split_views(len(frames), self.cfg.train_views)
        near, far = float(self.cfg.near), float(self.cfg.far)
        train = MultiviewEvalDataset(self.views, self.splits[self.cfg.train_split], near, far)
        self.train_dataset = Co3dViewStream(train, self.cfg)
        self.val_dataset = RandomCameraEvalDataset(self.cfg.random_camera, "val", path="data.random_camera")
        if self.cfg.render_path == "circle":
            self.test_dataset: Any = RandomCameraEvalDataset(self.cfg.random_camera, "test", path="data.random_camera")
        else:
            self.test_dataset = MultiviewEvalDataset(self.views, self.splits[self.cfg.test_split], near, far)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> List[Co3dFrame]:
        """ConfigError for a bad config or dataset (before any image is decoded); returns the frames."""
        cfg = parse_structured(cls.Config, cfg, path=path, component=cls.COMPONENT)
        for name in ("height", "width", "batch_size", "max_num_frames", "eval_batch_size"):
            if int(cfg[name]) < 1:
                fail(f"{path}.{name}", f"= {cfg[name]} must be >= 1", "use a positive integer")
        for name in ("cam_scale_factor", "scale_radius"):
            check_scalar(cfg, name, path, lo=0, lo_open=True)
        for name in ("box_crop_context", "rays_noise_scale"):
            check_scalar(cfg, name, path, lo=0)
        check_scalar(cfg, "box_crop_mask_thr", path, lo=0, hi=1)
        for name in ("train_split", "val_split", "test_split"):
            if cfg[name] not in SPLITS:
                fail(f"{path}.{name}", f"= '{cfg[name]}' is not a split", f"use one of {', '.join(SPLITS)}")
        if not 0 < float(cfg.near) < float(cfg.far):
            fail(f"{path}.near/far", f"= {cfg.near}/{cfg.far}", "need 0 < near < far, e.g. near: 0.01, far: 100")
        if cfg.use_random_camera:
            RandomCameraDataModule.validate_config(cfg.random_camera, path=f"{path}.random_camera")
        elif cfg.render_path == "circle":
            fail(f"{path}.render_path", "= 'circle' needs the random-camera turntable",
                 f"set {path}.use_random_camera=true or another render_path (the photo views)")
        root = _sequence_root(cfg.root_dir, f"{path}.root_dir")
        frames = select_frames(parse_frames(read_annotations(cfg.root_dir, f"{path}.root_dir"), root.parent.parent,
                                            cfg, f"{path}.root_dir"), int(cfg.max_num_frames))
        n = len(frames)
        if cfg.train_views is not None:
            bad = [i for i in cfg.train_views if not 0 <= int(i) < n]
            if bad or not len(cfg.train_views):
                fail(f"{path}.train_views", f"= {list(cfg.train_views)} names views outside the {n} views of the sequence",
                     f"use indices 0..{n - 1} (or null: every view but each 10th)")
        splits = split_views(n, cfg.train_views)
        for name in ("train_split",) + (("test_split",) if cfg.render_path != "circle" else ()):
            if not splits[cfg[name]]:
                fail(f"{path}.{name}", f"= '{cfg[name]}' has no views ({n} views, train_views = {cfg.train_views})",
                     "pick another split or change train_views")
        return frames

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # everything is built in __init__

    def train_dataloader(self) -> DataLoader:
        return train_dataloader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_dataset, self.cfg.random_camera.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        size = self.cfg.random_camera.eval_batch_size if self.cfg.render_path == "circle" else self.cfg.eval_batch_size
        return eval_dataloader(self.test_dataset, size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> Dict[str, Any]:
        return {"train_dataset": self.train_dataset.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_dataset.load_state_dict(state_dict.get("train_dataset", {}))


__all__ = ["Co3dDataModule", "Co3dDataModuleConfig", "crop_box", "fit_into", "intrinsics_px", "load_co3d_views",
           "opencv_c2w", "read_annotations", "rotation_to_z", "select_frames", "similarity", "split_views"]
