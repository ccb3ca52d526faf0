"""`estimator: proposal`: a small proposal density network that says where the field's samples go
(mip-NeRF 360, Barron et al. 2022 §3; the idea of nerfacc's PropNetEstimator; docs/nerf_sampling.md).

Two levels per ray: `num_samples_per_ray_proposal` uniform intervals over the ray's segment get a
density from the proposal network (hash grid + MLP, `proposal_network_config`: threestudio's
`n_input_dims`, `n_output_dims`, `encoding_config`, `network_config`; σ = trunc_exp(raw − 1), zero
outside the cube); their weights ŵ are the pdf from which `num_samples_per_ray` + 1 edges are drawn
(`importance_sampling.sample_pdf`, both ends kept), and the field is shaded on those intervals only.

The proposal network does not get gradients from the images: it is trained to bound the field's
weights from above, by the interlevel ("proposal") loss of mip-NeRF 360 eq. 13,

    L_prop = mean over rays and fine intervals of  max(0, w_i − bound_i)² / (w_i + ε),
    bound_i = Σ ŵ_j over the proposal intervals j that overlap fine interval i,

with the field's weights w held fixed (detached), so L_prop moves the proposal network only. The
renderer returns it as `loss_proposal` on the steps the proposal is trained (`lift3d-system` adds it
with weight `lambda_proposal`, 1 by default, threestudio's loss scale); the network's parameters are
stepped by its own optimizer and scheduler (`prop_optimizer_config`, `prop_scheduler_config`,
threestudio's keys: {name, args} and {name, args | schedulers}), not by `system.optimizer`, right
after the backward pass (`step_own_optimizer`). It is trained on the steps threestudio trains it:
every step at first, then with growing gaps of up to 5 steps over the first 1000 steps.
Its optimizer/scheduler state and step counter are saved with the renderer (`get_extra_state`).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.networks.encodings import config_to_dict, get_encoding, validate_encoding_config
from lift3d.networks.mlp import get_mlp, trunc_exp, validate_mlp_config
from lift3d.renderers.importance_sampling import (
    midpoint_field, sample_pdf, stratified_levels, uniform_edges, weights_from_density,
)

# threestudio's prolificdreamer-propnet values, used when the config leaves a key out
DEFAULT_PROPOSAL_NETWORK = {
    "n_input_dims": 3,
    "n_output_dims": 1,
    "encoding_config": {"otype": "HashGrid", "n_levels": 5, "n_features_per_level": 2, "log2_hashmap_size": 17,
                        "base_resolution": 16, "per_level_scale": 1.681792830507429},
    "network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                       "n_neurons": 64, "n_hidden_layers": 1},
}
DEFAULT_PROP_OPTIMIZER = {"name": "Adam", "args": {"lr": 1.0e-2, "eps": 1.0e-15, "weight_decay": 1.0e-6}}
NETWORK_KEYS = ("n_input_dims", "n_output_dims", "encoding_config", "network_config")
# threestudio's schedule of proposal updates: the gap between two updates grows linearly to TARGET_GAP
# steps over the first GAP_RAMP_STEPS steps
TARGET_GAP, GAP_RAMP_STEPS = 5.0, 1000
LOSS_EPS = 1e-7  # ε of L_prop's 1 / (w + ε)


def _as_dict(cfg: Any) -> dict:
    return {} if cfg is None else config_to_dict(cfg)


def proposal_network_config(cfg: Any) -> dict:
    """The proposal network's config with threestudio's defaults for absent keys."""
    out = {**DEFAULT_PROPOSAL_NETWORK, **_as_dict(cfg)}
    return out


def validate_proposal_configs(network: Any, optimizer: Any, scheduler: Any, path: str) -> None:
    """ConfigError naming `<path>.<key>` for a proposal network / optimizer / scheduler config that
    cannot be built (checked before any work)."""
    from lift3d.systems.optim import _check_args, _check_scheduler_names, _optimizer_class

    net = proposal_network_config(network)
    unknown = [k for k in net if k not in NETWORK_KEYS]
    if unknown:
        raise ConfigError(f"{path}.proposal_network_config.{unknown[0]} is unknown: valid keys are {', '.join(NETWORK_KEYS)}.")
    if int(net["n_input_dims"]) != 3 or int(net["n_output_dims"]) != 1:
        raise ConfigError(f"{path}.proposal_network_config: the proposal network maps a 3D point to one density "
                          f"(n_input_dims: 3, n_output_dims: 1; got {net['n_input_dims']}, {net['n_output_dims']}).")
    validate_encoding_config(net["encoding_config"])
    validate_mlp_config(net["network_config"])
    opt = _as_dict(optimizer) or DEFAULT_PROP_OPTIMIZER
    try:
        cls = _optimizer_class(opt.get("name", "Adam"))
    except ConfigError:
        raise ConfigError(f"{path}.prop_optimizer_config.name '{opt.get('name')}' is not a torch.optim optimizer "
                          f"(e.g. Adam).") from None
    _check_args(cls, dict(opt.get("args") or {}), f"{path}.prop_optimizer_config.args")
    if scheduler:
        _check_scheduler_names(_as_dict(scheduler), f"{path}.prop_scheduler_config")


class ProposalDensity(nn.Module):
    """The proposal network: world points [N,3] → density [N] (hash grid + MLP on the point mapped
    from the cube [-radius, radius]^3 to [0,1]^3; trunc_exp(raw − 1); 0 outside the cube)."""

    def __init__(self, config: Any, radius: float) -> None:
        super().__init__()
        cfg = proposal_network_config(config)
        self.radius = float(radius)
        self.encoding = get_encoding(3, cfg["encoding_config"])
        self.network = get_mlp(self.encoding.n_output_dims, 1, cfg["network_config"])

    def forward(self, points: Tensor) -> Tensor:
        x = (points + self.radius) / (2.0 * self.radius)  # [N,3] in [0,1]^3 inside the cube
        inside = ((x > 0.0) & (x < 1.0)).all(dim=-1)  # [N]
        raw = self.network(self.encoding(x.clamp(0.0, 1.0)))[..., 0]  # [N]
        return trunc_exp(raw - 1.0) * inside.to(raw.dtype)


def interlevel_loss(fine_edges: Tensor, fine_weights: Tensor, prop_edges: Tensor, prop_weights: Tensor) -> Tensor:
    """mip-NeRF 360's proposal loss (eq. 13; see the module docstring) → scalar.

    fine_edges [R,K+1], fine_weights [R,K] (the field's, treated as constants), prop_edges [R,P+1],
    prop_weights [R,P] (differentiable). The bound of fine interval [a, b] is the proposal weight
    between the last proposal edge <= a and the first proposal edge >= b (every proposal interval
    that overlaps [a, b]), read off the proposal's cumulative weights."""
    w = fine_weights.detach()
    cum = torch.cat([torch.zeros_like(prop_weights[:, :1]), torch.cumsum(prop_weights, dim=-1)], dim=-1)  # [R,P+1]
    edges = prop_edges.detach().contiguous()
    last = edges.shape[-1] - 1
    starts, ends = fine_edges[:, :-1].detach().contiguous(), fine_edges[:, 1:].detach().contiguous()  # [R,K]
    lo = (torch.searchsorted(edges, starts, right=True) - 1).clamp(0, last)  # [R,K] last edge <= a
    hi = torch.searchsorted(edges, ends, right=False).clamp(0, last)  # [R,K] first edge >= b
    bound = cum.gather(-1, hi) - cum.gather(-1, lo)  # [R,K]
    return (torch.relu(w - bound) ** 2 / (w + LOSS_EPS)).mean()


class ProposalSampler(nn.Module):
    """The proposal network with its own optimizer and scheduler (module docstring)."""

    steps_own_parameters = True  # lift3d.systems.optim leaves these parameters out of system.optimizer

    def __init__(self, network_config: Any, optimizer_config: Any, scheduler_config: Any, radius: float) -> None:
        super().__init__()
        from lift3d.systems.optim import _make_scheduler, make_optimizer

        self.density = ProposalDensity(network_config, radius)
        self.optimizer = make_optimizer(self.density, _as_dict(optimizer_config) or DEFAULT_PROP_OPTIMIZER)  # one group
        self.scheduler = _make_scheduler(_as_dict(scheduler_config), self.optimizer) if scheduler_config else None
        self.steps_since_update = 0  # threestudio's counter of steps since the last proposal update
        self.train_now = False  # this training step trains the proposal network
        self._level: Optional[tuple[Tensor, Tensor]] = None  # (edges [R,P+1], weights [R,P]) of this step

    # ------------------------------------------------------------------ schedule
    def update_step(self, global_step: int) -> None:
        """Decide whether this training step trains the proposal (threestudio's schedule: a step trains it
        when more steps than min(step / 1000, 1) · 5 passed since the last one that did)."""
        gap = min(global_step / GAP_RAMP_STEPS, 1.0) * TARGET_GAP
        self.train_now = self.steps_since_update > gap
        if self.train_now:
            self.steps_since_update = 0
        self.steps_since_update += 1

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        rays_o: Tensor,  # [R,3]
        rays_d: Tensor,  # [R,3]
        t_near: Tensor,  # [R]
        t_far: Tensor,  # [R]
        n_proposal: int,
        n_fine: int,
        stratified: bool,
        chunk: int = 1 << 18,
    ) -> Tensor:
        """Edges [R, n_fine + 1] of the intervals to shade, drawn from the proposal's weights (both ends
        of the segment kept). In a training step that trains the proposal, its level (edges, weights
        with their graph) is kept for `loss`."""
        edges = uniform_edges(t_near, t_far, n_proposal, stratified)  # [R,P+1]
        keep = self.training and self.train_now and torch.is_grad_enabled()
        with torch.set_grad_enabled(keep):
            sigma = midpoint_field(rays_o, rays_d, self.density, chunk)(edges[:, :-1], edges[:, 1:])  # [R,P]
            weights, _ = weights_from_density(edges, sigma)  # [R,P]
        self._level = (edges, weights) if keep else None
        u = stratified_levels(edges.shape[0], n_fine + 1, stratified, edges.device, edges.dtype)  # [R,K+1]
        return sample_pdf(edges, weights, u)

    def loss(self, fine_edges: Tensor, fine_weights: Tensor) -> Optional[Tensor]:
        """L_prop of this step's proposal level against the field's weights fine_weights [R,K] on
        fine_edges [R,K+1]; None when this step does not train the proposal."""
        if self._level is None:
            return None
        prop_edges, prop_weights = self._level
        self._level = None
        return interlevel_loss(fine_edges, fine_weights, prop_edges, prop_weights)

    # ------------------------------------------------------------------ its own optimizer
    def step_own_optimizer(self, grad_scale: float = 1.0) -> bool:
        """One step of the proposal optimizer (and scheduler) with the gradients the backward pass left
        (divided by `grad_scale`, a mixed-precision loss scale); none, or a gradient that is not finite
        (a scaled step that overflowed): no step. Gradients are cleared either way. Returns whether it stepped."""
        params = [p for p in self.density.parameters() if p.grad is not None]
        stepped = False
        if params:
            if grad_scale != 1.0:
                for p in params:
                    p.grad.div_(grad_scale)
            if bool(torch.isfinite(torch.stack([p.grad.detach().abs().sum() for p in params])).all()):
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        return stepped

    def get_extra_state(self) -> dict:
        return {"steps_since_update": self.steps_since_update, "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.steps_since_update = int(state.get("steps_since_update", 0))
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


__all__ = ["DEFAULT_PROPOSAL_NETWORK", "ProposalDensity", "ProposalSampler", "interlevel_loss",
           "proposal_network_config", "validate_proposal_configs"]
