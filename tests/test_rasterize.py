"""Tests of lift3d.ops.rasterize (rasterize / interpolate / render_mesh_attributes),
lift3d.ops.antialias and lift3d.ops.mesh_io. CPU, a few seconds in all.

Benchmark (printed, not asserted):  python tests/test_rasterize.py
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lift3d.ops.antialias import antialias  # noqa: E402
from lift3d.ops.mesh_io import load_mesh, normalize_mesh  # noqa: E402
from lift3d.ops.rasterize import (  # noqa: E402
    edge_topology,
    interpolate,
    pixel_centers_ndc,
    rasterize,
    render_mesh_attributes,
)

SHAPES = os.path.join(ROOT, "load", "shapes")


# ----------------------------------------------------------------------------------- helpers
def perspective(fovy_deg: float, aspect: float, near: float, far: float) -> torch.Tensor:
    t = 1.0 / math.tan(math.radians(fovy_deg) / 2)
    return torch.tensor(
        [
            [t / aspect, 0, 0, 0],
            [0, t, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ],
        dtype=torch.float64,
    )


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World -> camera (OpenGL: camera looks down -z)."""
    eye, target, up = (torch.tensor(a, dtype=torch.float64) for a in (eye, target, up))
    fwd = target - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, up)
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, fwd)
    m = torch.eye(4, dtype=torch.float64)
    m[0, :3], m[1, :3], m[2, :3] = right, cam_up, -fwd
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def torus(nu: int, nv: int, R: float = 0.5, r: float = 0.2):
    u = torch.arange(nu, dtype=torch.float32) / nu * 2 * math.pi
    v = torch.arange(nv, dtype=torch.float32) / nv * 2 * math.pi
    U, Vv = torch.meshgrid(u, v, indexing="ij")
    pts = torch.stack(
        [(R + r * torch.cos(Vv)) * torch.cos(U), (R + r * torch.cos(Vv)) * torch.sin(U), r * torch.sin(Vv)], -1
    ).reshape(-1, 3)
    i = torch.arange(nu)[:, None]
    j = torch.arange(nv)[None]
    a, b = i * nv + j, ((i + 1) % nu) * nv + j
    c, d = ((i + 1) % nu) * nv + (j + 1) % nv, i * nv + (j + 1) % nv
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return pts, faces


def brute_force_raster(pos: torch.Tensor, tri: torch.Tensor, H: int, W: int):
    """Independent reference: per pixel, loop over all triangles, screen-space barycentric
    inside test, smallest z/w wins. Requires all w > 0. Returns ids [H,W] (-1 empty), depth [H,W],
    and `ambiguous` [H,W] (a pixel centre within 1e-7 of some edge or a near depth tie)."""
    p = pos.double().tolist()
    ids = np.full((H, W), -1, dtype=np.int64)
    depth = np.zeros((H, W))
    amb = np.zeros((H, W), dtype=bool)
    for y in range(H):
        Y = (y + 0.5) / H * 2 - 1
        for x in range(W):
            X = (x + 0.5) / W * 2 - 1
            best, best_f, second = math.inf, -1, math.inf
            for f, (i0, i1, i2) in enumerate(tri.tolist()):
                s = [(p[i][0] / p[i][3], p[i][1] / p[i][3], p[i][2] / p[i][3]) for i in (i0, i1, i2)]
                area = (s[1][0] - s[0][0]) * (s[2][1] - s[0][1]) - (s[1][1] - s[0][1]) * (s[2][0] - s[0][0])
                if area == 0:
                    continue
                bary = []
                for k in range(3):
                    a, b = s[(k + 1) % 3], s[(k + 2) % 3]
                    bary.append(((b[0] - a[0]) * (Y - a[1]) - (b[1] - a[1]) * (X - a[0])) / area)
                if min(abs(t) for t in bary) < 1e-7:
                    amb[y, x] = True
                if min(bary) < 0:
                    continue
                z = sum(bk * sk[2] for bk, sk in zip(bary, s))
                if not -1 <= z <= 1:
                    continue
                if z < best:
                    best, best_f, second = z, f, best
                elif z < second:
                    second = z
            ids[y, x] = best_f
            depth[y, x] = best if best_f >= 0 else 0
            if second - best < 1e-6:
                amb[y, x] = True
    return ids, depth, amb


def random_scene(n_tri: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ndc = torch.rand(n_tri * 3, 2, generator=g, dtype=dtype) * 2.4 - 1.2  # some off-screen parts
    zn = torch.rand(n_tri * 3, 1, generator=g, dtype=dtype) * 1.8 - 0.9
    w = torch.rand(n_tri * 3, 1, generator=g, dtype=dtype) * 1.5 + 0.5
    pos = torch.cat([ndc * w, zn * w, w], dim=1)  # [3F,4]
    tri = torch.arange(n_tri * 3).view(n_tri, 3)
    return pos, tri


# --------------------------------------------------------------------------------- rasterize
def test_rasterize_matches_brute_force():
    H, W = 32, 32
    pos_a, tri = random_scene(20, seed=0)
    pos_b, _ = random_scene(20, seed=1)
    pos = torch.stack([pos_a, pos_b])  # batch of 2, same topology
    rast = rasterize(pos, tri, (H, W))
    assert rast.shape == (2, H, W, 4) and rast.dtype == torch.float64
    n_checked = 0
    for bi in range(2):
        ref_ids, ref_depth, amb = brute_force_raster(pos[bi], tri, H, W)
        ids = rast[bi, ..., 3].long().numpy() - 1
        ok = ~amb
        assert ok.mean() > 0.9
        np.testing.assert_array_equal(ids[ok], ref_ids[ok])
        cov = ok & (ref_ids >= 0)
        n_checked += cov.sum()
        np.testing.assert_allclose(rast[bi, ..., 2].numpy()[cov], ref_depth[cov], atol=1e-9)
        # (u, v) reproduce the pixel centre: sum_i lambda_i * clip_i projects to the centre
        f = torch.from_numpy(ids)[torch.from_numpy(cov)]
        uv = rast[bi][torch.from_numpy(cov)][:, :2]
        lam = torch.cat([uv, 1 - uv.sum(-1, keepdim=True)], -1)
        P = (lam[..., None] * pos[bi][tri[f]]).sum(1)
        xs, ys = pixel_centers_ndc(H, W, dtype=torch.float64)
        yy, xx = torch.nonzero(torch.from_numpy(cov), as_tuple=True)
        torch.testing.assert_close(P[:, 0] / P[:, 3], xs[xx], atol=1e-9, rtol=0)
        torch.testing.assert_close(P[:, 1] / P[:, 3], ys[yy], atol=1e-9, rtol=0)
    assert n_checked > 500  # the scene really covers the image
    # 2-D input, tiny chunks (exercises the chunk loop) and float32 give the same ids
    r1 = rasterize(pos_a.float(), tri, (H, W), chunk_pixels=97)
    assert torch.equal(r1[0, ..., 3], rast[0, ..., 3].float())


def test_rasterize_triangle_crossing_camera_plane():
    """A ground quad that extends behind the camera (vertices with w < 0) is rasterized exactly
    where the pixel rays hit it; depth = interpolated w = distance along the view axis."""
    H, W = 24, 32
    proj = perspective(60, W / H, 0.1, 100.0)
    view = look_at((0.0, 0.0, 1.0), target=(0.0, 5.0, 0.6))  # looking slightly down, z up
    mvp = proj @ view
    verts = torch.tensor([[-20.0, -20.0, 0.0], [20.0, -20.0, 0.0], [20.0, 20.0, 0.0], [-20.0, 20.0, 0.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    pos = torch.cat([verts, torch.ones(4, 1, dtype=torch.float64)], 1) @ mvp.T
    assert (pos[:, 3] < 0).any() and (pos[:, 3] > 0).any()
    rast = rasterize(pos, tri, (H, W))
    # expected: unproject each pixel centre, intersect its ray with z = 0
    inv = torch.linalg.inv(mvp)
    xs, ys = pixel_centers_ndc(H, W, dtype=torch.float64)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    def unproject(zn):
        p = torch.stack([X, Y, torch.full_like(X, zn), torch.ones_like(X)], -1) @ inv.T
        return p[..., :3] / p[..., 3:]
    a, b = unproject(-1.0), unproject(1.0)
    d = b - a
    t = -a[..., 2] / d[..., 2]
    hitp = a + t[..., None] * d
    inside = (t > 0) & (t < 1) & (hitp[..., :2].abs() <= 20).all(-1)
    covered = rast[0, ..., 3] > 0
    assert 0.2 < inside.double().mean() < 0.9
    assert torch.equal(covered, inside)
    depth = interpolate(pos[:, 3:4], rast, tri, pos)[0, ..., 0]
    cam = torch.cat([hitp, torch.ones_like(hitp[..., :1])], -1) @ view.T
    torch.testing.assert_close(depth[inside], -cam[..., 2][inside], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- interpolate
def _small_perspective_scene():
    """Two triangles in perspective (w differs per vertex), float64."""
    pos = torch.tensor(
        [
            [-0.9, -0.8, 0.1, 1.0],
            [1.2, -1.0, 0.4, 1.6],
            [0.1, 1.3, 0.2, 1.4],
            [-1.5, 1.1, 0.9, 1.9],
            [0.5, 0.3, -0.3, 1.0],
        ],
        dtype=torch.float64,
    )
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    return pos, tri


def test_interpolate_gradients_match_finite_differences():
    H, W = 10, 12
    pos, tri = _small_perspective_scene()
    rast = rasterize(pos, tri, (H, W))
    assert (rast[..., 3] > 0).sum() > 40
    g = torch.Generator().manual_seed(0)
    attr = torch.randn(5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    pos_in = pos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, p: interpolate(a, rast, tri, p), (attr, pos_in), eps=1e-6, atol=1e-7, rtol=1e-5
    )
    # the same with re-rasterization at every perturbation: coverage must not change, and the
    # directional derivative of a scalar loss matches autograd
    wts = torch.randn(1, H, W, 2, generator=g, dtype=torch.float64)
    loss = (interpolate(attr, rast, tri, pos_in) * wts).sum()
    gpos, gattr = torch.autograd.grad(loss, (pos_in, attr))
    assert gpos.abs().sum() > 0 and gattr.abs().sum() > 0
    dirp = torch.randn(5, 4, generator=g, dtype=torch.float64)
    h = 1e-6
    def L(p):
        r = rasterize(p, tri, (H, W))
        assert torch.equal(r[..., 3], rast[..., 3])
        return (interpolate(attr.detach(), r, tri, p) * wts).sum()
    fd = (L(pos + h * dirp) - L(pos - h * dirp)) / (2 * h)
    torch.testing.assert_close(fd, (gpos * dirp).sum(), rtol=1e-5, atol=1e-8)
    # without pos_clip: rast's stored (u, v) give the same values, and no gradient to positions
    torch.testing.assert_close(interpolate(attr, rast, tri), interpolate(attr, rast, tri, pos_in))


def test_interpolation_is_perspective_correct():
    """World position of a tilted quad seen in perspective, interpolated, equals the ray-plane hit."""
    H, W = 40, 40
    mvp = perspective(50, 1.0, 0.1, 10.0) @ look_at((0.3, -2.0, 1.5))
    quad = torch.tensor([[-0.8, -0.8, 0.0], [0.8, -0.8, 0.3], [0.8, 0.8, 0.3], [-0.8, 0.8, 0.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    pos = torch.cat([quad, torch.ones(4, 1, dtype=torch.float64)], 1) @ mvp.T
    rast = rasterize(pos, tri, (H, W))
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 300
    world = interpolate(quad, rast, tri, pos)[0]  # [H,W,3]
    # expected: ray through the pixel centre intersected with the quad's plane
    inv = torch.linalg.inv(mvp)
    xs, ys = pixel_centers_ndc(H, W, dtype=torch.float64)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    def unproject(zn):
        p = torch.stack([X, Y, torch.full_like(X, zn), torch.ones_like(X)], -1) @ inv.T
        return p[..., :3] / p[..., 3:]
    a, b = unproject(-1.0), unproject(1.0)
    n = torch.linalg.cross(quad[1] - quad[0], quad[3] - quad[0])
    t = ((quad[0] - a) @ n) / ((b - a) @ n)
    expected = a + t[..., None] * (b - a)
    err = (world - expected)[cov].abs().max()
    assert err < 1e-9, err
    # a linear-in-world attribute is exact too (through rast's stored u, v this time)
    lin = quad @ torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64) + 0.5
    got = interpolate(lin[:, None], rast, tri)[0, ..., 0]
    want = expected @ torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64) + 0.5
    assert (got - want)[cov].abs().max() < 1e-9
    # sanity: screen-linear (non perspective-correct) interpolation would be visibly wrong here
    w = pos[:, 3]
    uv = rast[0][cov][:, :2]
    lam = torch.cat([uv, 1 - uv.sum(-1, keepdim=True)], -1)
    f = rast[0][cov][:, 3].long() - 1
    lam_s = lam * w[tri[f]]
    lam_s = lam_s / lam_s.sum(-1, keepdim=True)
    wrong = (lam_s[..., None] * quad[tri[f]]).sum(1)
    assert (wrong - expected[cov]).abs().max() > 1e-2


# --------------------------------------------------------------------------------- antialias
def _mask_sum(pos, tri, H, W, topology=None):
    rast = rasterize(pos, tri, (H, W))
    cov = (rast[..., 3:] > 0).to(pos.dtype)
    return antialias(cov, rast, pos, tri, topology).sum()


@pytest.mark.parametrize("perspective_w", [False, True])
def test_antialias_silhouette_gradient_matches_finite_differences(perspective_w):
    H, W = 64, 64
    ndc = torch.tensor([[-0.71, -0.63], [0.67, -0.42], [-0.13, 0.74]], dtype=torch.float64)
    w = torch.tensor([1.0, 1.7, 1.3] if perspective_w else [1.0, 1.0, 1.0], dtype=torch.float64)
    pos = torch.cat([ndc * w[:, None], torch.zeros(3, 1, dtype=torch.float64), w[:, None]], 1)
    tri = torch.tensor([[0, 1, 2]])
    p = pos.clone().requires_grad_(True)
    S = _mask_sum(p, tri, H, W)
    (grad,) = torch.autograd.grad(S, p)
    # area of the projected triangle in pixels and its analytic derivative w.r.t. vertex 2's NDC xy
    s = ndc * torch.tensor([W / 2, H / 2], dtype=torch.float64)
    area = 0.5 * abs(float((s[1, 0] - s[0, 0]) * (s[2, 1] - s[0, 1]) - (s[1, 1] - s[0, 1]) * (s[2, 0] - s[0, 0])))
    assert abs(S.item() - area) < 0.01 * area  # the antialiased mask sum approximates the true area
    for k, size in ((0, W / 2), (1, H / 2)):
        g = float(grad[2, k])
        assert abs(g) > 1.0, g  # non-zero (units: pixels^2 per clip unit)
        h = 0.03 * float(w[2])  # ~1 pixel
        d = torch.zeros_like(pos)
        d[2, k] = h
        fd = float(_mask_sum(pos + d, tri, H, W) - _mask_sum(pos - d, tri, H, W)) / (2 * h)
        fwd = float(_mask_sum(pos + d, tri, H, W) - _mask_sum(pos, tri, H, W)) / h
        assert abs(fd - g) < 0.1 * abs(g), (k, fd, g)
        assert abs(fwd - g) < 0.15 * abs(g), (k, fwd, g)
        # analytic: dArea/d(screen coord of vertex 2) = 0.5 * (opposite edge, rotated)
        e = s[1] - s[0]
        dA_ds = 0.5 * (-e[1] if k == 0 else e[0])
        sign = 1.0 if float((s[1, 0] - s[0, 0]) * (s[2, 1] - s[0, 1]) - (s[1, 1] - s[0, 1]) * (s[2, 0] - s[0, 0])) > 0 else -1.0
        analytic = sign * float(dA_ds) * size / float(w[2])
        assert abs(analytic - g) < 0.1 * abs(analytic), (k, analytic, g)


def test_antialias_closed_mesh_scale_gradient_and_interior_untouched():
    v, f, _ = load_mesh(os.path.join(SHAPES, "capsule_bicolor.ply"))
    v = torch.from_numpy(v).double()
    f = torch.from_numpy(f)
    H, W = 48, 48
    mvp = (perspective(45, 1.0, 0.1, 10.0) @ look_at((1.6, 0.9, 0.7)))[None]
    topo = edge_topology(f)
    assert (topo[0] >= 0).all()  # closed, manifold
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    out = render_mesh_attributes(v * scale, f, mvp, H, W, topology=topo)
    (g,) = torch.autograd.grad(out["mask"].sum(), scale)
    h = 0.02
    def S(sc):
        return float(render_mesh_attributes(v * sc, f, mvp, H, W, topology=topo)["mask"].sum())
    fd = (S(1 + h) - S(1 - h)) / (2 * h)
    assert float(g) > 10
    assert abs(fd - float(g)) < 0.1 * abs(fd), (fd, float(g))
    # interior edges are not silhouettes: a smooth colour is untouched away from the silhouette
    rast, pos = out["rast"], out["pos_clip"]
    col = interpolate(torch.rand(v.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), rast, f, pos)
    aa = antialias(col, rast, pos, f, topo)
    cov = (rast[..., 3] > 0).double()[:, None]
    full = torch.nn.functional.max_pool2d(1 - cov, 3, stride=1, padding=1)[:, 0] == 0  # 3x3 all covered
    assert full.sum() > 300
    torch.testing.assert_close(aa[full], col[full], rtol=0, atol=1e-12)
    border = (cov[:, 0] > 0) & ~full
    assert (aa[border] - col[border]).abs().max() > 1e-3  # the silhouette pixels do change


def test_antialias_gradcheck_fixed_coverage():
    """With rast fixed, antialias is smooth in colour and positions (away from branch switches)."""
    H, W = 12, 12
    pos, tri = _small_perspective_scene()
    rast = rasterize(pos, tri, (H, W))
    g = torch.Generator().manual_seed(3)
    color = torch.rand(1, H, W, 2, generator=g, dtype=torch.float64, requires_grad=True)
    p = pos.clone().requires_grad_(True)
    out = antialias(color, rast, p, tri)
    assert (out - color).abs().max() > 1e-3
    assert torch.autograd.gradcheck(
        lambda c, q: antialias(c, rast, q, tri), (color, p), eps=1e-7, atol=1e-6, fast_mode=True
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    v, f = torus(40, 20)
    mvp = (perspective(50, 1.0, 0.1, 10.0) @ look_at((1.2, 0.9, 0.8))).float()[None]
    res = {}
    for dev in ("cpu", "cuda"):
        vv = v.to(dev).requires_grad_(True)
        out = render_mesh_attributes(vv, f.to(dev), mvp.to(dev), 64, 64, {"p": vv})
        (out["mask"].sum() + out["p"].square().sum()).backward()
        res[dev] = (out["rast"].cpu(), out["mask"].detach().cpu(), vv.grad.cpu())
    assert torch.equal(res["cpu"][0][..., 3], res["cuda"][0][..., 3])
    torch.testing.assert_close(res["cpu"][1], res["cuda"][1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res["cpu"][2], res["cuda"][2], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------ render_mesh_attributes
def test_render_mesh_attributes_orientation_and_outputs():
    """Row 0 of the returned images is the top: a triangle above the view axis lands in low rows."""
    H, W = 16, 20
    v = torch.tensor([[-0.3, 0.2, -2.0], [0.3, 0.2, -2.0], [0.0, 0.7, -2.0]])  # camera space, y up
    f = torch.tensor([[0, 1, 2]])
    mvp = perspective(60, W / H, 0.1, 10.0).float()[None]  # view = identity
    attr = torch.tensor([[1.0], [2.0], [3.0]])
    out = render_mesh_attributes(v, f, mvp, H, W, {"a": attr})
    for k in ("mask", "a", "depth", "face_id"):
        assert out[k].shape[:3] == (1, H, W), k
    rows = torch.nonzero(out["mask"][0, ..., 0] > 0.5)[:, 0]
    assert rows.max() < H // 2  # upper half of the picture
    assert torch.equal(out["face_id"][0, ..., 0] >= 0, torch.flip(out["rast"][0, ..., 3] > 0, [0]))
    covered = out["face_id"][0, ..., 0] >= 0
    torch.testing.assert_close(out["depth"][0, ..., 0][covered], torch.full_like(out["depth"][0, ..., 0][covered], 2.0))
    a = out["a"][0, ..., 0][covered]
    assert a.min() >= 1 - 1e-5 and a.max() <= 3 + 1e-5
    # the apex (attr 3) is at the top: the mean attr of the top-most covered row exceeds the bottom-most
    a_img = out["a"][0, ..., 0]
    rr = torch.nonzero(covered)[:, 0]
    assert a_img[rr.min()][covered[rr.min()]].mean() > a_img[rr.max()][covered[rr.max()]].mean()
    with pytest.raises(ValueError, match="reserved"):
        render_mesh_attributes(v, f, mvp, H, W, {"mask": attr})


# ----------------------------------------------------------------------------------- mesh_io
def _load_make_shapes():
    spec = importlib.util.spec_from_file_location("make_shapes", os.path.join(SHAPES, "make_shapes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mesh_io_round_trip_and_shipped_shapes(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    for name, n_colors in (("capsule_bicolor.ply", 2), ("blocks_union.ply", 3)):
        path = os.path.join(SHAPES, name)
        assert os.path.getsize(path) < 300_000
        v, f, c = load_mesh(path)
        assert v.dtype == np.float32 and f.dtype == np.int64 and c.dtype == np.float32
        assert v.shape[1] == 3 and f.shape[1] == 3 and c.shape == v.shape
        assert 1000 <= f.shape[0] <= 3000
        assert np.linalg.norm(v, axis=1).max() <= 0.6 + 1e-6
        assert len(np.unique(np.round(c, 4), axis=0)) == n_colors
        assert c.min() >= 0 and c.max() <= 1
        # the generator reproduces the shipped file
        gen = getattr(_load_make_shapes(), name[:-4])()
        np.testing.assert_allclose(np.asarray(gen.vertices, dtype=np.float32), v, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(gen.faces), f)
    # round trip through PLY / OBJ / GLB
    v, f, c = load_mesh(os.path.join(SHAPES, "capsule_bicolor.ply"))
    rgba = np.concatenate([np.round(c * 255), np.full((len(c), 1), 255)], 1).astype(np.uint8)
    mesh = trimesh.Trimesh(v, f, vertex_colors=rgba, process=False)
    for ext in ("ply", "obj", "glb"):
        out = tmp_path / f"m.{ext}"
        mesh.export(out)
        v2, f2, c2 = load_mesh(out)
        assert f2.shape == f.shape, ext
        np.testing.assert_allclose(v2[f2], v[f], atol=1e-5, err_msg=ext)  # same triangles, same order
        assert c2 is not None, ext
        np.testing.assert_allclose(c2[f2], c[f], atol=1.5 / 255, err_msg=ext)
    # normalize_mesh: bbox centre -> 0, longest half extent -> scale (numpy and torch)
    vn = normalize_mesh(v * 3 + 1, scale=0.4)
    np.testing.assert_allclose((vn.max(0) + vn.min(0)) / 2, 0, atol=1e-6)
    assert abs((vn.max(0) - vn.min(0)).max() / 2 - 0.4) < 1e-6
    vt = normalize_mesh(torch.from_numpy(v) * 3 + 1, scale=0.4)
    np.testing.assert_allclose(vt.numpy(), vn, atol=1e-6)


def test_mesh_io_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "no_such_mesh.ply")
    with pytest.raises(FileNotFoundError, match="no_such_mesh.ply"):
        load_mesh(missing)
    bad_ext = tmp_path / "mesh.xyz"
    bad_ext.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"mesh\.xyz"):
        load_mesh(bad_ext)
    garbage = tmp_path / "broken.ply"
    garbage.write_bytes(b"this is not a ply file at all\n")
    with pytest.raises(ValueError, match="broken.ply"):
        load_mesh(garbage)


# --------------------------------------------------------------------------------- benchmark
def benchmark(resolutions=((512, 512),), sizes=((100, 50), (250, 200)), repeats: int = 3) -> None:
    """Print CPU timings of rasterize and of a full render (mask + 1 attribute, fwd + bwd)."""
    mvp = (perspective(50, 1.0, 0.1, 10.0) @ look_at((1.2, 0.9, 0.8))).float()[None]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    for H, W in resolutions:
        for nu, nv in sizes:
            v, f = torus(nu, nv)
            pos = torch.cat([v, torch.ones(len(v), 1)], 1) @ mvp[0].T
            rasterize(pos, f, (H, W))  # warm up
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                rast = rasterize(pos, f, (H, W))
            t_rast = (time.perf_counter() - t0) / repeats
            c_rast = (time.process_time() - c0) / repeats
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                vv = v.clone().requires_grad_(True)
                out = render_mesh_attributes(vv, f, mvp, H, W, {"pos": vv})
                (out["mask"].sum() + out["pos"].sum()).backward()
            t_full = (time.perf_counter() - t0) / repeats
            c_full = (time.process_time() - c0) / repeats
            cover = float((rast[..., 3] > 0).float().mean())
            print(f"{H}x{W}, {f.shape[0]:>6} triangles (coverage {cover:.2f}): "
                  f"rasterize {t_rast*1e3:7.1f} ms wall / {c_rast*1e3:7.1f} ms cpu; "
                  f"render (rasterize+antialias mask+interpolate) fwd+bwd {t_full*1e3:7.1f} ms wall / {c_full*1e3:7.1f} ms cpu")


if __name__ == "__main__":
    if len(sys.argv) > 1:  # e.g. `python tests/test_rasterize.py 1` for a single-thread figure
        torch.set_num_threads(int(sys.argv[1]))
    benchmark()
