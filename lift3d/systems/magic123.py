"""`magic123-system`: Magic123 (Qian et al., arXiv 2306.17843; docs/methods/magic123.md), threestudio's
system name and keys.

Image-to-3D with two priors at once: each step renders the reference camera and a random camera;
the random view gets the 2D prior (`guidance_type`, Stable Diffusion with the text prompt) and the
3D prior (`guidance_3d_type`, Zero-1-to-3 conditioned on the reference image), each weighted by its
own lambdas; the reference view gets the RGB and mask losses:

    loss = sum_k lambda_k   * loss_k(SD guidance)          e.g. lambda_sds   (threestudio: lambda_sd)
         + sum_k lambda_3d_k * loss_k(Zero-1-to-3 guidance) e.g. lambda_3d_sds (threestudio: lambda_3d_sd)
         + lambda_rgb * MSE(reference render, image) + lambda_mask * BCE(reference opacity, mask)
         + regularizers (+ lambda_normal_smoothness_2d on the random view's normal map)

so the gradient reaching the render is lambda_3d·g_zero123 + lambda_2d·g_SD (Magic123 §3.3, eq. 6;
tests/test_magic123.py checks it against each guidance alone). Stages (as threestudio's configs):
coarse NeRF (configs/magic123-coarse-sd.yaml) and `refinement: true` DMTet mesh
(configs/magic123-refine-sd.yaml, chained with `geometry_convert_from`); in the refinement stage the
NeRF-only regularizers are off (lift3d-system's `refinement`). HiFA variants
(configs/magic123-hifa-*.yaml): the SD guidance's `sqrt_anneal` / `use_img_loss` (lift3d.guidance.hifa).

Everything else (freq, depth/normal reference losses, stage chaining, evaluation) is lift3d-system's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.guidance.base import BaseGuidance
from lift3d.registry import find, register
from lift3d.systems.lift3d_system import Lift3DSystem
from lift3d.systems.regularizers import compute_regularizers
from lift3d.systems.stage_chain import resolve_checkpoint_keys
from lift3d.utils.saving import save_image

PREFIX_3D = "3d_"  # lambda_3d_<name> weighs the 3D prior's loss_<name>


@register("magic123-system")
class Magic123System(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        guidance_3d_type: str = "zero123-guidance"
        guidance_3d: dict = field(default_factory=dict)
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "solid-color-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-guidance"

    system_losses = Lift3DSystem.system_losses + ("normal_smoothness_2d",)
    guidance_3d: Any = None

    # ------------------------------------------------------------------ validation
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        """lift3d-system's checks on the section without its lambda_3d_* keys, then the 3D guidance's
        section and those keys against the losses it produces."""
        own = copy.deepcopy(cfg)  # (keeps the parent: interpolations resolve as in the original)
        loss = own.get("loss") or {}
        keys_3d = [k for k in list(loss.keys()) if str(k).startswith("lambda_" + PREFIX_3D)]
        for k in keys_3d:
            del loss[k]
        super().validate_config(own, path, resumed, fitting, exp_root_dir)
        parsed = parse_structured(cls.Config, cfg, path, "system 'magic123-system'")
        guidance_3d_cls = find(parsed.guidance_3d_type)
        if not issubclass(guidance_3d_cls, BaseGuidance):
            raise ConfigError(f"{path}.guidance_3d_type = '{parsed.guidance_3d_type}' is not a guidance: name a "
                              f"registered guidance, e.g. zero123-guidance.")
        sub_path = f"{path}.guidance_3d"
        sub = parse_structured(guidance_3d_cls.Config, parsed.guidance_3d, sub_path,
                               f"guidance '{parsed.guidance_3d_type}'")
        if fitting:
            guidance_3d_cls.validate_config(resolve_checkpoint_keys(guidance_3d_cls, sub, sub_path, exp_root_dir),
                                            sub_path)
        produced = {p[len("loss_"):] for p in guidance_3d_cls.produces}
        for key in keys_3d:
            if key[len("lambda_" + PREFIX_3D):] not in produced:
                raise ConfigError(f"{path}.loss.{key} weighs no loss of {path}.guidance_3d_type="
                                  f"'{parsed.guidance_3d_type}': it produces "
                                  f"{', '.join('lambda_3d_' + p for p in sorted(produced))}.")
        return parsed

    # ------------------------------------------------------------------ the two guidances
    def build_guidance(self, move: bool = True) -> None:
        super().build_guidance(move)
        if self.guidance_3d is None:
            cls = find(self.cfg.guidance_3d_type)
            self.guidance_3d = cls(resolve_checkpoint_keys(cls, self.cfg.guidance_3d, "system.guidance_3d",
                                                           self._exp_root_dir))
        if move:
            self.guidance_3d.to(self.device)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        interval = int((self.cfg.freq or {}).get("guidance_eval", 0) or 0)
        if interval > 0 and "guidance_eval_interval" in getattr(self.guidance_3d, "cfg", {}):
            self.guidance_3d.cfg.guidance_eval_interval = interval

    def guide(self, guidance: Any, out: dict[str, torch.Tensor], view: dict[str, Any], prompt_utils: Any,
              suffix: str) -> dict[str, Any]:
        """One guidance's terms on the random view's render (its guidance-evaluation grid saved)."""
        terms = dict(guidance(out[self.cfg.guidance_input], batch=view, prompt_utils=prompt_utils, render_out=out))
        evaluation = terms.pop("guidance_eval", None)
        if evaluation is not None and self._save_dir is not None:
            save_image(self.save_path(f"it{self.true_global_step}-guidance{suffix}.png"), evaluation)
        return terms

    # ------------------------------------------------------------------ training
    def reference_losses(self, batch: dict[str, Any], lambdas: dict[str, float],
                         out: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """lift3d-system's reference losses with Magic123's mask loss: BCE(opacity, mask) (threestudio)."""
        if lambdas.get("mask", 0.0) <= 0.0:
            return super().reference_losses(batch, lambdas, out)
        out = self(batch) if out is None else out
        terms = super().reference_losses(batch, lambdas, out)
        if "loss_mask" in terms:
            terms["loss_mask"] = F.binary_cross_entropy(out["opacity"].clamp(1e-5, 1.0 - 1e-5), batch["mask"].float())
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        if "random_camera" not in batch:
            raise ConfigError("magic123-system needs the reference view and random cameras: "
                              "use data_type=single-image-datamodule with data.use_random_camera=true.")
        lambdas = self.lambdas()
        do_guidance, do_reference = self.freq_plan()
        if not do_guidance:
            return self.reference_only_step(batch, lambdas)
        view = batch["random_camera"]
        out = self(view)
        terms = self.guide(self.guidance, out, view, self.prompt_utils, "")
        for name, value in self.guide(self.guidance_3d, out, view, None, "-3d").items():
            # loss_<k> -> loss_3d_<k> (weighted by lambda_3d_<k>); logged scalars <k>_3d, as threestudio
            terms["loss_" + PREFIX_3D + name[len("loss_"):] if name.startswith("loss_") else f"{name}_3d"] = value
        terms.update(compute_regularizers(out, self.regularizer_lambdas(lambdas)))
        terms.update(self.view_losses(out, lambdas))  # lambda_normal_smoothness_2d
        if do_reference:
            terms.update(self.reference_losses(batch, lambdas))
        return self.weighted_loss(terms, lambdas)


__all__ = ["Magic123System"]
