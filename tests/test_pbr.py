"""`pbr-material`, split-sum image-based lighting (lift3d.materials.split_sum) and
`pbr-mesh-exporter` (lift3d.export.pbr_textures), checked against independent computations:
RGBE round trips, the BRDF table against a brute-force hemisphere quadrature, irradiance against
closed forms, GGX prefiltering against Monte-Carlo importance sampling, the shading formula under
a constant environment, and baked textures against the material at the mesh's vertices.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lift3d.materials import split_sum as ss
from lift3d.materials.pbr import tangent_frame
from lift3d.registry import find
from lift3d.utils.hdr_io import read_hdr, write_hdr

REPO = Path(__file__).resolve().parents[1]
TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
             "base_resolution": 4, "per_level_scale": 2.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


# ------------------------------------------------------------------ HDR files
@pytest.mark.parametrize("rle", [False, True])
def test_hdr_round_trip(tmp_path, rle):
    rng = np.random.default_rng(0)
    image = np.exp(rng.normal(0.0, 2.0, size=(12, 40, 3))).astype(np.float32)
    image[3, 5:30] = image[3, 5]  # a run for the encoder
    image[7, :4] = 0.0
    path = tmp_path / "x.hdr"
    write_hdr(path, image, rle=rle)
    back = read_hdr(path)
    assert back.shape == image.shape
    # RGBE keeps 8 bits of mantissa relative to the largest channel
    assert np.all(np.abs(back - image) <= image.max(-1, keepdims=True) / 128.0 + 1e-30)
    assert np.all(back[7, :4] == 0.0)


def test_shipped_environment_is_reproducible_and_sensible():
    import importlib.util

    path = REPO / "load/lights/studio_sky.hdr"
    env = read_hdr(path)
    assert env.shape == (256, 512, 3) and np.isfinite(env).all() and env.min() >= 0
    assert path.stat().st_size < 300_000
    spec = importlib.util.spec_from_file_location("make_lights", REPO / "load/lights/make_lights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    want = module.studio_sky()
    assert np.all(np.abs(env - want) <= want.max(-1, keepdims=True) / 128.0 + 1e-6)
    light = ss.EnvironmentLight(torch.from_numpy(env), scale=2.0)
    up = light.diffuse(torch.tensor([[0.0, 0.0, 1.0]]))
    down = light.diffuse(torch.tensor([[0.0, 0.0, -1.0]]))
    assert 0.5 < float(up.mean()) < 1.2 and float(down.mean()) < 0.3  # lit from the sky, dark ground


# ------------------------------------------------------------------ BRDF table
def brute_force_albedo(n_dot_v: float, rough: float, f0: float, n: int = 400) -> float:
    """∫ D G F / (4 n·l n·v) (n·l) dl over the hemisphere, midpoint rule in (θ, φ)."""
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) / n * (math.pi / 2)
    phi = (torch.arange(2 * n, dtype=torch.float64) + 0.5) / (2 * n) * (2 * math.pi)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    l = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1)
    v = torch.tensor([math.sqrt(1 - n_dot_v**2), 0.0, n_dot_v], dtype=torch.float64)
    h = F.normalize(l + v, dim=-1)
    n_dot_l = l[..., 2]
    d = ss.ggx_d(h[..., 2], rough**2)
    g = ss.smith_g_schlick_ibl(torch.tensor(n_dot_v, dtype=torch.float64), n_dot_l, torch.tensor(rough, dtype=torch.float64))
    fres = f0 + (1 - f0) * (1 - (h @ v).clamp(0, 1)) ** 5
    f = d * g * fres / (4 * n_dot_l * n_dot_v)
    d_omega = th.sin() * (math.pi / 2 / n) * (2 * math.pi / (2 * n))
    return float((f * n_dot_l * d_omega).sum())


@pytest.mark.parametrize("i, j", [(6, 9), (16, 16), (28, 20), (12, 28)])
def test_brdf_lut_matches_a_brute_force_integral(i, j):
    lut = ss.brdf_lut(32, 512)
    n_dot_v, rough = (i + 0.5) / 32, (j + 0.5) / 32
    a, b = lut[i, j].tolist()
    assert b == pytest.approx(brute_force_albedo(n_dot_v, rough, 0.0), abs=0.01)
    assert a + b == pytest.approx(brute_force_albedo(n_dot_v, rough, 1.0), abs=0.02)
    # bilinear lookup at a texel centre returns the texel
    got = ss.lookup_brdf_lut(lut, torch.tensor([n_dot_v]), torch.tensor([rough]))
    assert torch.allclose(got[0], lut[i, j], atol=1e-6)


# ------------------------------------------------------------------ environment convolutions
def test_irradiance_and_prefiltering_of_known_environments():
    dirs = ss.equirect_directions(64, 128)
    ones = torch.ones(64, 128, 3)
    assert torch.allclose(ss.irradiance_map(ones, 8, 32), torch.ones(8, 16, 3), atol=1e-5)
    assert torch.allclose(ss.prefilter_specular(ones, 0.5, 8), torch.ones(8, 16, 3), atol=1e-5)
    assert float(ss.equirect_solid_angles(64, 128).sum()) == pytest.approx(4 * math.pi, rel=1e-6)
    # L(l) = max(l_z, 0): E(n)/π = 2/3 at the zenith, 2/(3π) on the horizon, 0 at the nadir
    sky = dirs[..., 2:3].clamp_min(0.0).expand(64, 128, 3).contiguous()
    irr = ss.irradiance_map(sky, 16, 64)
    probe = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    got = ss.sample_equirect(irr, probe)[:, 0]
    want = torch.tensor([2 / 3, 2 / (3 * math.pi), 2 / (3 * math.pi), 0.0])
    assert torch.allclose(got, want, atol=0.02), got


def test_ggx_prefiltering_matches_importance_sampling():
    c = F.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)

    def radiance(d):  # a smooth environment, known at every direction
        return torch.exp(2.0 * (d @ c))[..., None] * torch.tensor([1.0, 0.5, 0.25])

    env = radiance(ss.equirect_directions(128, 256))
    rough = 0.6
    pre = ss.prefilter_specular(env, rough, 16, src_h=64)
    gen = torch.Generator().manual_seed(0)
    alpha = rough**2
    for r in (torch.tensor([0.0, 0.0, 1.0]), F.normalize(torch.tensor([1.0, 1.0, 0.2]), dim=0)):
        # Karis: sample h ~ D around r (= n = v), l = reflect(v, h), estimator Σ L(l)(n·l) / Σ (n·l)
        xi = torch.rand(200_000, 2, generator=gen)
        phi = 2 * math.pi * xi[:, 0]
        cos_t = torch.sqrt((1 - xi[:, 1]) / (1 + (alpha**2 - 1) * xi[:, 1]))
        sin_t = torch.sqrt(1 - cos_t**2)
        t, b = tangent_frame(r[None])
        h = t * (sin_t * phi.cos())[:, None] + b * (sin_t * phi.sin())[:, None] + r * cos_t[:, None]
        l = 2 * (h @ r)[:, None] * h - r
        w = (l @ r).clamp_min(0.0)[:, None]
        mc = (radiance(l) * w).sum(0) / w.sum()
        got = ss.sample_equirect(pre, r[None])[0]
        assert torch.allclose(got, mc, rtol=0.03), (got, mc)


# ------------------------------------------------------------------ the material
def test_tangent_frames_are_orthonormal_and_right_handed():
    n = F.normalize(torch.randn(1000, 3), dim=-1)
    n = n[n[:, 2] > -0.99]
    t, b = tangent_frame(n)
    for x, y in ((t, b), (t, n), (b, n)):
        assert (x * y).sum(-1).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.cross(t, b), n, atol=1e-5)
    t0, b0 = tangent_frame(torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(t0, torch.tensor([[1.0, 0, 0]])) and torch.allclose(b0, torch.tensor([[0, 1.0, 0]]))


def constant_env_file(tmp_path, value=0.5):
    path = tmp_path / "grey.hdr"
    write_hdr(path, np.full((16, 32, 3), value, dtype=np.float32))
    return str(path)


def test_split_sum_shading_under_a_constant_environment(tmp_path):
    path = constant_env_file(tmp_path)
    level = 2.0 * float(read_hdr(path).mean())  # 0.5 x scale 2, as RGBE stores it (≈ 1.004)
    mat = find("pbr-material")({"environment_texture": path, "environment_scale": 2.0,
                                "min_roughness": 0.4, "max_roughness": 0.4, "min_metallic": 0.3, "max_metallic": 0.3})
    features = torch.zeros(3, 8)
    features[:, :3] = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 2.0]])
    features.requires_grad_(True)
    n = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.3, 0.4, 0.8]]), dim=-1)
    v = F.normalize(torch.tensor([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.3, 0.4, 0.8]]), dim=-1)  # towards the camera
    rgb = mat(features, viewdirs=-v, shading_normal=n)
    # the environment is `level` everywhere: so are the irradiance and every prefiltered level
    kd = ss.srgb_to_linear(torch.sigmoid(features[:, :3].detach()))
    n_dot_v = (n * v).sum(-1)
    ab = ss.lookup_brdf_lut(ss.brdf_lut(32, 512), n_dot_v, torch.full_like(n_dot_v, 0.4))
    f0 = 0.04 * 0.7 + kd * 0.3
    want = ss.linear_to_srgb((level * (kd * 0.7 + f0 * ab[:, :1] + ab[:, 1:])).clamp(0, 1))
    assert torch.allclose(rgb, want, atol=1e-4)
    rgb.sum().backward()
    assert float(features.grad[:, :3].abs().min()) > 0
    # zero features: mid parameters and a flat bump, so the perturbed normal is the shading normal
    dec = mat.decode(torch.zeros(2, 8))
    assert torch.allclose(dec["albedo"], torch.full((2, 3), 0.5)) and torch.allclose(dec["bump"], torch.tensor([[0, 0, 1.0]] * 2))
    assert torch.allclose(mat.perturbed_normal(n[:2], dec["bump"]), n[:2], atol=1e-6)
    # the environment never enters the checkpoint
    assert not any("light" in k for k in mat.state_dict())


def test_material_config_errors(tmp_path):
    from lift3d.errors import ConfigError

    with pytest.raises(ConfigError, match="environment_texture"):
        find("pbr-material")({"environment_texture": str(tmp_path / "missing.hdr")})
    with pytest.raises(ConfigError, match="min_roughness"):
        find("pbr-material")({"environment_texture": constant_env_file(tmp_path), "min_roughness": 0.9, "max_roughness": 0.2})
    mat = find("pbr-material")({"environment_texture": constant_env_file(tmp_path)})
    with pytest.raises(ConfigError, match="n_feature_dims=8"):
        mat.decode(torch.zeros(4, 3))


# ------------------------------------------------------------------ export
def test_baked_textures_reproduce_the_material_at_the_vertices(tmp_path):
    import trimesh
    from PIL import Image

    from lift3d.export.pbr_textures import uv_tangent_frames

    geo = find("tetrahedra-sdf-grid")({"isosurface_resolution": 16, "shape_init": "sphere", "shape_init_params": 0.5,
                                       "n_feature_dims": 8, "pos_encoding_config": TINY_GRID})
    geo.initialize_shape()
    mat = find("pbr-material")({"environment_texture": constant_env_file(tmp_path), "min_metallic": 0.0, "max_metallic": 1.0})
    tilt = torch.tensor([0.3, -0.2, 0.0])

    def features_at(points):  # albedo varies with position; metallic 0.73, roughness = 0.08 + 0.82 σ(-0.5); tilted bump
        f = torch.zeros(points.shape[0], 8)
        f[:, :3] = points * 3.0
        f[:, 3] = 1.0
        f[:, 4] = -0.5
        f[:, 5:8] = torch.logit((tilt + 1) / 2)  # 2σ - 1 = tilt: bump = normalize(tilt + z)
        return {"features": f}

    geo.export = features_at
    bg = find("solid-color-background")({})
    exporter = find("pbr-mesh-exporter")({"texture_size": 256}, geometry=geo, material=mat, background=bg)
    files = exporter.export(tmp_path / "out")
    names = sorted(p.name for p in files)
    assert names == ["model.mtl", "model.obj", "texture_kd.png", "texture_ks.png", "texture_nrm.png"]
    mtl = (tmp_path / "out/model.mtl").read_text()
    assert "map_Kd texture_kd.png" in mtl and "map_Ks texture_ks.png" in mtl and "map_Bump texture_nrm.png" in mtl

    tm = trimesh.load(tmp_path / "out/model.obj", process=False, force="mesh")
    v = torch.tensor(np.asarray(tm.vertices), dtype=torch.float32)
    uv = torch.tensor(np.asarray(tm.visual.uv), dtype=torch.float32)

    def sample(name):
        img = torch.tensor(np.asarray(Image.open(tmp_path / "out" / name).convert("RGB")), dtype=torch.float32) / 255
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)[None, :, None]
        return F.grid_sample(img.permute(2, 0, 1)[None], grid, align_corners=False)[0, :, :, 0].T  # [V,3]

    want = mat.export(features_at(v)["features"])
    kd_err = (sample("texture_kd.png") - want["albedo"]).abs().max(-1).values
    assert float(kd_err.median()) < 0.02
    ks = sample("texture_ks.png")
    assert float((ks[:, 1] - want["roughness"][:, 0]).abs().median()) < 0.01
    assert float((ks[:, 2] - 0.73105).abs().median()) < 0.01 and float(ks[:, 0].abs().max()) < 0.01
    # the normal map, decoded in the exported mesh's UV tangent frames, gives the perturbed world normal
    from lift3d.mesh import Mesh

    mesh = Mesh(v, torch.tensor(np.asarray(tm.faces)), v_tex=uv, t_tex_idx=torch.tensor(np.asarray(tm.faces)))
    n, t, s = uv_tangent_frames(mesh)
    b = s * torch.linalg.cross(n, t)
    ts = sample("texture_nrm.png") * 2 - 1
    world = F.normalize(ts[:, :1] * t + ts[:, 1:2] * b + ts[:, 2:3] * n, dim=-1)
    target = mat.perturbed_normal(n, mat.decode(features_at(v)["features"])["bump"])
    angle = torch.rad2deg(torch.acos((world * target).sum(-1).clamp(-1, 1)))
    assert float(angle.median()) < 3.0, float(angle.median())
    assert float(torch.rad2deg(torch.acos((n * target).sum(-1).clamp(-1, 1))).median()) > 10.0  # the bump is not flat

    glb = find("pbr-mesh-exporter")({"fmt": "glb", "texture_size": 64}, geometry=geo, material=mat, background=bg)
    (path,) = glb.export(tmp_path / "glb")
    loaded = trimesh.load(path, force="mesh")
    material = loaded.visual.material
    assert material.metallicRoughnessTexture is not None and material.normalTexture is not None
