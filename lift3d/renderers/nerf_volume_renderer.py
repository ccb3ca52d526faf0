"""`nerf-volume-renderer`: occupancy-grid ray marching + volume compositing, in PyTorch.

Samples are packed (nerfacc-style): marching drops samples in empty grid cells and, optionally,
samples whose alpha is below 1e-2; the survivors are shaded, weighted (w_i = T_i·alpha_i) and
accumulated per ray. The occupancy grid is refreshed every `grid_update_interval` training steps
from the geometry's density × step size (the probability that one step is opaque).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.ops.occupancy_grid import OccupancyGrid
from lift3d.ops.ray_marching import march_rays
from lift3d.ops.volume_rendering import accumulate_along_rays, render_weight_from_density, z_variance_along_rays
from lift3d.registry import register
from lift3d.renderers.base import BaseRenderer


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        num_samples_per_ray: int = 512
        randomized: bool = True  # stratified sample offsets during training
        eval_chunk_size: int = 160000  # rays per chunk at evaluation
        grid_prune: bool = True
        grid_resolution: int = 32
        grid_update_interval: int = 16
        grid_warmup_steps: int = 256
        grid_occ_threshold: float = 0.01
        prune_alpha_threshold: bool = True
        return_comp_normal: bool = False  # compute normals in training too (eval always does)
        near_plane: float = 0.0
        far_plane: float = 1e10

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        r = self.cfg.radius
        # step so that the bbox diagonal holds num_samples_per_ray samples
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray
        self.occupancy_grid = OccupancyGrid([-r, -r, -r, r, r, r], resolution=self.cfg.grid_resolution)

    def _occupancy(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry.forward_field(points).reshape(-1) * self.render_step_size

    def update_step(self, epoch: int, global_step: int) -> None:
        if self.cfg.grid_prune and self.training:
            self.occupancy_grid.update(
                global_step,
                self._occupancy,
                occ_thre=self.cfg.grid_occ_threshold,
                warmup_steps=self.cfg.grid_warmup_steps,
                n=self.cfg.grid_update_interval,
            )

    def forward(
        self,
        rays_o: torch.Tensor,  # [B,H,W,3]
        rays_d: torch.Tensor,  # [B,H,W,3]
        light_positions: torch.Tensor,  # [B,3]
        bg_color: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        B, H, W, _ = rays_o.shape
        o = rays_o.reshape(-1, 3)
        d = rays_d.reshape(-1, 3)
        lights = light_positions.reshape(B, 1, 1, 3).expand(B, H, W, 3).reshape(-1, 3)
        if self.training:
            out = self._render_rays(o, d, lights)
        else:
            chunk = self.cfg.eval_chunk_size
            parts = [self._render_rays(o[i : i + chunk], d[i : i + chunk], lights[i : i + chunk]) for i in range(0, o.shape[0], chunk)]
            out = {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}  # eval: per-ray outputs only
        if bg_color is None:
            bg = self.background(dirs=rays_d)  # [B,H,W,3]
        else:
            bg = bg_color.to(rays_o).reshape(-1, 1, 1, 3).expand(B, H, W, 3) if bg_color.dim() <= 2 else bg_color
        images = {k: v.reshape(B, H, W, -1) for k, v in out.items() if k in _IMAGE_KEYS}
        images["comp_rgb_bg"] = bg
        images["comp_rgb"] = images["comp_rgb_fg"] + bg * (1.0 - images["opacity"])
        if self.training:
            images.update({k: v for k, v in out.items() if k not in _IMAGE_KEYS})
        return images

    def _render_rays(self, o: torch.Tensor, d: torch.Tensor, lights: torch.Tensor) -> dict[str, torch.Tensor]:
        n_rays = o.shape[0]
        alpha_fn = None
        if self.cfg.prune_alpha_threshold:
            def alpha_fn(t_starts, t_ends, ray_indices):
                pos = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
                sigma = self.geometry.forward_field(pos).reshape(-1)
                return 1.0 - torch.exp(-sigma * (t_ends - t_starts))

        ray_idx, t_starts, t_ends = march_rays(
            o, d, self.occupancy_grid.aabb, self.cfg.near_plane, self.cfg.far_plane, self.render_step_size,
            occupancy_grid=self.occupancy_grid if self.cfg.grid_prune else None,
            alpha_fn=alpha_fn, alpha_thre=1e-2 if self.cfg.prune_alpha_threshold else 0.0,
            stratified=self.training and self.cfg.randomized,
        )
        t_dirs = d[ray_idx]  # [S,3]
        positions = o[ray_idx] + t_dirs * ((t_starts + t_ends) * 0.5)[:, None]  # [S,3]
        want_normal = self.material.requires_normal or self.cfg.return_comp_normal or not self.training
        geo = self.geometry(positions, output_normal=want_normal)
        rgb = self.material(
            features=geo["features"], viewdirs=t_dirs, positions=positions,
            light_positions=lights[ray_idx], shading_normal=geo.get("normal"),
        )  # [S,3]
        weights, _, _ = render_weight_from_density(t_starts, t_ends, geo["density"].reshape(-1), ray_idx, n_rays)
        opacity = accumulate_along_rays(weights, None, ray_idx, n_rays)  # [N,1]
        t_mid = (t_starts + t_ends) * 0.5
        depth = accumulate_along_rays(weights, t_mid, ray_idx, n_rays)  # [N,1]
        out = {
            "comp_rgb_fg": accumulate_along_rays(weights, rgb, ray_idx, n_rays),
            "opacity": opacity,
            "depth": depth,
            "z_variance": z_variance_along_rays(weights, t_starts, t_ends, ray_idx, n_rays),
        }
        if "normal" in geo:
            comp_normal = F.normalize(accumulate_along_rays(weights, geo["normal"], ray_idx, n_rays), dim=-1)
            out["comp_normal"] = (comp_normal + 1.0) * 0.5 * opacity  # [0,1], black where empty
        if self.training:
            out.update({"weights": weights[:, None], "t_dirs": t_dirs, "points": positions})
            if "normal" in geo:
                out["normal"] = geo["normal"]
        return out


_IMAGE_KEYS = ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal")
