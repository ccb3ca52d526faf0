"""Hash-grid encoding: tcnn semantics, values and gradients against a plain float64 reference."""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from torch.func import functional_call

from lift3d.networks.hashgrid import HashGridEncoding, ProgressiveBandHashGrid

DEFAULT_SCALE = 1.447269237440378  # threestudio's default: 2^(8/15), 16 -> 4096 over 16 levels
PRIMES = (1, 2654435761, 805459861)


# ---------------------------------------------------------------- default config, pinned numbers


def test_default_level_resolutions_follow_tcnn_formula() -> None:
    enc = HashGridEncoding()
    by_formula = [math.ceil(16 * DEFAULT_SCALE**level - 1) + 1 for level in range(16)]
    pinned = [16, 24, 34, 49, 71, 102, 148, 213, 308, 446, 646, 934, 1352, 1956, 2831, 4096]
    assert by_formula == pinned
    assert enc.level_resolutions == pinned
    assert enc.level_resolutions[-1] == 4096  # scale 16 * 2^8 - 1 = 4095 -> ceil + 1
    assert enc.n_output_dims == 32


def test_default_parameter_count() -> None:
    enc = HashGridEncoding()
    table = 2**19
    expected_entries = 0
    n_dense = 0
    for res in [math.ceil(16 * DEFAULT_SCALE**level - 1) + 1 for level in range(16)]:
        dense = res**3
        padded = (dense + 7) // 8 * 8
        expected_entries += min(padded, table)
        n_dense += dense <= table
    expected = expected_entries * 2
    assert expected == 12_599_920
    assert n_dense == 5  # resolutions 16, 24, 34, 49, 71 are dense; 102^3 > 2^19
    assert [lv.hashed for lv in enc.levels] == [False] * 5 + [True] * 11
    assert enc.n_params == expected
    assert enc.params.numel() == expected
    assert 12.0e6 < enc.n_params < 13.0e6
    assert enc.params.abs().max().item() <= 1e-4
    assert enc.params.std().item() > 1e-5  # really U(-1e-4, 1e-4), not zeros


# ---------------------------------------------------------------- independent float64 reference


def reference_encode(x: torch.Tensor, table: torch.Tensor, base: int, scale_growth: float, log2_size: int, n_levels: int, n_features: int) -> torch.Tensor:
    """Plain re-statement of tcnn's HashGrid: loop over levels and the 8 corners; corner indices
    computed per point with Python integers (uint32 wrap by ``% 2**32``). Differentiable in x and
    table (autograd), float64."""
    n = x.shape[0]
    outputs = []
    offset = 0
    for level in range(n_levels):
        scale = base * scale_growth**level - 1.0
        res = math.ceil(scale) + 1
        size = min((res**3 + 7) // 8 * 8, 2**log2_size)
        hashed = res**3 > size
        pos = x * scale + 0.5
        cell = torch.floor(pos).detach()
        frac = pos - cell
        cells = [[int(v) for v in row] for row in cell.tolist()]
        level_out = torch.zeros(n, n_features, dtype=x.dtype)
        for cx in (0, 1):
            for cy in (0, 1):
                for cz in (0, 1):
                    rows = []
                    for px, py, pz in cells:
                        gx, gy, gz = px + cx, py + cy, pz + cz
                        if hashed:
                            idx = ((gx * PRIMES[0]) % 2**32) ^ ((gy * PRIMES[1]) % 2**32) ^ ((gz * PRIMES[2]) % 2**32)
                        else:
                            idx = gx + gy * res + gz * res * res
                        rows.append(offset + idx % size)
                    wx = frac[:, 0] if cx else 1 - frac[:, 0]
                    wy = frac[:, 1] if cy else 1 - frac[:, 1]
                    wz = frac[:, 2] if cz else 1 - frac[:, 2]
                    level_out = level_out + (wx * wy * wz)[:, None] * table[torch.tensor(rows)]
        outputs.append(level_out)
        offset += size
    return torch.cat(outputs, dim=1)


SMALL = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)


def _points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64)
    x[0] = 0.0  # corners of the domain (x = 1 reads past the last vertex like tcnn, no clamp)
    x[1] = 1.0
    x[2] = torch.tensor([1.5 / 3, 1.5 / 7, 7.5 / 15], dtype=torch.float64)  # x_d on a vertex of level d
    return x


def test_small_grid_layout() -> None:
    enc = HashGridEncoding(3, **SMALL)
    assert enc.level_resolutions == [4, 8, 16]
    assert [lv.hashed for lv in enc.levels] == [False, False, True]  # 16^3 > 1024
    assert [lv.size for lv in enc.levels] == [64, 512, 1024]
    assert enc.n_params == (64 + 512 + 1024) * 2


def test_forward_and_gradients_match_reference() -> None:
    enc = HashGridEncoding(3, **SMALL).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        enc.params.copy_(torch.randn(enc.n_params, generator=g, dtype=torch.float64))
    x = _points(40, seed=1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    table_ref = enc.params.detach().view(-1, 2).clone().requires_grad_(True)

    out = enc(x)
    ref = reference_encode(x_ref, table_ref, 4, 2.0, 10, 3, 2)
    assert out.shape == (40, 6)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    weights = torch.randn(40, 6, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(enc.params.grad.view(-1, 2), table_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    assert x.grad.abs().sum() > 0 and enc.params.grad.abs().sum() > 0


def test_second_order_matches_reference() -> None:
    # eikonal-style loss: a function of d(out)/dx, differentiated again w.r.t. table and x
    enc = HashGridEncoding(3, **SMALL).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        enc.params.copy_(torch.randn(enc.n_params, generator=g, dtype=torch.float64))
    x = (0.05 + 0.9 * torch.rand(30, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    table_ref = enc.params.detach().view(-1, 2).clone().requires_grad_(True)
    w_out = torch.randn(30, 6, generator=g, dtype=torch.float64)
    w_grad = torch.randn(30, 3, generator=g, dtype=torch.float64)

    (gx,) = torch.autograd.grad((enc(x) * w_out).sum(), x, create_graph=True)
    ref = reference_encode(x_ref, table_ref, 4, 2.0, 10, 3, 2)
    (gx_ref,) = torch.autograd.grad((ref * w_out).sum(), x_ref, create_graph=True)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    (gx * w_grad).sum().backward()
    (gx_ref * w_grad).sum().backward()
    torch.testing.assert_close(enc.params.grad.view(-1, 2), table_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    assert enc.params.grad.abs().sum() > 0 and x.grad.abs().sum() > 0  # trilinear: cross terms


def test_hash_of_a_known_vertex() -> None:
    # A point sitting exactly on vertex (5, 7, 9) of the hashed level 2 (scale 15) reads only that
    # vertex, whose slot is the coherent prime hash computed here by hand.
    enc = HashGridEncoding(3, **SMALL).double()
    with torch.no_grad():
        enc.params.copy_(torch.arange(enc.n_params, dtype=torch.float64))
    vertex = torch.tensor([5.0, 7.0, 9.0], dtype=torch.float64)
    x = ((vertex - 0.5) / 15.0)[None]
    slot = (5 ^ (7 * 2654435761 % 2**32) ^ (9 * 805459861 % 2**32)) % 1024
    row = 64 + 512 + slot
    out = enc(x)
    torch.testing.assert_close(out[0, 4:6], torch.tensor([2.0 * row, 2.0 * row + 1], dtype=torch.float64), rtol=0, atol=1e-9)


def test_gradcheck_dense_and_hashed_levels() -> None:
    # level 0: res 4 (64 <= 256, dense); level 1: res 8 (512 > 256, hashed)
    enc = HashGridEncoding(3, n_levels=2, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0).double()
    assert [lv.hashed for lv in enc.levels] == [False, True]
    g = torch.Generator().manual_seed(3)
    x = (0.05 + 0.9 * torch.rand(6, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    params = torch.randn(enc.n_params, generator=g, dtype=torch.float64).requires_grad_(True)

    def f(x_: torch.Tensor, p_: torch.Tensor) -> torch.Tensor:
        return functional_call(enc, {"params": p_}, (x_,))

    assert torch.autograd.gradcheck(f, (x, params), eps=1e-6, atol=1e-6)
    # double backward (analytic normals / eikonal loss differentiate the input gradient); fast
    # mode (random projections) keeps it under a second, the full second-order comparison is
    # test_second_order_matches_reference
    assert torch.autograd.gradgradcheck(f, (x, params), eps=1e-6, atol=1e-6, fast_mode=True)


def test_leading_dims_float32_and_memory_saved() -> None:
    enc = HashGridEncoding(3, **SMALL)
    x = torch.rand(2, 5, 3)
    out = enc(x)
    assert out.shape == (2, 5, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out.view(10, 6), enc(x.view(10, 3)))
    # autograd keeps only x and the table, nothing per level or per corner
    saved: List[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    x = torch.rand(100, 3, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x).sum().backward()
    assert sorted(saved) == [300, enc.n_params]
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_inputs_without_grad_do_not_get_one() -> None:
    enc = HashGridEncoding(3, **SMALL)
    x = torch.rand(7, 3)
    enc(x).sum().backward()
    assert x.grad is None
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0


# ---------------------------------------------------------------- all-levels path vs per-level reference


def _both_paths(enc: HashGridEncoding, x: torch.Tensor, w: torch.Tensor, monkeypatch) -> List[List[torch.Tensor]]:
    """[out, d params, d x] of sum(w * enc(x)) on the all-levels path and on the per-level reference."""
    results = []
    for reference in ("0", "1"):
        monkeypatch.setenv("LIFT3D_REFERENCE_KERNELS", reference)
        xr = x.detach().clone().requires_grad_(True)
        enc.params.grad = None
        out = enc(xr)
        (out * w).sum().backward()
        results.append([out.detach(), enc.params.grad.clone(), xr.grad.clone()])
    return results


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_all_levels_path_matches_per_level_reference(dims: int, monkeypatch) -> None:
    # dense and hashed levels; points outside [0, 1] (negative cells: tcnn's uint32 wrap, and the
    # exact remainder of the dense levels), on the domain corners and inside
    cfg = dict(n_levels=5, n_features_per_level=2, log2_hashmap_size=4 if dims == 1 else 9, base_resolution=3, per_level_scale=1.8)
    enc = HashGridEncoding(dims, **cfg).double()
    assert any(lv.hashed for lv in enc.levels) and not all(lv.hashed for lv in enc.levels)
    g = torch.Generator().manual_seed(dims)
    with torch.no_grad():
        enc.params.copy_(torch.randn(enc.n_params, generator=g, dtype=torch.float64))
    inside = torch.rand(50, dims, generator=g, dtype=torch.float64)
    inside[0], inside[1] = 0.0, 1.0
    outside = torch.rand(20, dims, generator=g, dtype=torch.float64) * 1.6 - 0.3
    for x in (inside, torch.cat([inside, outside])):
        w = torch.randn(x.shape[0], enc.n_output_dims, generator=g, dtype=torch.float64)
        fast, ref = _both_paths(enc, x, w, monkeypatch)
        for a, b in zip(fast, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert fast[1].abs().sum() > 0 and fast[2].abs().sum() > 0


def test_all_levels_path_chunked_equals_whole(monkeypatch) -> None:
    from lift3d.networks import hashgrid_batched

    enc = HashGridEncoding(3, **SMALL).double()  # float64: only the summation order differs
    with torch.no_grad():
        enc.params.normal_()
    x = torch.rand(300, 3, dtype=torch.float64)
    w = torch.randn(300, 6, dtype=torch.float64)
    monkeypatch.setenv("LIFT3D_REFERENCE_KERNELS", "0")
    results = []
    for budget in (1 << 21, 3 * 8 * 7):  # whole, then chunks of 7 points (300 = 42 * 7 + 6)
        monkeypatch.setattr(hashgrid_batched, "CORNER_BUDGET", budget)
        xr = x.clone().requires_grad_(True)
        enc.params.grad = None
        out = enc(xr)
        (out * w).sum().backward()
        results.append([out.detach(), enc.params.grad.clone(), xr.grad.clone()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_all_levels_path_on_the_default_grid(monkeypatch) -> None:
    # threestudio's default grid (5 dense + 11 hashed levels of 2^19 entries), float32 as trained
    enc = HashGridEncoding()
    with torch.no_grad():
        enc.params.normal_()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(500, 3, generator=g)
    w = torch.randn(500, 32, generator=g)
    fast, ref = _both_paths(enc, x, w, monkeypatch)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[2], ref[2], rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- progressive band


def test_progressive_band_masks_levels() -> None:
    cfg = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.5)
    prog = ProgressiveBandHashGrid(3, **cfg, start_level=2, start_step=5, update_steps=10)
    plain = HashGridEncoding(3, **cfg)
    plain.load_state_dict(prog.state_dict())
    x = torch.rand(20, 3, requires_grad=True)
    full = plain(x)

    def check(active_levels: int) -> None:
        out = prog(x)
        assert prog.current_level == active_levels
        k = active_levels * 2
        torch.testing.assert_close(out[:, :k], full[:, :k])
        assert torch.all(out[:, k:] == 0)

    check(2)  # valid before any update_step
    prog.update_step(0, 0)
    check(2)
    prog.update_step(0, 14)  # (14 - 5) // 10 = 0
    check(2)
    prog.update_step(0, 15)
    check(3)
    prog.update_step(0, 10_000)  # capped at n_levels
    check(4)
    prog.update_step(0, 5)  # going back (e.g. a resumed run) re-masks
    check(2)

    # masked levels receive no gradient
    prog.params.grad = None
    prog(x).sum().backward()
    grads = prog.params.grad.view(-1, 2)
    lv2 = prog.levels[2]
    assert grads[lv2.offset : lv2.offset + lv2.size].abs().sum() == 0
    assert grads[: prog.levels[1].offset + prog.levels[1].size].abs().sum() > 0


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    enc = HashGridEncoding(3, **SMALL).double()
    with torch.no_grad():
        enc.params.normal_()
    x = _points(64, seed=5).requires_grad_(True)
    out = enc(x)
    out.square().sum().backward()
    enc_gpu = HashGridEncoding(3, **SMALL).double().cuda()
    enc_gpu.load_state_dict(enc.state_dict())
    x_gpu = x.detach().cuda().requires_grad_(True)
    out_gpu = enc_gpu(x_gpu)
    out_gpu.square().sum().backward()
    torch.testing.assert_close(out_gpu.cpu(), out)
    torch.testing.assert_close(enc_gpu.params.grad.cpu(), enc.params.grad)
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad)
