"""`latentnerf-system`: Latent-NeRF and Sketch-Shape (Metzer et al., arXiv 2211.07600;
docs/methods/latent-nerf.md), threestudio's system name and keys.

It is `lift3d-system` with one switch, `refinement`, and one extra term:

- `refinement: false` (latent stage, configs/latentnerf.yaml): the NeRF renders Stable Diffusion
  latents directly: geometry features, material and background have 4 channels with no activation,
  and `comp_rgb` [B,H,W,4] goes to the guidance as latents (`rgb_as_latents`: resized to the latent
  size, no VAE). Validation and test images show the render decoded by SD's VAE (the model of
  `system.guidance.pretrained_model_name_or_path`, loaded for --test too); --export colours the mesh
  through Latent-NeRF's fixed linear latent-to-RGB map.
- `refinement: true` (configs/latentnerf-refine.yaml): the latent NeRF's geometry is carried over
  (`geometry_convert_from`), `sd-latent-adapter-material` maps its 4 features to RGB, and the guidance
  scores the RGB render through the VAE. The shared regularizers keep their lambdas in this stage
  (threestudio's latentnerf-system has no NeRF-only switch; lift3d-system's mesh-stage rule does not apply).
- `guide_shape: <mesh file>` (Sketch-Shape, configs/sketchshape*.yaml): `loss_shape` (weight
  `system.loss.lambda_shape`) keeps the density inside the user's mesh away from its surface
  (lift3d.systems.sketch_shape), at this step's ray samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem
from lift3d.systems.sketch_shape import GuideShape, guide_shape_loss
from lift3d.utils.saving import image_row

LATENT_CHANNELS = 4
DEFAULT_SD = "stabilityai/stable-diffusion-2-1-base"


@register("latentnerf-system")
class LatentNeRFSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        refinement: bool = False  # false: the NeRF renders SD latents; true: RGB through sd-latent-adapter-material
        # threestudio's stage hand-over: start from this checkpoint's weights (file, trial folder, <dir>/LAST or
        # LAST), except the modules listed (the refinement stage's new material and background)
        weights: Optional[str] = None
        weights_ignore_modules: list = field(default_factory=list)
        guide_shape: Optional[str] = None  # Sketch-Shape: a mesh file (OBJ, PLY, ...), weight loss.lambda_shape
        # how the guide mesh is placed (threestudio's fixed values) and tabulated
        guide_shape_scale: float = 0.7  # largest |coordinate| after centring
        guide_shape_up: str = "+y"  # mesh axis that becomes world +z
        guide_shape_front: str = "+z"  # mesh axis that becomes world +x
        guide_shape_resolution: int = 64  # side of the signed-distance grid over [-radius, radius]^3
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-guidance"

    system_losses = Lift3DSystem.system_losses + ("shape",)
    _guided_out: Optional[dict[str, Tensor]] = None  # this training step's render (for loss_shape)
    _latent_decoder: Any = None  # the frozen SD used to show latent renders (never a module child)
    _guide: Optional[GuideShape] = None

    # ------------------------------------------------------------------ validation (before work)
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        features = int(parsed.geometry.get("n_feature_dims", 3))
        if not parsed.refinement:
            for comp in ("material", "background"):
                dims = int(parsed[comp].get("n_output_dims", 3))
                if features != LATENT_CHANNELS or dims != LATENT_CHANNELS:
                    raise ConfigError(
                        f"{path}: the latent stage (refinement: false) renders SD's 4 latent channels, but "
                        f"{path}.geometry.n_feature_dims = {features} and {path}.{comp}.n_output_dims = {dims}: set both "
                        f"to 4 (and color_activation: none), or refinement: true for the RGB stage.")
            from lift3d.models.stable_diffusion import StableDiffusion

            StableDiffusion.resolve(cls.decoder_model_path(parsed),  # the VAE decodes validation/test renders
                                    f"{StableDiffusion.KIND} for {path}.guidance.pretrained_model_name_or_path")
        elif parsed.material_type == "sd-latent-adapter-material" and features != LATENT_CHANNELS:
            raise ConfigError(f"{path}.geometry.n_feature_dims = {features}: sd-latent-adapter-material maps the "
                              f"latent stage's 4 features to RGB; set it to 4.")
        shape_on = (lambda v: not isinstance(v, (int, float)) or v > 0)(parsed.loss.get("lambda_shape", 0.0))
        if parsed.guide_shape:
            from lift3d.geometry.sdf_init import mesh_axes_to_world
            from lift3d.utils.paths import resolve_file

            resolve_file(parsed.guide_shape, f"{path}.guide_shape", "mesh file")
            mesh_axes_to_world(parsed.guide_shape_up, parsed.guide_shape_front, path)
            if parsed.guide_shape_resolution < 2:
                raise ConfigError(f"{path}.guide_shape_resolution = {parsed.guide_shape_resolution}: use at least 2.")
        elif shape_on:
            raise ConfigError(f"{path}.loss.lambda_shape > 0 but {path}.guide_shape is not set: name the guide mesh "
                              f"(Sketch-Shape) or set lambda_shape to 0.")
        if parsed.weights and not resumed:
            from lift3d.systems.stage_chain import resolve_checkpoint

            resolve_checkpoint(parsed.weights, exp_root_dir, f"{path}.weights")
            modules = ("geometry", "material", "background", "renderer")
            unknown = [m for m in parsed.weights_ignore_modules if m not in modules]
            if unknown:
                raise ConfigError(f"{path}.weights_ignore_modules: '{unknown[0]}' is not a module of the system: "
                                  f"use some of {', '.join(modules)}.")
        return parsed

    # ------------------------------------------------------------------ weights of the previous stage
    def configure(self) -> None:
        super().configure()
        if self.cfg.weights and not self._resumed:
            self.load_stage_weights(self.cfg.weights, list(self.cfg.weights_ignore_modules))

    def load_stage_weights(self, spec: str, ignore: list[str]) -> None:
        """Copy the checkpoint's weights into this system, except the `ignore`d modules' (threestudio's
        `weights` + `weights_ignore_modules`); a tensor whose shape differs is a ConfigError."""
        from lift3d.systems.stage_chain import resolve_checkpoint

        ckpt = resolve_checkpoint(spec, self._exp_root_dir, "system.weights")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        state = {k: v for k, v in state.items() if k.split(".")[0] not in ignore}
        own = self.state_dict()
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                raise ConfigError(f"system.weights: '{k}' is {tuple(v.shape)} in {ckpt} but {tuple(own[k].shape)} here: "
                                  f"the stages' configs of that module differ; list it in system.weights_ignore_modules.")
        missing = self.load_state_dict(state, strict=False).missing_keys
        loaded = [k for k in own if k not in missing]
        print(f"lift3d: loaded {len(loaded)} tensors from {ckpt} (ignoring {', '.join(ignore) or 'nothing'})")

    @staticmethod
    def decoder_model_path(cfg: Any) -> str:
        return str(cfg.guidance.get("pretrained_model_name_or_path", None) or DEFAULT_SD)

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cfg.guide_shape and self._guide is None:
            self._guide = GuideShape(self.cfg.guide_shape, self.cfg.guide_shape_scale, self.cfg.guide_shape_up,
                                     self.cfg.guide_shape_front, float(getattr(self.geometry.cfg, "radius", 1.0)),
                                     int(self.cfg.guide_shape_resolution))

    def regularizer_lambdas(self, lambdas: dict[str, float]) -> dict[str, float]:
        return lambdas  # `refinement` is the RGB stage here, not a mesh stage: every regularizer stays on

    def guidance_image(self, out: dict[str, Tensor], *view: Any) -> tuple[Tensor, dict[str, Any]]:
        self._guided_out = out  # read by weighted_loss for loss_shape, in the same training step
        image, kwargs = super().guidance_image(out, *view)
        return image, {**kwargs, "rgb_as_latents": not self.cfg.refinement}

    def weighted_loss(self, terms: dict[str, Any], lambdas: dict[str, float]) -> Optional[Tensor]:
        out, self._guided_out = self._guided_out, None
        if out is not None:
            terms = {**terms, **self.render_terms(out, lambdas)}
        return super().weighted_loss(terms, lambdas)

    def render_terms(self, out: dict[str, Tensor], lambdas: dict[str, float]) -> dict[str, Tensor]:
        """This system's own losses of the training render `out` (loss_shape; sjc-system adds its own)."""
        if self._guide is None or lambdas.get("shape", 0.0) <= 0 or "points" not in out:
            return {}
        points = out["points"].detach()  # [S,3] this step's ray samples
        loss = guide_shape_loss(self._guide, points, self.geometry(points)["density"].reshape(-1))
        return {} if loss is None else {"loss_shape": loss}

    # ------------------------------------------------------------------ evaluation images
    def latent_decoder(self) -> Any:
        """SD (its VAE) to decode latent renders: the guidance's model when training, else loaded once."""
        if self.guidance is not None and hasattr(self.guidance, "model"):
            return self.guidance.model
        if self._latent_decoder is None:
            from lift3d.models.stable_diffusion import StableDiffusion

            self._latent_decoder = StableDiffusion.load(
                self.decoder_model_path(self.cfg),
                f"{StableDiffusion.KIND} for system.guidance.pretrained_model_name_or_path",
                half_precision_weights=self.cfg.guidance.get("half_precision_weights", "auto"),
            ).to(self.device)
        return self._latent_decoder

    def decode_side(self, model: Any) -> int:
        """Side of the latents the VAE decodes: the model's latent size (64: 512² images for SD), as threestudio."""
        return model.native_resolution // model.downsample

    def _eval_row(self, out: dict[str, Tensor], b: int) -> Any:
        if self.cfg.refinement:
            return super()._eval_row(out, b)
        model = self.latent_decoder()
        side = self.decode_side(model)
        latents = F.interpolate(out["comp_rgb"][b : b + 1].permute(0, 3, 1, 2).float(), size=(side, side),
                                mode="bilinear", align_corners=False)  # [1,4,side,side]
        rgb = model.decode_latents(latents)[0]  # [H,W,3]
        H, W = rgb.shape[:2]  # show the other panels at the decoded size
        grow = lambda x: F.interpolate(x[None].permute(0, 3, 1, 2).float(), size=(H, W), mode="nearest")[0].permute(1, 2, 0)  # noqa: E731
        images = [rgb.to(out["opacity"].device)]
        if "comp_normal" in out:
            images.append(grow(out["comp_normal"][b]))
        images.append(grow(out["opacity"][b]))
        return image_row(images)

    # ------------------------------------------------------------------ export
    def on_predict_start(self) -> None:
        if self.cfg.refinement:
            return super().on_predict_start()
        from lift3d.materials.sd_latent_adapter import StableDiffusionLatentAdapterMaterial

        latent_material = self.material  # colour the mesh by the fixed linear latent-to-RGB map
        self.material = StableDiffusionLatentAdapterMaterial({}).to(self.device)
        try:
            super().on_predict_start()
        finally:
            self.material = latent_material


__all__ = ["LatentNeRFSystem"]
