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

threestudio's zero123-family keys (docs/methods/magic123.md §"Reference-view losses and freq"):
- `loss.lambda_depth`, `lambda_depth_rel`, `lambda_normal`: depth (scale-invariant, Pearson) and normal
  losses at the reference view against the estimates `single-image-datamodule` loads with
  `requires_depth` / `requires_normal` (lift3d.systems.reference_geometry).
- `freq.ref_only_steps`: before that step only the reference view is trained (no guidance call; the
  regularizers other than sparsity are taken on the reference render, as threestudio's reference substep);
  `freq.ref_or_zero123: alternate` with `freq.n_ref`: after that, the reference view on every n_ref-th
  step and the guidance alone on the others (threestudio's default `accumulate`: both every step);
  `freq.guidance_eval`: every N steps the guidance's evaluation images (its guidance_eval_interval).
- `refinement: true` (a mesh stage): the NeRF-only regularizers (orient, sparsity, opaque, z_variance)
  are off whatever their lambdas, as in threestudio's refinement branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.data.image_io import composite
from lift3d.compat.loggers import validate_loggers
from lift3d.registry import register
from lift3d.errors import ConfigError
from lift3d.systems.base import BaseLift3DSystem
from lift3d.systems.reference_geometry import GEOMETRY_LOSSES, normal_smoothness_2d, reference_geometry_losses
from lift3d.systems.regularizers import compute_regularizers
from lift3d.utils.rgba_dataset import RGBADatasetWriter
from lift3d.utils.schedule import C
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
        # threestudio's zero123 family (see the module docstring): ref_only_steps, ref_or_zero123, n_ref, guidance_eval
        freq: dict = field(default_factory=dict)
        refinement: bool = False  # mesh stage: the NeRF-only regularizers are off
        # threestudio's experiment loggers, e.g. {wandb: {enable: false, project: ...}} (lift3d/compat/loggers.py)
        loggers: dict = field(default_factory=dict)

    # proposal: the proposal sampler's loss (renderer estimator: proposal; lambda_proposal defaults to 1)
    system_losses = ("rgb", "mask", "proposal") + GEOMETRY_LOSSES
    FREQ_KEYS = ("ref_only_steps", "ref_or_zero123", "n_ref", "guidance_eval")
    NERF_ONLY_REGULARIZERS = ("orient", "sparsity", "opaque", "z_variance")
    # image-condition-dreamfusion-system: the guidance starts at step ref_only_steps + 1 (threestudio's `>`)
    guidance_start_offset = 0
    _rgba_writer: Optional[RGBADatasetWriter] = None  # set for a test pass with save_rgba_dataset

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ training
    def lambdas(self) -> dict[str, float]:
        weights = {k[len("lambda_"):]: float(self.C(v)) for k, v in self.cfg.loss.items()}
        weights.setdefault("proposal", 1.0)  # threestudio trains its proposal network with weight 1 (no key)
        return weights

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
        if all(lambdas.get(n, 0.0) <= 0.0 for n in ("rgb", "mask") + GEOMETRY_LOSSES):
            return {}
        out = self(batch) if out is None else out
        terms = {
            "loss_rgb": F.mse_loss(out["comp_rgb"], self.reference_target(batch, out)),
            "loss_mask": F.mse_loss(out["opacity"], batch["mask"]),
        }
        terms.update(reference_geometry_losses(out, batch, lambdas))  # depth / depth_rel / normal
        return terms

    # ------------------------------------------------------------------ freq / refinement (zero123 family)
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        validate_loggers(parsed.loggers, f"{path}.loggers")
        prompt = parsed.prompt_processor or {}
        if fitting and prompt.get("use_perp_neg", False) and parsed.guidance_type:  # Perp-Neg (lift3d.guidance.perp_neg)
            from lift3d.guidance.perp_neg import check_perp_neg_support
            from lift3d.registry import find

            check_perp_neg_support(find(parsed.guidance_type), parsed.guidance_type,
                                   bool((parsed.guidance or {}).get("view_dependent_prompting", True)), path)
        freq = parsed.freq or {}
        unknown = [k for k in freq.keys() if k not in cls.FREQ_KEYS]
        if unknown:
            raise ConfigError(f"{path}.freq.{unknown[0]} is unknown: valid keys are {', '.join(cls.FREQ_KEYS)}.")
        mode = freq.get("ref_or_zero123", "accumulate")
        if mode not in ("accumulate", "alternate"):
            raise ConfigError(f"{path}.freq.ref_or_zero123 = '{mode}': use accumulate or alternate.")
        if mode == "alternate" and int(freq.get("n_ref", 0) or 0) < 1:
            raise ConfigError(f"{path}.freq.ref_or_zero123=alternate needs {path}.freq.n_ref >= 1 "
                              f"(the reference view every n_ref-th step).")
        return parsed

    def freq_plan(self) -> tuple[bool, bool]:
        """(guidance this step, reference losses this step) from `freq` (see the module docstring)."""
        freq, step = self.cfg.freq or {}, self.true_global_step
        ref_only = step < int(freq.get("ref_only_steps", 0) or 0) + self.guidance_start_offset
        if freq.get("ref_or_zero123", "accumulate") == "alternate":
            do_ref = ref_only or step % int(freq.get("n_ref", 1)) == 0
            return not do_ref, do_ref
        return not ref_only, True

    def regularizer_lambdas(self, lambdas: dict[str, float]) -> dict[str, float]:
        """`lambdas` with the NeRF-only regularizers off in a refinement (mesh) stage."""
        if not self.cfg.refinement:
            return lambdas
        return {k: (0.0 if k in self.NERF_ONLY_REGULARIZERS else v) for k, v in lambdas.items()}

    def check_reference_estimates(self) -> None:
        """ConfigError before the first step when a depth/normal loss is weighed (at any step) but the data
        module does not load its estimate (`requires_depth` / `requires_normal`)."""
        data_cfg = getattr(getattr(self._trainer, "datamodule", None), "cfg", None) if self._trainer else None
        if data_cfg is None or "requires_depth" not in data_cfg:
            return
        for name, switch in (("depth", "requires_depth"), ("depth_rel", "requires_depth"), ("normal", "requires_normal")):
            value = self.cfg.loss.get(f"lambda_{name}", 0.0)
            if not data_cfg[switch] and any(float(C(value, 0, s)) > 0 for s in (0, 10, 100, 1000, 10000, 10**6)):
                raise ConfigError(f"system.loss.lambda_{name} > 0 needs the estimate file next to the image: set "
                                  f"data.{switch}=true (single-image-datamodule), or lambda_{name}=0.")

    def reference_only_step(self, batch: dict[str, Any], lambdas: dict[str, float]) -> Optional[torch.Tensor]:
        """A step with the reference view only (before freq.ref_only_steps; alternate mode)."""
        out = self(batch)
        terms = self.reference_losses(batch, lambdas, out)
        terms.update(compute_regularizers(out, {k: v for k, v in self.regularizer_lambdas(lambdas).items()
                                                if k != "sparsity"}))
        return self.weighted_loss(terms, lambdas)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.check_reference_estimates()
        interval = int((self.cfg.freq or {}).get("guidance_eval", 0) or 0)
        if interval > 0 and "guidance_eval_interval" in getattr(self.guidance, "cfg", {}):
            self.guidance.cfg.guidance_eval_interval = interval  # threestudio's freq.guidance_eval

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        lambdas = self.lambdas()
        do_guidance, do_reference = self.freq_plan() if "random_camera" in batch else (True, False)
        if not do_guidance:
            return self.reference_only_step(batch, lambdas)
        view = batch.get("random_camera", batch)
        out = self(view)
        ref_out, ref_kwargs = None, {}
        if "random_camera" in batch and self.guidance_wants_reference_view(lambdas):
            ref_out = self(batch)
            ref_kwargs = {"reference_out": ref_out, "reference_image": self.reference_target(batch, ref_out)}
        image, image_kwargs = self.guidance_image(out, view)
        terms = dict(
            self.guidance(image, batch=view, prompt_utils=self.prompt_utils, render_out=out, **image_kwargs,
                          **ref_kwargs)
        )
        evaluation = terms.pop("guidance_eval", None)  # image grid [H, W, 3] from a diffusion guidance
        if evaluation is not None and self._save_dir is not None and self.global_rank == 0:  # one writer (DDP)
            save_image(self.save_path(f"it{self.true_global_step}-guidance.png"), evaluation)
        terms.update(compute_regularizers(out, self.regularizer_lambdas(lambdas)))
        terms.update(self.view_losses(out, lambdas))
        if "loss_proposal" in out:  # the proposal network's loss (lift3d.renderers.proposal_network)
            terms["loss_proposal"] = out["loss_proposal"]
        if do_reference:
            terms.update(self.reference_losses(batch, lambdas, ref_out))
        return self.weighted_loss(terms, lambdas)

    def view_losses(self, out: dict[str, torch.Tensor], lambdas: dict[str, float]) -> dict[str, torch.Tensor]:
        """Losses of the guided view's render a system computes itself: `normal_smoothness_2d` for the
        systems that list it in `system_losses` (threestudio's Magic123 and zero123-simple key; off in refinement)."""
        if ("normal_smoothness_2d" not in self.system_losses or lambdas.get("normal_smoothness_2d", 0.0) <= 0.0
                or self.cfg.refinement):
            return {}
        if "comp_normal" not in out:
            raise ConfigError("system.loss.lambda_normal_smoothness_2d > 0 needs rendered normals (comp_normal): "
                              "set system.renderer.return_comp_normal=true and a geometry with normals.")
        return {"loss_normal_smoothness_2d": normal_smoothness_2d(out["comp_normal"])}

    def guidance_image(self, out: dict[str, torch.Tensor], view: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The render the guidance scores ([B,H,W,C], `guidance_input`) and extra guidance keywords, given
        the render `out` of the camera batch `view`; fantasia3d-system and efficient-dreamfusion-system
        override it (lift3d.systems.aliases)."""
        return out[self.cfg.guidance_input], {}

    def weighted_loss(self, terms: dict[str, Any], lambdas: dict[str, float]) -> Optional[torch.Tensor]:
        """sum of lambda_<name> * loss_<name> over the terms (each logged), checked for non-finite values."""
        loss = torch.zeros((), device=self.device)
        log_terms = self.logs_this_step()
        for name, value in terms.items():
            if name.startswith("loss_"):
                weight = lambdas.get(name[len("loss_"):], 0.0)
                if log_terms:
                    self.log(f"train/{name}", value.detach(), batch_size=1)
                if weight > 0.0:
                    loss = loss + weight * value
            elif log_terms and torch.is_tensor(value) and value.numel() == 1:
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
            self.save_validation_row(int(index), self._eval_row(out, b))

    def save_validation_row(self, index: int, row: Any) -> None:
        """One validation view's image row [H,W,3]: it<step>-<index>.png, and view 0 to TensorBoard (val/render)."""
        save_image(self.save_path(f"it{self.true_global_step}-{index}.png"), row)
        if index == 0:
            for logger in self.loggers:
                if hasattr(logger.experiment, "add_image"):  # TensorBoard
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
