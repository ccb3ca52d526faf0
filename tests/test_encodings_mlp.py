"""Frequency / spherical-harmonics / composite encodings, the get_encoding factory, MLPs, activations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lift3d.networks.encodings import (
    CompositeEncoding,
    FrequencyEncoding,
    IdentityEncoding,
    ProgressiveBandFrequency,
    SphericalHarmonicsEncoding,
    get_encoding,
    validate_encoding_config,
)
from lift3d.errors import ConfigError
from lift3d.networks.hashgrid import HashGridEncoding, ProgressiveBandHashGrid
from lift3d.networks.mlp import get_activation, get_mlp, trunc_exp, validate_mlp_config

# ---------------------------------------------------------------- frequency


def test_frequency_values_and_tcnn_order() -> None:
    enc = FrequencyEncoding(3, n_frequencies=4)
    assert enc.n_output_dims == 24
    x = torch.rand(5, 3, dtype=torch.float64)
    out = enc(x)
    assert out.shape == (5, 24)
    for d in range(3):
        for k in range(4):
            arg = 2.0**k * math.pi * x[:, d]
            torch.testing.assert_close(out[:, d * 8 + 2 * k], torch.sin(arg))
            torch.testing.assert_close(out[:, d * 8 + 2 * k + 1], torch.cos(arg))


def test_progressive_band_frequency_order_and_mask() -> None:
    enc = ProgressiveBandFrequency(2, n_frequencies=3, n_masking_step=100)
    x = torch.rand(4, 2, dtype=torch.float64)
    expected = torch.cat([f(2.0**k * x) for k in range(3) for f in (torch.sin, torch.cos)], dim=-1)
    torch.testing.assert_close(enc(x), expected)  # all bands on before training
    enc.update_step(0, 50)  # step/n * K - k = 1.5 - k -> ramps 1, 0.5, 0 -> weights 1, 0.5, 0
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64).repeat_interleave(2)
    torch.testing.assert_close(enc(x), expected * weights)


# ---------------------------------------------------------------- spherical harmonics


def tcnn_sh_degree4(d: torch.Tensor) -> torch.Tensor:
    """tcnn's real SH (degree 4 = bands 0..3), written out by hand."""
    x, y, z = d.unbind(-1)
    pi = math.pi
    return torch.stack(
        [
            torch.full_like(x, 1 / (2 * math.sqrt(pi))),
            -math.sqrt(3) * y / (2 * math.sqrt(pi)),
            math.sqrt(3) * z / (2 * math.sqrt(pi)),
            -math.sqrt(3) * x / (2 * math.sqrt(pi)),
            math.sqrt(15) * x * y / (2 * math.sqrt(pi)),
            -math.sqrt(15) * y * z / (2 * math.sqrt(pi)),
            math.sqrt(5) * (3 * z * z - 1) / (4 * math.sqrt(pi)),
            -math.sqrt(15) * x * z / (2 * math.sqrt(pi)),
            math.sqrt(15) * (x * x - y * y) / (4 * math.sqrt(pi)),
            math.sqrt(70) * y * (-3 * x * x + y * y) / (8 * math.sqrt(pi)),
            math.sqrt(105) * x * y * z / (2 * math.sqrt(pi)),
            math.sqrt(42) * y * (1 - 5 * z * z) / (8 * math.sqrt(pi)),
            math.sqrt(7) * z * (5 * z * z - 3) / (4 * math.sqrt(pi)),
            math.sqrt(42) * x * (1 - 5 * z * z) / (8 * math.sqrt(pi)),
            math.sqrt(105) * z * (x * x - y * y) / (4 * math.sqrt(pi)),
            math.sqrt(70) * x * (-x * x + 3 * y * y) / (8 * math.sqrt(pi)),
        ],
        dim=-1,
    )


def sphere_quadrature(n_theta: int = 12, n_phi: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre in z (Golub-Welsch) x uniform in phi: exact for polynomials of degree < 2*n_theta."""
    k = torch.arange(1, n_theta, dtype=torch.float64)
    jacobi = torch.diag(k / torch.sqrt(4 * k * k - 1), 1)
    nodes, vecs = torch.linalg.eigh(jacobi + jacobi.T)
    z_weights = 2 * vecs[0] ** 2  # [n_theta], sums to 2
    phi = torch.arange(n_phi, dtype=torch.float64) * (2 * math.pi / n_phi)
    z, ph = torch.meshgrid(nodes, phi, indexing="ij")
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(ph), r * torch.sin(ph), z], dim=-1).reshape(-1, 3)
    weights = (z_weights[:, None] * (2 * math.pi / n_phi)).expand(n_theta, n_phi).reshape(-1)
    return dirs, weights


def test_sh_matches_tcnn_convention() -> None:
    d = F.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(SphericalHarmonicsEncoding(degree=4)(d), tcnn_sh_degree4(d))
    for degree in (1, 2, 3):
        enc = SphericalHarmonicsEncoding(degree=degree)
        assert enc.n_output_dims == degree**2
        torch.testing.assert_close(enc(d), tcnn_sh_degree4(d)[:, : degree**2])


@pytest.mark.parametrize("degree", [1, 2, 3, 4, 8])
def test_sh_orthonormal_on_sphere(degree: int) -> None:
    dirs, weights = sphere_quadrature()
    assert abs(weights.sum().item() - 4 * math.pi) < 1e-12
    basis = SphericalHarmonicsEncoding(degree=degree)(dirs)  # [Q, degree^2]
    gram = basis.T @ (basis * weights[:, None])
    torch.testing.assert_close(gram, torch.eye(degree**2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sh_input_ranges_and_factory() -> None:
    d = F.normalize(torch.randn(10, 3, dtype=torch.float64), dim=-1)
    expected = tcnn_sh_degree4(d)[:, :9]
    # tcnn-style input in [0, 1]
    torch.testing.assert_close(SphericalHarmonicsEncoding(degree=3, unit_cube_input=True)((d + 1) / 2), expected)
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3})  # lift3d: directions in [-1, 1]
    assert enc.n_output_dims == 9
    torch.testing.assert_close(enc(d), expected)


# ---------------------------------------------------------------- composite / factory


def test_composite_include_xyz_and_bbox() -> None:
    bbox = torch.tensor([[-2.0, -2.0, -1.0], [2.0, 2.0, 1.0]])
    inner = FrequencyEncoding(3, n_frequencies=2)
    enc = CompositeEncoding(inner, include_xyz=True, bbox=bbox)
    assert enc.n_input_dims == 3 and enc.n_output_dims == 3 + 12
    pts = torch.tensor([[-2.0, 0.0, 1.0], [1.0, -1.0, 0.5]])
    unit = torch.tensor([[0.0, 0.5, 1.0], [0.75, 0.25, 0.75]])
    out = enc(pts)
    torch.testing.assert_close(out[:, :3], unit * 2 - 1)  # threestudio shows xyz in [-1, 1]
    torch.testing.assert_close(out[:, 3:], inner(unit))
    assert "bbox" not in enc.state_dict()
    with pytest.raises(ValueError, match="bbox"):
        CompositeEncoding(inner, bbox=torch.zeros(3, 3))


def test_get_encoding_otypes_and_dims() -> None:
    hash_cfg = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.5)
    cases = [
        ({"otype": "HashGrid", **hash_cfg}, HashGridEncoding, 8),
        ({"otype": "Grid", "type": "Hash", **hash_cfg}, HashGridEncoding, 8),
        ({"otype": "ProgressiveBandHashGrid", **hash_cfg, "start_level": 2, "start_step": 0, "update_steps": 10}, ProgressiveBandHashGrid, 8),
        ({"otype": "Frequency", "n_frequencies": 6}, FrequencyEncoding, 36),
        ({"otype": "ProgressiveBandFrequency", "n_frequencies": 6, "include_xyz": True}, ProgressiveBandFrequency, 39),
        ({"otype": "SphericalHarmonics", "degree": 4}, SphericalHarmonicsEncoding, 16),
        ({"otype": "Identity", "include_xyz": True}, IdentityEncoding, 6),
    ]
    x = torch.rand(7, 3)
    for cfg, cls, n_out in cases:
        enc = get_encoding(3, OmegaConf.create(cfg))
        assert isinstance(enc, CompositeEncoding) and isinstance(enc.encoding, cls), cfg["otype"]
        assert enc.n_output_dims == n_out, cfg["otype"]
        assert enc(x).shape == (7, n_out), cfg["otype"]
        enc.update_step(0, 100)  # every factory encoding has update_step


def test_get_encoding_propagates_update_step() -> None:
    cfg = OmegaConf.create(
        {"otype": "ProgressiveBandHashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 8,
         "base_resolution": 4, "per_level_scale": 1.5, "start_level": 1, "start_step": 10, "update_steps": 5}
    )
    enc = get_encoding(3, cfg)
    out = enc(torch.rand(5, 3))
    assert torch.all(out[:, 2:] == 0) and torch.any(out[:, :2] != 0)
    enc.update_step(0, 20)  # 1 + (20 - 10) // 5 = 3 levels
    assert enc.encoding.current_level == 3
    out = enc(torch.rand(5, 3))
    assert torch.all(out[:, 6:] == 0) and torch.all(out[:, :6] != 0)


def test_get_encoding_rejects_bad_configs() -> None:
    with pytest.raises(ConfigError, match="n_frequncies") as err:
        get_encoding(3, {"otype": "Frequency", "n_frequncies": 4})
    assert "Did you mean: n_frequencies" in str(err.value) and "'Frequency'" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean: HashGrid"):
        validate_encoding_config({"otype": "HashGird"})  # checks without building
    with pytest.raises(ConfigError, match="interpolation"):
        get_encoding(3, {"otype": "HashGrid", "interpolation": "Smoothstep"})
    with pytest.raises(ConfigError, match="degree"):
        get_encoding(3, {"otype": "SphericalHarmonics", "degree": 9})


# ---------------------------------------------------------------- MLP


@pytest.mark.parametrize("otype", ["VanillaMLP", "FullyFusedMLP"])
def test_mlp_structure_and_shapes(otype: str) -> None:
    cfg = OmegaConf.create({"otype": otype, "activation": "ReLU", "output_activation": "none", "n_neurons": 16, "n_hidden_layers": 2})
    mlp = get_mlp(8, 4, cfg)
    assert mlp.n_input_dims == 8 and mlp.n_output_dims == 4
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    assert all(m.bias is None for m in linears)  # bias-free like tcnn
    x = torch.randn(3, 5, 8)
    out = mlp(x)
    assert out.shape == (3, 5, 4)
    h = x
    for i, lin in enumerate(linears):
        h = lin(h)
        if i < len(linears) - 1:
            h = torch.relu(h)
    torch.testing.assert_close(out, h)


def test_mlp_output_activation_and_bad_keys() -> None:
    mlp = get_mlp(3, 2, {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "sigmoid", "n_neurons": 8, "n_hidden_layers": 1})
    x = torch.randn(4, 3)
    torch.testing.assert_close(mlp(x), torch.sigmoid(mlp.layers(x)))
    with pytest.raises(ConfigError, match="sphere_init"):
        get_mlp(3, 2, {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1, "sphere_init": True})
    with pytest.raises(ConfigError, match="CutlassMLP"):
        validate_mlp_config({"otype": "CutlassMLP"})
    with pytest.raises(ConfigError, match="Swish"):
        get_mlp(3, 2, {"otype": "VanillaMLP", "activation": "Swish"})


# ---------------------------------------------------------------- activations


def test_activation_values() -> None:
    x = torch.linspace(-3, 3, 25, dtype=torch.float64)
    expected = {
        "none": x,
        "exp": torch.exp(x),
        "shifted_exp": torch.exp(x - 1),
        "trunc_exp": torch.exp(x),
        "softplus": torch.log1p(torch.exp(x)),
        "shifted_softplus": torch.log1p(torch.exp(x - 1)),
        "sigmoid": 1 / (1 + torch.exp(-x)),
        "scale_-11_01": (x + 1) / 2,
    }
    for name, value in expected.items():
        torch.testing.assert_close(get_activation(name)(x), value, msg=name)
    torch.testing.assert_close(get_activation(None)(x), x)
    torch.testing.assert_close(get_activation("Sigmoid")(x), expected["sigmoid"])
    with pytest.raises(ConfigError, match="trunc_exp"):
        get_activation("trunk_exp")


def test_lin2srgb() -> None:
    x = torch.tensor([-0.5, 0.0, 0.002, 0.0031308, 0.01, 0.2, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = get_activation("lin2srgb")(x)
    expected = [0.0, 0.0, 12.92 * 0.002, 12.92 * 0.0031308, 1.055 * 0.01 ** (1 / 2.4) - 0.055,
                1.055 * 0.2 ** (1 / 2.4) - 0.055, 1.055 * 0.5 ** (1 / 2.4) - 0.055, 1.0, 1.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_trunc_exp_gradient_is_clamped() -> None:
    x = torch.tensor([-1.0, 0.0, 10.0, 15.0, 20.0, 40.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    g = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    y.backward(g)
    expected = g * torch.exp(torch.clamp(x.detach(), max=15.0))
    torch.testing.assert_close(x.grad, expected)
    assert x.grad[4].item() == pytest.approx(3 * math.exp(15.0))  # not 3 * exp(20)
