"""`lift3d-system`: render → guidance → weighted losses + regularizers, for any geometry.

One system serves text-to-3D (SDS-style guidances), image-to-3D (a batch with a reference view and
`batch["random_camera"]`: the guidance sees the random view, the reference view gets RGB and mask
losses when lambda_rgb / lambda_mask > 0) and reconstruction against a reference mesh.
Which render output the guidance sees is `guidance_input` (comp_rgb, comp_normal, ...).

Reference-view hook (image-to-3D guidances that score the reference view too, e.g. USD's
delta term, shared/methods/usd.md §2): a guidance whose class lists loss names in
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

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

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
        # test pass: also write RGBA frames + transforms.json under save/it{step}-test-rgba/
        save_rgba_dataset: bool = False

    system_losses = ("rgb", "mask")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ training
    def lambdas(self) -> dict[str, float]:
        return {k[len("lambda_"):]: float(self.C(v)) for k, v in self.cfg.loss.items()}

    def reference_target(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input image [B,H,W,3] composited on the background where its mask is empty."""
        mask = batch["mask"]  # [B,H,W,1]
        bg = out["comp_rgb_bg"] if self.cfg.reference_background == "render" else torch.ones_like(batch["rgb"])
        return batch["rgb"] * mask + bg * (1.0 - mask)

    def guidance_wants_reference_view(self, lambdas: dict[str, float]) -> bool:
        names = getattr(self.guidance, "reference_view_losses", ())
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
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
        if evaluation is not None and self._save_dir is not None:
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
            if self.cfg.save_rgba_dataset:
                if not hasattr(self, "_rgba_frames"):
                    self._rgba_frames = []
                self._rgba_frames.append(self._save_rgba_frame(batch, out, b, index))

    def _save_rgba_frame(self, batch: dict[str, Any], out: dict[str, torch.Tensor], b: int, index: int) -> dict:
        """Write view b as a straight-alpha RGBA PNG; return its transforms.json frame entry."""
        alpha = out["opacity"][b].clamp(0.0, 1.0)  # [H,W,1]
        rgb = torch.where(alpha > 1e-4, out["comp_rgb_fg"][b] / alpha.clamp(min=1e-4), torch.zeros_like(out["comp_rgb_fg"][b]))
        name = f"images/{index:04d}.png"
        save_image(self.save_path(f"it{self.true_global_step}-test-rgba/{name}"), torch.cat([rgb.clamp(0, 1), alpha], -1))
        H, W = int(batch["height"]), int(batch["width"])
        fl = 0.5 * H / math.tan(0.5 * float(batch["fovy"][b]))  # pixels (fovy is vertical)
        return {
            "file_path": name, "transform_matrix": batch["c2w"][b].detach().float().cpu().tolist(),  # OpenGL c2w
            "w": W, "h": H, "fl_x": fl, "fl_y": fl, "cx": 0.5 * W, "cy": 0.5 * H,
            "camera_angle_x": 2.0 * math.atan(0.5 * W / fl), "camera_angle_y": float(batch["fovy"][b]),
            "elevation_deg": float(batch["elevation"][b]), "azimuth_deg": float(batch["azimuth"][b]),
            "camera_distance": float(batch["camera_distances"][b]),
        }

    def on_test_epoch_start(self) -> None:
        # a repeated test pass at the same step replaces the previous frames
        for old in self.save_path(f"it{self.true_global_step}-test/x").parent.glob("*.png"):
            old.unlink()
        self._rgba_frames: list[dict] = []
        if self.cfg.save_rgba_dataset:
            for old in self.save_path(f"it{self.true_global_step}-test-rgba/images/x").parent.glob("*.png"):
                old.unlink()

    def on_test_epoch_end(self) -> None:
        folder = self.save_path(f"it{self.true_global_step}-test")
        if any(folder.glob("*.png")):
            save_video_from_folder(folder, self.save_path(f"it{self.true_global_step}-test.mp4"), fps=30)
        if self.cfg.save_rgba_dataset and getattr(self, "_rgba_frames", None):
            frames = sorted(self._rgba_frames, key=lambda f: f["file_path"])
            shared = ("w", "h", "fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y")
            # intrinsics shared by every frame go to the top level (instant-ngp); per-frame ones stay per frame
            top = {k: frames[0][k] for k in shared if all(f[k] == frames[0][k] for f in frames)}
            frames = [{k: v for k, v in f.items() if k not in top} for f in frames]
            path = self.save_path(f"it{self.true_global_step}-test-rgba/transforms.json")
            path.write_text(json.dumps({"camera_model": "OPENCV", **top, "frames": frames}, indent=1))

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
