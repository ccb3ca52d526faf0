"""mesh-exporter: textured OBJ+MTL+PNG and GLB (xatlas UVs + baked texture), vertex-colour OBJ/PLY,
the NeRF export by marching cubes, and texture baking itself (lift3d.export.texture_baking)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.export.texture_baking import bake_texture, dilate_texture
from lift3d.mesh import Mesh
from lift3d.registry import find

torch.set_num_threads(1)


def albedo_fn(p: torch.Tensor) -> torch.Tensor:
    """The known colour of the test surface: linear in position, inside (0, 1)."""
    return (0.5 + 0.8 * p[..., :3] * torch.tensor([1.0, -1.0, 0.7])).clamp(0.02, 0.98)


class KnownColourGeometry:
    """Stand-in geometry: an icosphere whose features make no-material's sigmoid give albedo_fn."""

    def __init__(self, radius: float = 0.5, subdivisions: int = 3) -> None:
        import trimesh

        s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
        self.mesh = Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.long))

    def isosurface(self) -> Mesh:
        return Mesh(self.mesh.v_pos.clone(), self.mesh.t_pos_idx.clone())

    def export(self, points: torch.Tensor) -> dict:
        return {"features": torch.logit(albedo_fn(points))}


def exporter(geometry, **cfg):
    return find("mesh-exporter")(cfg, geometry=geometry, material=find("no-material")({}),
                                 background=find("solid-color-background")({}))


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup with OBJ/glTF semantics (v = 0 at the bottom row): image [H,W,C] uint8, uv [N,2]."""
    tex = torch.from_numpy(np.asarray(image)[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    g = torch.from_numpy(uv.astype(np.float32))
    grid = torch.stack([g[:, 0] * 2 - 1, 1 - g[:, 1] * 2], -1)[None, None]
    return F.grid_sample(tex, grid, mode="bilinear", align_corners=False)[0, :, 0].T.numpy()


def surface_samples(tm, n=3000, seed=0):
    """Random points on a textured trimesh with their interpolated UVs."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, len(tm.faces), n)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)[:, :, None]
    pts = (tm.vertices[tm.faces[faces]] * bary).sum(1)
    uv = (tm.visual.uv[tm.faces[faces]] * bary).sum(1)
    return pts, uv


def check_texture_reproduces_albedo(tm, image):
    assert tm.visual.uv is not None and tm.visual.uv.shape == (len(tm.vertices), 2)
    assert 0.0 <= tm.visual.uv.min() and tm.visual.uv.max() <= 1.0
    pts, uv = surface_samples(tm)
    got = sample_texture(image, uv)
    want = albedo_fn(torch.from_numpy(pts).float()).numpy()
    err = np.abs(got - want).max(-1)
    assert np.quantile(err, 0.99) < 0.03, np.quantile(err, [0.5, 0.9, 0.99])
    assert err.mean() < 0.01


def test_obj_mtl_reloads_with_uvs_and_texture(tmp_path):
    import trimesh
    from PIL import Image

    paths = exporter(KnownColourGeometry(), fmt="obj-mtl", texture_size=256, save_normal=True).export(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["model.mtl", "model.obj", "texture_kd.png"]
    mtl = (tmp_path / "model.mtl").read_text()
    assert "map_Kd texture_kd.png" in mtl and "newmtl" in mtl
    assert (tmp_path / "model.obj").read_text().count("\nvn ") > 0
    tm = trimesh.load(tmp_path / "model.obj", process=False, force="mesh")
    image = tm.visual.material.image
    assert image is not None and image.size == (256, 256)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(tmp_path / "texture_kd.png").convert("RGB")))
    check_texture_reproduces_albedo(tm, image)
    # the surface is the geometry's (seams split vertices; positions are unchanged)
    r = np.linalg.norm(tm.vertices, axis=1)
    assert np.allclose(r, 0.5, atol=1e-4)


def test_glb_reloads_with_uvs_and_texture(tmp_path):
    import trimesh

    (path,) = exporter(KnownColourGeometry(), fmt="glb", texture_size=128, texture_format="jpg").export(tmp_path)
    assert path.name == "model.glb"
    tm = trimesh.load(path, process=False, force="mesh")
    assert isinstance(tm.visual, trimesh.visual.TextureVisuals)
    image = tm.visual.material.baseColorTexture
    assert image is not None and image.size == (128, 128)
    check_texture_reproduces_albedo(tm, image)


@pytest.mark.parametrize("fmt", ["obj", "ply", "glb"])
def test_vertex_colour_formats(tmp_path, fmt):
    import trimesh

    extra = {"save_texture": False} if fmt == "glb" else {}
    (path,) = exporter(KnownColourGeometry(subdivisions=2), fmt=fmt, **extra).export(tmp_path)
    tm = trimesh.load(path, process=False, force="mesh")
    colors = np.asarray(tm.visual.vertex_colors)[:, :3] / 255.0
    want = albedo_fn(torch.tensor(np.asarray(tm.vertices), dtype=torch.float32)).numpy()
    assert np.abs(colors - want).max() < 2.5 / 255


def test_nerf_export_is_marching_cubes_with_vertex_colours(tmp_path):
    import trimesh

    tiny = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
            "base_resolution": 4, "per_level_scale": 2.0}
    geo = find("implicit-volume")({"density_blob_scale": 10.0, "density_blob_std": 0.5, "isosurface_threshold": 5.0,
                                   "isosurface_resolution": 48, "pos_encoding_config": tiny})
    (path,) = exporter(geo, fmt="obj").export(tmp_path)
    tm = trimesh.load(path, process=False, force="mesh")
    r = np.linalg.norm(tm.vertices, axis=1)
    # blob density softplus(10 (1 - r / 0.5)) = 5 at r ≈ 0.2504 (the untrained network adds ~0)
    assert abs(r.mean() - 0.2504) < 0.01 and tm.is_watertight
    colors = np.asarray(tm.visual.vertex_colors)[:, :3]
    assert np.abs(colors.astype(float) - 127.5).max() < 3  # sigmoid(≈0) = 0.5 everywhere


def test_bake_texture_covers_triangles_and_dilates_into_empty_texels():
    # one triangle occupying the lower-left half of UV space, positions = (u, v, 0)
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mesh = Mesh(v, torch.tensor([[0, 1, 2]]), v_tex=torch.tensor([[0.05, 0.05], [0.55, 0.05], [0.05, 0.55]]),
                t_tex_idx=torch.tensor([[0, 1, 2]]))
    query = lambda p: torch.stack([p[:, 0], p[:, 1], torch.ones_like(p[:, 0])], -1)  # noqa: E731
    tex, covered = bake_texture(mesh, query, size=64, dilate=3, fill_value=0.0)
    # texel (row i from the top, column j): centre u = (j + .5) / 64, v = 1 - (i + .5) / 64
    rows, cols = torch.nonzero(covered, as_tuple=True)
    u = (cols + 0.5) / 64
    vv = 1 - (rows + 0.5) / 64
    assert torch.allclose(tex[rows, cols, 0], (u - 0.05) / 0.5, atol=1e-4)
    assert torch.allclose(tex[rows, cols, 1], (vv - 0.05) / 0.5, atol=1e-4)
    assert covered[60, 4] and not covered[3, 60]  # near v = 0.05 (bottom rows) covered, top-right empty
    filled = tex[..., 2] > 0
    grown = filled & ~covered
    assert int(grown.sum()) > 0
    # dilation reaches at most 3 texels (Chebyshev distance) from the covered set
    cov = torch.nonzero(covered)
    for i, j in torch.nonzero(grown)[:200]:
        d = (cov - torch.tensor([i, j])).abs().max(-1).values.min()
        assert 1 <= int(d) <= 3
    assert not bool(filled[0, 63]) and float(tex[0, 63].abs().sum()) == 0.0
    # one round of dilation from a single texel: its 8 neighbours, with its value
    t, m = dilate_texture(torch.zeros(5, 5, 1).index_put_((torch.tensor([2]), torch.tensor([2])), torch.tensor([[7.0]])),
                          torch.zeros(5, 5, dtype=torch.bool).index_put_((torch.tensor([2]), torch.tensor([2])), torch.tensor(True)), 1)
    assert int(m.sum()) == 9 and torch.allclose(t[1:4, 1:4, 0], torch.full((3, 3), 7.0))


def test_exporter_config_errors_and_empty_surface(tmp_path):
    with pytest.raises(ConfigError, match="fmt"):
        exporter(KnownColourGeometry(), fmt="fbx")
    with pytest.raises(ConfigError, match="texture_format"):
        exporter(KnownColourGeometry(), fmt="obj-mtl", texture_format="bmp")
    empty = find("tetrahedra-sdf-grid")({"isosurface_resolution": 4})
    with pytest.raises(ConfigError, match="empty"):
        exporter(empty, fmt="obj-mtl").export(tmp_path)
