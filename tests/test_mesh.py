"""Tests of lift3d.mesh.Mesh: normals, adjacency, regularizers, outlier removal, UV unwrapping."""
import math
import sys

import pytest
import torch

from lift3d.mesh import Mesh


# ---------------------------------------------------------------- fixtures
def icosphere(subdivisions=2, dtype=torch.float32):
    """Unit icosphere built here (outward CCW winding), so the test needs no trimesh."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [torch.tensor(p, dtype=torch.float64) / math.sqrt(1 + t * t) for p in v]
    faces = f
    for _ in range(subdivisions):
        mid = {}

        def midpoint(a, b):
            key = (min(a, b), max(a, b))
            if key not in mid:
                p = verts[a] + verts[b]
                verts.append(p / p.norm())
                mid[key] = len(verts) - 1
            return mid[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return torch.stack(verts).to(dtype), torch.tensor(faces, dtype=torch.long)


def plane(n=8, noise=0.0, seed=0):
    """Flat [n+1]^2 grid in z = 0, each square split along the same diagonal (normals +z)."""
    xs = torch.linspace(-1, 1, n + 1)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    v = torch.stack([gx, gy, torch.zeros_like(gx)], -1).reshape(-1, 3)
    if noise:
        v[:, 2] += noise * torch.randn(v.shape[0], generator=torch.Generator().manual_seed(seed))
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    a = (i * (n + 1) + j).reshape(-1)
    b, c, d = a + (n + 1), a + (n + 1) + 1, a + 1  # (i+1, j), (i+1, j+1), (i, j+1)
    f = torch.cat([torch.stack([a, b, c], -1), torch.stack([a, c, d], -1)])
    return v, f


def face_cross(v, f):
    return torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)


# ---------------------------------------------------------------- normals & adjacency
def test_fixture_orientation():
    v, f = icosphere(1)
    assert ((face_cross(v, f) * v[f].mean(1)).sum(-1) > 0).all()
    v, f = plane(4)
    assert (face_cross(v, f)[:, 2] > 0).all()


def test_vertex_normals_of_sphere_match_positions():
    v, f = icosphere(3)
    mesh = Mesh(v, f)
    n = mesh.v_nrm
    assert n.shape == v.shape
    assert torch.allclose(n.norm(dim=-1), torch.ones(v.shape[0]), atol=1e-5)
    assert (n * v).sum(-1).min().item() > 0.999
    # flipping the winding flips the normals
    assert (Mesh(v, f[:, [0, 2, 1]]).v_nrm * v).sum(-1).max().item() < -0.999
    assert torch.allclose(mesh.f_nrm.norm(dim=-1), torch.ones(f.shape[0]), atol=1e-5)


def test_vertex_normals_area_weighted_and_differentiable():
    # a vertex shared by a big face with normal +z and a small face with normal +x
    v = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 1], [0, -1, 0]], requires_grad=True)
    f = torch.tensor([[0, 1, 2], [0, 3, 4]])  # areas 50 (+z) and 0.5 (+x)
    mesh = Mesh(v, f)
    n0 = mesh.v_nrm[0]
    expected = torch.tensor([0.5, 0.0, 50.0])
    assert torch.allclose(n0, expected / expected.norm(), atol=1e-6)
    mesh.v_nrm[:, 0].sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    # unreferenced vertex gets the (0, 0, 1) fallback
    m2 = Mesh(torch.cat([v.detach(), torch.ones(1, 3)]), f)
    assert torch.equal(m2.v_nrm[-1], torch.tensor([0.0, 0.0, 1.0]))


def test_edges_and_face_adjacency_closed_mesh():
    v, f = icosphere(2)
    mesh = Mesh(v, f)
    e = mesh.edges
    assert e.shape == (3 * f.shape[0] // 2, 2)
    assert (e[:, 0] < e[:, 1]).all()
    assert v.shape[0] - e.shape[0] + f.shape[0] == 2
    adj = mesh.face_adjacency
    assert adj.shape == (e.shape[0], 2)  # one pair per manifold edge
    # each adjacent pair really shares two vertices
    shared = (f[adj[:, 0]][:, :, None] == f[adj[:, 1]][:, None, :]).sum((1, 2))
    assert (shared == 2).all()


# ---------------------------------------------------------------- regularizers
def test_normal_consistency():
    v, f = plane(8)
    flat = Mesh(v, f).normal_consistency()
    assert flat.item() == pytest.approx(0.0, abs=1e-7)
    vn, _ = plane(8, noise=0.1)
    noisy = Mesh(vn.clone().requires_grad_(True), f)
    loss = noisy.normal_consistency()
    assert loss.item() > 1e-3
    loss.backward()
    assert noisy.v_pos.grad.abs().sum() > 0
    # a fold of 90 degrees along one edge: two faces, 1 - cos(90) = 1
    v2 = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f2 = torch.tensor([[0, 1, 2], [0, 3, 1]])
    assert Mesh(v2, f2).normal_consistency().item() == pytest.approx(1.0, abs=1e-6)
    # a finer sphere is smoother
    s1, s3 = Mesh(*icosphere(1)).normal_consistency(), Mesh(*icosphere(3)).normal_consistency()
    assert 0 < s3.item() < s1.item()


def test_laplacian_matrix_and_loss():
    n = 6
    v, f = plane(n)
    mesh = Mesh(v, f)
    L = mesh.laplacian()
    assert L.is_sparse and L.shape == (v.shape[0], v.shape[0])
    dense = L.to_dense()
    assert torch.allclose(dense, dense.T)
    assert torch.allclose(dense.sum(1), torch.zeros(v.shape[0]))
    # a corner vertex of this triangulation: (0,0) has neighbours (1,0), (0,1), (1,1) -> degree 3
    assert dense[0, 0].item() == 3
    lv = torch.sparse.mm(L, v)
    interior = (v[:, :2].abs() < 1 - 1e-6).all(-1)
    assert torch.allclose(lv[interior], torch.zeros_like(lv[interior]), atol=1e-6)
    assert lv[~interior].norm(dim=-1).min() > 0.1  # boundary vertices are not centroids
    # the normalized operator also vanishes inside; rows sum to 0
    ln = mesh.laplacian(normalized=True).to_dense()
    assert torch.allclose((ln @ v)[interior], torch.zeros_like(v[interior]), atol=1e-6)
    assert torch.allclose(ln.sum(1), torch.zeros(v.shape[0]), atol=1e-6)

    # the loss: z-noise increases it, exact value matches a dense computation, and it is
    # differentiable; squared=False gives mean of norms
    vn, _ = plane(n, noise=0.05)
    vn.requires_grad_(True)
    noisy = Mesh(vn, f)
    loss = noisy.laplacian_loss()
    ref = ((dense @ vn) ** 2).sum(-1).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss.item() > mesh.laplacian_loss().item()
    assert noisy.laplacian_loss(squared=False).item() == pytest.approx(
        (dense @ vn).norm(dim=-1).mean().item(), rel=1e-5
    )
    loss.backward()
    assert torch.allclose(vn.grad, 2 * dense.T @ (dense @ vn.detach()) / vn.shape[0], atol=1e-5)
    # only the out-of-plane part of the noise: an in-plane flat mesh has zero z component
    assert (torch.sparse.mm(L, v)[:, 2] == 0).all()


# ---------------------------------------------------------------- editing
def test_remove_outlier_drops_small_component_keeps_grad():
    v, f = icosphere(2)
    tiny_v = torch.tensor([[5.0, 5, 5], [5.1, 5, 5], [5, 5.1, 5]])
    v_all = torch.cat([v, tiny_v]).requires_grad_(True)
    f_all = torch.cat([f, torch.tensor([[0, 1, 2]]) + v.shape[0]])
    rgb = torch.rand(v_all.shape[0], 3)
    mesh = Mesh(v_all, f_all, v_rgb=rgb, sdf_hint="kept")
    for threshold in (10, 0.5):
        clean = mesh.remove_outlier(threshold)
        assert clean.n_faces == f.shape[0] and clean.n_verts == v.shape[0]
        assert torch.allclose(clean.v_pos, v)  # vertex order preserved
        assert torch.equal(clean.t_pos_idx, f)
        assert torch.equal(clean.v_rgb, rgb[: v.shape[0]])
        assert clean.extras["sdf_hint"] == "kept"
    clean.v_pos.sum().backward()
    assert v_all.grad[: v.shape[0]].eq(1).all() and v_all.grad[v.shape[0]:].eq(0).all()
    # a threshold below the tiny component's size keeps everything
    assert mesh.remove_outlier(1).n_faces == f_all.shape[0]
    with pytest.raises(ValueError, match="fraction"):
        mesh.remove_outlier(1.5)


def test_to_moves_every_tensor():
    v, f = icosphere(1)
    mesh = Mesh(v, f, v_rgb=torch.rand_like(v), extra_tensor=torch.zeros(3))
    _ = mesh.v_nrm, mesh.edges
    out = mesh.to("meta")
    assert out is mesh
    for t in (mesh.v_pos, mesh.t_pos_idx, mesh.v_rgb, mesh._v_nrm, mesh._edges, mesh.extras["extra_tensor"]):
        assert t.device.type == "meta"


def test_constructor_validation():
    v, f = plane(2)
    with pytest.raises(ValueError, match="v_pos"):
        Mesh(v[:, :2], f)
    with pytest.raises(ValueError, match="both v_tex and t_tex_idx"):
        Mesh(v, f, v_tex=torch.zeros(4, 2))


# ---------------------------------------------------------------- UV atlas
def test_unwrap_uv_reindexes_like_xatlas():
    pytest.importorskip("xatlas")
    v, f = icosphere(2)
    rgb = torch.rand_like(v)
    mesh = Mesh(v, f, v_rgb=rgb)
    nrm_before = mesh.v_nrm.clone()
    corners_before = v[f]
    mesh.unwrap_uv(xatlas_chart_options={"max_iterations": 1}, xatlas_pack_options={"padding": 1})
    vmap = mesh.extras["vmapping"]
    assert mesh.v_tex.shape == (mesh.n_verts, 2) and mesh.n_verts == vmap.shape[0] >= v.shape[0]
    assert mesh.t_tex_idx.shape == f.shape and torch.equal(mesh.t_tex_idx, mesh.t_pos_idx)
    assert mesh.v_tex.min() >= 0 and mesh.v_tex.max() <= 1
    # same faces, same corner positions, same winding; attributes follow vmapping
    assert torch.allclose(mesh.v_pos[mesh.t_pos_idx], corners_before)
    assert torch.equal(mesh.v_rgb, rgb[vmap])
    assert torch.allclose(mesh.v_nrm, nrm_before[vmap])  # smooth across seams
    # UV triangles are not degenerate
    uv = mesh.v_tex[mesh.t_tex_idx]
    uv_area = 0.5 * ((uv[:, 1] - uv[:, 0])[:, 0] * (uv[:, 2] - uv[:, 0])[:, 1]
                     - (uv[:, 1] - uv[:, 0])[:, 1] * (uv[:, 2] - uv[:, 0])[:, 0]).abs()
    assert (uv_area > 0).all()


def test_unwrap_uv_threestudio_layout_and_errors(monkeypatch):
    pytest.importorskip("xatlas")
    v, f = icosphere(1)
    mesh = Mesh(v, f).unwrap_uv(reindex=False)
    assert torch.equal(mesh.v_pos, v) and torch.equal(mesh.t_pos_idx, f)
    assert mesh.t_tex_idx.shape == f.shape and mesh.t_tex_idx.max() == mesh.v_tex.shape[0] - 1
    with pytest.raises(ValueError, match="unknown xatlas chart option 'nope'"):
        Mesh(v, f).unwrap_uv(xatlas_chart_options={"nope": 1})
    monkeypatch.setitem(sys.modules, "xatlas", None)  # import xatlas now raises ImportError
    with pytest.raises(ImportError, match="pip install xatlas"):
        Mesh(v, f).unwrap_uv()
