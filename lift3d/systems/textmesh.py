"""`textmesh-system`: TextMesh (Tsalicoglou et al., arXiv 2304.12439; docs/methods/textmesh.md), threestudio's
system name and keys.

Stage 1 (configs/textmesh-if.yaml, textmesh-sd.yaml): an SDF (`implicit-sdf`) rendered by NeuS
(`neus-volume-renderer`, learned inverse standard deviation `inv_s`, cos annealing), scored by a 2D
prior (DeepFloyd IF or Stable Diffusion) through the shared SDS step, with the eikonal regularizer
(`lambda_eikonal`) keeping the field a distance function: a surface, not a density, so the mesh is
its zero level set. It is `lift3d-system` with these defaults; the SDF's `shape_init` is fitted when
training starts (threestudio's `initialize_shape` in on_fit_start), and `inv_std` (the NeuS sharpness)
is logged as threestudio's `train/inv_std`.

Stage 2 (configs/textmesh-refine-sd.yaml): the textured-mesh refinement: the SDF's zero level set becomes
a fixed DMTet mesh (`geometry_convert_from`), its texture field is refined by SDS at low noise levels
(max_step_percent 0.5) on rasterized renders, and --export writes the textured mesh (OBJ + MTL + texture).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem


@register("textmesh-system")
class TextMeshSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-sdf"
        material_type: str = "diffuse-with-point-light-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "neus-volume-renderer"
        prompt_processor_type: str = "deep-floyd-prompt-processor"
        guidance_type: str = "deep-floyd-guidance"

    _inv_s: Optional[Tensor] = None

    def guidance_image(self, out: dict[str, Tensor], *view: Any) -> tuple[Tensor, dict[str, Any]]:
        self._inv_s = out.get("inv_s")  # NeuS's sharpness of this step's render
        return super().guidance_image(out, *view)

    def weighted_loss(self, terms: dict[str, Any], lambdas: dict[str, float]) -> Optional[Tensor]:
        if self._inv_s is not None:
            self.log("train/inv_std", torch.as_tensor(self._inv_s).detach().float().reshape(-1)[0], prog_bar=True,
                     batch_size=1)
            self._inv_s = None
        return super().weighted_loss(terms, lambdas)


__all__ = ["TextMeshSystem"]
