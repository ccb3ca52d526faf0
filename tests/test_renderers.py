"""NeRF volume renderer, patch renderer, materials and backgrounds against known answers."""
from dataclasses import dataclass

import math

import pytest
import torch

from lift3d.data.cameras import get_projection_matrix, get_mvp_matrix, get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
from lift3d.geometry.base import BaseImplicitGeometry
from lift3d.registry import find


class SphereOfConstantDensity(BaseImplicitGeometry):
    """density sigma inside a ball of radius 0.5, 0 outside; features give colour (0.2, 0.4, 0.6)."""

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        sigma: float = 8.0

    def forward_field(self, points):
        return (points.norm(dim=-1, keepdim=True) < 0.5).float() * self.cfg.sigma

    def forward(self, points, output_normal=False):
        out = {"density": self.forward_field(points),
               "features": torch.logit(torch.tensor([0.2, 0.4, 0.6])).expand(points.shape[0], 3)}
        if output_normal:
            out["normal"] = torch.nn.functional.normalize(points, dim=-1)
        return out


def camera_rays(H=33, W=33, distance=2.0, fovy_deg=40.0, elevation=0.0, azimuth=0.0):
    pos = spherical_to_cartesian(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]))
    c2w = look_at_c2w(pos)
    fovy = torch.tensor([math.radians(fovy_deg)])
    dirs = get_ray_directions(H, W, 0.5 * H / math.tan(fovy.item() / 2))
    rays_o, rays_d = get_rays(dirs, c2w)
    mvp = get_mvp_matrix(c2w, get_projection_matrix(fovy, W / H, 0.1, 100.0))
    return {"rays_o": rays_o, "rays_d": rays_d, "light_positions": pos, "mvp_mtx": mvp, "c2w": c2w,
            "camera_positions": pos, "height": H, "width": W}


def make_renderer(name="nerf-volume-renderer", cfg=None, bg=(1.0, 1.0, 1.0)):
    geometry = SphereOfConstantDensity({"radius": 1.0})
    material = find("no-material")()
    background = find("solid-color-background")({"color": list(bg)})
    renderer = find(name)(cfg or {"num_samples_per_ray": 256, "grid_warmup_steps": 1, "grid_update_interval": 1},
                          geometry=geometry, material=material, background=background)
    return renderer


@pytest.mark.parametrize("grid_prune", [False, True])
def test_centre_ray_opacity_matches_beer_lambert(grid_prune):
    renderer = make_renderer(cfg={"num_samples_per_ray": 512, "grid_prune": grid_prune, "grid_warmup_steps": 1})
    renderer.train()
    renderer.update_step(0, 0)  # fills the occupancy grid
    renderer.eval()
    b = camera_rays()
    with torch.no_grad():
        out = renderer(**b)
    c = 16  # centre pixel: the ray passes through the ball's centre, chord length 1.0
    expected = 1.0 - math.exp(-8.0 * 1.0)
    assert out["opacity"][0, c, c, 0].item() == pytest.approx(expected, abs=0.01)
    # colour: fg colour premultiplied, white background behind
    rgb = out["comp_rgb"][0, c, c]
    assert torch.allclose(rgb, torch.tensor([0.2, 0.4, 0.6]) * expected + (1 - expected), atol=0.01)
    # a corner ray misses the ball: background only
    assert out["opacity"][0, 0, 0, 0].item() == 0.0 and torch.allclose(out["comp_rgb"][0, 0, 0], torch.ones(3))
    # depth of the centre ray: expected termination distance inside [1.5, 2.5]
    assert 1.5 < out["depth"][0, c, c, 0].item() / expected < 1.7
    # comp_normal at the centre faces the camera (+x): (n + 1) / 2 ≈ (1, 0.5, 0.5)
    assert torch.allclose(out["comp_normal"][0, c, c], torch.tensor([1.0, 0.5, 0.5]) * expected, atol=0.05)
    if grid_prune:
        assert 0.0 < renderer.occupancy_grid.occupied_fraction() < 0.2


def test_training_outputs_per_sample_terms_and_gradients():
    geometry = find("implicit-volume")({"pos_encoding_config": {"otype": "HashGrid", "n_levels": 4,
                                        "log2_hashmap_size": 12, "base_resolution": 8, "per_level_scale": 1.5}})
    renderer = find("nerf-volume-renderer")({"num_samples_per_ray": 64, "return_comp_normal": True},
                                            geometry=geometry, material=find("no-material")(),
                                            background=find("solid-color-background")())
    renderer.train()
    out = renderer(**camera_rays(H=8, W=8))
    for key in ("weights", "t_dirs", "normal", "points"):
        assert key in out and out[key].shape[0] == out["weights"].shape[0] > 0
    out["comp_rgb"].mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in geometry.parameters())


def test_patch_renderer_pastes_full_resolution_patch():
    torch.manual_seed(0)
    cfg = {"patch_size": 8, "global_downsample": 4,
           "base_renderer": {"num_samples_per_ray": 256, "randomized": False, "grid_prune": False}}
    patch = make_renderer("patch-renderer", cfg)
    full = make_renderer(cfg={"num_samples_per_ray": 256, "randomized": False, "grid_prune": False})
    patch.train(); full.train()
    b = camera_rays(H=32, W=32)
    with torch.no_grad():
        out_p = patch(**b)
        out_f = full(**b)
    assert out_p["comp_rgb"].shape == (1, 32, 32, 3)
    diff = (out_p["comp_rgb"] - out_f["comp_rgb"]).abs().amax(-1)[0]  # [32,32]
    exact = diff < 1e-5
    # exactly one 8x8 window equals the full-resolution render
    windows = exact.float().unfold(0, 8, 1).unfold(1, 8, 1).sum((-1, -2))
    assert windows.max().item() == 64
    # elsewhere the upsampled low-resolution frame approximates it
    assert diff.mean() < 0.1
    patch.eval()
    with torch.no_grad():
        assert torch.allclose(patch(**b)["comp_rgb"], out_f["comp_rgb"], atol=1e-6)


def test_diffuse_material_lambert_and_shading_modes():
    mat = find("diffuse-with-point-light-material")({"ambient_light_color": [0.1] * 3, "diffuse_light_color": [0.8] * 3})
    mat.eval()
    feats = torch.logit(torch.tensor([[0.5, 0.5, 0.5]]))
    pos = torch.zeros(1, 3)
    normal = torch.tensor([[0.0, 0.0, 1.0]])
    light = torch.tensor([[0.0, 1.0, 1.0]])  # 45 degrees
    rgb = mat(features=feats, positions=pos, shading_normal=normal, light_positions=light)
    assert torch.allclose(rgb, torch.full((1, 3), 0.5 * (0.1 + 0.8 * math.cos(math.pi / 4))), atol=1e-5)
    assert torch.allclose(mat(features=feats, positions=pos, shading_normal=normal, light_positions=light,
                              shading="albedo"), torch.full((1, 3), 0.5))
    textureless = mat(features=feats, positions=pos, shading_normal=normal, light_positions=light, shading="textureless")
    assert torch.allclose(textureless, torch.full((1, 3), 0.1 + 0.8 * math.cos(math.pi / 4)), atol=1e-5)
    mat.train(); mat.update_step(0, 0)  # ambient-only phase: albedo
    assert torch.allclose(mat(features=feats, positions=pos, shading_normal=normal, light_positions=light), torch.full((1, 3), 0.5))


def test_backgrounds():
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 5, 3), dim=-1)
    solid = find("solid-color-background")({"color": [0.1, 0.2, 0.3]})
    assert torch.allclose(solid(dirs), torch.tensor([0.1, 0.2, 0.3]).expand(2, 4, 5, 3))
    env = find("neural-environment-map-background")({"random_aug": True, "random_aug_prob": 1.0})
    env.eval()
    out = env(dirs)
    assert out.shape == (2, 4, 5, 3) and out.min() >= 0 and out.max() <= 1
    assert out.flatten(0, 2).std(0).sum() > 0  # depends on direction
    env.train()
    aug = env(dirs)
    assert aug.flatten(0, 2).std(0).sum() < 1e-6  # a random solid colour
    aug.sum().backward()  # the graph still reaches the MLP
    assert all(p.grad is not None for p in env.parameters())


def test_implicit_volume_normals_point_out_of_the_blob():
    geo = find("implicit-volume")({"density_bias": "blob_dreamfusion", "density_blob_scale": 10.0,
                                   "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8,
                                                           "base_resolution": 4, "per_level_scale": 1.5}})
    with torch.no_grad():
        for p in geo.density_network.parameters():
            p.zero_()  # density = softplus(blob): radially decreasing
    points = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) * 0.4
    fd = geo(points, output_normal=True)["normal"]
    geo.cfg.normal_type = "analytic"
    an = geo(points, output_normal=True)["normal"]
    radial = torch.nn.functional.normalize(points, dim=-1)
    assert (fd * radial).sum(-1).min() > 0.99 and (an * radial).sum(-1).min() > 0.999
