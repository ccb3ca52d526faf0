"""`nerf-volume-renderer`: occupancy-grid ray marching + volume compositing, in PyTorch.

Samples are packed (nerfacc-style): marching drops samples in empty grid cells and, optionally,
samples whose alpha is below 1e-2; the survivors are shaded, weighted (w_i = T_i·alpha_i) and
accumulated per ray. The occupancy grid is refreshed every `grid_update_interval` training steps
from the geometry's density × step size (the probability that one step is opaque).

Memory at evaluation is bounded by samples, not rays (issue #24): rays are marched in groups whose
candidate samples fit `eval_max_samples` × `eval_march_factor` (16 bytes per kept sample), and the
kept samples are shaded and composited in chunks of at most `eval_max_samples`, cut at ray
boundaries so that every ray is composited whole — the same images as one unchunked pass, with a
peak that no longer grows with the resolution. Each shaded sample costs about 0.7 KB (hash grid +
MLPs) and 5.7 KB with finite-difference normals, which evaluation always computes
(`lift3d/memory_check.py` holds the measured figures). Training marches with the same budget of
candidates per pruning query (alpha pruning evaluates the field once per candidate).

Samplers (`estimator`, threestudio's key; docs/nerf_sampling.md): `occgrid` (default) is the marching
above; `importance` shades `num_samples_per_ray_importance` uniform intervals plus `num_samples_per_ray`
intervals drawn from their weights under the field's own density (`renderers/importance_sampling.py`);
`proposal` shades `num_samples_per_ray` intervals drawn from a small proposal network's weights, the
network trained by the proposal loss with its own optimizer (`renderers/proposal_network.py`). Both
sample [near_plane, far_plane] clipped to the cube, every ray alike; evaluation shades runs of whole
rays of at most `eval_max_samples` samples.
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
from lift3d.renderers.importance_sampling import importance_edges, midpoint_field, packed_intervals, ray_segment

ESTIMATORS = ("occgrid", "importance", "proposal")


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        num_samples_per_ray: int = 512
        randomized: bool = True  # stratified sample offsets during training
        eval_chunk_size: int = 160000  # at most this many rays per marching group at evaluation
        # samples shaded at once at evaluation (and candidates pruned at once while marching):
        # 2^18 × ~5.7 KB (16-level hash grid, finite-difference normals) ≈ 1.5 GB, sized for a 24 GB
        # machine or GPU next to the models; lower it on smaller ones (lift3d/memory_check.py)
        eval_max_samples: int = 1 << 18
        eval_march_factor: int = 8  # a marching group holds at most this many × eval_max_samples candidates
        # training: more kept samples than this are shaded in runs of this many, each recomputed in the
        # backward pass instead of holding its activations (hash-grid features, MLP hidden layers: ~1 KB per
        # sample with a 16-level grid) — the same images and gradients, one more field query per kept
        # sample; up to this many, the activations are held (the peak is the same, the step faster);
        # 0: always hold them (one geometry call for all samples, as before #24)
        checkpoint_samples: int = 1 << 18
        grid_prune: bool = True
        grid_resolution: int = 32
        grid_update_interval: int = 16
        grid_warmup_steps: int = 256
        grid_occ_threshold: float = 0.01
        prune_alpha_threshold: bool = True
        return_comp_normal: bool = False  # compute normals in training too (eval always does)
        # threestudio's: also the normals at every sample jittered by N(0, 0.01^2) (out["normal_perturb"],
        # training only) for the 3D normal smoothness loss lambda_3d_normal_smooth (lift3d.systems.regularizers)
        return_normal_perturb: bool = False
        # threestudio's ray sampler switch (module docstring): occgrid | importance | proposal
        estimator: str = "occgrid"
        near_plane: float = 0.0
        far_plane: float = 1e10
        # importance: uniform (coarse) intervals per ray; the drawn ones are num_samples_per_ray (threestudio's split)
        num_samples_per_ray_importance: int = 64
        # proposal: the proposal network's uniform intervals per ray; its config, optimizer and scheduler
        num_samples_per_ray_proposal: int = 64
        proposal_network_config: Optional[dict] = None
        prop_optimizer_config: Optional[dict] = None
        prop_scheduler_config: Optional[dict] = None

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.renderer") -> None:
        super().validate_config(cfg, path)
        cls.validate_sampler(cfg, path)

    @classmethod
    def validate_sampler(cls, cfg: Any, path: str) -> None:
        """The `estimator` keys (this renderer's and neus-volume-renderer's)."""
        from lift3d.errors import ConfigError

        if cfg.estimator not in ESTIMATORS:
            raise ConfigError(f"{path}.estimator = '{cfg.estimator}' is unknown: use one of {', '.join(ESTIMATORS)}.")
        for key in ("num_samples_per_ray", "num_samples_per_ray_importance", "num_samples_per_ray_proposal"):
            if int(getattr(cfg, key)) < 1:
                raise ConfigError(f"{path}.{key} = {getattr(cfg, key)}: use at least 1 (e.g. 64).")
        if cfg.estimator != "occgrid" and not cfg.far_plane > cfg.near_plane >= 0.0:
            raise ConfigError(f"{path}.near_plane = {cfg.near_plane}, far_plane = {cfg.far_plane}: the "
                              f"{cfg.estimator} sampler needs 0 <= near_plane < far_plane.")
        if cfg.estimator == "proposal":
            from lift3d.renderers.proposal_network import validate_proposal_configs

            validate_proposal_configs(cfg.proposal_network_config, cfg.prop_optimizer_config,
                                      cfg.prop_scheduler_config, path)

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        if self.cfg.eval_max_samples < 1 or self.cfg.eval_chunk_size < 1 or self.cfg.eval_march_factor < 1:
            from lift3d.errors import ConfigError

            raise ConfigError(
                "system.renderer.eval_max_samples, eval_chunk_size and eval_march_factor must be >= 1 "
                f"(got {self.cfg.eval_max_samples}, {self.cfg.eval_chunk_size}, {self.cfg.eval_march_factor})."
            )
        r = self.cfg.radius
        # step so that the bbox diagonal holds num_samples_per_ray samples
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray
        self.occupancy_grid = OccupancyGrid([-r, -r, -r, r, r, r], resolution=self.cfg.grid_resolution)
        if self.cfg.estimator == "proposal":
            from lift3d.renderers.proposal_network import ProposalSampler

            self.proposal = ProposalSampler(self.cfg.proposal_network_config, self.cfg.prop_optimizer_config,
                                            self.cfg.prop_scheduler_config, r)

    def _occupancy(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry.forward_field(points).reshape(-1) * self.render_step_size

    def update_step(self, epoch: int, global_step: int) -> None:
        if self.cfg.estimator == "proposal" and self.training:
            self.proposal.update_step(global_step)
        if self.cfg.grid_prune and self.training and self.cfg.estimator == "occgrid":
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
            out = self._render_rays_bounded(o, d, lights)  # eval: per-ray outputs only
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

    # ------------------------------------------------------------------ marching
    def _alpha_fn(self, o: torch.Tensor, d: torch.Tensor):
        """The pruning opacity of candidate samples (None: no alpha pruning)."""
        if not self.cfg.prune_alpha_threshold:
            return None

        def alpha_fn(t_starts, t_ends, ray_indices):
            pos = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            sigma = self.geometry.forward_field(pos).reshape(-1)
            return 1.0 - torch.exp(-sigma * (t_ends - t_starts))

        return alpha_fn

    def _march(self, o: torch.Tensor, d: torch.Tensor, chunk_size: int = 1 << 20):
        """Packed samples of rays o, d [N,3] → (ray_idx [S], t_starts [S], t_ends [S])."""
        return march_rays(
            o, d, self.occupancy_grid.aabb, self.cfg.near_plane, self.cfg.far_plane, self.render_step_size,
            occupancy_grid=self.occupancy_grid if self.cfg.grid_prune else None,
            alpha_fn=self._alpha_fn(o, d), alpha_thre=1e-2 if self.cfg.prune_alpha_threshold else 0.0,
            stratified=self.training and self.cfg.randomized, chunk_size=chunk_size,
        )

    def _candidate_counts(self, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """An upper bound of each ray's candidate samples before pruning ([N] long, march_rays' steps + 1)."""
        t_a, t_b = ray_segment(o, d, self.cfg.radius, self.cfg.near_plane, self.cfg.far_plane, self.occupancy_grid.aabb)
        return torch.ceil((t_b - t_a) / self.render_step_size).long() + 1  # a ray that misses: t_a = t_b

    # ------------------------------------------------------------------ rendering
    def _render_rays(self, o: torch.Tensor, d: torch.Tensor, lights: torch.Tensor) -> dict[str, torch.Tensor]:
        """March and shade all rays at once (training: one graph for the whole batch)."""
        if self.cfg.estimator != "occgrid":
            edges = self._dense_edges(o, d)  # [N,K+1]
            out = self._shade(o, d, lights, *packed_intervals(edges))
            if self.cfg.estimator == "proposal" and self.training:
                loss = self.proposal.loss(edges, out["weights"].detach().reshape(edges.shape[0], -1))
                if loss is not None:
                    out["loss_proposal"] = loss
            return out
        ray_idx, t_starts, t_ends = self._march(o, d, chunk_size=int(self.cfg.eval_max_samples))
        return self._shade(o, d, lights, ray_idx, t_starts, t_ends)

    # ------------------------------------------------------------------ importance / proposal samplers
    def _dense_edges(self, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The intervals of the importance / proposal sampler for rays o, d [N,3] → edges [N,K+1]."""
        t_near, t_far = ray_segment(o, d, self.cfg.radius, self.cfg.near_plane, self.cfg.far_plane,
                                    self.occupancy_grid.aabb)
        stratified = self.training and self.cfg.randomized
        if self.cfg.estimator == "importance":
            return importance_edges(t_near, t_far, self._interval_density(o, d), self.cfg.num_samples_per_ray_importance,
                                    self.cfg.num_samples_per_ray, stratified)
        return self.proposal.sample(o, d, t_near, t_far, self.cfg.num_samples_per_ray_proposal,
                                    self.cfg.num_samples_per_ray, stratified, chunk=int(self.cfg.eval_max_samples))

    def _interval_density(self, o: torch.Tensor, d: torch.Tensor):
        """The field's density at the midpoints of dense intervals (t_starts, t_ends [N,K] → [N,K]),
        evaluated in runs of at most `eval_max_samples` points: what importance sampling draws from."""
        return midpoint_field(o, d, self.geometry.forward_field, int(self.cfg.eval_max_samples))

    def _render_dense_bounded(self, o: torch.Tensor, d: torch.Tensor, lights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation of the importance / proposal samplers: runs of whole rays with at most
        `eval_max_samples` shaded samples (and `eval_chunk_size` rays) each → per-ray outputs [N,C]."""
        n = o.shape[0]
        per_ray = self.cfg.num_samples_per_ray + (self.cfg.num_samples_per_ray_importance
                                                  if self.cfg.estimator == "importance" else 0)
        rays = max(1, min(int(self.cfg.eval_chunk_size), int(self.cfg.eval_max_samples) // per_ray))
        out: dict[str, torch.Tensor] = {}
        for a in range(0, n, rays):
            b = min(n, a + rays)
            part = self._shade(o[a:b], d[a:b], lights[a:b], *packed_intervals(self._dense_edges(o[a:b], d[a:b])))
            for key, value in part.items():
                if key not in out:
                    out[key] = value.new_zeros(n, value.shape[-1])
                out[key][a:b] = value
        return out

    def _render_rays_bounded(self, o: torch.Tensor, d: torch.Tensor, lights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation with a peak set by `eval_max_samples`, not by the number of rays (o, d, lights [N,3]).

        Rays are marched in groups of at most `eval_chunk_size` rays and `eval_march_factor` ×
        `eval_max_samples` candidate samples; a group's kept samples (sorted by ray) are cut at ray
        boundaries into runs of at most `eval_max_samples` (a single ray with more samples is shaded
        alone) and each run is shaded and composited for its rays only. Per-ray outputs are written
        into [N,C] buffers; a ray without samples keeps zeros, as the unchunked compositing gives.
        """
        if self.cfg.estimator != "occgrid":
            return self._render_dense_bounded(o, d, lights)
        budget = int(self.cfg.eval_max_samples)
        n = o.shape[0]
        out: dict[str, torch.Tensor] = {}
        counts = self._candidate_counts(o, d)
        for r0, r1 in _runs(counts, budget * int(self.cfg.eval_march_factor), int(self.cfg.eval_chunk_size)):
            ray_idx, t_starts, t_ends = self._march(o[r0:r1], d[r0:r1], chunk_size=budget)
            if ray_idx.numel() == 0:
                continue
            per_ray = torch.bincount(ray_idx, minlength=r1 - r0)  # [r1-r0] kept samples per ray
            starts = torch.cumsum(per_ray, 0) - per_ray  # [r1-r0] first packed index of each ray
            for a, b in _runs(per_ray, budget, r1 - r0):
                if int(per_ray[a:b].sum()) == 0:
                    continue
                s0, s1 = int(starts[a]), int(starts[b - 1] + per_ray[b - 1])
                part = self._shade(
                    o[r0 + a : r0 + b], d[r0 + a : r0 + b], lights[r0 + a : r0 + b],
                    ray_idx[s0:s1] - a, t_starts[s0:s1], t_ends[s0:s1],
                )
                for key, value in part.items():
                    if key not in out:
                        out[key] = value.new_zeros(n, value.shape[-1])
                    out[key][r0 + a : r0 + b] = value
        if not out:  # no ray has a sample: what compositing gives for empty rays
            out = self._shade(o[:1], d[:1], lights[:1], *(x[:0] for x in self._march(o[:1], d[:1])))
            out = {k: v.new_zeros(n, v.shape[-1]) for k, v in out.items()}
        return out

    def _shade(self, o, d, lights, ray_idx, t_starts, t_ends) -> dict[str, torch.Tensor]:
        """Shade packed samples and composite them per ray: o, d, lights [N,3], ray_idx [S] in [0, N)."""
        n_rays = o.shape[0]
        t_dirs = d[ray_idx]  # [S,3]
        positions = o[ray_idx] + t_dirs * ((t_starts + t_ends) * 0.5)[:, None]  # [S,3]
        want_normal = (self.material.requires_normal or self.cfg.return_comp_normal or not self.training
                       or self.cfg.return_normal_perturb)
        # checkpointing pays one more field query per sample; below one run the held activations are
        # no larger than one recomputed run would be, so only larger sample sets are checkpointed
        if (self.training and 0 < self.cfg.checkpoint_samples < positions.shape[0]
                and torch.is_grad_enabled()):
            geo = self._checkpointed_geometry(positions, want_normal)
        else:
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
            if self.cfg.return_normal_perturb:  # [S,3]
                jittered = positions + torch.randn_like(positions) * 1e-2
                out["normal_perturb"] = self.geometry(jittered, output_normal=True)["normal"]
        return out

    def _checkpointed_geometry(self, positions: torch.Tensor, want_normal: bool) -> dict[str, torch.Tensor]:
        """The geometry at positions [S,3] in runs of at most `checkpoint_samples`, each recomputed in the
        backward pass (torch.utils.checkpoint) instead of holding its activations: {density [S,1],
        features [S,F], normal [S,3] when asked}. The material stays outside (it may draw Python random
        numbers, which a recomputation would not replay)."""
        from torch.utils.checkpoint import checkpoint

        def field(points: torch.Tensor):
            geo = self.geometry(points, output_normal=want_normal)
            return geo["density"], geo["features"], geo.get("normal")

        budget = int(self.cfg.checkpoint_samples)
        parts = [checkpoint(field, positions[a : a + budget], use_reentrant=False)
                 for a in range(0, positions.shape[0], budget)] or [field(positions)]
        density, features = (torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in (0, 1))
        geo = {"density": density, "features": features}
        if want_normal:
            geo["normal"] = torch.cat([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
        return geo


def _runs(counts: torch.Tensor, budget: int, max_len: int) -> list[tuple[int, int]]:
    """Cut [0, len(counts)) into consecutive runs [a, b) of at most `max_len` items whose counts sum
    to at most `budget` (a single item over the budget forms a run of its own)."""
    csum = torch.cumsum(counts.reshape(-1).long().cpu(), 0)  # [N]
    n, runs, a, base = csum.shape[0], [], 0, 0
    while a < n:
        b = int(torch.searchsorted(csum, torch.tensor(base + budget), right=True))
        b = min(max(b, a + 1), a + max_len)
        runs.append((a, b))
        base, a = int(csum[b - 1]), b
    return runs


_IMAGE_KEYS = ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal")
