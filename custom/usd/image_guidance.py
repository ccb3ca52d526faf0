"""`usd-image-guidance`: USD for image-to-3D, Zero-1-to-3 against Stable Diffusion (docs/methods/usd.md §1, §2).

Novel (random) view, per sample b of the batch:
  1. the render is resized to `resolution`² (null: Zero-1-to-3's native 256²) and encoded with
     Zero-1-to-3's VAE (x 0.18215) -> latents z [B,4,32,32]; t ~ U{min_step..max_step}, eps ~ N(0, I),
     z_t = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps (Zero-1-to-3's DDPM schedule = SD's);
  2. eps_cond = Zero-1-to-3(z_t ++ reference latent, t, Linear(CLIP(reference) ++ T_b)): one UNet
     call of batch B (T_b: camera b relative to the reference view, per sample — batch > 1 works);
  3. eps_uncond, by `unconditional`:
       sd       Stable Diffusion's eps_sd(z_t, "", t) on the SAME noisy latent z_t (USD): one UNet
                call. z_t lives in Zero-1-to-3's latent space; SD 1.x/2.x and Zero-1-to-3 share the
                VAE architecture and were trained in the same (SD) latent space, which is what the
                method relies on. At full size the SD UNet (trained on 64² latents) sees 32²
                latents; it is convolutional (+ attention), so any size runs. With the tiny test
                models, both latents are 8².
       zero123  Zero-1-to-3's own zero-image, zero-pose prediction, in the same UNet call as
                eps_cond (batch 2B, from `zero123-guidance.noise_predictions`): plain Zero-1-to-3 CFG;
  4. grad = w(t) [ w_cfg (eps_cond - eps_uncond) + lambda (eps_uncond - eps) ], lambda = `usd_lambda`
     (scheduled; 0 = USD, 1 = SDS), w(t) = 1 - alphabar_t (`weighting_strategy: sds`);
     `loss_usd` = 0.5 ||z - stopgrad(z - grad)||² / B.
  With lambda = 1 and `unconditional: zero123` this is `zero123-guidance`'s SDS gradient, bit for bit.

Reference view (`loss_usd_ref`, when the system passes `reference_out` / `reference_image`, i.e.
lambda_usd_ref > 0; see `reference_view_losses` in lift3d.systems.lift3d_system): the render of
the reference camera and the input image (composited as the rgb target) are resized to
`reference_resolution`² (null: SD's native 512²), encoded with SD's VAE, noised with the same eps
and t_r ~ U{reference_min_step..reference_max_step}, and
    grad_r = w(t_r) (eps_sd(z_render_t, "", t_r) - eps_sd(z_input_t, "", t_r)),
    `loss_usd_ref` = 0.5 ||z_render - stopgrad(z_render - grad_r)||² / B_r.

UNet calls per step (only the predictions that are used are computed): Zero-1-to-3 once (batch B;
2B with `unconditional: zero123`), Stable Diffusion once with everything it predicts — the novel
view's eps_uncond (B) and the reference term's render and input (2 B_r) — batched in one call when
their latents have the same size (tiny models; or full size with reference_resolution = 256). At
the spec's full size the novel view is 32² and the reference view 64²: a UNet batch needs one
size, so SD is called twice (resizing either latent would change the math). The original code
instead runs Zero-1-to-3 with CFG and SD with CFG (4B predictions) and discards half.

Models (lift3d.models, frozen, shared with any other component naming the same folder, never in
checkpoints): Zero-1-to-3 from `pretrained_model_name_or_path` (the model class of
`zero123_guidance_type`: zero123-guidance -> Zero123, stable-zero123-guidance -> StableZero123, which
sets the camera embedding), Stable Diffusion from `sd_model_name_or_path`; the empty-prompt embedding
comes from SD's text encoder once (cached in `cache_dir`). The reference-view inputs reach the step
as its explicit `extra` argument (lift3d.guidance.sds.distill), evaluated in the step's SD call only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import (
    Prediction,
    ScoreDistillationGuidance,
    resize_nchw,
    sample_timesteps,
    sds_gradient,
    sds_loss,
    sds_weight,
    timestep_range,
)
from lift3d.guidance.zero123 import Zero123Guidance, check_reference_config, reference_image
from lift3d.models.diffusion import same_noise_schedule
from lift3d.models.frozen import SD_TEXT_FILES, resolve_model
from lift3d.models.noise_schedule import add_noise
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.registry import find, register
from lift3d.utils.schedule import C, check_schedule_range

from .text_guidance import check_lambda
from .unconditional_text import prompt_embedding
from .usd_math import USD_UNCONDITIONALS, usd_guided_noise


@dataclass
class ReferenceLatents:
    """Inputs of the reference-view term: SD latents [Br,4,h,w] of the render (differentiable) and
    of the input image, their shared noise [Br,4,h,w] and timesteps t [Br]."""

    render: Tensor
    target: Tensor
    noise: Tensor
    t: Tensor


@register("usd-image-guidance")
class USDImageGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "bennyguo/zero123-xl-diffusers"  # Zero-1-to-3
        zero123_guidance_type: str = "zero123-guidance"  # or stable-zero123-guidance
        sd_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        guidance_scale: float = 7.5
        usd_lambda: Any = 0.0  # the spec's lambda, scheduled with C(): 0 = USD, 1 = SDS
        unconditional: str = "sd"  # sd (USD) | zero123 (Zero-1-to-3's zero image / zero pose)
        # the reference image and its camera (configs: "${data.image_path}", "${data.default_*}")
        cond_image_path: str = ""
        cond_elevation_deg: float = 0.0
        cond_azimuth_deg: float = 0.0
        cond_camera_distance: float = 1.5
        cond_background: Optional[list] = None
        # reference-view term: SD VAE input size (null: SD's native 512) and its timestep range
        reference_resolution: Optional[int] = None
        reference_min_step_percent: Any = 0.02
        reference_max_step_percent: Any = 0.98
        cache_dir: str = ".cache/text_embeddings"  # SD's empty-prompt embedding (shared with the prompt processor)

    produces = ("loss_usd", "loss_usd_ref")
    reference_view_losses = ("loss_usd_ref",)

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        check_lambda(cfg.usd_lambda, f"{path}.usd_lambda")
        if cfg.unconditional not in USD_UNCONDITIONALS:
            raise ConfigError(f"{path}.unconditional '{cfg.unconditional}': use sd (USD) or zero123.")
        for name in ("reference_min_step_percent", "reference_max_step_percent"):
            check_schedule_range(cfg[name], f"{path}.{name}", hint="give fractions of the 1000 timesteps.")
        if cfg.reference_resolution is not None and (cfg.reference_resolution < 8 or cfg.reference_resolution % 8):
            raise ConfigError(f"{path}.reference_resolution = {cfg.reference_resolution}: use a multiple of 8 or null.")
        check_reference_config(cfg, path)
        cls.zero123_class(cfg, path).resolve(cfg.pretrained_model_name_or_path, f"Zero-1-to-3 for {path}.pretrained_model_name_or_path")
        StableDiffusion.resolve(cfg.sd_model_name_or_path, f"Stable Diffusion for {path}.sd_model_name_or_path")
        resolve_model(cfg.sd_model_name_or_path, f"Stable Diffusion text encoder for {path}.sd_model_name_or_path", SD_TEXT_FILES)

    @staticmethod
    def zero123_class(cfg: Any, path: str = "system.guidance") -> type:
        """The Zero-1-to-3 model class of `zero123_guidance_type` (its camera embedding)."""
        guidance_cls = find(cfg.zero123_guidance_type)
        if not issubclass(guidance_cls, Zero123Guidance):
            raise ConfigError(
                f"{path}.zero123_guidance_type '{cfg.zero123_guidance_type}' is not a Zero-1-to-3 guidance: "
                f"use zero123-guidance or stable-zero123-guidance."
            )
        return guidance_cls.model_class

    # ------------------------------------------------------------------ setup
    def configure(self) -> None:
        self.validate_config(self.cfg)
        key = "system.guidance"
        self.zero123 = self.load_model(self.zero123_class(self.cfg), self.cfg.pretrained_model_name_or_path,
                                       f"Zero-1-to-3 for {key}.pretrained_model_name_or_path")
        self.sd = self.load_model(StableDiffusion, self.cfg.sd_model_name_or_path,
                                  f"Stable Diffusion for {key}.sd_model_name_or_path")
        if not same_noise_schedule(self.zero123, self.sd):
            raise ConfigError(
                f"{key}: the noise schedules of Zero-1-to-3 ({self.zero123.path}) and Stable Diffusion "
                f"({self.sd.path}) differ; USD feeds one noisy latent to both, so they must share SD's schedule."
            )
        self.use_model(self.zero123)
        self.reference_resolution = int(self.cfg.reference_resolution or self.sd.native_resolution)
        image = reference_image(self.cfg.cond_image_path, self.resolution, self.cfg.cond_background, f"{key}.cond_image_path")
        self.reference = self.zero123.reference(image)
        self.uncond_embedding = prompt_embedding(self.sd.path, self.cfg.cache_dir).to(self.device)  # [1,77,D]

    def to(self, device: torch.device | str) -> "USDImageGuidance":
        self.sd.to(device)
        super().to(device)  # the Zero-1-to-3 model and self.device
        self.reference = self.reference.to(self.device)
        self.uncond_embedding = self.uncond_embedding.to(self.device)
        return self

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        if not hasattr(self, "alphas_cumprod"):
            return
        self.usd_lambda = float(C(self.cfg.usd_lambda, epoch, global_step))
        self.reference_min_step, self.reference_max_step = timestep_range(
            self.num_train_timesteps, C(self.cfg.reference_min_step_percent, epoch, global_step),
            C(self.cfg.reference_max_step_percent, epoch, global_step),
        )
        self.reference_max_step = max(self.reference_max_step, self.reference_min_step)

    def camera_embedding(self, batch: dict[str, Any]) -> Tensor:
        """T [B,4] of each camera relative to the reference view."""
        return self.zero123.camera_embedding(
            batch["elevation"], batch["azimuth"], batch["camera_distances"],
            self.cfg.cond_elevation_deg, self.cfg.cond_azimuth_deg, self.cfg.cond_camera_distance,
        )

    # ------------------------------------------------------------------ model calls
    def sd_unconditional(self, inputs: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """SD's eps(z, "", t) for each (z [N_i,4,h_i,w_i], t [N_i]); inputs whose latents have the same
        size share one UNet call (see the module docstring). Returns [N_i,4,h_i,w_i] per input."""
        results: list[Optional[Tensor]] = [None] * len(inputs)
        groups: dict[tuple, list[int]] = {}
        for i, (z, _) in enumerate(inputs):
            groups.setdefault(tuple(z.shape[-2:]), []).append(i)
        for members in groups.values():
            z = torch.cat([inputs[i][0] for i in members])
            t = torch.cat([inputs[i][1] for i in members])
            eps = self.sd.predict_noise(z, t, self.uncond_embedding.expand(z.shape[0], -1, -1))
            for i, part in zip(members, eps.split([inputs[i][0].shape[0] for i in members])):
                results[i] = part
        return results  # type: ignore[return-value]

    def predictions(
        self, z_t: Tensor, t: Tensor, camera: Tensor, extra_sd: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(eps_cond, eps_uncond) of the novel view z_t [B,4,h,w], and SD's eps(·, "") of `extra_sd`
        (z [N,4,h',w'], t [N]) computed in the same SD call: one Zero-1-to-3 call, at most one SD call
        per latent size."""
        from_sd = self.cfg.unconditional == "sd"
        eps_cond, eps_uncond = self.zero123.noise_predictions(z_t, t, self.reference, camera, with_uncond=not from_sd)
        sd_inputs = ([(z_t, t)] if from_sd else []) + ([extra_sd] if extra_sd is not None else [])
        sd_eps = self.sd_unconditional(sd_inputs) if sd_inputs else []
        if from_sd:
            eps_uncond = sd_eps.pop(0)
        return eps_cond, eps_uncond, (sd_eps[0] if extra_sd is not None else None)

    def camera_predictor(self, camera: Tensor):
        """predict(z_t, t, noise, extra): USD's guided noise; `extra` = SD inputs (z [N,4,h',w'], t [N])
        of the reference term, predicted in the same SD call."""
        def predict(z_t: Tensor, t: Tensor, noise: Tensor, extra: Optional[tuple[Tensor, Tensor]]) -> Prediction:
            eps_cond, eps_uncond, eps_extra = self.predictions(z_t, t, camera, extra)
            return Prediction(usd_guided_noise(eps_cond, eps_uncond, noise, self.guidance_weight, self.usd_lambda), eps_extra)

        return predict

    # ------------------------------------------------------------------ the USD step
    def encode_reference(
        self, render: Tensor, image: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None
    ) -> ReferenceLatents:
        """render, image [Br,H,W,3] in [0,1] -> SD latents at reference_resolution, t_r and shared noise."""
        size = self.reference_resolution
        render_latents = self.sd.encode_images(resize_nchw(render.permute(0, 3, 1, 2)[:, :3], size))
        with torch.no_grad():
            target = self.sd.encode_images(resize_nchw(image.detach().permute(0, 3, 1, 2)[:, :3].to(render), size))
        Br = render_latents.shape[0]
        if t is None:
            t = sample_timesteps(Br, self.reference_min_step, self.reference_max_step, render_latents.device)
        noise = torch.randn_like(render_latents) if noise is None else noise.to(render_latents)
        return ReferenceLatents(render_latents, target, noise, t.to(render_latents.device).long())

    def reference_loss(self, reference: ReferenceLatents, eps_render: Tensor, eps_target: Tensor) -> dict[str, Tensor]:
        w = sds_weight(self.sd.alphas_cumprod, reference.t, self.cfg.weighting_strategy)
        grad = sds_gradient(eps_render, eps_target, w, self.grad_clip_val)
        return {"loss_usd_ref": sds_loss(reference.render, grad), "ref_grad_norm": grad.detach().float().norm(),
                "ref_timestep": reference.t.detach().float().mean().cpu()}

    def usd_from_latents(
        self,
        latents: Tensor,
        camera: Tensor,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        reference: Optional[ReferenceLatents] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """The USD step on Zero-1-to-3 latents [B,4,h,w] for relative cameras [B,4] (or [1,4]),
        plus the reference-view term when `reference` is given (see the module docstring)."""
        camera = camera.to(latents.device)
        if camera.shape[0] != latents.shape[0]:
            camera = camera.expand(latents.shape[0], -1)
        extra_sd = None
        if reference is not None:
            with torch.no_grad():
                a = self.sd.alphas_cumprod
                z_r = add_noise(reference.render.detach(), reference.noise, reference.t, a)
                z_in = add_noise(reference.target, reference.noise, reference.t, a)
            extra_sd = (torch.cat([z_r, z_in]), torch.cat([reference.t, reference.t]))
        predict = self.camera_predictor(camera)
        step = self.distill(latents, predict, t=t, noise=noise, extra=extra_sd)
        self.add_guidance_eval(step, predict, render)
        out = step.out
        out["loss_usd"] = out.pop("loss_sds")
        out["usd_lambda"] = torch.tensor(self.usd_lambda)
        if reference is not None:
            eps_render, eps_target = step.extra.chunk(2)
            out.update(self.reference_loss(reference, eps_render, eps_target))
        return out

    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        reference_out: Optional[dict[str, Tensor]] = None,
        reference_image: Optional[Tensor] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        reference_t: Optional[Tensor] = None,
        reference_noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """image [B,H,W,3]: render of the random views `batch`; reference_out / reference_image: the
        reference view's render and the input image (passed by lift3d-system when lambda_usd_ref > 0)."""
        latents = self.encode(image)  # [B,4,h,w]
        reference = None
        if reference_out is not None:
            if reference_image is None:
                raise ValueError("usd-image-guidance: reference_out needs reference_image (the input image)")
            reference = self.encode_reference(reference_out["comp_rgb"], reference_image, reference_t, reference_noise)
        return self.usd_from_latents(latents, self.camera_embedding(batch), t=t, noise=noise,
                                     reference=reference, render=image)


__all__ = ["ReferenceLatents", "USDImageGuidance"]
