"""Tests of the tetrahedral grid, marching tetrahedra and marching cubes (lift3d/ops)."""
import math

import pytest
import torch

from lift3d.ops.marching_cubes import marching_cubes
from lift3d.ops.marching_tets import NUM_TRIANGLES, marching_tets
from lift3d.ops.tet_grid import TET_EDGE_PAIRS, make_tet_grid, orient_tets, tet_edges, tet_volumes


# ---------------------------------------------------------------- helpers
def face_cross(v, f):
    return torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)


def edge_counts(faces, n_verts):
    """(undirected edge -> count, directed edge -> count) as 1-D count tensors."""
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    und = torch.unique(torch.minimum(a, b) * n_verts + torch.maximum(a, b), return_counts=True)[1]
    dire = torch.unique(a * n_verts + b, return_counts=True)[1]
    return und, dire


# ---------------------------------------------------------------- tet grid
def test_tet_grid_counts_extent_volumes():
    r = 4
    verts, tets = make_tet_grid(r)
    assert verts.shape == ((r + 1) ** 3, 3) and tets.shape == (6 * r**3, 4)
    assert tets.dtype == torch.long
    assert torch.allclose(verts.min(0).values, torch.full((3,), -0.5))
    assert torch.allclose(verts.max(0).values, torch.full((3,), 0.5))
    vol = tet_volumes(verts.double(), tets)
    assert (vol > 0).all()
    assert torch.allclose(vol, torch.full_like(vol, 1.0 / (6 * r**3)))  # Kuhn tets are congruent
    assert vol.sum().item() == pytest.approx(1.0, abs=1e-12)
    # scale: extent and total volume scale^3
    v2, t2 = make_tet_grid(r, scale=2.0)
    assert torch.allclose(v2.max(0).values, torch.full((3,), 1.0))
    assert tet_volumes(v2.double(), t2).sum().item() == pytest.approx(8.0, abs=1e-9)
    # unique edges: axis edges + one diagonal per lattice square + one main diagonal per cube
    edges = tet_edges(tets)
    assert edges.shape == (3 * r * (r + 1) ** 2 + 3 * r**2 * (r + 1) + r**3, 2) == (604, 2)
    assert (edges[:, 0] < edges[:, 1]).all()
    # no edge longer than a cube's main diagonal
    step = 1.0 / r
    lengths = (verts[edges[:, 0]] - verts[edges[:, 1]]).norm(dim=-1)
    assert lengths.max().item() == pytest.approx(math.sqrt(3) * step, rel=1e-5)


@pytest.mark.parametrize("r", [1, 3, 4])
def test_tet_grid_is_conforming(r):
    verts, tets = make_tet_grid(r)
    faces = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    faces = faces.sort(dim=-1).values
    uniq, counts = torch.unique(faces, dim=0, return_counts=True)
    assert counts.max().item() == 2
    boundary = uniq[counts == 1]
    assert boundary.shape[0] == 6 * r * r * 2  # two triangles per boundary lattice square
    # every face seen once lies on the cube's boundary; every face seen twice is interior
    def on_side(tris):  # the 3 vertices share one coordinate equal to +-0.5
        p = verts[tris]  # [N, 3, 3]
        return ((p == p[:, :1]).all(dim=1) & (p[:, 0].abs() == 0.5)).any(dim=-1)

    assert on_side(boundary).all()
    assert not on_side(uniq[counts == 2]).any()
    # Euler characteristic of a ball: V - E + F - T = 1
    n_e = tet_edges(tets).shape[0]
    assert verts.shape[0] - n_e + uniq.shape[0] - tets.shape[0] == 1


def test_tet_edges_inverse_and_orient():
    verts, tets = make_tet_grid(2)
    edges, inv = tet_edges(tets, return_inverse=True)
    pairs = torch.tensor(TET_EDGE_PAIRS)
    local = tets[:, pairs].sort(dim=-1).values  # [T, 6, 2]
    assert torch.equal(edges[inv], local)
    flipped = tets.clone()
    flipped[::3] = flipped[::3][:, [1, 0, 2, 3]]
    assert (tet_volumes(verts, flipped) < 0).sum() == flipped[::3].shape[0]
    fixed = orient_tets(verts, flipped)
    assert (tet_volumes(verts, fixed) > 0).all()
    with pytest.raises(ValueError, match="positive integer"):
        make_tet_grid(0)


# ---------------------------------------------------------------- marching tets
def test_triangle_table_counts():
    # cases with 1 or 3 inside vertices emit 1 triangle, 2 inside emit 2, 0 / 4 emit none
    expected = [0 if bin(c).count("1") in (0, 4) else 2 if bin(c).count("1") == 2 else 1 for c in range(16)]
    assert NUM_TRIANGLES.tolist() == expected


def test_marching_tets_orientation_random_tets():
    """In random positive tets with a linear sdf, every face normal points along grad(sdf)."""
    g = torch.Generator().manual_seed(0)
    seen_cases = set()
    for _ in range(300):
        verts = torch.randn(4, 3, generator=g, dtype=torch.float64)
        tets = orient_tets(verts, torch.tensor([[0, 1, 2, 3]]))
        grad = torch.randn(3, generator=g, dtype=torch.float64)
        offset = 0.3 * torch.randn((), generator=g, dtype=torch.float64)
        sdf = verts @ grad + offset
        seen_cases.add(int(((sdf < 0).long() * torch.tensor([1, 2, 4, 8])).sum()))
        v, f = marching_tets(verts, sdf, tets)
        if f.shape[0] == 0:
            continue
        assert (v @ grad + offset).abs().max() < 1e-9  # on the zero plane of the linear sdf
        n = face_cross(v, f)
        assert ((n @ grad) > 0).all()
    assert seen_cases.issuperset(range(1, 15))


def _sphere_on_grid(res=32, radius=0.35):
    verts, tets = make_tet_grid(res)
    sdf = verts.norm(dim=-1) - radius
    return verts, tets, sdf


def test_marching_tets_sphere():
    radius, res = 0.35, 32
    verts, tets, sdf = _sphere_on_grid(res, radius)
    v, f = marching_tets(verts, sdf, tets)
    assert v.dtype == torch.float32 and f.dtype == torch.long and f.shape[1] == 3
    assert f.min() >= 0 and f.max() == v.shape[0] - 1  # every vertex used
    step = 1.0 / res
    dist = (v.norm(dim=-1) - radius).abs()
    assert dist.max().item() < 0.1 * step  # chord error of linear interpolation is tiny
    n = face_cross(v, f)
    outward = ((n * v[f].mean(1)).sum(-1) > 0).float().mean().item()
    assert outward > 0.99
    # watertight & consistently oriented: each undirected edge in exactly 2 faces, each
    # directed edge in exactly one; sphere topology V - E + F = 2
    und, dire = edge_counts(f, v.shape[0])
    assert (und == 2).all() and (dire == 1).all()
    assert v.shape[0] - und.shape[0] + f.shape[0] == 2
    area = 0.5 * n.norm(dim=-1).sum().item()
    assert area == pytest.approx(4 * math.pi * radius**2, rel=0.05)
    volume = (v[f[:, 0]] * n).sum().item() / 6.0  # divergence theorem; > 0 only if outward
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.02)


def test_marching_tets_sphere_trimesh_watertight():
    trimesh = pytest.importorskip("trimesh")
    verts, tets, sdf = _sphere_on_grid(16, 0.3)
    v, f = marching_tets(verts, sdf, tets)
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent and m.volume > 0


def test_marching_tets_deformed_grid_stays_watertight():
    """Deformation moves vertices but the combinatorial orientation is kept."""
    verts, tets, _ = _sphere_on_grid(12, 0.3)
    g = torch.Generator().manual_seed(1)
    deformed = verts + (0.25 / 12) * torch.tanh(torch.randn(verts.shape, generator=g))
    sdf = deformed.norm(dim=-1) - 0.3
    v, f = marching_tets(deformed, sdf, tets)
    und, dire = edge_counts(f, v.shape[0])
    assert (und == 2).all() and (dire == 1).all()
    assert (face_cross(v, f) * v[f].mean(1)).sum(-1).gt(0).float().mean() > 0.99


def test_marching_tets_gradients():
    torch.manual_seed(0)
    verts = torch.tensor(
        [[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64
    )
    verts = verts + 0.05 * torch.randn_like(verts)
    tets = orient_tets(verts, torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    sdf = torch.tensor([-0.6, 0.4, -0.3, 0.7, 0.5], dtype=torch.float64)
    verts.requires_grad_(True)
    sdf.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, s: marching_tets(p, s, tets)[0], (verts, sdf))

    # explicit finite difference for one output vertex w.r.t. one sdf value
    v0, _ = marching_tets(verts, sdf, tets)
    v0[0].sum().backward()
    eps = 1e-6
    s2 = sdf.detach().clone()
    s2[0] += eps
    fd = (marching_tets(verts.detach(), s2, tets)[0][0].sum() - v0[0].sum().detach()) / eps
    assert sdf.grad[0].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)
    # vertices / sdf away from any sign-changing edge get no gradient
    verts2, tets2, sdf2 = _sphere_on_grid(8, 0.3)
    sdf2 = sdf2.clone().requires_grad_(True)
    v, _ = marching_tets(verts2, sdf2, tets2)
    v.sum().backward()
    far = (verts2.norm(dim=-1) - 0.3).abs() > 2.0 / 8
    assert sdf2.grad[far].abs().max() == 0 and sdf2.grad.abs().max() > 0


def test_marching_tets_zero_counts_as_outside():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    tets = torch.tensor([[0, 1, 2, 3]])
    v, f = marching_tets(verts, torch.tensor([0.0, -1.0, -1.0, -1.0]), tets)
    assert f.shape == (1, 3)  # vertex 0 (sdf == 0) is outside: the surface passes through it
    assert torch.allclose(v, torch.zeros_like(v))
    v, f = marching_tets(verts, torch.tensor([0.0, 1.0, 1.0, 1.0]), tets)
    assert f.shape == (0, 3)


def test_marching_tets_empty_and_bad_input():
    verts, tets = make_tet_grid(3)
    sdf = torch.ones(verts.shape[0], requires_grad=True)
    v, f = marching_tets(verts, sdf, tets)
    assert v.shape == (0, 3) and f.shape == (0, 3)
    v.sum().backward()  # the empty output is still attached to the graph
    with pytest.raises(ValueError, match="sdf has"):
        marching_tets(verts, torch.ones(5), tets)
    # [V, 1] sdf accepted
    v1, f1 = marching_tets(verts, (verts.norm(dim=-1) - 0.3)[:, None], tets)
    assert f1.shape[0] > 0


# ---------------------------------------------------------------- marching cubes
def _grid(res, lo, hi):
    xs = [torch.linspace(lo[i], hi[i], res[i]) for i in range(3)]
    return torch.stack(torch.meshgrid(*xs, indexing="ij"), dim=-1)  # [Rx, Ry, Rz, 3]


@pytest.mark.parametrize("kind", ["density", "sdf"])
def test_marching_cubes_sphere(kind):
    lo, hi = (-0.2, -1.0, -0.5), (1.0, 0.6, 0.9)  # off-centre, non-cubic bbox and grid
    center, radius = torch.tensor([0.4, -0.2, 0.2]), 0.35
    pts = _grid((40, 48, 44), lo, hi)
    d = (pts - center).norm(dim=-1)
    if kind == "density":
        field, level, greater = 10.0 * torch.exp(-3 * (d / radius) ** 2), 10.0 * math.exp(-3), True
    else:
        field, level, greater = d - radius, 0.0, False
    v, f = marching_cubes(field, level, bbox=[lo, hi], inside_is_greater=greater)
    assert v.dtype == torch.float32 and f.dtype == torch.long
    assert (v.norm(dim=-1) > 0).all()
    rel = v - center
    assert (rel.norm(dim=-1) - radius).abs().max().item() < 0.01
    n = face_cross(v, f)
    assert ((n * (v[f].mean(1) - center)).sum(-1) > 0).float().mean().item() > 0.99
    volume = ((v[f[:, 0]] - center) * n).sum().item() / 6.0
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)


def test_marching_cubes_sdf_flag_flips_inside():
    pts = _grid((24, 24, 24), (-1, -1, -1), (1, 1, 1))
    sdf = pts.norm(dim=-1) - 0.5
    v_a, f_a = marching_cubes(sdf, 0.0, inside_is_greater=False)
    v_b, f_b = marching_cubes(-sdf, 0.0, inside_is_greater=True)
    assert torch.allclose(v_a, v_b, atol=1e-6)
    n_a, n_b = face_cross(v_a, f_a), face_cross(v_b, f_b)
    assert ((n_a * v_a[f_a].mean(1)).sum(-1) > 0).all()
    assert ((n_b * v_b[f_b].mean(1)).sum(-1) > 0).all()


def test_marching_cubes_errors():
    empty = torch.zeros(8, 8, 8)
    with pytest.raises(ValueError, match=r"level 0\.5.*min 0, max 0.*no point is inside"):
        marching_cubes(empty, 0.5)
    full = torch.full((8, 8, 8), 2.0)
    full[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"min 1\.5, max 2.*every point is inside"):
        marching_cubes(full, 1.0)
    with pytest.raises(ValueError, match="every point is inside"):
        marching_cubes(-full, 0.0, inside_is_greater=False)
    with pytest.raises(ValueError, match="Rx, Ry, Rz"):
        marching_cubes(torch.zeros(8, 8), 0.0)
    nan = torch.rand(8, 8, 8)
    nan[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        marching_cubes(nan, 0.5)
