"""Occupancy grid for empty-space skipping (pure PyTorch, CPU and CUDA).

Semantics follow nerfacc's ``OccGridEstimator`` as documented (written from scratch here):

* Level ``l`` of an ``L``-level grid covers the box ``centre +- half_size * 2**l`` of ``aabb``
  with ``R**3`` cells; a point is looked up in the finest level that contains it.
* ``occs`` holds, per cell, an exponential moving maximum of the value ``density_fn`` returns at
  jittered points in the cell: ``occ <- max(occ * ema_decay, new)`` for every evaluated cell.
* ``binary = occs > min(occ_thre, mean(occs))``.

``density_fn`` may return a raw density or, as threestudio/nerfacc do, an "occupancy"
``density * render_step_size``; ``occ_thre`` is compared with whatever it returns.

Difference from nerfacc: ``binary`` starts all True, so a grid that has never been updated skips
nothing (instead of everything).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

DensityFn = Callable[[Tensor], Tensor]  # points [N, 3] (world) -> density [N] (or [N, 1])


class OccupancyGrid(nn.Module):
    """Multi-level binary occupancy grid.

    Buffers (saved in checkpoints): ``aabb`` [6] float (xmin, ymin, zmin, xmax, ymax, zmax),
    ``occs`` float and ``binary`` bool, both [R, R, R] for ``levels == 1`` and [L, R, R, R]
    otherwise, indexed ``[(level,) i, j, k]`` with i along x, j along y, k along z.
    """

    aabb: Tensor
    occs: Tensor
    binary: Tensor

    def __init__(
        self,
        aabb: Union[Tensor, Sequence[float]],
        resolution: int = 128,
        levels: int = 1,
    ) -> None:
        super().__init__()
        aabb_t = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb_t.numel() != 6:
            raise ValueError(f"aabb must have 6 values, got {aabb_t.numel()}")
        if not bool((aabb_t[3:] > aabb_t[:3]).all()):
            raise ValueError(f"aabb max must exceed min on every axis, got {aabb_t.tolist()}")
        if int(resolution) < 1 or int(levels) < 1:
            raise ValueError("resolution and levels must be >= 1")
        self.resolution = int(resolution)
        self.levels = int(levels)
        shape = [self.resolution] * 3 if self.levels == 1 else [self.levels] + [self.resolution] * 3
        self.register_buffer("aabb", aabb_t.clone())
        self.register_buffer("occs", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("binary", torch.ones(shape, dtype=torch.bool))

    # ------------------------------------------------------------------ geometry helpers
    @property
    def num_cells_per_level(self) -> int:
        return self.resolution**3

    def level_aabbs(self) -> Tensor:
        """[L, 6] world boxes of the levels (level l = aabb scaled by 2**l about its centre)."""
        centre = (self.aabb[:3] + self.aabb[3:]) * 0.5
        half = (self.aabb[3:] - self.aabb[:3]) * 0.5
        scale = 2.0 ** torch.arange(self.levels, device=self.aabb.device, dtype=self.aabb.dtype)
        half_l = half[None, :] * scale[:, None]  # [L, 3]
        return torch.cat([centre - half_l, centre + half_l], dim=-1)

    def _flat_index(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [N, 3] -> (flat index into binary.view(-1) [N] long, inside-grid mask [N])."""
        centre = (self.aabb[:3] + self.aabb[3:]) * 0.5
        inv_half = 2.0 / (self.aabb[3:] - self.aabb[:3])
        rel = (points.to(self.aabb.dtype) - centre) * inv_half  # [N, 3], level-0 box = [-1, 1]^3
        R = self.resolution
        if self.levels > 1:
            m = rel.abs().amax(dim=-1)  # [N]
            # finest level l with m <= 2**l
            level = torch.ceil(torch.log2(m.clamp_min(1e-30))).clamp_min(0)
            level = level + (m > torch.exp2(level)).to(level.dtype)  # guard log2 rounding
            level = torch.nan_to_num(level, nan=float(self.levels)).clamp_max(self.levels)
            # level == levels: outside every level
            rel = rel * torch.exp2(-level)[:, None]
        u = (rel + 1.0) * (0.5 * R)  # [N, 3], in [0, R] inside the level's box
        inside = ((u >= 0) & (u <= R)).all(dim=-1)  # False for NaN too
        ijk = torch.nan_to_num(u, nan=0.0).clamp(0, R - 1).long()  # floor for u >= 0
        flat = (ijk[:, 0] * R + ijk[:, 1]) * R + ijk[:, 2]
        if self.levels > 1:
            inside = inside & (level < self.levels)
            flat = flat + level.long().clamp_max(self.levels - 1) * R**3
        return flat, inside

    @torch.no_grad()
    def query(self, points: Tensor) -> Tensor:
        """points [N, 3] world -> bool [N]; True where the containing cell is occupied.

        Points outside the coarsest level are reported empty."""
        flat, inside = self._flat_index(points.reshape(-1, 3))
        return self.binary.reshape(-1)[flat] & inside

    def cell_centers(self, level: int = 0) -> Tensor:
        """[R, R, R, 3] world coordinates of the cell centres of one level."""
        return self._cell_points(torch.arange(self.num_cells_per_level, device=self.aabb.device),
                                 level, jitter=False).reshape(*([self.resolution] * 3), 3)

    def _cell_points(self, cell: Tensor, level: int, jitter: bool,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """cell [M] long indices within one level -> world points [M, 3] (centre or jittered)."""
        R = self.resolution
        i = cell // (R * R)
        j = (cell // R) % R
        k = cell % R
        ijk = torch.stack([i, j, k], dim=-1).to(self.aabb.dtype)  # [M, 3]
        if jitter:
            ijk = ijk + torch.rand(ijk.shape, device=ijk.device, dtype=ijk.dtype,
                                   generator=generator)
        else:
            ijk = ijk + 0.5
        box = self.level_aabbs()[level]
        return box[:3] + ijk / R * (box[3:] - box[:3])

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 1,
        subset_fraction: float = 0.25,
        chunk: int = 1 << 18,
        generator: Optional[torch.Generator] = None,  # on the grid's device
    ) -> bool:
        """Refresh the grid from ``density_fn``; returns True if an update happened.

        Runs only when ``step % n == 0`` (nerfacc's ``update_every_n_steps``). While
        ``step < warmup_steps`` every cell is evaluated; afterwards a random ``subset_fraction``
        of the cells of each level plus every currently occupied cell. Each evaluated cell gets
        one density sample at a uniformly jittered point inside it. ``density_fn`` is called
        under ``no_grad`` on at most ``chunk`` points at a time (the point budget that bounds the
        update's memory); the result does not depend on ``chunk`` (on CPU bit for bit: the jitter
        is drawn chunk after chunk from one stream).
        Cost per update: ``L * R**3`` (warmup) or about ``L * R**3 * subset_fraction + occupied``
        density evaluations; extra memory ~ 20 bytes per cell of one level (cell list, random
        pick) plus ~100 bytes per point of one chunk (indices, jittered points), besides
        whatever ``density_fn`` needs for ``chunk`` points.
        """
        if int(chunk) < 1:
            raise ValueError(f"OccupancyGrid.update: chunk (points per density_fn call) must be >= 1, got {chunk}")
        if n > 1 and step % n != 0:
            return False
        R3 = self.num_cells_per_level
        occs = self.occs.view(self.levels, R3)
        binary = self.binary.view(self.levels, R3)
        warmup = step < warmup_steps
        for lvl in range(self.levels):
            if warmup:
                cells = torch.arange(R3, device=occs.device)
            else:
                pick = torch.rand(R3, device=occs.device, generator=generator) < subset_fraction
                cells = torch.nonzero(pick | binary[lvl], as_tuple=False).squeeze(-1)
            for s in range(0, cells.numel(), chunk):
                c = cells[s : s + chunk]
                pts = self._cell_points(c, lvl, jitter=True, generator=generator)
                dens = density_fn(pts).reshape(-1).to(occs.dtype)
                if dens.numel() != c.numel():
                    raise ValueError(
                        f"density_fn returned {dens.numel()} values for {c.numel()} points")
                occs[lvl, c] = torch.maximum(occs[lvl, c] * ema_decay, dens)
        thre = torch.clamp(self.occs.mean(), max=occ_thre)
        self.binary.copy_(self.occs > thre)
        return True

    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, levels={self.levels}, aabb={self.aabb.tolist()}"
