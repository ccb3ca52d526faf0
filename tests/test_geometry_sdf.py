"""Mesh-stage geometries: tetrahedra-sdf-grid (DMTet), implicit-sdf, custom-mesh, the SDF helpers
(lift3d.geometry.sdf_init) and stage conversion (create_from). CPU, tiny networks, ~20 s."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.geometry.sdf_init import MeshSDF, ShapeInitSDF, shape_init_sdf
from lift3d.ops.mesh_io import load_mesh
from lift3d.registry import find

torch.set_num_threads(1)

CAPSULE = "load/shapes/capsule_bicolor.ply"
TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
             "base_resolution": 4, "per_level_scale": 2.0}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}


def dmtet(**cfg):
    base = {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP}
    base.update(cfg)
    return find("tetrahedra-sdf-grid")(base)


def capsule_sdf(p: torch.Tensor) -> torch.Tensor:
    """Analytic SDF of the capsule in load/shapes (radius 0.25, segment z in [-0.3, 0.3])."""
    q = p.clone()
    q[:, 2] = p[:, 2] - p[:, 2].clamp(-0.3, 0.3)
    return q.norm(dim=-1) - 0.25


def chamfer(va, fa, vb, fb, n=8000) -> float:
    import trimesh
    from scipy.spatial import cKDTree

    a = trimesh.sample.sample_surface(trimesh.Trimesh(np.asarray(va), np.asarray(fa), process=False), n, seed=0)[0]
    b = trimesh.sample.sample_surface(trimesh.Trimesh(np.asarray(vb), np.asarray(fb), process=False), n, seed=1)[0]
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def edge_use_counts(faces: torch.Tensor) -> torch.Tensor:
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(-1).values
    return torch.unique(e, dim=0, return_counts=True)[1]


def nerf(**cfg):
    base = {"radius": 1.0, "density_bias": "blob_magic3d", "density_blob_scale": 10.0, "density_blob_std": 0.5,
            "isosurface_threshold": 5.0, "isosurface_resolution": 33, "pos_encoding_config": TINY_GRID,
            "mlp_network_config": TINY_MLP}
    base.update(cfg)
    return find("implicit-volume")(base)


# softplus^-1(t): the blob (network ≈ 0 at init) crosses density t at r = std (1 - softplus^-1(t) / scale)
def blob_radius(t, scale=10.0, std=0.5):
    return std * (1.0 - math.log(math.expm1(t)) / scale)


# ------------------------------------------------------------------ SDF helpers
def test_mesh_sdf_matches_analytic_capsule():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(20000, 3, generator=gen) * 1.6 - 0.8
    d = shape_init_sdf("mesh:" + CAPSULE, None, p)
    ref = capsule_sdf(p)
    clear = ref.abs() > 0.01  # farther from the surface than the mesh's faceting
    assert bool(((d < 0) == (ref < 0))[clear].all())
    assert float((d - ref).abs().max()) < 0.008  # 32-gon faceting: ≤ 0.25 (1 - cos(π/32)) ≈ 0.0012 off the circle
    assert float((d - ref).abs().mean()) < 0.002


def test_mesh_sdf_sign_is_independent_of_winding():
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    p = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 0.0], [0.7, 0.0, 0.0], [0.0, -0.2, -0.9]])
    d = MeshSDF(s.vertices, s.faces)(p)
    d_flipped = MeshSDF(s.vertices, s.faces[:, ::-1].copy())(p)
    assert torch.allclose(d, d_flipped)
    assert (d[:2] < 0).all() and (d[2:] > 0).all()
    assert abs(float(d[0]) + 0.5) < 0.02 and abs(float(d[2]) - 0.2) < 0.02


def test_ellipsoid_and_sphere_sdf():
    radii = [0.5, 0.3, 0.2]
    on_surface = torch.tensor([[0.5, 0, 0], [0, 0.3, 0], [0, 0, -0.2]])
    assert torch.allclose(shape_init_sdf("ellipsoid", radii, on_surface), torch.zeros(3), atol=1e-6)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.25]])
    d = shape_init_sdf("ellipsoid", radii, pts)
    assert d[0] < 0 and abs(float(d[1]) - 0.1) < 1e-5 and abs(float(d[2]) - 0.05) < 1e-5
    assert torch.allclose(shape_init_sdf("sphere", 0.5, pts), pts.norm(dim=-1) - 0.5)
    with pytest.raises(ConfigError, match="semi-axes"):
        ShapeInitSDF("ellipsoid", None)
    with pytest.raises(ConfigError, match="shape_init 'cube'"):
        ShapeInitSDF("cube")


# ------------------------------------------------------------------ tetrahedra-sdf-grid
def test_dmtet_sphere_init_is_closed_outward_and_round():
    geo = dmtet(shape_init="sphere", shape_init_params=0.47)  # 0.5 would put lattice points on the surface
    geo.initialize_shape()
    mesh = geo.isosurface()
    r = mesh.v_pos.detach().norm(dim=-1)
    assert mesh.n_faces > 500
    # linear interpolation of an exact SDF along edges up to √3 steps long: error ≤ L²/(8 r) ≈ 0.006
    assert float((r - 0.47).abs().max()) < 0.008 and float((r - 0.47).abs().mean()) < 0.002
    assert bool((edge_use_counts(mesh.t_pos_idx) == 2).all())  # watertight
    centroids = mesh.v_pos[mesh.t_pos_idx].mean(1)
    assert bool(((mesh.f_nrm * centroids).sum(-1) > 0).all())  # counter-clockwise seen from outside


def test_dmtet_surface_is_differentiable_in_sdf_and_deformation():
    geo = dmtet(shape_init="sphere", shape_init_params=0.45)
    geo.initialize_shape()

    def mean_radius() -> torch.Tensor:
        return geo.isosurface().v_pos.norm(dim=-1).mean()

    loss = mean_radius()
    loss.backward()
    g_sdf, g_def = geo.sdf.grad.clone(), geo.deformation.grad.clone()
    assert (g_def.abs() > 0).sum() > 100
    # raising the SDF everywhere by eps moves the surface inward by ~eps: d(mean r)/d(shift) ≈ -1
    eps = 1e-3
    with torch.no_grad():
        geo.sdf += eps
        up = float(mean_radius())
        geo.sdf -= 2 * eps
        down = float(mean_radius())
        geo.sdf += eps
    fd = (up - down) / (2 * eps)
    assert abs(fd - float(g_sdf.sum())) < 0.02 * abs(fd)
    assert -1.2 < fd < -0.8


def test_fix_geometry_and_geometry_only():
    geo = dmtet(shape_init="sphere", fix_geometry=True, geometry_only=True)
    assert list(geo.parameters()) == []
    assert "sdf" in geo.state_dict() and "deformation" in geo.state_dict()
    geo.initialize_shape()
    m1 = geo.isosurface()
    assert m1 is geo.isosurface() and not m1.v_pos.requires_grad  # cached, frozen
    assert geo(torch.zeros(5, 3)) == {}
    textured = dmtet(shape_init="sphere")
    assert textured(torch.zeros(5, 3))["features"].shape == (5, 3)
    assert {n for n, _ in textured.named_parameters()} >= {"sdf", "deformation"}


def test_dmtet_shape_init_runs_at_training_start_and_errors_without_a_surface():
    geo = dmtet(shape_init="sphere", shape_init_params=0.5)
    geo.eval()
    geo.do_update_step(0, 0)  # not training (e.g. --export): no init
    assert not bool(geo.shape_initialized)
    geo.train()
    geo.do_update_step(0, 0)
    assert bool(geo.shape_initialized) and geo.isosurface().n_faces > 0
    empty = dmtet()
    empty.train()
    with pytest.raises(ConfigError, match="geometry_convert_from"):
        empty.do_update_step(0, 0)
    # force_shape_init: a converted geometry is re-initialised at step 0 of a fresh run only
    base = {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
            "shape_init": "sphere", "shape_init_params": 0.3, "force_shape_init": True}
    resumed = find("tetrahedra-sdf-grid").create_from(geo, base)
    resumed.train()
    resumed.do_update_step(0, 7)  # a resumed run starts past step 0
    assert abs(float(resumed.isosurface().v_pos.norm(dim=-1).mean()) - 0.5) < 0.01
    fresh = find("tetrahedra-sdf-grid").create_from(geo, base)
    fresh.train()
    fresh.do_update_step(0, 0)
    assert abs(float(fresh.isosurface().v_pos.norm(dim=-1).mean()) - 0.3) < 0.01


def test_dmtet_mesh_shape_init_matches_the_mesh():
    geo = dmtet(shape_init="mesh:" + CAPSULE, isosurface_resolution=32)
    geo.initialize_shape()
    mesh = geo.isosurface()
    v, f, _ = load_mesh(CAPSULE)
    # lattice step 0.0625; chords of the r = 0.25 capsule cut up to L²/(8r) ≈ 0.006 inside
    assert chamfer(mesh.v_pos.detach(), mesh.t_pos_idx, v, f) < 0.012


# ------------------------------------------------------------------ conversion (create_from)
def test_convert_implicit_volume_at_threshold_distance_mode():
    src = nerf()
    cls = find("tetrahedra-sdf-grid")
    geo = cls.create_from(src, {"isosurface_resolution": 32, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    density = src.forward_field(geo.grid_vertices).reshape(-1).detach()
    # sign: inside (sdf < 0) exactly where density > threshold
    assert bool(((geo.sdf.reshape(-1) < 0) == (density > 5.0)).all())
    mesh = geo.isosurface()
    r = mesh.v_pos.norm(dim=-1)
    assert abs(float(r.mean()) - blob_radius(5.0)) < 0.01
    # the same surface as the source's own marching-cubes isosurface
    mc = src.isosurface()
    assert chamfer(mesh.v_pos.detach(), mesh.t_pos_idx, mc.v_pos, mc.t_pos_idx) < 0.01
    # |sdf| is a distance: at the centre ≈ the radius of the surface
    centre = int(((geo.grid_vertices) ** 2).sum(-1).argmin())
    assert abs(float(geo.sdf[centre]) + blob_radius(5.0)) < 0.02
    assert bool(geo.shape_initialized)


def test_convert_implicit_volume_threshold_override_and_clamp_mode():
    src = nerf()
    cls = find("tetrahedra-sdf-grid")
    base = {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP}
    geo = cls.create_from(src, {**base, "convert_threshold": 1.0})
    assert abs(float(geo.isosurface().v_pos.norm(dim=-1).mean()) - blob_radius(1.0)) < 0.015
    clamped = cls.create_from(src, {**base, "convert_sdf": "clamp"})
    density = src.forward_field(clamped.grid_vertices).reshape(-1).detach()
    assert torch.allclose(clamped.sdf.reshape(-1), (5.0 - density).clamp(-1.0, 1.0), atol=1e-5)
    with pytest.raises(ConfigError, match="convert_threshold"):
        cls.create_from(src, {**base, "convert_threshold": 1e6})


def test_convert_dmtet_copy_resample_and_texture_inheritance():
    cls = find("tetrahedra-sdf-grid")
    src = dmtet(shape_init="sphere", shape_init_params=0.5)
    src.initialize_shape()
    with torch.no_grad():
        src.deformation.normal_(0.0, 0.3)
        for p in src.feature_network.parameters():
            p.normal_()
        src.encoding.encoding.params.normal_(0.0, 0.5)
    same = cls.create_from(src, {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
                                 "fix_geometry": True}, copy_net=True)
    assert torch.equal(same.sdf, src.sdf.detach()) and torch.equal(same.deformation, src.deformation.detach())
    pts = torch.rand(64, 3) - 0.5
    assert torch.allclose(same(pts)["features"], src(pts)["features"])
    fresh = cls.create_from(src, {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    assert not torch.allclose(fresh(pts)["features"], src(pts)["features"])
    finer = cls.create_from(src, {"isosurface_resolution": 32, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    assert float((finer.isosurface().v_pos.norm(dim=-1) - 0.5).abs().mean()) < 0.01
    with pytest.raises(ConfigError, match="pos_encoding_config"):
        cls.create_from(src, {"isosurface_resolution": 24, "mlp_network_config": TINY_MLP}, copy_net=True)
    with pytest.raises(ConfigError, match="radius"):
        cls.create_from(src, {"radius": 0.8, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP}, copy_net=True)


def test_convert_custom_mesh_and_convertible_names():
    cls = find("tetrahedra-sdf-grid")
    mesh_geo = find("custom-mesh")({"shape_init": "mesh:" + CAPSULE, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    geo = cls.create_from(mesh_geo, {"isosurface_resolution": 32, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    m = geo.isosurface()
    v, f, _ = load_mesh(CAPSULE)
    assert chamfer(m.v_pos.detach(), m.t_pos_idx, v, f) < 0.012
    for name in ("implicit-volume", "implicit-sdf", "tetrahedra-sdf-grid", "custom-mesh"):
        assert cls.can_convert_from(name)
    assert find("implicit-sdf").can_convert_from("implicit-sdf")
    assert not find("implicit-sdf").can_convert_from("implicit-volume")
    assert not find("custom-mesh").can_convert_from("implicit-volume")


# ------------------------------------------------------------------ implicit-sdf
def test_implicit_sdf_shape_init_fit_normals_and_mt_isosurface():
    geo = find("implicit-sdf")({"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
                                "sdf_bias": "sphere", "sdf_bias_params": 0.3,
                                "shape_init": "ellipsoid", "shape_init_params": [0.55, 0.4, 0.3],
                                "shape_init_steps": 300, "shape_init_batch_size": 2048, "shape_init_lr": 0.01})
    geo.initialize_shape()
    pts = torch.rand(4000, 3) * 1.6 - 0.8
    target = shape_init_sdf("ellipsoid", [0.55, 0.4, 0.3], pts)
    near = target.abs() < 0.2
    err = (geo.forward_field(pts).reshape(-1) - target).abs().detach()
    assert float(err[near].mean()) < 0.03
    out = geo(torch.tensor([[0.55, 0.0, 0.0], [0.0, 0.0, -0.3]]), output_normal=True)
    assert float(out["normal"][0, 0]) > 0.9 and float(out["normal"][1, 2]) < -0.9
    mesh = geo.isosurface()  # marching tets: differentiable w.r.t. the network
    assert mesh.n_faces > 200
    mesh.v_pos.norm(dim=-1).mean().backward()
    assert geo.sdf_network.layers[0].weight.grad.abs().sum() > 0
    # analytic normals return the gradient for the eikonal regularizer
    geo2 = find("implicit-sdf")({"pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
                                 "sdf_bias": "sphere", "normal_type": "analytic"})
    o2 = geo2(torch.tensor([[0.0, 0.6, 0.0]]), output_normal=True)
    assert torch.allclose(o2["normal"], torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-2) and "sdf_grad" in o2


def test_implicit_sdf_mesh_init_and_copy():
    cfg = {"isosurface_resolution": 24, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
           "shape_init": "mesh:" + CAPSULE, "shape_init_steps": 200, "shape_init_batch_size": 2048, "shape_init_lr": 0.01}
    geo = find("implicit-sdf")(cfg)
    geo.initialize_shape()
    pts = torch.rand(4000, 3) * 1.4 - 0.7
    ref = capsule_sdf(pts)
    clear = ref.abs() > 0.05
    pred = geo.forward_field(pts).reshape(-1).detach()
    assert float(((pred < 0) == (ref < 0))[clear].float().mean()) > 0.97
    copy = find("implicit-sdf").create_from(geo, cfg)
    assert bool(copy.shape_initialized)
    assert torch.allclose(copy.forward_field(pts), geo.forward_field(pts))
    copy.initialize_shape()  # already initialised: no refit
    assert torch.allclose(copy.forward_field(pts), geo.forward_field(pts))
    with pytest.raises(ConfigError, match="implicit-sdf"):
        find("implicit-sdf").create_from(nerf(), cfg)


# ------------------------------------------------------------------ custom-mesh
def test_custom_mesh_loading_scaling_axes_and_features():
    v, f, _ = load_mesh(CAPSULE)
    as_stored = find("custom-mesh")({"shape_init": "mesh:" + CAPSULE, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    m = as_stored.isosurface()
    assert torch.allclose(m.v_pos, torch.from_numpy(v)) and torch.equal(m.t_pos_idx, torch.from_numpy(f))
    assert as_stored(m.v_pos[:10])["features"].shape == (10, 3)
    scaled = find("custom-mesh")({"shape_init": "mesh:" + CAPSULE, "shape_init_params": 0.8, "shape_init_mesh_up": "+y",
                                  "shape_init_mesh_front": "+x", "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP})
    sv = scaled.isosurface().v_pos
    assert abs(float(sv.abs().max()) - 0.8) < 1e-5
    # up=+y, front=+x: file y becomes world z and file z (the capsule's long axis) world -y
    ext = sv.max(0).values - sv.min(0).values
    assert float(ext[1]) > 1.55 and float(ext[2]) < 0.8
    assert "v_pos" in scaled.state_dict()
    with pytest.raises(ConfigError, match="mesh:<path"):
        find("custom-mesh")({"shape_init": "sphere"})
