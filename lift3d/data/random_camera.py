"""`random-camera-datamodule`: random orbit cameras for text-to-3D, turntables for val/test.

Training data is one endless epoch: `RandomCameraIterableDataset` yields ready-made batches
(sampled when the iterator is advanced) until `trainer.max_steps` ends training. Validation and
test are fixed turntables (`RandomCameraEvalDataset`). Conventions and batch keys:
docs/methods/threestudio-conventions.md, "Cameras and batches"; camera maths: `cameras.py`.

Sampling of one training batch (B cameras):
* elevation: per batch, with probability 1/2 uniform in angle over `elevation_range`, otherwise
  uniform on the sphere (sin(elevation) uniform) over the same band;
* azimuth: stratified over the batch when `batch_uniform_azimuth` (sample k is uniform in the
  k-th of B equal slices of `azimuth_range`, so every batch covers the whole range), else uniform;
* distance uniform in `camera_distance_range`, fovy uniform in `fovy_range` (degrees, vertical);
* perturbations: camera position + U(-camera_perturb, camera_perturb)^3, look-at centre
  + N(0, center_perturb^2), up vector (+z) + N(0, up_perturb^2). The batch's `elevation`,
  `azimuth`, `camera_distances` are the sampled (unperturbed) values; `camera_positions` and
  `c2w` are the perturbed camera;
* light (`light_positions`, distance uniform in `light_distance_range`):
  - "dreamfusion": direction = normalize(camera_position + N(0, light_position_perturb^2)), i.e.
    near the camera's direction as seen from the object;
  - "magic3d": a direction in the cone of half-angle 60° around the camera's direction (angle
    above the plane perpendicular to it uniform in [30°, 90°], angle around it uniform), i.e. a
    light in the camera's hemisphere, never grazing.
Progressive resolution: `height`, `width`, `batch_size` may be lists switched at
`resolution_milestones` (global steps) by `update_step`. `progressive_until` > 0 widens the
elevation/azimuth ranges linearly from (eval_elevation_deg, azimuth 0) to the full ranges over
that many steps.

Reproducibility: sampling uses a private `torch.Generator` seeded with `seed` or, when it is null,
with `torch.initial_seed()` (which `pl.seed_everything(cfg.seed)` sets), so two runs with the same
experiment seed see the same cameras. The generator state is saved in checkpoints through the
data module's `state_dict`, so a resumed run continues the sequence instead of repeating it.
"""
from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lift3d.config import parse_structured
from lift3d.data.cameras import (
    focal_from_fovy,
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    spherical_to_cartesian,
)
from lift3d.data.seeded_stream import SeededBatchStream
from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.utils.config_checks import check_range, check_scalar, fail, positive_int_list, show

LIGHT_SAMPLE_STRATEGIES = ("dreamfusion", "magic3d")
# keys of every camera batch (eval batches add "index")
CAMERA_BATCH_KEYS = (
    "rays_o", "rays_d", "mvp_mtx", "c2w", "proj_mtx", "camera_positions", "light_positions",
    "elevation", "azimuth", "camera_distances", "fovy", "height", "width",
)


@dataclass
class RandomCameraDataModuleConfig:
    # int, or a list switched at resolution_milestones (OmegaConf has no Union with lists)
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    # ranges are [low, high] pairs (List rather than threestudio's Tuple, so that validate_config
    # can explain a wrong length); angles in degrees
    elevation_range: List[float] = field(default_factory=lambda: [-10.0, 90.0])  # degrees
    azimuth_range: List[float] = field(default_factory=lambda: [-180.0, 180.0])  # degrees
    camera_distance_range: List[float] = field(default_factory=lambda: [1.0, 1.5])
    fovy_range: List[float] = field(default_factory=lambda: [40.0, 70.0])  # degrees, vertical (along height)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: List[float] = field(default_factory=lambda: [0.8, 1.5])
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"  # "dreamfusion" | "magic3d"
    batch_uniform_azimuth: bool = True
    progressive_until: int = 0  # steps over which elevation/azimuth ranges widen; 0 = off
    rays_d_normalize: bool = True
    near: float = 0.01  # projection near plane (proj_mtx / mvp_mtx only; rays are unbounded)
    far: float = 100.0  # projection far plane
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)
    # single-image-datamodule's reference-camera keys, which threestudio's image configs interpolate
    # into eval_* (`eval_elevation_deg: ${data.default_elevation_deg}`); here they only serve such
    # interpolations, and their defaults are the eval_* defaults, so a config that switches an image
    # stage to random cameras keeps the eval camera it would have without those lines (lift3d.compat)
    default_elevation_deg: float = 15.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.5
    default_fovy_deg: float = 70.0


# ---------------------------------------------------------------- progressive resolution
STAGE_LIST_FIX = "give a positive int or a list of positive ints, one per resolution stage"


def resolution_stages(
    cfg: Any, path: str, keys: Sequence[str] = ("height", "width", "batch_size")
) -> Tuple[Dict[str, List[int]], List[int]]:
    """Expand progressive-resolution settings into one list per key and the milestones.

    Each key holds an int (the same at every stage) or a list with one entry per stage; lists
    must all have len(resolution_milestones) + 1 entries. Milestones are strictly increasing
    global steps > 0; stage k is used from milestone k-1 (inclusive) on.
    """
    values = {k: positive_int_list(cfg[k], f"{path}.{k}", STAGE_LIST_FIX) for k in keys}
    milestones_cfg = cfg["resolution_milestones"]
    milestones = list(milestones_cfg or [])
    for m in milestones:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            fail(f"{path}.resolution_milestones", f"= {show(milestones_cfg)} is invalid",
                  "give a list of positive global steps, e.g. [5000]")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        fail(f"{path}.resolution_milestones", f"= {show(milestones_cfg)} is not strictly increasing",
              "list the steps in increasing order, e.g. [200, 300]")
    n_stages = max(len(v) for v in values.values())
    for k, v in values.items():
        if len(v) not in (1, n_stages):
            lists = ", ".join(f"{path}.{kk} has {len(vv)}" for kk, vv in values.items())
            fail(f"{path}.{k}", f"has {len(v)} entries but another list has {n_stages} ({lists})",
                  "give every progressive list the same length, or a single int")
    if n_stages == 1:
        if milestones:
            warnings.warn(
                f"{path}.resolution_milestones = {milestones} is ignored: "
                f"{', '.join(path + '.' + k for k in keys)} do not change (give lists to change them)."
            )
        milestones = []
    elif len(milestones) != n_stages - 1:
        fail(f"{path}.resolution_milestones",
              f"has {len(milestones)} steps but {', '.join(path + '.' + k for k in keys)} describe {n_stages} stages",
              f"give {n_stages - 1} milestone step(s), one per switch, e.g. resolution_milestones: "
              f"{[5000 * (i + 1) for i in range(n_stages - 1)]}")
    return {k: (v * n_stages if len(v) == 1 else v) for k, v in values.items()}, milestones


def _stage_index(milestones: List[int], global_step: int) -> int:
    return bisect.bisect_right(milestones, global_step)


def _as_config(cfg: Any, path: str, component: str) -> Any:
    config_type = OmegaConf.get_type(cfg) if isinstance(cfg, DictConfig) else None
    if isinstance(config_type, type) and issubclass(config_type, RandomCameraDataModuleConfig):
        return cfg  # this config or an extension of it (eff-random-camera-datamodule, ...)
    return parse_structured(RandomCameraDataModuleConfig, cfg, path=path, component=component)


def resolve_seed(seed: Optional[int], offset: int = 0) -> int:
    """The generator seed: `seed`, or torch.initial_seed() when None; `offset` decorrelates users."""
    base = torch.initial_seed() if seed is None else int(seed)
    return (base + offset) % (2**63)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _normal(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator)


# ---------------------------------------------------------------- the batch assembler
def camera_batch(
    camera_positions: Tensor,
    fovy: Tensor,
    height: int,
    width: int,
    light_positions: Tensor,
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    camera_distances: Tensor,
    center: Optional[Tensor] = None,
    up: Optional[Tensor] = None,
    near: float = 0.01,
    far: float = 100.0,
    rays_d_normalize: bool = True,
    rays_noise_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Any]:
    """Assemble a camera batch (keys `CAMERA_BATCH_KEYS`) for B cameras looking at `center`.

    camera_positions, light_positions, center, up [B, 3]; fovy [B] (radians); elevation_deg,
    azimuth_deg, camera_distances [B] (reported as given). Returns rays_o, rays_d [B, H, W, 3];
    mvp_mtx, c2w, proj_mtx [B, 4, 4]; camera_positions, light_positions [B, 3]; elevation,
    azimuth, camera_distances, fovy [B]; height, width ints.
    """
    c2w = look_at_c2w(camera_positions, center, up)  # [B, 4, 4]
    directions = get_ray_directions(height, width, focal_from_fovy(fovy, height))  # [B, H, W, 3]
    rays_o, rays_d = get_rays(
        directions, c2w, keepdim=True, normalize=rays_d_normalize,
        noise_scale=rays_noise_scale, generator=generator,
    )
    proj_mtx = get_projection_matrix(fovy, width / height, near, far)  # [B, 4, 4]
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "mvp_mtx": get_mvp_matrix(c2w, proj_mtx),
        "c2w": c2w,
        "proj_mtx": proj_mtx,
        "camera_positions": camera_positions,
        "light_positions": light_positions,
        "elevation": elevation_deg,
        "azimuth": azimuth_deg,
        "camera_distances": camera_distances,
        "fovy": fovy,
        "height": int(height),
        "width": int(width),
    }


# ---------------------------------------------------------------- training: endless random cameras
class RandomCameraIterableDataset(SeededBatchStream):
    """Endless stream of random-camera batches; `sample()` makes one batch.

    Other data modules reuse it (e.g. `single-image-datamodule` for `batch["random_camera"]`).
    """

    def __init__(self, cfg: Any, path: str = "data", default_seed: Optional[int] = None) -> None:
        """cfg: a RandomCameraDataModuleConfig mapping; `path` names it in errors. The generator
        is seeded with cfg.seed, else `default_seed`, else torch.initial_seed()."""
        super().__init__()
        self.cfg = _as_config(cfg, path, "data module 'random-camera-datamodule'")
        stages, self.resolution_milestones = resolution_stages(self.cfg, path)
        self.heights, self.widths, self.batch_sizes = stages["height"], stages["width"], stages["batch_size"]
        seed = self.cfg.seed if self.cfg.seed is not None else default_seed
        self.generator = torch.Generator().manual_seed(resolve_seed(seed))
        self.stage = -1
        self._set_stage(0)
        self.elevation_range: Tuple[float, float] = tuple(self.cfg.elevation_range)
        self.azimuth_range: Tuple[float, float] = tuple(self.cfg.azimuth_range)
        self._progressive_view(0)

    # -- step-dependent state
    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        self.height: int = self.heights[stage]
        self.width: int = self.widths[stage]
        self.batch_size: int = self.batch_sizes[stage]

    def _progressive_view(self, global_step: int) -> None:
        full_elev, full_azim = tuple(self.cfg.elevation_range), tuple(self.cfg.azimuth_range)
        if self.cfg.progressive_until <= 0:
            self.elevation_range, self.azimuth_range = full_elev, full_azim
            return
        r = min(1.0, max(0, global_step) / self.cfg.progressive_until)
        e0 = float(self.cfg.eval_elevation_deg)
        self.elevation_range = ((1 - r) * e0 + r * full_elev[0], (1 - r) * e0 + r * full_elev[1])
        self.azimuth_range = (r * full_azim[0], r * full_azim[1])

    def update_step(self, epoch: int, global_step: int) -> None:
        self._set_stage(_stage_index(self.resolution_milestones, global_step))
        self._progressive_view(global_step)

    # -- sampling
    def sample_poses(self, batch_size: Optional[int] = None) -> Dict[str, Tensor]:
        """Sample B camera poses and lights (no rays): elevation/azimuth (deg), camera_distances,
        fovy (rad) [B]; camera_positions (perturbed), center, up, light_positions [B, 3]."""
        B = self.batch_size if batch_size is None else int(batch_size)
        g, cfg = self.generator, self.cfg
        e_lo, e_hi = self.elevation_range
        if torch.rand((), generator=g) < 0.5:  # uniform in angle
            elevation_deg = _uniform(g, B, e_lo, e_hi)
        else:  # uniform on the sphere: sin(elevation) uniform
            s_lo, s_hi = math.sin(math.radians(e_lo)), math.sin(math.radians(e_hi))
            elevation_deg = torch.rad2deg(torch.asin(_uniform(g, B, s_lo, s_hi).clamp(-1.0, 1.0)))
        a_lo, a_hi = self.azimuth_range
        if cfg.batch_uniform_azimuth:  # stratified: one sample per slice of the range
            azimuth_deg = (torch.arange(B) + torch.rand(B, generator=g)) / B * (a_hi - a_lo) + a_lo
        else:
            azimuth_deg = _uniform(g, B, a_lo, a_hi)
        camera_distances = _uniform(g, B, *cfg.camera_distance_range)
        fovy = torch.deg2rad(_uniform(g, B, *cfg.fovy_range))

        positions = spherical_to_cartesian(elevation_deg, azimuth_deg, camera_distances)
        positions = positions + (torch.rand(B, 3, generator=g) * 2 - 1) * cfg.camera_perturb
        center = _normal(g, B, 3) * cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0]).expand(B, 3) + _normal(g, B, 3) * cfg.up_perturb

        light_distances = _uniform(g, B, *cfg.light_distance_range)
        if cfg.light_sample_strategy == "dreamfusion":
            direction = F.normalize(positions + _normal(g, B, 3) * cfg.light_position_perturb, dim=-1)
        elif cfg.light_sample_strategy == "magic3d":
            direction = self._magic3d_light_directions(positions, B)
        else:  # validate_config rejects this first
            raise ConfigError(f"unknown light_sample_strategy '{cfg.light_sample_strategy}'")
        return {
            "elevation": elevation_deg,
            "azimuth": azimuth_deg,
            "camera_distances": camera_distances,
            "fovy": fovy,
            "camera_positions": positions,
            "center": center,
            "up": up,
            "light_positions": direction * light_distances[:, None],
        }

    def _magic3d_light_directions(self, positions: Tensor, B: int) -> Tensor:
        """Unit directions within 60° of the camera direction: [B, 3]."""
        g = self.generator
        axis = F.normalize(positions, dim=-1)  # local z
        helper = torch.tensor([0.0, 0.0, 1.0]).expand(B, 3)
        helper = torch.where(axis[:, 2:].abs() > 0.99, torch.tensor([1.0, 0.0, 0.0]).expand(B, 3), helper)
        local_x = F.normalize(torch.linalg.cross(helper, axis, dim=-1), dim=-1)
        local_y = torch.linalg.cross(axis, local_x, dim=-1)
        around = _uniform(g, B, -math.pi, math.pi)
        above = _uniform(g, B, math.pi / 6, math.pi / 2)  # angle above the plane ⟂ axis
        return (
            (torch.cos(above) * torch.cos(around))[:, None] * local_x
            + (torch.cos(above) * torch.sin(around))[:, None] * local_y
            + torch.sin(above)[:, None] * axis
        )

    def sample(self, batch_size: Optional[int] = None) -> Dict[str, Any]:
        """One training batch at the current resolution (keys `CAMERA_BATCH_KEYS`)."""
        poses = self.sample_poses(batch_size)
        return camera_batch(
            poses["camera_positions"], poses["fovy"], self.height, self.width,
            poses["light_positions"], poses["elevation"], poses["azimuth"], poses["camera_distances"],
            center=poses["center"], up=poses["up"], near=self.cfg.near, far=self.cfg.far,
            rays_d_normalize=self.cfg.rays_d_normalize,
        )



# ---------------------------------------------------------------- evaluation: turntables
class RandomCameraEvalDataset(Dataset):
    """Turntable around the object: view k at azimuth 360 k / n (wrapped to [-180, 180)),
    elevation `eval_elevation_deg`, distance `eval_camera_distance`, fovy `eval_fovy_deg`, light
    at the camera. n = `n_val_views` ("val") or `n_test_views` ("test"/"predict").
    Items are view indices; `collate` builds the batch (keys `CAMERA_BATCH_KEYS` + "index")."""

    def __init__(self, cfg: Any, split: str, path: str = "data") -> None:
        super().__init__()
        self.cfg = _as_config(cfg, path, "data module 'random-camera-datamodule'")
        self.split = split
        self.n_views = int(self.cfg.n_val_views if split == "val" else self.cfg.n_test_views)

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n_views:
            raise IndexError(index)
        return index

    def azimuth_deg(self, index: Tensor) -> Tensor:
        azimuth = index.float() * (360.0 / self.n_views)
        return torch.remainder(azimuth + 180.0, 360.0) - 180.0

    def collate(self, indices: List[int]) -> Dict[str, Any]:
        index = torch.as_tensor(indices, dtype=torch.long)  # [B]
        B, cfg = index.shape[0], self.cfg
        elevation = torch.full((B,), float(cfg.eval_elevation_deg))
        azimuth = self.azimuth_deg(index)
        distances = torch.full((B,), float(cfg.eval_camera_distance))
        fovy = torch.deg2rad(torch.full((B,), float(cfg.eval_fovy_deg)))
        positions = spherical_to_cartesian(elevation, azimuth, distances)
        batch = camera_batch(
            positions, fovy, int(cfg.eval_height), int(cfg.eval_width), positions.clone(),
            elevation, azimuth, distances, near=cfg.near, far=cfg.far,
            rays_d_normalize=cfg.rays_d_normalize,
        )
        batch["index"] = index
        return batch


def _identity(batch: Any) -> Any:
    return batch


def eval_dataloader(dataset: RandomCameraEvalDataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=dataset.collate)


def train_dataloader(dataset: IterableDataset) -> DataLoader:
    """DataLoader over a dataset that yields ready batches (no automatic batching)."""
    return DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=_identity)


# ---------------------------------------------------------------- the data module
@register("random-camera-datamodule")
class RandomCameraDataModule(pl.LightningDataModule):
    """Random orbit cameras (train) and turntables (val/test/predict); see the module docstring."""

    Config = RandomCameraDataModuleConfig
    COMPONENT = "data module 'random-camera-datamodule'"

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        self.validate_config(self.cfg)
        self.train_dataset = RandomCameraIterableDataset(self.cfg)
        self.val_dataset = RandomCameraEvalDataset(self.cfg, "val")
        self.test_dataset = RandomCameraEvalDataset(self.cfg, "test")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        """Raise ConfigError (naming the key and the fix) for an inconsistent config."""
        cfg = _as_config(cfg, path, cls.COMPONENT)
        resolution_stages(cfg, path)
        for name in ("eval_height", "eval_width", "eval_batch_size", "n_val_views", "n_test_views"):
            if cfg[name] < 1:
                fail(f"{path}.{name}", f"= {cfg[name]} must be >= 1", "use a positive integer")
        check_range(cfg, "elevation_range", path, lo=-90, hi=90, example="[-10, 90]")
        check_range(cfg, "azimuth_range", path, example="[-180, 180]")
        check_range(cfg, "camera_distance_range", path, positive=True, example="[1.0, 1.5]")
        check_range(cfg, "fovy_range", path, positive=True, hi=179, example="[40, 70]")
        check_range(cfg, "light_distance_range", path, positive=True, example="[0.8, 1.5]")
        for name in ("camera_perturb", "center_perturb", "up_perturb", "light_position_perturb"):
            check_scalar(cfg, name, path, lo=0)
        check_scalar(cfg, "eval_elevation_deg", path, lo=-90, hi=90)
        check_scalar(cfg, "eval_camera_distance", path, lo=0, lo_open=True)
        check_scalar(cfg, "eval_fovy_deg", path, lo=0, hi=180, lo_open=True, hi_open=True)
        if cfg.light_sample_strategy not in LIGHT_SAMPLE_STRATEGIES:
            fail(f"{path}.light_sample_strategy", f"= '{cfg.light_sample_strategy}' is unknown",
                  f"use one of {', '.join(LIGHT_SAMPLE_STRATEGIES)}")
        if cfg.progressive_until < 0:
            fail(f"{path}.progressive_until", f"= {cfg.progressive_until} is negative",
                  "use 0 (off) or the number of steps over which the view ranges widen")
        near = check_scalar(cfg, "near", path, lo=0, lo_open=True)
        if not float(cfg.far) > near:
            fail(f"{path}.far", f"= {cfg.far} is not greater than {path}.near = {near}",
                  "set far > near, e.g. near: 0.01, far: 100")

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # everything is built in __init__, so `train_dataset` always exists

    def train_dataloader(self) -> DataLoader:
        return train_dataloader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_dataset, self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_dataset, self.cfg.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_dataset, self.cfg.eval_batch_size)

    def state_dict(self) -> Dict[str, Any]:
        return {"train_dataset": self.train_dataset.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_dataset.load_state_dict(state_dict.get("train_dataset", {}))
