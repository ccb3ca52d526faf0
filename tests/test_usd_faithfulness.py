"""The timestep schedules and backgrounds of the USD and X-Dreamer configs are the original code's
(docs/faithfulness.md): USD text-to-3D stages 2 and 3 sample t up to 0.98 for their first 5000 steps and
up to 0.5 afterwards (the original's `max_step_percent: [5000, 0.98, 0.5, 5001]`, steps counted per
stage); stage 3 has no random background colour; X-Dreamer's geometry stage samples t in [0.02, 0.5] in
both of its phases. A chained stage counts its steps from 0 (tests/test_usd_configs.py runs the chain
and checks the logged max_step of stages 2 and 3).
"""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lift3d.utils.schedule import C
from tests.helpers import REPO

USD = REPO / "custom/usd/configs"
XDREAMER = REPO / "custom/xdreamer/configs"
T = 1000  # SD's training timesteps


def t_range(guidance, step: int) -> tuple[int, int]:
    """(min t, max t) sampled at a global step, as threestudio: int(1000 * percent) (lift3d.guidance.sds)."""
    return int(T * C(guidance.min_step_percent, 0, step)), int(T * C(guidance.max_step_percent, 0, step))


@pytest.mark.parametrize("stage", ["geometry", "texture"])
def test_usd_text_stages_2_and_3_anneal_t_after_5000_steps_of_their_own(stage):
    g = OmegaConf.load(USD / f"usd-text-to-3D-{stage}.yaml").system.guidance
    assert list(g.max_step_percent) == [5000, 0.98, 0.5, 5001] and g.min_step_percent == 0.02
    assert g.weighting_strategy == "sds"  # w(t) = 1 - alphabar_t, as the original's guidances
    assert t_range(g, 0) == (20, 980)
    assert t_range(g, 4999) == (20, 980)
    assert t_range(g, 5000) == (20, 980)
    assert t_range(g, 5001) == (20, 500)
    assert t_range(g, 14999) == (20, 500)
    # stage 1 and the image-to-3D config already had the original's schedule
    for name in ("usd-text-to-3D-patch", "usd-patch"):
        assert list(OmegaConf.load(USD / f"{name}.yaml").system.guidance.max_step_percent) == [5000, 0.98, 0.5, 5001]


def test_usd_text_stage_3_has_no_random_background_colour_and_stage_2_the_default_directions():
    texture = OmegaConf.load(USD / "usd-text-to-3D-texture.yaml").system
    assert texture.background_type == "neural-environment-map-background"
    assert not texture.background.get("random_aug", False)  # the original's stage 3: none (its default False)
    from lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground

    assert NeuralEnvironmentMapBackground.Config.random_aug is False
    patch = OmegaConf.load(USD / "usd-text-to-3D-patch.yaml").system
    assert patch.background.random_aug is True  # stage 1 of the original has it
    # stage 2 of the original sets no thresholds: threestudio's defaults 45 / 45 / 60 (stages 1 and 3: 30 / 30)
    geo = OmegaConf.load(USD / "usd-text-to-3D-geometry.yaml").system.prompt_processor
    assert (geo.front_threshold, geo.back_threshold, geo.overhead_threshold) == (45.0, 45.0, 60.0)
    for stage in ("patch", "texture"):
        pp = OmegaConf.load(USD / f"usd-text-to-3D-{stage}.yaml").system.prompt_processor
        assert (pp.front_threshold, pp.back_threshold) == (30.0, 30.0)


def test_xdreamer_geometry_samples_t_up_to_half_in_both_phases():
    cfg = OmegaConf.load(XDREAMER / "xdreamer-geometry.yaml")
    g = cfg.system.guidance
    coarse = int(g.coarse_steps)
    assert coarse > 0
    for step in (0, coarse - 1, coarse, coarse + 1, int(cfg.trainer.max_steps)):
        assert t_range(g, step) == (20, 500), step
    # the appearance stage keeps its two ranges: [0.1, 0.98] for 400 steps, then [0.1, 0.5]
    tex = OmegaConf.load(XDREAMER / "xdreamer-texture.yaml").system.guidance
    assert t_range(tex, 0) == (100, 980) and t_range(tex, 399) == (100, 980) and t_range(tex, 400) == (100, 500)
