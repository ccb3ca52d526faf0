"""`instructnerf2nerf-system`: edit a reconstructed scene with an instruction by iterative dataset update
(Haque et al., Instruct-NeRF2NeRF, arXiv 2303.12789, "Iterative Dataset Update";
docs/methods/instructnerf2nerf.md §4).

Data: `multiview-camera-datamodule` (whole training views with their index and an editable image
buffer). Guidance: `instructpix2pix-guidance` (the image editor). Each training step on view(s) v at
step s (threestudio's schedule, `start_editing_step`, `per_editing_step`):
  1. the targets are the buffer's current images of v (edited or still the photos);
  2. render v; losses against the targets: `loss_l1` (mean |render - target|) and `loss_p` (LPIPS,
     summed over the batch; needs `perceptual_model_path`), weighted by `system.loss.lambda_l1 / lambda_p`,
     plus the shared regularizers (orient, sparsity, opaque, ... by their lambdas);
  3. dataset update: when per_editing_step > 0 and s > start_editing_step, every view of the batch that
     was never edited, or every view of the batch when s % per_editing_step == 0, is rendered whole
     (renderer in eval mode, no gradient), edited by InstructPix2Pix conditioned on its ORIGINAL photo
     (`original_images`), and written back into the buffer (`set_images`) — it is the target from the
     next time the view is drawn. No other view changes.
Validation writes [render | normals | opacity | photo] per evaluation view and a row of the current
training targets (`it<step>-targets.png`: the edited views as they stand); test and --export are the
lift3d-system's (turntable of the evaluation views, mesh of the geometry).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.registry import find, register
from lift3d.systems.lift3d_system import Lift3DSystem
from lift3d.systems.perceptual_loss import attach_perceptual, check_perceptual
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.metrics import psnr
from lift3d.utils.saving import image_row, save_image


def scheduled_views(index: list[int], step: int, edited: set[int], start_editing_step: int,
                    per_editing_step: int) -> list[int]:
    """Positions in the batch whose view is edited at `step` (threestudio's rule, module docstring)."""
    if per_editing_step <= 0 or step <= start_editing_step:
        return []
    every = step % per_editing_step == 0
    return [b for b, v in enumerate(index) if every or v not in edited]


@register("instructnerf2nerf-system")
class InstructNeRF2NeRFSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        start_editing_step: int = 1000
        per_editing_step: int = 10
        # LPIPS weights for loss_p (lift3d.models.lpips: a folder with vgg16.pth and vgg.pth)
        perceptual_model_path: Optional[str] = None

    system_losses = ("l1", "p")
    perceptual: Any = None  # LPIPS (frozen, not a child module), built at fit start when lambda_p > 0
    N_TARGETS_SHOWN = 8  # training targets in the validation row

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        if parsed.start_editing_step < 0:
            raise ConfigError(f"{path}.start_editing_step = {parsed.start_editing_step} is negative: use 0 or more.")
        if not fitting:
            return parsed
        from lift3d.guidance.instructpix2pix import InstructPix2PixGuidance

        guidance_cls = find(parsed.guidance_type)
        if not issubclass(guidance_cls, InstructPix2PixGuidance):
            raise ConfigError(f"{path}.guidance_type = '{parsed.guidance_type}': instructnerf2nerf-system edits its "
                              f"dataset with an image editor; use instructpix2pix-guidance.")
        if (parsed.guidance or {}).get("use_sds", False):
            raise ConfigError(f"{path}.guidance.use_sds=true: instructnerf2nerf-system needs edited images; "
                              f"set use_sds=false.")
        check_perceptual(parsed, path)
        return parsed

    # ------------------------------------------------------------------ the dataset and the editor
    def image_buffer(self) -> Any:
        """The training stream's image buffer (multiview-camera-datamodule)."""
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        if dataset is None or not hasattr(dataset, "set_images"):
            raise ConfigError("instructnerf2nerf-system edits its training images: use "
                              "data_type=multiview-camera-datamodule (whole views with an image buffer).")
        return dataset

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.image_buffer()
        attach_perceptual(self)

    @torch.no_grad()
    def update_dataset(self, batch: dict[str, Any], dataset: Any) -> list[int]:
        """The dataset update of this step (module docstring, 3.); returns the view indices replaced."""
        index = batch["index"].tolist()
        chosen = scheduled_views(index, self.true_global_step, dataset.replaced, self.cfg.start_editing_step,
                                 self.cfg.per_editing_step)
        if not chosen:
            return []
        self.renderer.eval()
        try:
            render = self(batch)["comp_rgb"][chosen]  # [b,H,W,3], the whole views
        finally:
            self.renderer.train()
        views = torch.tensor([index[b] for b in chosen], dtype=torch.long)
        original = dataset.original_images[views].to(render)
        edited = self.guidance(render, batch, prompt_utils=self.prompt_utils, cond_rgb=original)["edit_images"]
        dataset.set_images(views, edited.float().cpu())
        return views.tolist()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        lambdas = self.lambdas()
        dataset = self.image_buffer()
        target = dataset.images[batch["index"].cpu()].to(self.device)  # [B,H,W,3] before this step's edit
        out = self(batch)
        self.update_dataset(batch, dataset)
        rgb = out["comp_rgb"]
        terms = {"loss_l1": F.l1_loss(rgb, target)}
        if lambdas.get("p", 0.0) > 0.0 and self.perceptual is not None:
            terms["loss_p"] = self.perceptual(rgb.permute(0, 3, 1, 2).contiguous(),
                                              target.permute(0, 3, 1, 2).contiguous()).sum()
        terms.update(compute_regularizers(out, self.regularizer_lambdas(lambdas)))
        self.log("train/edited_views", float(len(dataset.replaced)), batch_size=1)
        return self.weighted_loss(terms, lambdas)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        self.log("val/psnr", psnr(out["comp_rgb"], batch["rgb"]).mean(), batch_size=1)
        for b, index in enumerate(batch["index"].tolist()):
            row = image_row([self._eval_row(out, b), batch["rgb"][b]])
            save_image(self.save_path(f"it{self.true_global_step}-{index}.png"), row)

    def on_validation_epoch_end(self) -> None:
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        if dataset is None or not hasattr(dataset, "images") or self._save_dir is None:
            return
        shown = dataset.images[: self.N_TARGETS_SHOWN]
        save_image(self.save_path(f"it{self.true_global_step}-targets.png"), image_row(list(shown)))


__all__ = ["InstructNeRF2NeRFSystem", "scheduled_views"]
