"""Tests for lift3d.ops: occupancy grid, packed ray marching, packed volume rendering."""

import math

import pytest
import torch

from lift3d.ops.occupancy_grid import OccupancyGrid
from lift3d.ops.ray_marching import march_rays, ray_aabb_intersect
from lift3d.ops.volume_rendering import (
    accumulate_along_rays,
    render_weight_from_density,
    z_variance_along_rays,
)

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- helpers
def _random_packed(counts, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    S = int(sum(counts))
    dts = torch.rand(S, generator=g, dtype=dtype) * 0.2 + 0.01
    t_starts = torch.zeros(S, dtype=dtype)
    pos = 0
    for c in counts:  # contiguous, increasing t per ray
        if c:
            ends = torch.cumsum(dts[pos:pos + c], 0) + 0.5
            t_starts[pos:pos + c] = ends - dts[pos:pos + c]
        pos += c
    t_ends = t_starts + dts
    sigmas = torch.rand(S, generator=g, dtype=dtype) * 8.0
    return ray_indices, t_starts, t_ends, sigmas


def _loop_reference(t_starts, t_ends, sigmas, ray_indices, n_rays):
    """Per-ray Python loop: alpha, T_i = prod_{j<i}(1 - alpha_j), w = T * alpha."""
    weights, trans, alphas = [], [], []
    for r in range(n_rays):
        idx = (ray_indices == r).nonzero().flatten().tolist()
        T = torch.ones((), dtype=sigmas.dtype)
        for i in idx:
            a = 1.0 - torch.exp(-sigmas[i] * (t_ends[i] - t_starts[i]))
            weights.append(T * a)
            trans.append(T)
            alphas.append(a)
            T = T * (1.0 - a)
    return torch.stack(weights), torch.stack(trans), torch.stack(alphas)


def _sphere_density(radius, value=10.0, center=(0.0, 0.0, 0.0)):
    c = torch.tensor(center)
    return lambda x: ((x - c.to(x)).norm(dim=-1) < radius).to(x.dtype) * value


OFF_CENTER = (0.2, -0.1, 0.05)  # breaks the axis symmetry so index mix-ups are caught


def _rays_at_box(n, seed=0, dist=2.5):
    g = torch.Generator().manual_seed(seed)
    cam = torch.randn(n, 3, generator=g)
    cam = cam / cam.norm(dim=-1, keepdim=True) * dist
    target = torch.rand(n, 3, generator=g) * 1.2 - 0.6
    d = target - cam
    return cam, d / d.norm(dim=-1, keepdim=True)


COUNTS = [4, 0, 1, 7, 3, 0, 2]


# ----------------------------------------------------------------------------- volume rendering
def test_weights_match_loop_reference_forward_and_backward():
    n_rays = len(COUNTS)
    ri, ts, te, sig = _random_packed(COUNTS, dtype=torch.float32)
    sig_a = sig.clone().requires_grad_(True)
    sig_b = sig.clone().requires_grad_(True)
    w, T, a = render_weight_from_density(ts, te, sig_a, ri, n_rays)
    w_ref, T_ref, a_ref = _loop_reference(ts, te, sig_b, ri, n_rays)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(T, T_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a, a_ref, atol=1e-6, rtol=1e-5)
    # first sample of every ray sees T = 1
    starts = torch.tensor([0, 4, 5, 12, 15])  # first packed index of rays 0, 2, 3, 4, 6
    assert torch.all(T[starts] == 1.0)
    g = torch.Generator().manual_seed(1)
    cw, ct = torch.randn(w.shape, generator=g), torch.randn(w.shape, generator=g)
    ((w * cw).sum() + (T * ct).sum()).backward()
    ((w_ref * cw).sum() + (T_ref * ct).sum()).backward()
    torch.testing.assert_close(sig_a.grad, sig_b.grad, atol=1e-5, rtol=1e-4)
    assert sig_a.grad.abs().sum() > 0


def test_weights_gradcheck_float64():
    n_rays = len(COUNTS)
    ri, ts, te, sig = _random_packed(COUNTS, dtype=torch.float64, seed=3)
    sig = sig.requires_grad_(True)
    values = torch.randn(ri.numel(), 3, dtype=torch.float64, requires_grad=True)

    def fn(s, v):
        w, T, _ = render_weight_from_density(ts, te, s, ri, n_rays)
        rgb = accumulate_along_rays(w, v, ri, n_rays)
        opacity = accumulate_along_rays(w, None, ri, n_rays)
        zvar = z_variance_along_rays(w, ts, te, ri, n_rays)
        return w, T, rgb, opacity, zvar

    assert torch.autograd.gradcheck(fn, (sig, values))


def test_accumulate_and_z_variance_match_loop():
    n_rays = len(COUNTS)
    ri, ts, te, sig = _random_packed(COUNTS, dtype=torch.float64, seed=5)
    w, _, _ = render_weight_from_density(ts, te, sig, ri, n_rays)
    vals = torch.randn(ri.numel(), 3, dtype=torch.float64)
    rgb = accumulate_along_rays(w, vals, ri, n_rays)
    opa = accumulate_along_rays(w, None, ri, n_rays)
    zn = z_variance_along_rays(w, ts, te, ri, n_rays, normalize=True)
    zu = z_variance_along_rays(w, ts, te, ri, n_rays, normalize=False)
    assert rgb.shape == (n_rays, 3) and opa.shape == (n_rays, 1) and zn.shape == (n_rays, 1)
    tm = (ts + te) / 2
    for r in range(n_rays):
        m = ri == r
        torch.testing.assert_close(rgb[r], (w[m, None] * vals[m]).sum(0))
        o = w[m].sum()
        torch.testing.assert_close(opa[r, 0], o)
        if m.sum() == 0:
            assert rgb[r].abs().sum() == 0 and opa[r, 0] == 0 and zn[r, 0] == 0
            continue
        d_n = (w[m] * tm[m]).sum() / o
        torch.testing.assert_close(zn[r, 0], (w[m] * (tm[m] - d_n) ** 2).sum() / o)
        d_u = (w[m] * tm[m]).sum()
        torch.testing.assert_close(zu[r, 0], (w[m] * (tm[m] - d_u) ** 2).sum())
    # all weight on one sample -> normalised variance 0
    one = z_variance_along_rays(torch.tensor([0.0, 0.7, 0.0]), torch.tensor([0.0, 1.0, 2.0]),
                                torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.long), 1)
    assert one.abs().max() < 1e-12


def test_transmittance_precise_with_many_rays_float32():
    # 20000 rays x 50 samples: the global running sum reaches ~1e5; a float32 cumsum would
    # give errors ~1e-2 in the exponent; the float64 scan keeps T accurate.
    n_rays, k = 20000, 50
    g = torch.Generator().manual_seed(0)
    sd = torch.rand(n_rays, k, generator=g, dtype=torch.float64) * 0.2  # sigma * dt
    ts = torch.arange(k, dtype=torch.float64).repeat(n_rays, 1)
    te = ts + 1.0
    ri = torch.arange(n_rays).repeat_interleave(k)
    _, T, _ = render_weight_from_density(ts.flatten().float(), te.flatten().float(),
                                         sd.flatten().float(), ri, n_rays)
    T_ref = torch.exp(-(torch.cumsum(sd, 1) - sd)).flatten()
    assert (T.double() - T_ref).abs().max() < 1e-5


# ----------------------------------------------------------------------------- ray / aabb
def test_ray_aabb_intersect_hand_cases():
    o = torch.tensor([
        [-3.0, 0.0, 0.0],   # from outside along +x: enters 2, leaves 4
        [-3.0, 0.0, 0.0],   # unnormalised direction (2,0,0): 1, 2
        [-2.0, -2.0, 0.0],  # diagonal (1,1,0): x,y slabs both [1,3], z parallel inside
        [-3.0, 2.0, 0.0],   # parallel to x but y outside the slab: miss
        [-3.0, 0.0, 0.0],   # diagonal that misses: x in [2,4], y in [-1,1]
        [0.0, 0.0, 0.0],    # starts inside
        [-3.0, 1.0, 0.0],   # grazing the y = 1 face (closed box, zero dir component)
        [3.0, 0.0, 0.0],    # box behind the origin
    ])
    d = torch.tensor([
        [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0],
        [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0],
    ])
    inf = float("inf")
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    torch.testing.assert_close(t_near, torch.tensor([2.0, 1.0, 1.0, inf, inf, -1.0, 2.0, -4.0]))
    torch.testing.assert_close(t_far, torch.tensor([4.0, 2.0, 3.0, inf, inf, 1.0, 4.0, -2.0]))


# ----------------------------------------------------------------------------- march_rays
def test_march_rays_exact_t_values_without_grid():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    ri, ts, te = march_rays(o, d, AABB, near_plane=0.0, far_plane=1e10, render_step_size=0.3)
    # ray 0: [2, 4] in steps of 0.3, last step clipped at the exit; ray 1 misses;
    # ray 2 starts inside: [max(0, -1), 1]; ray 3: [1, 2] (t in units of |d|)
    exp_ri = [0] * 7 + [2] * 4 + [3] * 4
    exp_ts = [2.0, 2.3, 2.6, 2.9, 3.2, 3.5, 3.8, 0.0, 0.3, 0.6, 0.9, 1.0, 1.3, 1.6, 1.9]
    exp_te = [2.3, 2.6, 2.9, 3.2, 3.5, 3.8, 4.0, 0.3, 0.6, 0.9, 1.0, 1.3, 1.6, 1.9, 2.0]
    assert ri.dtype == torch.long and ri.tolist() == exp_ri
    torch.testing.assert_close(ts, torch.tensor(exp_ts), atol=1e-6, rtol=0)
    torch.testing.assert_close(te, torch.tensor(exp_te), atol=1e-6, rtol=0)
    # near / far planes (per-ray tensors): ray 0 within [2.5, 3.4], ray 2 within [0, 0.5]
    ri, ts, te = march_rays(o, d, AABB, near_plane=torch.tensor([2.5, 0.0, 0.0, 0.0]),
                            far_plane=torch.tensor([3.4, 9.0, 0.5, 1.0]), render_step_size=0.3)
    assert ri.tolist() == [0, 0, 0, 2, 2]
    torch.testing.assert_close(ts, torch.tensor([2.5, 2.8, 3.1, 0.0, 0.3]), atol=1e-6, rtol=0)
    torch.testing.assert_close(te, torch.tensor([2.8, 3.1, 3.4, 0.3, 0.5]), atol=1e-6, rtol=0)
    # max_samples_per_ray keeps the first ones of each ray
    ri, ts, _ = march_rays(o, d, AABB, 0.0, 1e10, 0.3, max_samples_per_ray=2)
    assert ri.tolist() == [0, 0, 2, 2, 3, 3]
    torch.testing.assert_close(ts, torch.tensor([2.0, 2.3, 0.0, 0.3, 1.0, 1.3]), atol=1e-6,
                               rtol=0)


def _loop_march(o, d, step, near, far):
    """Python per-ray reference of the uniform marching without a grid."""
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    out = []
    for r in range(o.shape[0]):
        a, b = max(near, float(t_near[r])), min(far, float(t_far[r]))
        k = 0
        while b - (a + k * step) > 1e-4 * step:
            t = a + k * step
            out.append((r, t, min(t + step, b)))
            k += 1
    return out


def test_march_rays_matches_loop_reference_across_chunks():
    o, d = _rays_at_box(40, seed=2)
    o[:5] = torch.tensor([5.0, 5.0, 5.0])  # rays from elsewhere: most miss the box
    step = 0.05
    ref = _loop_march(o, d, step, 0.1, 3.0)
    for chunk in (1 << 20, 37):  # one chunk, then many chunks of ~37 candidates
        ri, ts, te = march_rays(o, d, AABB, 0.1, 3.0, step, chunk_size=chunk)
        assert ri.tolist() == [r for r, _, _ in ref]
        torch.testing.assert_close(ts, torch.tensor([t for _, t, _ in ref]), atol=2e-6, rtol=0)
        torch.testing.assert_close(te, torch.tensor([t for _, _, t in ref]), atol=2e-6, rtol=0)


def test_march_rays_stratified_jitter():
    o, d = _rays_at_box(200, seed=4)
    step = 0.05
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    a, b = t_near.clamp_min(0.0), t_far
    ri, ts, te = march_rays(o, d, AABB, 0.0, 1e10, step, stratified=True,
                            generator=torch.Generator().manual_seed(0))
    first = torch.ones_like(ri, dtype=torch.bool)
    first[1:] = ri[1:] != ri[:-1]
    off = ts[first] - a[ri[first]]
    assert off.min() >= -1e-6 and off.max() < step + 1e-6
    assert off.std() > 0.2 * step  # really jittered
    same = ~first[1:]
    torch.testing.assert_close(ts[1:][same], te[:-1][same])  # contiguous within a ray
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    torch.testing.assert_close(te[last], b[ri[last]])  # last step ends at the exit


def _conservative_sphere_grid(radius, res=32, center=OFF_CENTER):
    """Grid whose occupied cells cover the sphere: density evaluated on a sphere dilated by one
    cell diagonal, so every cell touching the sphere is marked whatever the jitter."""
    grid = OccupancyGrid(AABB, resolution=res)
    diag = math.sqrt(3.0) * 2.0 / res
    grid.update(0, _sphere_density(radius + diag, center=center), warmup_steps=1)
    return grid


def test_march_rays_skipping_matches_dense_rendering():
    radius, n = 0.45, 512
    grid = _conservative_sphere_grid(radius)
    assert 0.0 < grid.occupied_fraction() < 0.2
    o, d = _rays_at_box(n, seed=7)
    step = 2 * math.sqrt(3) / 256
    dens = _sphere_density(radius, 10.0, OFF_CENTER)

    def render(ri, ts, te):
        x = o[ri] + d[ri] * ((ts + te) / 2)[:, None]
        w, _, _ = render_weight_from_density(ts, te, dens(x), ri, n)
        return (accumulate_along_rays(w, None, ri, n),
                accumulate_along_rays(w, ((ts + te) / 2)[:, None], ri, n))

    dense = march_rays(o, d, AABB, 0.0, 1e10, step)
    skip = march_rays(o, d, AABB, 0.0, 1e10, step, occupancy_grid=grid)
    assert skip[0].numel() < 0.4 * dense[0].numel()  # skipping removed most samples
    # every kept midpoint lies in an occupied cell (independent index computation)
    mid = o[skip[0]] + d[skip[0]] * ((skip[1] + skip[2]) / 2)[:, None]
    ijk = ((mid + 1.0) / 2.0 * 32).floor().long().clamp(0, 31)
    assert grid.binary[ijk[:, 0], ijk[:, 1], ijk[:, 2]].all()
    # and it is a subset of the dense samples, in the same order
    key = lambda r: r[0].double() * 1e4 + r[1].double()
    assert torch.isin(key(skip), key(dense)).all()
    assert torch.all(torch.diff(key(skip)) > 0)
    op_d, depth_d = render(*dense)
    op_s, depth_s = render(*skip)
    assert op_d.max() > 0.99 and (op_d > 0.5).float().mean() > 0.3  # the sphere is really hit
    assert (op_d - op_s).abs().max() < 1e-5
    assert (depth_d - depth_s).abs().max() < 1e-4


def test_march_rays_alpha_pruning():
    radius, n = 0.45, 256
    grid = _conservative_sphere_grid(radius)
    o, d = _rays_at_box(n, seed=8)
    step = 0.02
    dens = _sphere_density(radius, 30.0, OFF_CENTER)

    def alpha_fn(ts, te, ri):
        x = o[ri] + d[ri] * ((ts + te) / 2)[:, None]
        return 1.0 - torch.exp(-dens(x) * (te - ts))

    ri, ts, te = march_rays(o, d, AABB, 0.0, 1e10, step, occupancy_grid=grid,
                            alpha_fn=alpha_fn, alpha_thre=0.3)
    ri_g, ts_g, te_g = march_rays(o, d, AABB, 0.0, 1e10, step, occupancy_grid=grid)
    a_g = alpha_fn(ts_g, te_g, ri_g)
    keep = a_g >= 0.3
    assert 0 < ri.numel() < ri_g.numel()
    assert ri.tolist() == ri_g[keep].tolist()
    torch.testing.assert_close(ts, ts_g[keep])


# ----------------------------------------------------------------------------- occupancy grid
def test_occupancy_grid_update_marks_sphere():
    res, radius = 32, 0.5
    grid = OccupancyGrid(AABB, resolution=res)
    assert grid.binary.shape == (res, res, res) and grid.binary.all()  # skips nothing at first
    n_eval = []

    def dens(x):
        n_eval.append(x.shape[0])
        assert not torch.is_grad_enabled()
        return _sphere_density(radius)(x)

    grid.update(0, dens, warmup_steps=256, generator=torch.Generator().manual_seed(0))
    assert sum(n_eval) == res**3  # warmup: every cell
    c = grid.cell_centers()
    half_diag = math.sqrt(3.0) / res  # half of the cell diagonal (cell size 2 / res)
    r = c.norm(dim=-1)
    fully_in = r + half_diag < radius
    fully_out = r - half_diag > radius
    assert fully_in.sum() > 100 and fully_out.sum() > 20000
    assert grid.binary[fully_in].all()
    assert not grid.binary[fully_out].any()
    assert torch.equal(grid.binary, grid.occs > min(0.01, float(grid.occs.mean())))
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.9, 0.9, 0.9], [-0.8, 0.0, 0.0],
                        [3.0, 0.0, 0.0]])
    assert grid.query(pts).tolist() == [True, True, False, False, False]

    # after warmup: a random subset (~1/4) plus every occupied cell is evaluated, EMA decays
    occupied = grid.binary.clone()
    occ_before = grid.occs.clone()
    n_eval.clear()
    assert grid.update(300, lambda x: dens(x) * 0.0, warmup_steps=256, ema_decay=0.9,
                       generator=torch.Generator().manual_seed(1))
    n_occ = int(occupied.sum())
    assert n_occ < sum(n_eval) < n_occ + 0.3 * res**3
    torch.testing.assert_close(grid.occs[occupied], occ_before[occupied] * 0.9)
    # every n steps only
    n_eval.clear()
    assert not grid.update(301, dens, n=16)
    assert n_eval == []


@pytest.mark.parametrize("levels", [1, 2])
def test_occupancy_grid_update_point_budget_chunked_equals_whole(levels):
    # the update evaluates density_fn on at most `chunk` points at a time (memory bound, #24) and
    # the result does not depend on the budget (CPU generator: one random stream either way)
    def run(chunk):
        grid = OccupancyGrid(AABB, resolution=12, levels=levels)
        batches = []

        def dens(x):
            batches.append(x.shape[0])
            return _sphere_density(0.5)(x)

        g = torch.Generator().manual_seed(4)
        for step in (0, 300):  # warm-up (every cell), then a random subset plus occupied cells
            grid.update(step, dens, warmup_steps=256, generator=g, chunk=chunk)
        return grid, batches

    whole, whole_batches = run(1 << 20)
    assert whole_batches[0] == 12**3 and len(whole_batches) == 2 * levels
    chunked, batches = run(100)
    assert max(batches) == 100 and sum(batches) == sum(whole_batches)
    assert len(batches) == sum(math.ceil(b / 100) for b in whole_batches)
    assert torch.equal(chunked.occs, whole.occs) and torch.equal(chunked.binary, whole.binary)
    assert 0 < chunked.occupied_fraction() < 1
    with pytest.raises(ValueError, match="chunk"):
        whole.update(0, _sphere_density(0.5), chunk=0)


def test_occupancy_grid_state_dict_roundtrip_and_levels():
    grid = _conservative_sphere_grid(0.4, res=16)
    sd = grid.state_dict()
    assert set(sd) == {"aabb", "occs", "binary"}
    other = OccupancyGrid(AABB, resolution=16)
    other.load_state_dict(sd)
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(other.query(x), grid.query(x))
    assert torch.equal(other.binary, grid.binary)

    one = OccupancyGrid(AABB, resolution=4)
    one.binary.zero_()
    one.binary[0, 1, 3] = True  # x in [-1, -0.5], y in [-0.5, 0], z in [0.5, 1]
    pts = torch.tensor([[-0.75, -0.25, 0.75], [0.75, -0.25, -0.75], [-0.25, -0.75, 0.75],
                        [-0.75, 0.75, -0.25], [-1.0, -0.5, 1.0], [-1.01, -0.25, 0.75]])
    assert one.query(pts).tolist() == [True, False, False, False, True, False]

    ml = OccupancyGrid(AABB, resolution=4, levels=3)
    assert ml.binary.shape == (3, 4, 4, 4)
    ml.binary.zero_()
    ml.binary[0, 3, 3, 3] = True  # level 0 cell [0.5, 1]^3
    ml.binary[1, 0, 0, 0] = True  # level 1 cell [-2, -1]^3
    ml.binary[2, 3, 0, 0] = True  # level 2 cell x in [2, 4], y, z in [-4, -2]
    pts = torch.tensor([[0.7, 0.7, 0.7], [-0.7, -0.7, -0.7], [-1.5, -1.5, -1.5],
                        [-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [5.0, 0.0, 0.0],
                        [float("nan"), 0.0, 0.0]])
    assert ml.query(pts).tolist() == [True, False, True, False, True, False, False]
    # multi-level update: both levels see the sphere; outside it everything is empty
    ml = OccupancyGrid(AABB, resolution=16, levels=2)
    ml.update(0, _sphere_density(0.5), warmup_steps=1)
    assert ml.binary[0].sum() > 8 and ml.binary[1].sum() >= 8
    q = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.1], [1.5, 1.5, 1.5], [0.9, 0.0, 0.0],
                      [3.5, 0.0, 0.0]])
    assert ml.query(q).tolist() == [True, True, False, False, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    radius, n = 0.45, 512
    grid = _conservative_sphere_grid(radius)
    o, d = _rays_at_box(n, seed=9)
    step = 0.01
    out = {}
    for dev in ("cpu", "cuda"):
        g = grid.to(dev)
        ri, ts, te = march_rays(o.to(dev), d.to(dev), AABB.to(dev), 0.0, 1e10, step,
                                occupancy_grid=g)
        x = o.to(dev)[ri] + d.to(dev)[ri] * ((ts + te) / 2)[:, None]
        sig = _sphere_density(radius, center=OFF_CENTER)(x).requires_grad_(True)
        w, _, _ = render_weight_from_density(ts, te, sig, ri, n)
        op = accumulate_along_rays(w, None, ri, n)
        op.sum().backward()
        out[dev] = (ri.cpu(), ts.cpu(), op.detach().cpu(), sig.grad.cpu())
    assert torch.equal(out["cpu"][0], out["cuda"][0])
    for a, b in zip(out["cpu"][1:], out["cuda"][1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
