"""Issue #24: every evaluation within a point budget, with the same result as the whole computation.

Each test runs a small case twice — bounded by a budget far smaller than the case, and whole — and
checks both that the results agree and that no single field evaluation exceeded the budget.
"""
from __future__ import annotations

import math

import pytest
import torch

from lift3d.data.cameras import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
from lift3d.registry import find

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 8, "per_level_scale": 1.5}


class PointCounter:
    """Wraps a module's method and records the number of points of every call."""

    def __init__(self, obj, name: str):
        self.sizes: list[int] = []
        original = getattr(obj, name)

        def wrapped(points, *args, **kwargs):
            self.sizes.append(int(points.reshape(-1, points.shape[-1]).shape[0]))
            return original(points, *args, **kwargs)

        setattr(obj, name, wrapped)


def frame(H=24, W=20, distance=2.2, elevation=20.0, azimuth=30.0):
    pos = spherical_to_cartesian(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]))
    c2w = look_at_c2w(pos)
    dirs = get_ray_directions(H, W, 0.5 * H / math.tan(math.radians(40.0) / 2))
    rays_o, rays_d = get_rays(dirs, c2w)
    return {"rays_o": rays_o, "rays_d": rays_d, "light_positions": pos}


def volume_renderer(extra=None, geometry="implicit-volume", renderer="nerf-volume-renderer", geo_cfg=None):
    torch.manual_seed(0)
    geo = find(geometry)({"radius": 1.0, "pos_encoding_config": SMALL_GRID, **(geo_cfg or {})})
    with torch.no_grad():  # a field with structure: random hash-grid features well above init scale
        for p in geo.parameters():
            if p.dim() == 1 and p.numel() > 1000:
                p.uniform_(-1.0, 1.0)
    material = find("diffuse-with-point-light-material")({})
    background = find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    cfg = {"num_samples_per_ray": 64, "grid_prune": False, **(extra or {})}
    r = find(renderer)(cfg, geometry=geo, material=material, background=background)
    for module in (geo, material, background, r):  # the components are the system's modules, not the renderer's
        module.eval()
    return r


def whole_and_bounded(renderer, batch, budget):
    """The image keys of one unchunked pass (every ray and sample at once) and of the bounded path."""
    o, d = batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3)
    lights = batch["light_positions"].expand(o.shape[0], 3)
    with torch.no_grad():
        whole = renderer._render_rays(o, d, lights)
        renderer.cfg.eval_max_samples = budget
        counter = PointCounter(renderer.geometry, "forward")
        bounded = renderer(**batch)
    return whole, bounded, counter.sizes


@pytest.mark.parametrize("alpha_prune", [True, False])
def test_nerf_evaluation_is_bounded_by_samples_and_matches_the_whole_frame(alpha_prune):
    renderer = volume_renderer({"prune_alpha_threshold": alpha_prune})
    batch = frame()
    budget = 700  # the frame keeps thousands of samples: many chunks, cut at ray boundaries
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget)
    assert len(sizes) > 3 and max(sizes) <= budget  # shaded in sample chunks, none over the budget
    n_samples = renderer._march(batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3))[0].numel()
    assert sum(sizes) == n_samples  # every kept sample shaded exactly once
    H, W = batch["rays_o"].shape[1:3]
    for key in ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal"):
        assert bounded[key].shape[1:3] == (H, W)
        ref = whole[key].reshape(bounded[key].shape)
        assert torch.allclose(bounded[key], ref, atol=2e-5, rtol=1e-5), (key, (bounded[key] - ref).abs().max())
    assert float(whole["opacity"].max()) > 0.5 and float(whole["opacity"].min()) < 0.1  # a real picture


def test_nerf_bounded_marching_groups_and_a_ray_longer_than_the_budget():
    """A budget below one ray's samples: each ray alone; the marching groups are bounded too."""
    renderer = volume_renderer({"prune_alpha_threshold": False, "eval_march_factor": 1, "eval_chunk_size": 7})
    batch = frame(H=6, W=5)
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget=10)
    per_ray = renderer._candidate_counts(batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3))
    assert int(per_ray.max()) > 10 and max(sizes) <= int(per_ray.max())  # a run holds one long ray
    for key in ("comp_rgb_fg", "opacity", "depth"):
        assert torch.allclose(bounded[key], whole[key].reshape(bounded[key].shape), atol=2e-5)


def test_nerf_frame_without_samples_gives_the_background():
    renderer = volume_renderer()
    batch = frame(distance=5.0)
    batch["rays_d"] = -batch["rays_d"]  # looking away from the box: no ray has a sample
    with torch.no_grad():
        out = renderer(**batch)
    assert float(out["opacity"].abs().max()) == 0.0 and torch.equal(out["comp_rgb"], torch.ones_like(out["comp_rgb"]))


def test_neus_evaluation_is_bounded_by_samples_and_matches_the_whole_frame():
    renderer = volume_renderer(geometry="implicit-sdf", renderer="neus-volume-renderer",
                               geo_cfg={"sdf_bias": "sphere", "sdf_bias_params": 0.5}, extra={"learned_variance_init": 0.4})
    batch = frame()
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget=500)
    assert len(sizes) > 3 and max(sizes) <= 500
    for key in ("comp_rgb_fg", "opacity", "depth", "comp_normal"):
        ref = whole[key].reshape(bounded[key].shape)
        assert torch.allclose(bounded[key], ref, atol=2e-5, rtol=1e-5), (key, (bounded[key] - ref).abs().max())
    assert float(whole["opacity"].max()) > 0.5


def test_patch_renderer_evaluation_uses_the_bounded_base_renderer():
    torch.manual_seed(0)
    geo = find("implicit-volume")({"radius": 1.0, "pos_encoding_config": SMALL_GRID})
    material = find("no-material")()
    background = find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    r = find("patch-renderer")({"patch_size": 8, "base_renderer": {"num_samples_per_ray": 64, "eval_max_samples": 600}},
                               geometry=geo, material=material, background=background).eval()
    counter = PointCounter(geo, "forward")
    with torch.no_grad():
        out = r(**frame())
    assert len(counter.sizes) > 3 and max(counter.sizes) <= 600 and out["comp_rgb"].shape == (1, 24, 20, 3)
