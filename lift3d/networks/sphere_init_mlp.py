"""`SphereInitVanillaMLP`: an MLP whose initial output is the signed distance to a sphere (geometric
initialisation, Atzmon & Lipman, SAL, arXiv 1911.10414 §4; threestudio's network otype of the same name,
used by TextMesh's SDF; docs/methods/textmesh.md §2).

Input [..., D] whose first 3 entries are the point (CompositeEncoding's include_xyz: the bbox mapped to
[-1, 1]); hidden layers of `n_neurons` with Softplus(beta=100) (a smooth ReLU, so the SDF has smooth
normals); all linears with bias and weight normalisation. Initialisation:

    first layer:  W[:, :3] ~ N(0, 2 / n_neurons), W[:, 3:] = 0, b = 0      (only the point, no encoding)
    hidden:       W ~ N(0, 2 / n_neurons), b = 0
    last layer:   W ~ N(sqrt(pi) / sqrt(n_neurons), 1e-4^2), b = -r          (inside_out: both negated)

so that for wide layers the output is close to |x| - r (r = `sphere_init_radius`, in the [-1, 1] units
of the input; inside_out: r - |x|).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from lift3d.networks.mlp import _Activation


def _geometric_linear(dim_in: int, dim_out: int, kind: str, radius: float, inside_out: bool) -> nn.Module:
    layer = nn.Linear(dim_in, dim_out, bias=True)
    with torch.no_grad():
        if kind == "last":
            sign = -1.0 if inside_out else 1.0
            layer.weight.normal_(sign * math.sqrt(math.pi) / math.sqrt(dim_in), 1e-4)
            layer.bias.fill_(-sign * radius)
        else:
            layer.bias.zero_()
            layer.weight.normal_(0.0, math.sqrt(2.0) / math.sqrt(dim_out))
            if kind == "first":
                layer.weight[:, 3:] = 0.0  # the encoding starts switched off: the sphere alone
    return nn.utils.parametrizations.weight_norm(layer)


class SphereInitVanillaMLP(nn.Module):
    """[..., n_input_dims] -> [..., n_output_dims], initialised to a sphere's SDF (module docstring)."""

    def __init__(self, n_input_dims: int, n_output_dims: int, n_neurons: int = 64, n_hidden_layers: int = 1,
                 sphere_init_radius: float = 0.5, inside_out: bool = False, activation: str = "ReLU",
                 output_activation: str | None = "none") -> None:
        super().__init__()
        if n_input_dims < 3:
            raise ValueError(f"SphereInitVanillaMLP needs the point in its first 3 inputs, got {n_input_dims} inputs")
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        layers: list[nn.Module] = [_geometric_linear(n_input_dims, n_neurons, "first", sphere_init_radius, inside_out),
                                   nn.Softplus(beta=100)]
        for _ in range(n_hidden_layers - 1):
            layers += [_geometric_linear(n_neurons, n_neurons, "hidden", sphere_init_radius, inside_out),
                       nn.Softplus(beta=100)]
        layers.append(_geometric_linear(n_neurons, n_output_dims, "last", sphere_init_radius, inside_out))
        self.layers = nn.Sequential(*layers)
        # `activation` is threestudio's key; the sphere initialisation needs the smooth Softplus(beta=100)
        self.output_activation = _Activation("none" if output_activation is None else str(output_activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_activation(self.layers(x))


__all__ = ["SphereInitVanillaMLP"]
