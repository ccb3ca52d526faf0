"""`zero123-guidance` / `stable-zero123-guidance`: score distillation with Zero-1-to-3 (image-to-3D).

Zero-1-to-3 (lift3d.models.zero123; arXiv 2303.11328 §3.2, docs/methods/usd.md §2) predicts the noise
of a novel view of a reference image at a relative camera T:
  - UNet input  = concat(z_t, reference latent)   (8 channels; reference latent = VAE mode, unscaled)
  - context     = Linear(concat(CLIP image embedding of the reference, T))       [B,1,D]
  - T           = [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]   (zero123-guidance)
                  [Δpolar, sin Δazimuth, cos Δazimuth, polar of the reference]   (stable-zero123-guidance)
    relative to the reference view (`cond_elevation_deg`, `cond_azimuth_deg`, `cond_camera_distance`,
    normally interpolated from data.default_*), one T per sample of the batch.
  - unconditional = zero reference latent and zero context (classifier-free guidance against the
    zero image / zero pose), computed in the same UNet call: eps = eps_u + s (eps_c - eps_u)
    (`cfg_form: standard`, as threestudio's zero123 guidance).
The render is resized to `resolution`² (native 256), encoded (x 0.18215), and the distillation step
of lift3d.guidance.sds gives `loss_sds`.

The reference image is `cond_image_path` (an RGBA image, composited on white with its continuous
alpha as the model was trained and as threestudio does; the configs set it to "${data.image_path}"), checked in `validate_config` with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.data.image_io import composite, load_rgb_alpha, read_rgba
from lift3d.errors import ConfigError
from lift3d.guidance.sds import Prediction, ScoreDistillationGuidance
from lift3d.models.zero123 import ReferenceConditioning, StableZero123, Zero123
from lift3d.registry import register


def reference_image(path: str, size: int, background: Optional[list], key: str) -> Tensor:
    """The reference RGBA image at `path` -> [1,3,size,size] in [0,1], composited on `background` (white)."""
    rgb, alpha = load_rgb_alpha(path, size, size, key=key)  # [H,W,3], [H,W,1] continuous (as threestudio)
    image = composite(rgb, alpha, torch.tensor(background or [1.0, 1.0, 1.0], dtype=torch.float32))  # [H,W,3]
    return image.permute(2, 0, 1)[None].contiguous()


def check_reference_config(cfg: Any, path: str) -> None:
    """The reference image of a Zero-1-to-3 guidance (cond_image_path, cond_background) is usable."""
    read_rgba(cfg.cond_image_path, key=f"{path}.cond_image_path")
    if cfg.cond_background is not None and len(cfg.cond_background) != 3:
        raise ConfigError(f"{path}.cond_background = {list(cfg.cond_background)}: give an RGB triple in [0, 1] or null.")


@register("zero123-guidance")
class Zero123Guidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "bennyguo/zero123-xl-diffusers"
        guidance_scale: float = 3.0
        cond_image_path: str = ""  # the reference RGBA image; configs use "${data.image_path}"
        cond_elevation_deg: float = 0.0  # the reference camera; configs use "${data.default_*}"
        cond_azimuth_deg: float = 0.0
        cond_camera_distance: float = 1.2
        cond_background: Optional[list] = None  # RGB the reference is composited on; null: white [1, 1, 1]
        # threestudio's keys, accepted: the LDM config of an original .ckpt (read by the converter in
        # extern/, not here: pretrained_model_name_or_path is a diffusers folder or id) and its VRAM switch
        pretrained_config: str = ""
        vram_O: bool = False

    model_class = Zero123

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        check_reference_config(cfg, path)
        cls.model_class.resolve(cfg.pretrained_model_name_or_path, cls.model_what(path))

    def configure(self) -> None:
        self.validate_config(self.cfg)
        self.use_model(self.load_model(self.model_class, self.cfg.pretrained_model_name_or_path, self.model_what()))
        image = reference_image(self.cfg.cond_image_path, self.resolution, self.cfg.cond_background,
                                "system.guidance.cond_image_path")
        self.reference: ReferenceConditioning = self.model.reference(image)

    def to(self, device: torch.device | str) -> "Zero123Guidance":
        super().to(device)
        self.reference = self.reference.to(self.device)
        return self

    def camera_embedding(self, batch: dict[str, Any]) -> Tensor:
        """T [B,4] of each camera relative to the reference view (see the module docstring)."""
        return self.model.camera_embedding(
            batch["elevation"], batch["azimuth"], batch["camera_distances"],
            self.cfg.cond_elevation_deg, self.cfg.cond_azimuth_deg, self.cfg.cond_camera_distance,
        )

    def guided_noise(self, z_t: Tensor, t: Tensor, camera: Tensor) -> Tensor:
        """Zero-1-to-3's own classifier-free guidance (zero image / zero pose) for cameras T [B,4]."""
        eps_cond, eps_uncond = self.model.noise_predictions(z_t, t, self.reference, camera)
        return self.guide(eps_cond, eps_uncond)

    def camera_predictor(self, camera: Tensor):
        """predict(z_t, t, noise, extra) of the distillation step for cameras T [B,4]."""
        return lambda z_t, t, noise, extra: Prediction(self.guided_noise(z_t, t, camera))

    # ------------------------------------------------------------------ SDS
    def sds_from_latents(
        self, latents: Tensor, camera: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """The distillation step on latents [B,4,h,w] for relative cameras [B,4] (see `camera_embedding`)."""
        camera = camera.to(latents.device)
        if camera.shape[0] != latents.shape[0]:
            camera = camera.expand(latents.shape[0], -1)
        predict = self.camera_predictor(camera)
        step = self.distill(latents, predict, t=t, noise=noise)
        self.add_guidance_eval(step, predict, render)
        return step.out

    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        latents = self.encode(image)  # [B,4,h,w]
        return self.sds_from_latents(latents, self.camera_embedding(batch), t=t, noise=noise, render=image)


@register("stable-zero123-guidance")
class StableZero123Guidance(Zero123Guidance):
    """Stable Zero123 (lift3d.models.zero123.StableZero123): its camera embedding, same distillation."""

    @dataclass
    class Config(Zero123Guidance.Config):
        pretrained_model_name_or_path: str = "ashawkey/stable-zero123-diffusers"

    model_class = StableZero123


__all__ = ["Zero123Guidance", "StableZero123Guidance"]
