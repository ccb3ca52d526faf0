"""`lift3d-system`: render → guidance → weighted losses + regularizers, for any geometry.

One system serves text-to-3D (SDS-style guidances), image-to-3D (a batch with a reference view and
`batch["random_camera"]`: the guidance sees the random view, the reference view gets RGB and mask
losses when lambda_rgb / lambda_mask > 0) and reconstruction against a reference mesh.
Which render output the guidance sees is `guidance_input` (comp_rgb, comp_normal, ...).

Reference-view hook (image-to-3D guidances that score the reference view too, e.g. USD's
delta term, docs/methods/usd.md §2): a guidance whose class lists loss names in
`reference_view_losses` gets, when any of their lambdas is > 0 at this step, two more keyword
arguments in the same call as the random view: `reference_out` (the render of the reference
camera, rendered once and shared with the rgb/mask losses) and `reference_image` ([B,H,W,3], the
input image composited as the rgb-loss target). One call, so a guidance can batch both views'
predictions into one UNet call.

`save_rgba_dataset`: the test pass also writes every view as a straight-alpha RGBA PNG (colour
comp_rgb_fg / opacity, alpha = opacity) with its camera in `save/it{step}-test-rgba/transforms.json`,
the instant-ngp / nerfstudio format (OpenGL c2w `transform_matrix`, `camera_angle_x`, `fl_x`,
`fl_y`, `cx`, `cy`, `w`, `h`): a multi-view dataset ready for reconstruction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.data.image_io import composite
from lift3d.registry import register
from lift3d.systems.base import BaseLift3DSystem
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.rgba_dataset import RGBADatasetWriter
from lift3d.utils.saving import image_row, save_image, save_video_from_folder


@register("lift3d-system")
class Lift3DSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_input: str = "comp_rgb"
        # reference-view losses use the background colour where the reference mask is empty
        reference_background: str = "render"  # "render" (the rendered background) or "white"
        # test pass: also write RGBA frames + transforms.json under save/it{step}-test-rgba/
        save_rgba_dataset: bool = False

    system_losses = ("rgb", "mask")
    _rgba_writer: Optional[RGBADatasetWriter] = None  # set for a test pass with save_rgba_dataset

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ training
    def lambdas(self) -> dict[str, float]:
        return {k[len("lambda_"):]: float(self.C(v)) for k, v in self.cfg.loss.items()}

    def reference_target(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input image [B,H,W,3] composited on the background with its continuous alpha."""
        alpha = batch.get("alpha", batch["mask"])  # [B,H,W,1]
        bg = out["comp_rgb_bg"] if self.cfg.reference_background == "render" else torch.ones_like(batch["rgb"])
        return composite(batch["rgb"], alpha, bg)

    def guidance_wants_reference_view(self, lambdas: dict[str, float]) -> bool:
        names = type(self.guidance).reference_view_losses
        return any(lambdas.get(n[len("loss_"):], 0.0) > 0.0 for n in names)

    def reference_losses(
        self, batch: dict[str, Any], lambdas: dict[str, float], out: Optional[dict[str, torch.Tensor]] = None
    ) -> dict[str, torch.Tensor]:
        if lambdas.get("rgb", 0.0) <= 0.0 and lambdas.get("mask", 0.0) <= 0.0:
            return {}
        out = self(batch) if out is None else out
        return {
            "loss_rgb": F.mse_loss(out["comp_rgb"], self.reference_target(batch, out)),
            "loss_mask": F.mse_loss(out["opacity"], batch["mask"]),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        lambdas = self.lambdas()
        view = batch.get("random_camera", batch)
        out = self(view)
        ref_out, ref_kwargs = None, {}
        if "random_camera" in batch and self.guidance_wants_reference_view(lambdas):
            ref_out = self(batch)
            ref_kwargs = {"reference_out": ref_out, "reference_image": self.reference_target(batch, ref_out)}
        terms = dict(
            self.guidance(out[self.cfg.guidance_input], batch=view, prompt_utils=self.prompt_utils, render_out=out,
                          **ref_kwargs)
        )
        evaluation = terms.pop("guidance_eval", None)  # image grid [H, W, 3] from a diffusion guidance
        if evaluation is not None and self._save_dir is not None and self.global_rank == 0:  # one writer (DDP)
            save_image(self.save_path(f"it{self.true_global_step}-guidance.png"), evaluation)
        terms.update(compute_regularizers(out, lambdas))
        if "random_camera" in batch:
            terms.update(self.reference_losses(batch, lambdas, ref_out))

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
        return self.guarded_loss(loss, terms, lambdas)  # RunFault naming the first non-finite term

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
            if self._rgba_writer is not None:
                self._rgba_writer.add(batch, out, b, index)

    def on_test_epoch_start(self) -> None:
        # a repeated test pass at the same step replaces the previous frames
        for old in self.save_path(f"it{self.true_global_step}-test/x").parent.glob("*.png"):
            old.unlink()
        self._rgba_writer = None
        if self.cfg.save_rgba_dataset:
            self._rgba_writer = RGBADatasetWriter(self.save_path(f"it{self.true_global_step}-test-rgba/x").parent)

    def on_test_epoch_end(self) -> None:
        folder = self.save_path(f"it{self.true_global_step}-test")
        if any(folder.glob("*.png")):
            save_video_from_folder(folder, self.save_path(f"it{self.true_global_step}-test.mp4"), fps=30)
        if self._rgba_writer is not None:
            self._rgba_writer.finish()

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
