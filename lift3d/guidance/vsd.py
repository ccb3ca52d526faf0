"""`stable-diffusion-vsd-guidance`: variational score distillation (ProlificDreamer, Wang et al.,
arXiv 2305.16213 §3, Algorithm 1; docs/methods/prolificdreamer.md §1), with threestudio's keys.

Per call (render [B,H,W,3] in [0,1], the batch's cameras, text embeddings):

  1. latents z [B,4,64,64] of the render (SD's VAE at `resolution`², as stable-diffusion-guidance);
  2. the VSD step, through the shared score-distillation step of lift3d.guidance.sds
     (`ScoreDistillationGuidance.distill`), t ~ U{min_step..max_step}, z_t = noise(z, t):

         eps_pre  = eps_u + s (eps_c - eps_u)        pretrained SD, view-dependent text, s = guidance_scale
         eps_lora = eps_lora_u + s_l (eps_lora_c - eps_lora_u)
                                                     the LoRA model (lift3d.guidance.vsd_lora), view-independent
                                                     text; cond = (prompt, camera c), uncond = (negative
                                                     prompt, zero camera); s_l = guidance_scale_lora
         grad     = w(t) (eps_pre - eps_lora),  w(t) = 1 - alphabar_t         (VSD's gradient)
         loss_vsd = 0.5 ||z - stopgrad(z - grad)||^2 / B

     SDS is the special case eps_lora = eps (the sampled noise). The shared step computes
     w(t) (guided - noise); the VSD predictor hands it guided = noise + (eps_pre - eps_lora), so its
     gradient is exactly w(t) (eps_pre - eps_lora) and nothing of the step is written twice. Both UNet
     calls run without autograd: the VSD term never reaches the LoRA;
  3. the LoRA's own loss (Algorithm 1's update of phi; docs §2): on the *detached* latents, repeated
     `lora_n_timestamp_samples` times, t ~ U{0..T-1}, the standard diffusion loss

         loss_lora = mean || lora(z_t, t, prompt, c') - target ||^2,   target = eps (or v for a v-model)

     with c' = c, or the zero camera for the whole batch with probability 0.1 when
     `lora_cfg_training` (so the LoRA learns its unconditional branch). Only this loss trains the
     LoRA (its own optimizer group `guidance_params`, lr 1e-4 in the configs).

The LoRA weights are the guidance's `trainable_modules()`: the system registers them as its child
`guidance_params` (checkpointed, restored on resume, optimised). `max_step_percent_annealed` /
`anneal_start_step`: after that step max_step = T * max_step_percent_annealed (threestudio's rule;
a scheduled `max_step_percent` works too; null or HiFA's `sqrt_anneal` switches it off). HiFA's keys
(lift3d.guidance.hifa, docs/methods/hifa.md): `sqrt_anneal` (one annealed timestep) and `use_img_loss`,
which adds `loss_vsd_img` (weight `lambda_vsd_img`): grad_img = w(t) (x̂_lora - x̂_pre) alpha_t / sigma_t
on the render resized to `resolution`², x̂ the decoded one-step images of eps_lora and eps_pre (zero
when the LoRA predicts what the pretrained model predicts). Keyword overrides for tests: `t=[B]`, `noise=[B,4,h,w]`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import Prediction
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance, require_text_embeddings
from lift3d.guidance.vsd_lora import CameraConditionedStableDiffusion, VSDLoRA, scheduler_prediction_type
from lift3d.models.cfg import classifier_free_guidance
from lift3d.models.diffusion import same_noise_schedule
from lift3d.models.noise_schedule import add_noise
from lift3d.registry import register

CAMERA_CONDITIONS = {"extrinsics": "c2w", "mvp": "mvp_mtx"}  # camera_condition_type -> batch key [B,4,4]
LORA_CAMERA_DROP_PROB = 0.1  # lora_cfg_training: P(zero camera) per LoRA step (threestudio's value)


@dataclass
class VSDPrediction:
    """The two noise estimates of a VSD step's UNet calls, [B,4,h,w] each (detached)."""

    eps_pretrained: Tensor
    eps_lora: Tensor


@register("stable-diffusion-vsd-guidance")
class StableDiffusionVSDGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        pretrained_model_name_or_path_lora: str = "stabilityai/stable-diffusion-2-1"
        guidance_scale: float = 7.5
        cfg_form: str = "standard"  # threestudio's VSD guidance: eps_u + s (eps_c - eps_u), as diffusers
        guidance_scale_lora: float = 1.0
        lora_cfg_training: bool = True
        lora_n_timestamp_samples: int = 1
        lora_rank: int = 4  # lift3d key (threestudio hard-codes diffusers' LoRA default, 4)
        camera_condition_type: str = "extrinsics"  # extrinsics (c2w) | mvp
        max_step_percent_annealed: float = 0.5
        anneal_start_step: Optional[int] = 5000  # null: no such switch (HiFA's sqrt_anneal replaces it too)

    produces = ("loss_vsd", "loss_lora", "loss_vsd_img")  # loss_vsd_img with use_img_loss (HiFA)
    lora_model_class = CameraConditionedStableDiffusion

    # ------------------------------------------------------------------ validation and loading
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        if cfg.camera_condition_type not in CAMERA_CONDITIONS:
            raise ConfigError(f"{path}.camera_condition_type '{cfg.camera_condition_type}' is unknown: use one of "
                              f"{', '.join(CAMERA_CONDITIONS)}.")
        if cfg.lora_n_timestamp_samples < 1 or cfg.lora_rank < 1:
            raise ConfigError(f"{path}.lora_n_timestamp_samples and {path}.lora_rank must be >= 1.")
        if not 0.0 <= cfg.max_step_percent_annealed <= 1.0:
            raise ConfigError(f"{path}.max_step_percent_annealed = {cfg.max_step_percent_annealed}: give a fraction in [0, 1].")
        pretrained = cls.model_class.resolve(cfg.pretrained_model_name_or_path, cls.model_what(path))
        if scheduler_prediction_type(pretrained, cls.model_what(path)) != "epsilon":
            raise ConfigError(f"{path}.pretrained_model_name_or_path: '{pretrained}' is a v-prediction model; the "
                              f"pretrained score of VSD must be an eps model (e.g. stabilityai/stable-diffusion-2-1-base). "
                              f"A v-prediction model may be the LoRA model (pretrained_model_name_or_path_lora).")
        cls.lora_model_class.resolve(cfg.pretrained_model_name_or_path_lora, f"{path}.pretrained_model_name_or_path_lora")

    def configure(self) -> None:
        super().configure()  # the pretrained model, shared and frozen
        what = f"{self.lora_model_class.KIND} for system.guidance.pretrained_model_name_or_path_lora"
        # a private copy, always: its UNet gets adapters and a class embedding
        self.lora_model = self.load_model(self.lora_model_class, self.cfg.pretrained_model_name_or_path_lora, what,
                                          shared=False)
        if not same_noise_schedule(self.model, self.lora_model):
            raise ConfigError("system.guidance: the pretrained and LoRA models have different noise schedules; VSD "
                              "feeds one noisy latent to both. Give two Stable Diffusion 2.x models (or the same one).")
        self.lora = self.lora_model.add_lora(self.cfg.lora_rank)

    def trainable_modules(self) -> VSDLoRA:
        """The LoRA adapters and camera embedding (system child `guidance_params`)."""
        return self.lora

    def to(self, device: torch.device | str) -> "StableDiffusionVSDGuidance":
        super().to(device)
        self.lora_model.to(device)
        return self

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        start = self.cfg.anneal_start_step
        # with HiFA's sqrt_anneal the timestep is its single annealed value (threestudio's HiFA port)
        if hasattr(self, "alphas_cumprod") and start is not None and not self.cfg.sqrt_anneal and global_step > start:
            self.max_step = max(self.min_step, int(self.num_train_timesteps * self.cfg.max_step_percent_annealed))

    # ------------------------------------------------------------------ the two scores
    def camera_condition(self, batch: dict[str, Any]) -> Tensor:
        """c [B,16]: the flattened camera matrix of `camera_condition_type`."""
        key = CAMERA_CONDITIONS[self.cfg.camera_condition_type]
        if key not in batch:
            raise ValueError(f"stable-diffusion-vsd-guidance needs batch['{key}'] (camera_condition_type "
                             f"{self.cfg.camera_condition_type}); use a data module that provides it.")
        camera = batch[key]
        return camera.reshape(camera.shape[0], -1).float()

    def lora_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: Tensor) -> Tensor:
        """eps_lora [B,4,h,w]: one call on [z_t; z_t] with (prompt, c) and (negative prompt, 0), CFG scale s_l.
        text_embeddings [2B,77,D] (cond then uncond), camera [B,16]."""
        cameras = torch.cat([camera, torch.zeros_like(camera)])
        eps = self.lora_model.predict_eps(torch.cat([z_t, z_t]), torch.cat([t, t]),
                                          self.lora_text_embeddings(text_embeddings), cameras)
        eps_cond, eps_uncond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, float(self.cfg.guidance_scale_lora))

    def lora_text_embeddings(self, text_embeddings: Tensor) -> Tensor:
        """The LoRA call's text rows [2B,77,D] for its (camera, zero camera) halves: here the prompt, then the
        negative prompt (threestudio's stable-diffusion-vsd-guidance); the unified guidance's VSD mode gives
        the prompt to both halves."""
        return text_embeddings

    def vsd_predictor(self, text_vd: Tensor, text_vi: Tensor):
        """predict(z_t, t, noise, camera) for the shared step. With a camera [B,16] (the step's own call):
        guided = noise + (eps_pre - eps_lora), so that the step's w(t) (guided - noise) is the VSD gradient.
        Without (guidance evaluation's denoising calls): the pretrained guided noise alone."""

        def predict(z_t: Tensor, t: Tensor, noise: Tensor, camera: Optional[Tensor]) -> Prediction:
            eps_pre = self.guided_noise(z_t, t, text_vd)
            if camera is None:
                return Prediction(eps_pre)
            with torch.no_grad():  # VSD never trains the LoRA (Algorithm 1: the LoRA has its own loss)
                eps_lora = self.lora_noise(z_t, t, text_vi, camera)
            return Prediction(noise + (eps_pre - eps_lora), VSDPrediction(eps_pre.detach(), eps_lora))

        return predict

    # ------------------------------------------------------------------ the LoRA's loss
    def lora_loss(self, latents: Tensor, text_cond: Tensor, camera: Tensor, t: Optional[Tensor] = None,
                  noise: Optional[Tensor] = None, drop_camera: Optional[bool] = None) -> Tensor:
        """The LoRA model's diffusion loss on latents [B,4,h,w] (detached here), text_cond [B,77,D], camera [B,16].
        t [B*n] / noise / drop_camera: overrides for tests (default: t ~ U{0..T-1}, N(0,I), P = 0.1)."""
        n = self.cfg.lora_n_timestamp_samples
        z = latents.detach().repeat(n, 1, 1, 1)  # [B*n,4,h,w]
        T = self.lora_model.num_train_timesteps
        t = torch.randint(0, T, (z.shape[0],), device=z.device) if t is None else t.to(z.device).long()
        noise = torch.randn_like(z) if noise is None else noise.to(z)
        if drop_camera is None:
            drop_camera = self.cfg.lora_cfg_training and bool(torch.rand(()) < LORA_CAMERA_DROP_PROB)
        camera = torch.zeros_like(camera) if drop_camera else camera
        z_t = add_noise(z, noise, t, self.lora_model.alphas_cumprod)
        pred = self.lora_model.predict_noise(z_t, t, text_cond.repeat(n, 1, 1), camera=camera.repeat(n, 1))
        target = self.lora_model.training_target(z, noise, t)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        rgb_as_latents: Optional[bool] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        require_text_embeddings(prompt_utils, self.registered_name())
        as_latents = self.cfg.rgb_as_latents if rgb_as_latents is None else rgb_as_latents
        latents = self.get_latents(image, as_latents)  # [B,4,h,w]
        text_vd = self.text_embeddings(prompt_utils, batch).to(latents.device)  # [2B,77,D] view-dependent
        text_vi = prompt_utils.get_text_embeddings(  # [2B,77,D] the LoRA's: view-independent
            batch["elevation"], batch["azimuth"], batch.get("camera_distances"), False).to(latents.device)
        camera = self.camera_condition(batch).to(latents.device)  # [B,16]

        predict = self.vsd_predictor(text_vd, text_vi)
        step = self.distill(latents, predict, t=t, noise=noise, extra=camera)
        # guidance evaluation shows what the pretrained model sees (its guided noise, not the VSD residual);
        # the replaced step shares step.out, where the grid lands
        self.add_guidance_eval(dataclasses.replace(step, eps_guided=step.extra.eps_pretrained), predict,
                               None if as_latents else image)
        # HiFA's image-space term (use_img_loss): the LoRA's one-step image pulled toward the pretrained one's
        self.add_image_space_loss(step, None if as_latents else image, eps_pretrained=step.extra.eps_pretrained,
                                  eps_estimate=step.extra.eps_lora, name="loss_vsd_img")
        out = dict(step.out)
        out["loss_vsd"] = out.pop("loss_sds")
        out["loss_lora"] = self.lora_loss(latents, text_vi.chunk(2)[0], camera)
        return out


__all__ = ["CAMERA_CONDITIONS", "StableDiffusionVSDGuidance", "VSDPrediction"]
