"""`prolificdreamer-system`: ProlificDreamer's three stages (Wang et al., arXiv 2305.16213 §4;
docs/methods/prolificdreamer.md §3), threestudio's system name and `stage` key.

It is `lift3d-system` (render -> guidance -> weighted losses + the shared regularizers, switched on by
their lambdas) with ProlificDreamer's defaults and one switch, `stage`:

    coarse    NeRF (implicit-volume), VSD on comp_rgb           configs/prolificdreamer.yaml (512², patch renderer)
    geometry  DMTet (tetrahedra-sdf-grid, geometry only), SDS on comp_normal
                                                                configs/prolificdreamer-geometry.yaml
    texture   the fixed DMTet mesh + a texture field, VSD on comp_rgb
                                                                configs/prolificdreamer-texture.yaml

`stage` picks what the guidance sees (`guidance_input`, unless set): the normal map in the geometry
stage, the colour otherwise. Stages chain by checkpoint with `system.geometry_convert_from` (as
magic3d-refine-sd). The VSD LoRA is the guidance's trainable module (`guidance_params`; threestudio's
optimizer group name `guidance` is accepted for it), so it is optimised and checkpointed with the stage that uses it; each VSD stage trains a fresh LoRA, as in
threestudio (the LoRA estimates the score of the current renders, which change between stages).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem

STAGE_GUIDANCE_INPUT = {"coarse": "comp_rgb", "geometry": "comp_normal", "texture": "comp_rgb"}


@register("prolificdreamer-system")
class ProlificDreamerSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        stage: str = "coarse"  # coarse | geometry | texture
        guidance_input: Optional[str] = None  # null: by stage (comp_normal for geometry, else comp_rgb)
        # threestudio key: validation also shows samples of the pretrained and LoRA models (not implemented)
        visualize_samples: bool = False
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-vsd-guidance"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        if parsed.stage not in STAGE_GUIDANCE_INPUT:
            raise ConfigError(f"{path}.stage '{parsed.stage}' is unknown: use one of {', '.join(STAGE_GUIDANCE_INPUT)}.")
        if parsed.visualize_samples:
            raise ConfigError(f"{path}.visualize_samples=true is not supported by lift3d: set it to false "
                              f"(guidance.guidance_eval_interval shows what the diffusion model sees).")
        return parsed

    def configure(self) -> None:
        if self.cfg.guidance_input is None:
            self.cfg.guidance_input = STAGE_GUIDANCE_INPUT[self.cfg.stage]
        params = self.cfg.optimizer.get("params")
        if params is not None and "guidance" in params and "guidance_params" not in params:
            # threestudio names the LoRA's group `guidance` (its guidance is a module of the system); here the
            # guidance's trainable weights are the child `guidance_params`. Without the rename the group would
            # select nothing and the LoRA would silently never train.
            params["guidance_params"] = params.pop("guidance")
        super().configure()


__all__ = ["ProlificDreamerSystem", "STAGE_GUIDANCE_INPUT"]
