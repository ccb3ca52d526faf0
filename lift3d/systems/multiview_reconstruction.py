"""`multiview-reconstruction-system`: fit a geometry to posed multi-view RGBA images (NeuS
reconstruction of USD's view distillation, docs/methods/usd.md §4 step 5).

The `lift3d-system` without a guidance: the training batch is random rays of the views
(`multiview-images-datamodule`), each with its colour and alpha. Losses, each weighted by
`C(system.loss.lambda_<name>)`:
  rgb:  L1 (`rgb_loss: l1`) or MSE (`mse`) between comp_rgb and the image composited on the
        rendered background, rgb · alpha + bg · (1 - alpha) (straight colour, as RGBADatasetWriter
        stores it);
  mask: binary cross-entropy between the opacity (clamped to [1e-3, 1 - 1e-3]) and alpha;
  and the shared regularizers (`lift3d.systems.regularizers`: eikonal, sparsity, opaque, ...).
Validation writes [ground truth | render | normals | opacity] rows and logs val/psnr; the test
pass (turntable of the dataset's views), the RGBA dataset writer and `--export` (the geometry's
isosurface through the exporter) are the `lift3d-system`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.metrics import psnr
from lift3d.utils.saving import image_row, save_image


@register("multiview-reconstruction-system")
class MultiviewReconstructionSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        guidance_type: str = ""  # none: the images are the supervision
        rgb_loss: str = "l1"  # l1 | mse

    REQUIRED = ("geometry", "renderer")
    system_losses = ("rgb", "mask")

    @classmethod
    def validate_config(
        cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True, exp_root_dir: str = "outputs",
    ) -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        if parsed.rgb_loss not in ("l1", "mse"):
            raise ConfigError(f"{path}.rgb_loss = '{parsed.rgb_loss}': use l1 or mse.")
        if parsed.guidance_type:
            raise ConfigError(
                f"{path}.guidance_type = '{parsed.guidance_type}': multiview-reconstruction-system is supervised by "
                f"the dataset's images and uses no guidance; remove {path}.guidance_type (or use lift3d-system)."
            )
        return parsed

    def build_guidance(self, move: bool = True) -> None:
        """No guidance, no prompt processor."""

    # ------------------------------------------------------------------ training
    def image_target(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The view's colour composited on the rendered background: [B,H,W,3]."""
        alpha = batch["mask"]
        return batch["rgb"] * alpha + out["comp_rgb_bg"].detach() * (1.0 - alpha)

    def image_losses(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = self.image_target(batch, out)
        rgb = F.l1_loss if self.cfg.rgb_loss == "l1" else F.mse_loss
        opacity = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
        return {
            "loss_rgb": rgb(out["comp_rgb"], target),
            "loss_mask": F.binary_cross_entropy(opacity, batch["mask"].clamp(0.0, 1.0)),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        lambdas = self.lambdas()
        out = self(batch)
        terms = self.image_losses(batch, out)
        terms.update(compute_regularizers(out, lambdas))
        if "inv_s" in out and self.logs_this_step():
            self.log("train/inv_s", out["inv_s"].detach(), batch_size=1)
        return self.weighted_loss(terms, lambdas)  # logged, summed, checked for non-finite values

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        target = self.image_target(batch, out)
        self.log("val/psnr", psnr(out["comp_rgb"], target).mean(), batch_size=1)
        for b, index in enumerate(batch["index"].tolist()):
            row = image_row([target[b], *self._eval_images(out, b)])
            save_image(self.save_path(f"it{self.true_global_step}-{index}.png"), row)

    def _eval_images(self, out: dict[str, torch.Tensor], b: int) -> list:
        return [out["comp_rgb"][b], out["comp_normal"][b], out["opacity"][b]]
