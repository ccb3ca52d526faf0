"""threestudio's NeRF samplers and Neuralangelo's progressive normal step (docs/nerf_sampling.md):
inverse-CDF sampling against a known distribution, importance-sampled rendering against a dense
reference, the proposal (interlevel) loss and the proposal network's own optimizer, the progressive
finite-difference step, and the threestudio configs that use them, verbatim end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.registry import find
from lift3d.renderers.importance_sampling import (
    cell_levels, importance_edges, ray_segment, sample_pdf, uniform_edges, weights_from_density,
)
from lift3d.renderers.proposal_network import interlevel_loss
from tests.test_renderers import SphereOfConstantDensity, camera_rays

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny tensors: one thread is fastest

# ------------------------------------------------------------------ inverse-CDF sampling
def test_sample_pdf_reproduces_a_piecewise_constant_distribution():
    edges = torch.linspace(0.0, 2.0, 9).expand(3, 9)  # 8 bins of width 0.25 on [0, 2]
    weights = torch.zeros(3, 8)
    weights[:, 2], weights[:, 5] = 3.0, 1.0  # unnormalised: mass 3/4 on [0.5, 0.75], 1/4 on [1.25, 1.5]
    weights[1] *= 0.01  # the scale of the weights does not matter (a ray with little opacity)
    torch.manual_seed(0)
    t = sample_pdf(edges, weights, cell_levels(3, 4000, True, edges.device))  # [3,4000]
    assert torch.all(t[:, 1:] >= t[:, :-1])  # sorted along the ray
    in_first = ((t >= 0.5) & (t <= 0.75)).float().mean(-1)
    in_second = ((t >= 1.25) & (t <= 1.5)).float().mean(-1)
    assert torch.allclose(in_first, torch.full((3,), 0.75), atol=0.01)
    assert torch.allclose(in_second, torch.full((3,), 0.25), atol=0.01)
    # the empirical CDF is the piecewise-linear CDF of the weights (uniform inside each bin)
    for x, cdf in ((0.625, 0.375), (0.75, 0.75), (1.375, 0.875), (1.5, 1.0)):
        assert float((t[0] <= x).float().mean()) == pytest.approx(cdf, abs=0.01)
    # deterministic levels (evaluation): cell centres map through the CDF exactly
    t_det = sample_pdf(edges[:1], weights[:1], cell_levels(1, 4, False, edges.device))[0]
    assert torch.allclose(t_det, torch.tensor([0.5 + 0.25 / 6, 0.5 + 0.25 / 2, 0.5 + 0.25 * 5 / 6, 1.375]), atol=1e-3)


def test_sample_pdf_of_an_empty_ray_is_uniform():
    edges = torch.linspace(0.0, 1.0, 5)[None]
    t = sample_pdf(edges, torch.zeros(1, 4), cell_levels(1, 8, False, edges.device))[0]
    assert torch.allclose(t, (torch.arange(8) + 0.5) / 8, atol=1e-4)


# ------------------------------------------------------------------ importance-sampled rendering
def soft_ball_density(points: torch.Tensor, sigma: float = 200.0, sharpness: float = 0.005) -> torch.Tensor:
    """σ inside a ball of radius 0.5 with a soft boundary ~0.005 thick → [N]."""
    return sigma * torch.sigmoid((0.5 - points.norm(dim=-1)) / sharpness)


def _render_dense(o, d, edges):
    mid = (edges[:, :-1] + edges[:, 1:]) * 0.5  # [R,K]
    weights, _ = weights_from_density(edges, soft_ball_density(o[:, None] + d[:, None] * mid[..., None]))
    return weights.sum(-1), (weights * mid).sum(-1)  # opacity [R], depth [R]


def test_importance_sampling_renders_a_ball_like_a_dense_reference_with_far_fewer_samples():
    torch.manual_seed(0)
    xy = (torch.rand(300, 2) * 2 - 1) * 0.6  # some rays miss the ball, some graze it
    o = torch.cat([xy, torch.full((300, 1), -3.0)], -1)
    d = torch.tensor([0.0, 0.0, 1.0]).expand(300, 3)
    t_near, t_far = ray_segment(o, d, 1.0, 0.1, 6.0)
    assert torch.allclose(t_near, torch.full((300,), 2.0)) and torch.allclose(t_far, torch.full((300,), 4.0))
    ref_opacity, ref_depth = _render_dense(o, d, uniform_edges(t_near, t_far, 20000, False))

    def density(t_starts, t_ends):
        mid = (t_starts + t_ends) * 0.5
        return soft_ball_density(o[:, None] + d[:, None] * mid[..., None])

    edges = importance_edges(t_near, t_far, density, 16, 16, stratified=False)  # 32 intervals per ray
    assert edges.shape == (300, 33)
    opacity, depth = _render_dense(o, d, edges)
    coarse_opacity, coarse_depth = _render_dense(o, d, uniform_edges(t_near, t_far, 16, False))
    err = (depth - ref_depth).abs().mean()
    assert (opacity - ref_opacity).abs().max() < 0.01
    assert err < 0.004  # 32 samples per ray against 20000
    assert err < 0.3 * (coarse_depth - ref_depth).abs().mean()  # the drawn samples did the work


class SoftBall(SphereOfConstantDensity):
    """soft_ball_density as a geometry (colour (0.2, 0.4, 0.6), as test_renderers' sphere)."""

    def forward_field(self, points):
        return soft_ball_density(points)[:, None]


def _renderer(cfg):
    return find("nerf-volume-renderer")(cfg, geometry=SoftBall({"radius": 1.0}),
                                        material=find("no-material")(),
                                        background=find("solid-color-background")({"color": [1.0, 1.0, 1.0]}))


def _rays(n=12):
    return camera_rays(H=n, W=n, distance=2.0, fovy_deg=40.0)


def test_importance_estimator_of_the_renderer_matches_a_dense_reference():
    rays = _rays()
    importance = _renderer({"estimator": "importance", "num_samples_per_ray": 16, "num_samples_per_ray_importance": 16,
                            "near_plane": 0.1, "far_plane": 4.0, "eval_max_samples": 1000}).eval()  # runs of 31 rays
    with torch.no_grad():
        out = importance(**rays)
    o, d = rays["rays_o"].reshape(-1, 3), rays["rays_d"].reshape(-1, 3)
    t_near, t_far = ray_segment(o, d, 1.0, 0.1, 4.0)
    ref_opacity, ref_depth = _render_dense(o, d, uniform_edges(t_near, t_far, 8000, False))  # [144] each
    opacity = out["opacity"].reshape(-1)
    assert 0.2 < float((ref_opacity > 0.5).float().mean()) < 0.8  # the ball fills part of the view
    assert (opacity - ref_opacity).abs().max() < 0.01
    expected_rgb = torch.tensor([0.2, 0.4, 0.6]) * ref_opacity[:, None] + (1.0 - ref_opacity[:, None])  # white bg
    assert (out["comp_rgb"].reshape(-1, 3) - expected_rgb).abs().max() < 0.01
    assert (out["depth"].reshape(-1) - ref_depth).abs().mean() < 0.004


# ------------------------------------------------------------------ proposal network
def test_proposal_loss_is_zero_when_the_histogram_bounds_the_weights_and_positive_otherwise():
    fine_edges = torch.tensor([[0.0, 0.1, 0.3, 0.45, 0.6, 1.0]])  # 5 fine intervals
    fine_w = torch.tensor([[0.0, 0.2, 0.5, 0.2, 0.1]])
    prop_edges = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])  # 4 proposal intervals
    # bounds: [0.3, 0.45] overlaps proposal [0.25, 0.5] only; [0.45, 0.6] overlaps [0.25,0.5] and [0.5,0.75]
    bounding = torch.tensor([[0.2, 0.5, 0.1, 0.1]], requires_grad=True)
    assert interlevel_loss(fine_edges, fine_w, prop_edges, bounding).item() == 0.0
    short = torch.tensor([[0.2, 0.4, 0.1, 0.1]], requires_grad=True)  # 0.4 < 0.5 under fine interval 3
    loss = interlevel_loss(fine_edges, fine_w, prop_edges, short)
    assert loss.item() == pytest.approx((0.5 - 0.4) ** 2 / 0.5 / 5, rel=1e-4)  # mean over the 5 intervals
    loss.backward()  # the proposal weight under the short interval is pushed up, nothing else moves
    assert short.grad[0, 1] < 0 and torch.all(short.grad[0, [0, 2, 3]] == 0)


def test_proposal_network_trains_with_its_own_optimizer_not_the_systems():
    from lift3d.systems.optim import parameter_groups

    torch.manual_seed(0)
    cfg = {"estimator": "proposal", "num_samples_per_ray": 16, "num_samples_per_ray_proposal": 24, "near_plane": 0.1,
           "far_plane": 4.0, "prop_scheduler_config": {"name": "ChainedScheduler", "schedulers": [
               {"name": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 10}}]},
           "proposal_network_config": {"encoding_config": {"otype": "HashGrid", "n_levels": 3, "log2_hashmap_size": 10,
                                                           "base_resolution": 8, "per_level_scale": 2.0}}}
    renderer = _renderer(cfg).train()
    rays = _rays(8)
    prop = renderer.proposal
    assert prop.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)  # prop_scheduler_config's warm-up
    losses, trained_steps = [], []
    for step in range(40):
        renderer.update_step(0, step)
        out = renderer(**rays)
        assert out["weights"].shape[0] == 64 * 16  # num_samples_per_ray intervals per ray
        if "loss_proposal" in out:
            out["loss_proposal"].backward()
            assert prop.step_own_optimizer()
            losses.append(out["loss_proposal"].item())
            trained_steps.append(step)
    assert trained_steps == list(range(1, 40))  # threestudio's schedule: every step at first (not step 0)
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]  # the proposal learned to bound the ball's weights
    # later the gap grows: from step 1000 on, one step in 6 trains the proposal
    trains = []
    for step in range(40, 1200):
        prop.update_step(step)
        trains.append(prop.train_now)
    assert sum(trains[-120:]) == 20 and 400 < sum(trains) < 500
    # the system's optimizer leaves the proposal network to its own (module with steps_own_parameters)
    system = torch.nn.Module()
    system.renderer = renderer
    system.extra = torch.nn.Linear(2, 2)
    in_system = {id(p) for g in parameter_groups(system, None) for p in g["params"]}
    assert in_system == {id(p) for p in system.extra.parameters()}
    # its optimizer state travels with the renderer's state dict
    again = _renderer(cfg)
    again.load_state_dict(renderer.state_dict())
    assert again.proposal.steps_since_update == prop.steps_since_update
    assert again.proposal.optimizer.state_dict()["state"].keys() == prop.optimizer.state_dict()["state"].keys()


# ------------------------------------------------------------------ progressive finite-difference step
@pytest.mark.parametrize("geometry_type", ["implicit-sdf", "implicit-volume"])
def test_progressive_eps_is_the_finest_active_cell(geometry_type):
    encoding = {"otype": "ProgressiveBandHashGrid", "n_levels": 6, "n_features_per_level": 2, "log2_hashmap_size": 10,
                "base_resolution": 16, "per_level_scale": 1.5, "start_level": 2, "start_step": 100, "update_steps": 50}
    geometry = find(geometry_type)({"radius": 2.0, "finite_difference_normal_eps": "progressive",
                                    "pos_encoding_config": encoding})
    from lift3d.geometry.finite_difference_eps import finite_difference_eps

    # step -> active levels: 2 + (step - 100) // 50 from step 100 (3 at 150, 5 at 260), at most 6
    for step, levels in ((0, 2), (149, 2), (150, 3), (260, 5), (10_000, 6)):
        geometry.do_update_step(0, step)
        eps = finite_difference_eps("progressive", geometry.encoding, 2.0)
        assert eps == pytest.approx(2 * 2.0 / (16 * 1.5 ** (levels - 1)))
    # the normals are central differences with that step (checked on the x axis)
    points = torch.rand(5, 3) - 0.5
    with torch.no_grad():
        normal = geometry(points, output_normal=True)["normal"]
        step = torch.tensor([eps, 0.0, 0.0])
        dx = (geometry.forward_field(points + step) - geometry.forward_field(points - step))[:, 0] / (2 * eps)
        grad = torch.stack([dx] + [(geometry.forward_field(points + e) - geometry.forward_field(points - e))[:, 0]
                                   / (2 * eps) for e in (torch.tensor([0.0, eps, 0.0]), torch.tensor([0.0, 0.0, eps]))], -1)
    sign = 1.0 if geometry_type == "implicit-sdf" else -1.0  # a density's normal points down its gradient
    assert torch.allclose(normal, sign * torch.nn.functional.normalize(grad, dim=-1), atol=1e-5)


def test_progressive_eps_needs_a_progressive_hash_grid():
    from lift3d.errors import ConfigError

    cls = find("implicit-sdf")
    cfg = OmegaConf.structured(cls.Config(finite_difference_normal_eps="progressive"))
    with pytest.raises(ConfigError, match="pos_encoding_config.otype is 'HashGrid'"):
        cls.validate_config(cfg, "system.geometry")
    with pytest.raises(ConfigError, match="give a number > 0"):
        cls.validate_config(OmegaConf.structured(cls.Config(finite_difference_normal_eps="fine")), "system.geometry")


# ------------------------------------------------------------------ the configs that use them, verbatim
# threestudio's files, comments removed (tests/data/threestudio_style/README.md): configs/experimental/ and
# configs/gradio/textmesh-if.yaml
CONFIGS = ["prolificdreamer-importance", "prolificdreamer-neus-importance", "prolificdreamer-propnet",
           "textmesh-if-importance", "gradio-textmesh-if"]
COPIES = Path(__file__).parent / "data" / "threestudio_style"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_sd_path):
    from lift3d.models.tiny_factory import make_tiny_deepfloyd_if
    from tools.config_compat_table import TinyModels, make_inputs

    folder = tmp_path_factory.mktemp("nerf-sampling-inputs")
    make_tiny_deepfloyd_if(folder / "if", seed=0)
    return TinyModels(sd=str(tiny_sd_path), zero123="unused", deepfloyd_if=str(folder / "if"), image=make_inputs(folder))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_threestudio_sampling_configs_run_verbatim(name, tiny_models, tmp_path, one_torch_thread):
    from tools.config_compat_table import run_config

    path = COPIES / f"{name}.yaml"
    row = run_config(path, tiny_models, tmp_path)
    assert row.outcome == "runs", row.detail
    parsed = OmegaConf.load(row.trial / "configs/parsed.yaml").system
    raw = OmegaConf.load(path).system
    assert parsed.renderer.get("estimator", "occgrid") == raw.renderer.get("estimator", "occgrid")
    key = "finite_difference_normal_eps"
    assert parsed.geometry.get(key) == raw.geometry.get(key)  # the saved config is the verbatim one
    assert list((row.trial / "save").glob("it2-export/*.obj")) and (row.trial / "save/it2-test.mp4").is_file()
    if raw.renderer.get("estimator") == "proposal":
        import csv

        with open(row.trial / "csv_logs/metrics.csv") as fp:
            logged = [float(r["train/loss_proposal"]) for r in csv.DictReader(fp) if r.get("train/loss_proposal")]
        assert logged and all(v >= 0 for v in logged)  # step 1 trains the proposal (threestudio's schedule)
