"""`lift3d-system`: render → guidance → weighted losses + regularizers, for any geometry.

One system serves text-to-3D (SDS-style guidances), image-to-3D (a batch with a reference view and
`batch["random_camera"]`: the guidance sees the random view, the reference view gets RGB and mask
losses when lambda_rgb / lambda_mask > 0) and reconstruction against a reference mesh.
Which render output the guidance sees is `guidance_input` (comp_rgb, comp_normal, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lift3d.registry import register
from lift3d.systems.base import BaseLift3DSystem
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.saving import image_row, save_image, save_video_from_folder


@register("lift3d-system")
class Lift3DSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_input: str = "comp_rgb"
        # reference-view losses use the background colour where the reference mask is empty
        reference_background: str = "render"  # "render" (the rendered background) or "white"

    system_losses = ("rgb", "mask")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ training
    def lambdas(self) -> dict[str, float]:
        return {k[len("lambda_"):]: float(self.C(v)) for k, v in self.cfg.loss.items()}

    def reference_losses(self, batch: dict[str, Any], lambdas: dict[str, float]) -> dict[str, torch.Tensor]:
        if lambdas.get("rgb", 0.0) <= 0.0 and lambdas.get("mask", 0.0) <= 0.0:
            return {}
        out = self(batch)
        mask = batch["mask"]  # [B,H,W,1]
        bg = out["comp_rgb_bg"] if self.cfg.reference_background == "render" else torch.ones_like(batch["rgb"])
        target = batch["rgb"] * mask + bg * (1.0 - mask)
        return {
            "loss_rgb": F.mse_loss(out["comp_rgb"], target),
            "loss_mask": F.mse_loss(out["opacity"], mask),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        lambdas = self.lambdas()
        view = batch.get("random_camera", batch)
        out = self(view)
        terms = dict(
            self.guidance(out[self.cfg.guidance_input], batch=view, prompt_utils=self.prompt_utils, render_out=out)
        )
        evaluation = terms.pop("guidance_eval", None)  # image grid [H, W, 3] from a diffusion guidance
        if evaluation is not None and self._save_dir is not None:
            save_image(self.save_path(f"it{self.true_global_step}-guidance.png"), evaluation)
        terms.update(compute_regularizers(out, lambdas))
        if "random_camera" in batch:
            terms.update(self.reference_losses(batch, lambdas))

        loss = torch.zeros((), device=self.device)
        for name, value in terms.items():
            if name.startswith("loss_"):
                weight = lambdas.get(name[len("loss_"):], 0.0)
                self.log(f"train/{name}", value.detach(), batch_size=1)
                if weight > 0.0:
                    loss = loss + weight * value
            elif torch.is_tensor(value) and value.numel() == 1:
                self.log(f"train/{name}", value.detach().float(), batch_size=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=1)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_row(self, out: dict[str, torch.Tensor], b: int) -> Any:
        images = [out["comp_rgb"][b]]
        if "comp_normal" in out:
            images.append(out["comp_normal"][b])
        images.append(out["opacity"][b])
        return image_row(images)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        for b, index in enumerate(batch["index"].tolist()):
            row = self._eval_row(out, b)
            save_image(self.save_path(f"it{self.true_global_step}-{index}.png"), row)
            if index == 0:
                for logger in self.loggers:
                    if hasattr(logger.experiment, "add_image"):
                        logger.experiment.add_image("val/render", row, self.true_global_step, dataformats="HWC")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        for b, index in enumerate(batch["index"].tolist()):
            save_image(self.save_path(f"it{self.true_global_step}-test/{index}.png"), self._eval_row(out, b))

    def on_test_epoch_start(self) -> None:
        # a repeated test pass at the same step replaces the previous frames
        for old in self.save_path(f"it{self.true_global_step}-test/x").parent.glob("*.png"):
            old.unlink()

    def on_test_epoch_end(self) -> None:
        folder = self.save_path(f"it{self.true_global_step}-test")
        if any(folder.glob("*.png")):
            save_video_from_folder(folder, self.save_path(f"it{self.true_global_step}-test.mp4"), fps=30)

    # ------------------------------------------------------------------ export (--export)
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        return None

    def on_predict_start(self) -> None:
        from lift3d.registry import find

        exporter = find(self.cfg.exporter_type)(
            self.cfg.exporter, geometry=self.geometry, material=self.material, background=self.background
        )
        folder = self.save_path(f"it{self.true_global_step}-export")
        for path in exporter.export(folder):
            print(f"lift3d: exported {path}")
