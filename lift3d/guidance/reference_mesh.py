"""`reference-mesh-guidance`: losses toward the true render of a known mesh (docs/DESIGN.md "Testing").

Knowing the mesh, the true image and mask at any camera are rendered with lift3d's rasterizer,
so the whole pipeline (cameras → geometry → renderer → loss → optimizer → stage chaining → export)
can be checked against a known answer. Colours come from the mesh's vertex colours, or from a
fixed view-independent Lambertian shading of a grey albedo when it has none.
Losses: loss_mesh_rgb = MSE(render, true image composited over the render's background),
loss_mesh_mask = MSE(opacity, true antialiased mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.guidance.base import BaseGuidance
from lift3d.registry import register
from lift3d.utils.paths import resolve_file


def _vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # area-weighted vertex normals [V,3]
    fn = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    vn = torch.zeros_like(v).index_add_(0, f.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(vn, dim=-1)


@register("reference-mesh-guidance")
class ReferenceMeshGuidance(BaseGuidance):
    @dataclass
    class Config(BaseGuidance.Config):
        mesh_path: str = "load/shapes/capsule_bicolor.ply"
        normalize: bool = False  # centre the mesh and scale its longest half-extent to normalize_radius
        normalize_radius: float = 0.6
        # colours without vertex colours: grey albedo under a fixed light (view-independent)
        light_direction: Optional[list] = None  # default [0.3, -0.5, 0.8]
        use_vertex_colors: bool = True

    produces = ("loss_mesh_rgb", "loss_mesh_mask")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        from lift3d.ops.mesh_io import load_mesh

        mesh_file = resolve_file(cfg.mesh_path, f"{path}.mesh_path", "mesh file")
        try:
            load_mesh(mesh_file)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"{path}.mesh_path: {exc}") from None

    def configure(self) -> None:
        from lift3d.ops.mesh_io import load_mesh, normalize_mesh

        v, f, c = load_mesh(resolve_file(self.cfg.mesh_path, "system.guidance.mesh_path", "mesh file"))
        v = torch.from_numpy(v).float()
        if self.cfg.normalize:
            v = normalize_mesh(v, self.cfg.normalize_radius)
        self.v_pos, self.faces = v, torch.from_numpy(f).long()
        if c is not None and self.cfg.use_vertex_colors:
            self.v_color = torch.from_numpy(c).float()
        else:
            light = torch.tensor(self.cfg.light_direction or [0.3, -0.5, 0.8], dtype=torch.float32)
            shade = (_vertex_normals(v, self.faces) @ F.normalize(light, dim=0)).clamp(min=0.0)
            self.v_color = (0.25 + 0.65 * shade)[:, None].expand(-1, 3).contiguous() * torch.tensor([0.9, 0.8, 0.7])
        self._topology: Optional[tuple] = None

    def to(self, device: torch.device | str) -> "ReferenceMeshGuidance":
        super().to(device)
        self.v_pos, self.faces, self.v_color = (t.to(self.device) for t in (self.v_pos, self.faces, self.v_color))
        self._topology = None
        return self

    @torch.no_grad()
    def render_reference(self, mvp: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """True image [B,H,W,3] (black background) and antialiased mask [B,H,W,1] at cameras mvp [B,4,4]."""
        from lift3d.ops.rasterize import edge_topology, render_mesh_attributes

        if self._topology is None:
            self._topology = edge_topology(self.faces)
        out = render_mesh_attributes(
            self.v_pos, self.faces, mvp.to(self.v_pos), height, width,
            attrs={"color": self.v_color}, antialias_attrs=True, topology=self._topology,
        )
        return out["color"], out["mask"]

    def __call__(
        self,
        image: torch.Tensor,  # [B,H,W,3] render
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, torch.Tensor]] = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        B, H, W, _ = image.shape
        color, mask = self.render_reference(batch["mvp_mtx"], H, W)
        bg = render_out["comp_rgb_bg"].detach() if render_out and "comp_rgb_bg" in render_out else torch.ones_like(image)
        target = color + bg * (1.0 - mask)  # colour is already premultiplied by coverage
        losses = {"loss_mesh_rgb": F.mse_loss(image, target)}
        if render_out is not None and "opacity" in render_out:
            losses["loss_mesh_mask"] = F.mse_loss(render_out["opacity"], mask)
        return losses
