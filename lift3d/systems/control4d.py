"""`control4d-multiview-system`: Control4D's static variant (Shao et al., arXiv 2305.20082; threestudio's system
of the same name; docs/methods/control4d.md) — a scene reconstructed from posed photos
(multiview-camera-datamodule) through the GAN renderer (gan-volume-renderer), whose training targets are
replaced, view by view, by ControlNet edits of its own renders (stable-diffusion-controlnet-guidance).

Per training step (one view, B = 1; two optimizers, stepped by hand — Lightning counts both steps in
`global_step`, as in threestudio, so `trainer.max_steps` is twice the number of views trained):
  1. the target `gt_rgb` is the view's photo, or its latest edit once there is one (resized to the view);
  2. the render with `multi_level_guidance` (gan-volume-renderer: a random generator level, sparse
     full-resolution rays);
  3. after `start_editing_step`, every `per_editing_step` steps and whenever the view has no edit yet:
     the guidance edits the GAN render `comp_gan_rgb` under the condition (canny edges of the photo, or
     the render's normals) -> the view's new edit (used from the next visit on);
  4. generator losses, weighted by `system.loss.lambda_<name>` (§"Losses" of the method notes):
       l1  = |comp_int_rgb - comp_gt_rgb| + r2 |comp_gan_rgb - gt| + 0.25 r2 |area↓4(comp_gan_rgb) - sg(area↓4(comp_rgb))|
       p   = r1 · LPIPS(comp_gan_rgb, gt)               (lift3d.models.lpips; weights: perceptual_model_path)
       kl  = E[KL(posterior || N(0, I))]
       G   = -E[D(comp_gan_rgb)]
     with r2 = 1 at generator level 2 else 0.1, r1 = 1 at levels 1-2 else 0.1; plus the shared regularizers
     (orient, sparsity, opaque, ...) and, with the guidance's `use_sds: true`, `loss_sds` on the GAN render
     (threestudio's system never computes it; lambda_sds weighs it here);
  5. the discriminator step: D = lambda_D · hinge(D(gt), D(sg(comp_gan_rgb))).

Optimizers: `system.optimizer` (its `params` groups: geometry, background, renderer.generator,
renderer.local_encoder, renderer.global_encoder; without groups, everything but the discriminator) and
`system.optimizer.optimizer_dis` (renderer.discriminator). The 4D parts of Control4D (time-conditioned
tri-planes, the staged 4D editing) are out of scope (docs/methods/control4d.md §"Scope").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.gan.patch_discriminator import d_hinge_loss, g_loss
from lift3d.registry import find, register
from lift3d.systems.lift3d_system import Lift3DSystem
from lift3d.systems.optim import make_optimizer, validate_optimizer_config
from lift3d.systems.perceptual_loss import attach_perceptual, check_perceptual
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.saving import image_row

DISCRIMINATOR = "renderer.discriminator"


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


@register("control4d-multiview-system")
class Control4DSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        start_editing_step: int = 2000
        per_editing_step: int = 20  # 0: no editing (reconstruction only)
        # LPIPS weights for loss_p (lift3d.models.lpips: a folder with vgg16.pth and vgg.pth)
        perceptual_model_path: Optional[str] = None

    system_losses = ("l1", "p", "kl", "G", "D")
    perceptual: Any = None  # LPIPS (frozen, a plain attribute: not in checkpoints), built at fit start

    # ------------------------------------------------------------------ validation
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        from lift3d.renderers.gan_volume_renderer import GANVolumeRenderer

        if not issubclass(find(parsed.renderer_type), GANVolumeRenderer):
            raise ConfigError(f"{path}.renderer_type = '{parsed.renderer_type}': control4d-multiview-system renders "
                              f"through gan-volume-renderer (its generator and discriminator).")
        dis = (parsed.optimizer or {}).get("optimizer_dis")
        if not dis:
            raise ConfigError(f"{path}.optimizer.optimizer_dis is missing: give the discriminator's optimizer, e.g. "
                              f"{{name: Adam, args: {{lr: 1.e-5}}, params: {{{DISCRIMINATOR}: {{}}}}}}.")
        validate_optimizer_config({"optimizer": OmegaConf.to_container(dis, resolve=True) if OmegaConf.is_config(dis) else dis})
        if fitting:
            check_perceptual(parsed, path)
        if parsed.per_editing_step < 0:
            raise ConfigError(f"{path}.per_editing_step = {parsed.per_editing_step}: use 0 (no editing) or more.")
        return parsed

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__(cfg, resumed, exp_root_dir)
        self.automatic_optimization = False
        self.edit_frames: dict[int, Tensor] = {}  # view index -> its latest edit [1,H,W,3] (CPU)

    def configure_optimizers(self) -> Any:
        full = OmegaConf.to_container(self.cfg.optimizer, resolve=True) if OmegaConf.is_config(self.cfg.optimizer) \
            else dict(self.cfg.optimizer)
        opt = {k: v for k, v in full.items() if k != "optimizer_dis"}
        dis = dict(full["optimizer_dis"])
        if not opt.get("params"):  # every trainable parameter but the discriminator's
            opt["params"] = {name: {} for name, child in self.named_children()
                             if name != "renderer" and any(p.requires_grad for p in child.parameters())}
            opt["params"].update({f"renderer.{name}": {} for name, _ in self.renderer.named_children()
                                  if f"renderer.{name}" != DISCRIMINATOR})
        dis.setdefault("params", None)
        if not dis["params"]:
            dis["params"] = {DISCRIMINATOR: {}}
        return [make_optimizer(self, opt), make_optimizer(self, dis)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["control4d_edit_frames"] = {int(k): v.clone() for k, v in self.edit_frames.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.edit_frames = dict(checkpoint.get("control4d_edit_frames", {}))

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        super().on_fit_start()
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        images = getattr(dataset, "images", None)  # multiview-camera-datamodule: [V,H,W,3]
        if images is not None:
            self.check_views(int(getattr(dataset, "batch_size", 1)), tuple(images.shape[1:3]))
        attach_perceptual(self)

    def check_views(self, batch_size: int, size: tuple[int, int]) -> None:
        """One view per step (one edit per view) of at least the discriminator's smallest size; ConfigError otherwise."""
        if batch_size != 1:
            raise ConfigError(f"control4d-multiview-system trains one view per step: set data.batch_size=1 (not {batch_size}).")
        smallest = 3 * 2 ** self.renderer.cfg.discriminator_layers  # the PatchGAN's last batch norm needs 2+ values
        if min(size) < smallest:
            raise ConfigError(f"training views of {size[1]}x{size[0]} are too small for the discriminator (at least "
                              f"{smallest} px a side): lower data.train_downsample_resolution.")

    def editing_now(self) -> bool:
        return self.cfg.per_editing_step > 0 and self.true_global_step > self.cfg.start_editing_step

    def target_of(self, index: int, photo: Tensor) -> Tensor:
        """The view's training target [1,H,W,3]: its latest edit (resized to the photo) or the photo."""
        if index not in self.edit_frames:
            return photo
        edit = self.edit_frames[index].to(photo)
        return F.interpolate(_nchw(edit), size=photo.shape[1:3], mode="bilinear", align_corners=False).permute(0, 2, 3, 1)

    def generator_terms(self, out: dict[str, Any], gt: Tensor) -> dict[str, Tensor]:
        """l1, p, kl, G of the module docstring (without their lambdas)."""
        level = out["generator_level"]
        H, W = gt.shape[1:3]
        r2 = 1.0 if level == 2 else 0.1
        gan = out["comp_gan_rgb"]
        lr_gan = F.interpolate(_nchw(gan), size=(H // 4, W // 4), mode="area")
        lr_rgb = F.interpolate(_nchw(out["comp_rgb"]), size=(H // 4, W // 4), mode="area").detach()
        l1 = (F.l1_loss(out["comp_int_rgb"], out["comp_gt_rgb"]) + F.l1_loss(gan, gt) * r2
              + F.l1_loss(lr_gan, lr_rgb) * r2 * 0.25)
        terms = {"loss_l1": l1, "loss_kl": out["posterior"].kl().mean(),
                 "loss_G": g_loss(self.renderer.discriminator, _nchw(gan))}
        if self.lambdas().get("p", 0.0) > 0.0 and self.perceptual is not None:
            r1 = 1.0 if level >= 1 else 0.1
            terms["loss_p"] = self.perceptual(_nchw(gan).contiguous(), _nchw(gt).contiguous()).sum() * r1
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        photo = batch.get("gt_rgb", batch.get("rgb"))
        if photo is None:
            raise ConfigError("control4d-multiview-system trains on posed photos (batch gt_rgb): use "
                              "data_type multiview-camera-datamodule.")
        self.check_views(photo.shape[0], tuple(photo.shape[1:3]))
        index = int(torch.as_tensor(batch["index"]).reshape(-1)[0])
        gt = self.target_of(index, photo)
        out = self({**batch, "gt_rgb": gt, "multi_level_guidance": True})
        lambdas = self.lambdas()
        terms: dict[str, Any] = {}
        if self.editing_now():
            if self.guidance.cfg.use_sds:
                terms.update(self.guidance(out["comp_gan_rgb"], batch, self.prompt_utils, render_out=out, cond_rgb=photo))
            elif index not in self.edit_frames or self.true_global_step % self.cfg.per_editing_step == 0:
                result = self.guidance(out["comp_gan_rgb"], batch, self.prompt_utils, render_out=out, cond_rgb=photo)
                self.edit_frames[index] = result["edit_images"].detach().cpu()
        terms.update(self.generator_terms(out, gt))
        terms.update(compute_regularizers(out, self.regularizer_lambdas(lambdas)))
        loss = self.weighted_loss(terms, lambdas)
        if loss is None:  # a skipped non-finite step (system.nonfinite_skip_steps)
            return
        discriminator = self.renderer.discriminator
        discriminator.requires_grad_(False)  # the generator step leaves D as it is
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        discriminator.requires_grad_(True)
        loss_d = d_hinge_loss(discriminator, _nchw(gt), _nchw(out["comp_gan_rgb"])) * lambdas.get("D", 0.0)
        self.log("train/loss_D", loss_d.detach(), batch_size=1)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _full(x: Tensor, size: tuple[int, int]) -> Tensor:
        """[H',W',C] -> [H,W,C] (nearest: the low-resolution outputs shown pixel for pixel)."""
        return F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="nearest")[0].permute(1, 2, 0)

    def _eval_row(self, out: dict[str, Any], b: int) -> Any:
        """Test frames: the GAN render | normals | opacity (threestudio's test images)."""
        size = tuple(out["comp_gan_rgb"].shape[1:3])
        images = [out["comp_gan_rgb"][b]]
        if "comp_normal" in out:
            images.append(self._full(out["comp_normal"][b], size))
        images.append(self._full(out["opacity"][b], size))
        return image_row(images)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The volume render | GAN render | normals | opacity | the target (the view's edit, else its photo)."""
        out = self(batch)
        size = tuple(out["comp_gan_rgb"].shape[1:3])
        photos = batch.get("gt_rgb", batch.get("rgb"))
        for b, index in enumerate(torch.as_tensor(batch["index"]).reshape(-1).tolist()):
            images = [out["comp_rgb"][b], out["comp_gan_rgb"][b]]
            if "comp_normal" in out:
                images.append(self._full(out["comp_normal"][b], size))
            images.append(self._full(out["opacity"][b], size))
            if photos is not None:
                images.append(self.target_of(int(index), photos[b : b + 1])[0])
            self.save_validation_row(int(index), image_row(images))


__all__ = ["Control4DSystem"]
