"""MLPs and activations, threestudio/tcnn-compatible.

``get_mlp`` accepts tcnn network configs. ``VanillaMLP`` and ``FullyFusedMLP`` build the same
network (tcnn is not used): ``n_hidden_layers`` hidden layers of ``n_neurons`` with ``activation``,
then an output layer and ``output_activation``. All linear layers are bias-free, like tcnn's fully
fused MLP and threestudio's VanillaMLP; weights use PyTorch's default ``nn.Linear`` init (as
threestudio's VanillaMLP).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from lift3d.errors import ConfigError

from lift3d.networks.encodings import check_config_keys, check_otype, config_to_dict


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` whose gradient is ``grad * exp(min(x, 15))`` (keeps density gradients finite)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(torch.clamp(x, max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def lin2srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> sRGB transfer curve, clamped to [0, 1]."""
    threshold = 0.0031308
    curve = 1.055 * torch.pow(torch.clamp(x, min=threshold), 1.0 / 2.4) - 0.055  # clamp: no NaN grads
    return torch.where(x > threshold, curve, 12.92 * x).clamp(0.0, 1.0)


_ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "lin2srgb": lin2srgb,
    "exp": torch.exp,
    "shifted_exp": lambda x: torch.exp(x - 1.0),
    "trunc_exp": trunc_exp,
    "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
    "softplus": F.softplus,
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
}


def get_activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Elementwise activation by threestudio name (case-insensitive; ``None`` means identity)."""
    key = "none" if name is None else str(name).lower()
    if key not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid names: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]


# tcnn hidden-layer activation names (case-insensitive) -> module factory.
_HIDDEN_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "none": nn.Identity,
}


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = get_activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class VanillaMLP(nn.Module):
    """[..., n_input_dims] -> [..., n_output_dims]; ``n_hidden_layers + 1`` bias-free linears."""

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        n_neurons: int = 64,
        n_hidden_layers: int = 1,
        activation: str = "ReLU",
        output_activation: str | None = "none",
    ) -> None:
        super().__init__()
        act_key = str(activation).lower()
        if act_key not in _HIDDEN_ACTIVATIONS:
            raise ConfigError(f"VanillaMLP: unknown activation {activation!r}; valid: {sorted(_HIDDEN_ACTIVATIONS)}")
        if n_hidden_layers < 1:
            raise ConfigError(f"VanillaMLP: n_hidden_layers must be >= 1, got {n_hidden_layers}")
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        layers: list[nn.Module] = []
        dim = n_input_dims
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(dim, n_neurons, bias=False), _HIDDEN_ACTIVATIONS[act_key]()]
            dim = n_neurons
        layers.append(nn.Linear(dim, n_output_dims, bias=False))
        self.layers = nn.Sequential(*layers)
        self.output_activation = _Activation("none" if output_activation is None else str(output_activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_activation(self.layers(x))


_MLP_OTYPES = ("VanillaMLP", "FullyFusedMLP", "SphereInitVanillaMLP")
_MLP_KEYS = ("otype", "activation", "output_activation", "n_neurons", "n_hidden_layers")
_SPHERE_INIT_KEYS = ("sphere_init_radius", "inside_out")  # SphereInitVanillaMLP (lift3d.networks.sphere_init_mlp)


def validate_mlp_config(config: Any) -> Dict[str, Any]:
    """Check a network config's otype and keys without building anything; returns it as a dict."""
    cfg = config_to_dict(config)
    otype = cfg.get("otype")
    check_otype("network", otype, _MLP_OTYPES)
    check_config_keys(f"network '{otype}'", cfg, _MLP_KEYS + (_SPHERE_INIT_KEYS if otype == "SphereInitVanillaMLP" else ()))
    return cfg


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any) -> VanillaMLP:
    """Build an MLP from a tcnn/threestudio network config (dict or DictConfig).

    Raises ``ConfigError`` for an unknown otype or key.
    """
    cfg = validate_mlp_config(config)
    if cfg.pop("otype") == "SphereInitVanillaMLP":
        from lift3d.networks.sphere_init_mlp import SphereInitVanillaMLP

        return SphereInitVanillaMLP(n_input_dims, n_output_dims, **cfg)
    return VanillaMLP(n_input_dims, n_output_dims, **cfg)
