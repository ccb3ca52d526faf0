"""Issue #24: every evaluation within a point budget, with the same result as the whole computation.

Each test runs a small case twice — bounded by a budget far smaller than the case, and whole — and
checks both that the results agree and that no single field evaluation exceeded the budget.
"""
from __future__ import annotations

import math
import random
from typing import Optional

import pytest
import torch

from lift3d.data.cameras import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
from lift3d.registry import find

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 8, "per_level_scale": 1.5}


class PointCounter:
    """Wraps a module's method and records the number of points of every call."""

    def __init__(self, obj, name: str):
        self.sizes: list[int] = []
        original = getattr(obj, name)

        def wrapped(points, *args, **kwargs):
            self.sizes.append(int(points.reshape(-1, points.shape[-1]).shape[0]))
            return original(points, *args, **kwargs)

        setattr(obj, name, wrapped)


def frame(H=24, W=20, distance=2.2, elevation=20.0, azimuth=30.0):
    pos = spherical_to_cartesian(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]))
    c2w = look_at_c2w(pos)
    dirs = get_ray_directions(H, W, 0.5 * H / math.tan(math.radians(40.0) / 2))
    rays_o, rays_d = get_rays(dirs, c2w)
    return {"rays_o": rays_o, "rays_d": rays_d, "light_positions": pos}


def volume_renderer(extra=None, geometry="implicit-volume", renderer="nerf-volume-renderer", geo_cfg=None):
    torch.manual_seed(0)
    geo = find(geometry)({"radius": 1.0, "pos_encoding_config": SMALL_GRID, **(geo_cfg or {})})
    with torch.no_grad():  # a field with structure: random hash-grid features well above init scale
        for p in geo.parameters():
            if p.dim() == 1 and p.numel() > 1000:
                p.uniform_(-1.0, 1.0)
    material = find("diffuse-with-point-light-material")({})
    background = find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    cfg = {"num_samples_per_ray": 64, "grid_prune": False, **(extra or {})}
    r = find(renderer)(cfg, geometry=geo, material=material, background=background)
    for module in (geo, material, background, r):  # the components are the system's modules, not the renderer's
        module.eval()
    return r


def whole_and_bounded(renderer, batch, budget):
    """The image keys of one unchunked pass (every ray and sample at once) and of the bounded path."""
    o, d = batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3)
    lights = batch["light_positions"].expand(o.shape[0], 3)
    with torch.no_grad():
        whole = renderer._render_rays(o, d, lights)
        renderer.cfg.eval_max_samples = budget
        counter = PointCounter(renderer.geometry, "forward")
        bounded = renderer(**batch)
    return whole, bounded, counter.sizes


@pytest.mark.parametrize("alpha_prune", [True, False])
def test_nerf_evaluation_is_bounded_by_samples_and_matches_the_whole_frame(alpha_prune):
    renderer = volume_renderer({"prune_alpha_threshold": alpha_prune})
    batch = frame()
    budget = 700  # the frame keeps thousands of samples: many chunks, cut at ray boundaries
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget)
    assert len(sizes) > 3 and max(sizes) <= budget  # shaded in sample chunks, none over the budget
    n_samples = renderer._march(batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3))[0].numel()
    assert sum(sizes) == n_samples  # every kept sample shaded exactly once
    H, W = batch["rays_o"].shape[1:3]
    for key in ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal"):
        assert bounded[key].shape[1:3] == (H, W)
        ref = whole[key].reshape(bounded[key].shape)
        assert torch.allclose(bounded[key], ref, atol=2e-5, rtol=1e-5), (key, (bounded[key] - ref).abs().max())
    assert float(whole["opacity"].max()) > 0.5 and float(whole["opacity"].min()) < 0.1  # a real picture


def test_nerf_bounded_marching_groups_and_a_ray_longer_than_the_budget():
    """A budget below one ray's samples: each ray alone; the marching groups are bounded too."""
    renderer = volume_renderer({"prune_alpha_threshold": False, "eval_march_factor": 1, "eval_chunk_size": 7})
    batch = frame(H=6, W=5)
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget=10)
    per_ray = renderer._candidate_counts(batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3))
    assert int(per_ray.max()) > 10 and max(sizes) <= int(per_ray.max())  # a run holds one long ray
    for key in ("comp_rgb_fg", "opacity", "depth"):
        assert torch.allclose(bounded[key], whole[key].reshape(bounded[key].shape), atol=2e-5)


def test_nerf_frame_without_samples_gives_the_background():
    renderer = volume_renderer()
    batch = frame(distance=5.0)
    batch["rays_d"] = -batch["rays_d"]  # looking away from the box: no ray has a sample
    with torch.no_grad():
        out = renderer(**batch)
    assert float(out["opacity"].abs().max()) == 0.0 and torch.equal(out["comp_rgb"], torch.ones_like(out["comp_rgb"]))


def test_neus_evaluation_is_bounded_by_samples_and_matches_the_whole_frame():
    renderer = volume_renderer(geometry="implicit-sdf", renderer="neus-volume-renderer",
                               geo_cfg={"sdf_bias": "sphere", "sdf_bias_params": 0.5}, extra={"learned_variance_init": 0.4})
    batch = frame()
    whole, bounded, sizes = whole_and_bounded(renderer, batch, budget=500)
    assert len(sizes) > 3 and max(sizes) <= 500
    for key in ("comp_rgb_fg", "opacity", "depth", "comp_normal"):
        ref = whole[key].reshape(bounded[key].shape)
        assert torch.allclose(bounded[key], ref, atol=2e-5, rtol=1e-5), (key, (bounded[key] - ref).abs().max())
    assert float(whole["opacity"].max()) > 0.5


def test_patch_renderer_evaluation_uses_the_bounded_base_renderer():
    torch.manual_seed(0)
    geo = find("implicit-volume")({"radius": 1.0, "pos_encoding_config": SMALL_GRID})
    material = find("no-material")()
    background = find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    r = find("patch-renderer")({"patch_size": 8, "base_renderer": {"num_samples_per_ray": 64, "eval_max_samples": 600}},
                               geometry=geo, material=material, background=background).eval()
    counter = PointCounter(geo, "forward")
    with torch.no_grad():
        out = r(**frame())
    assert len(counter.sizes) > 3 and max(counter.sizes) <= 600 and out["comp_rgb"].shape == (1, 24, 20, 3)


# ------------------------------------------------------------------ the pre-flight check (launch.py)
AUDIT_LAUNCH = r"""
import runpy, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.append(args[0])
sys.addaudithook(hook)
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path("launch.py", run_name="__main__")
finally:
    print("OPENED " + "|".join(opened))
"""


def launch_with_audit(args, env_extra, timeout=300):
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    return subprocess.run([sys.executable, "-c", AUDIT_LAUNCH, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def corrupt_tiny_sd(tmp_path):
    """A tiny SD folder whose weight files are garbage: loading any of them would fail loudly."""
    from lift3d.models.tiny_factory import make_tiny_sd

    folder = make_tiny_sd(tmp_path / "tiny-sd-corrupt", seed=0)
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")]
    assert weights
    for p in weights:
        p.write_bytes(b"not a weight file")
    return folder


def test_launch_refuses_a_run_over_the_free_memory_before_loading_or_writing(tmp_path, corrupt_tiny_sd):
    root = tmp_path / "out"
    args = ["--config", "custom/usd/configs/usd-text-to-3D-patch.yaml", "--train", f"exp_root_dir={root}",
            "system.prompt_processor.prompt=a red car", f"system.prompt_processor.cache_dir={tmp_path / 'cache'}",
            f"system.prompt_processor.pretrained_model_name_or_path={corrupt_tiny_sd}",
            f"system.guidance.pretrained_model_name_or_path={corrupt_tiny_sd}", "trainer.enable_progress_bar=false"]
    proc = launch_with_audit(args, {"LIFT3D_FREE_MEMORY": "300M"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = [line for line in proc.stderr.splitlines() if line.startswith("lift3d: error:")]
    assert len(message) == 1, proc.stderr[-2000:]
    assert "estimated peak memory" in message[0] and "exceeds the 300 MB free (LIFT3D_FREE_MEMORY)" in message[0]
    assert "system.renderer.base_renderer.eval_max_samples" in message[0] and "memory_check=false" in message[0]
    assert "lift3d: memory estimate: peak" in proc.stdout  # printed at the start of the run
    opened = proc.stdout.split("OPENED ")[-1].split("|")
    assert not [p for p in opened if str(corrupt_tiny_sd) in p and p.endswith((".safetensors", ".bin"))]
    assert not root.exists()  # no trial folder, no config dump

    # memory_check=false: the same command goes past the check (and then fails on the corrupt weights)
    proc = launch_with_audit([*args, "memory_check=false"], {"LIFT3D_FREE_MEMORY": "300M"})
    assert "lift3d: memory estimate: peak" in proc.stdout and "estimated peak memory" not in proc.stderr
    assert proc.returncode != 0


def test_estimate_of_an_evaluation_view_is_bounded_by_the_sample_budget():
    from lift3d.config import load_config
    from lift3d.memory_check import EVAL_SAMPLE_BASE, EVAL_SAMPLE_PER_LEVEL, PER_RAY_EVAL, estimate, parse_bytes, pop_switch

    def est(size, budget=None):
        extra = [f"data.random_camera.eval_width={size}", f"data.random_camera.eval_height={size}"]
        if budget:
            extra.append(f"system.renderer.base_renderer.eval_max_samples={budget}")
        return estimate(load_config("custom/usd/configs/usd-patch.yaml", cli_args=extra))

    small, large = est(256), est(512)
    per_sample = EVAL_SAMPLE_BASE + EVAL_SAMPLE_PER_LEVEL * 16
    assert small.eval_view == (1 << 18) * per_sample + 256 * 256 * PER_RAY_EVAL  # the budget, not the frame
    assert large.eval_view - small.eval_view == (512 * 512 - 256 * 256) * PER_RAY_EVAL
    assert est(512, budget=1 << 16).eval_view == (1 << 16) * per_sample + 512 * 512 * PER_RAY_EVAL
    assert est(4).eval_view == 16 * 513 * per_sample + 16 * PER_RAY_EVAL  # a frame below the budget
    assert large.peak == large.baseline + large.weights + large.params + max(large.train_step, large.eval_view)
    assert parse_bytes("1.5G") == 3 * 2**29 and parse_bytes("512M") == 512 * 2**20 and parse_bytes("1000") == 1000
    assert pop_switch(["a=1", "memory_check=false"]) == (False, ["a=1"])
    from lift3d.errors import ConfigError

    with pytest.raises(ConfigError, match="memory_check=true or memory_check=false"):
        pop_switch(["memory_check=maybe"])


# ------------------------------------------------------------------ isosurfaces, DMTet, rasterizer, baking, export
def random_field(geometry: str, **cfg):
    torch.manual_seed(0)
    geo = find(geometry)({"radius": 1.0, "pos_encoding_config": SMALL_GRID, **cfg})
    with torch.no_grad():
        for p in geo.parameters():
            if p.dim() == 1 and p.numel() > 1000:
                p.uniform_(-1.0, 1.0)
    return geo.eval()


def test_marching_cubes_isosurface_in_chunks_matches_the_whole_grid():
    geo = random_field("implicit-volume", isosurface_resolution=40, isosurface_threshold=8.0,
                       isosurface_remove_outliers=False)
    counter = PointCounter(geo, "forward_field")
    chunked = geo.isosurface()  # default isosurface_chunk
    geo.cfg.isosurface_chunk = 997
    small = geo.isosurface()
    assert max(counter.sizes[len(counter.sizes) - 65:]) <= 997 and len(counter.sizes) > 60
    geo.cfg.isosurface_chunk = 0  # whole
    whole = geo.isosurface()
    assert whole.n_faces > 100
    for mesh in (chunked, small):
        assert torch.equal(mesh.t_pos_idx, whole.t_pos_idx) and torch.allclose(mesh.v_pos, whole.v_pos, atol=1e-6)
    # the grid itself: the lattice over the bbox, both corners included
    field = geo.grid_field(5, chunk=7)
    lin = torch.linspace(-1.0, 1.0, 5)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    assert torch.allclose(field.reshape(-1), geo.forward_field(pts).reshape(-1), atol=1e-5)


def test_marching_tets_scan_in_chunks_and_sdf_mt_isosurface_in_chunks_match_the_whole():
    from lift3d.ops.marching_tets import marching_tets
    from lift3d.ops.tet_grid import make_tet_grid

    verts, tets = make_tet_grid(12, scale=2.0)
    sdf = verts.norm(dim=-1) - 0.6 + 0.05 * torch.sin(7 * verts[:, 0])
    v_whole, f_whole = marching_tets(verts, sdf, tets)
    v_chunk, f_chunk = marching_tets(verts, sdf, tets, chunk=101)
    assert f_whole.shape[0] > 200 and torch.equal(f_chunk, f_whole) and torch.equal(v_chunk, v_whole)

    geo = random_field("implicit-sdf", sdf_bias="sphere", sdf_bias_params=0.5, isosurface_resolution=20,
                       isosurface_deformable_grid=True, isosurface_chunk=333)
    counter = PointCounter(geo, "_sdf_and_encoding")
    with torch.no_grad():
        chunked = geo.isosurface()
    assert len(counter.sizes) > 20 and max(counter.sizes) <= 333
    whole = geo.isosurface()  # grad enabled: one graph over the grid, as training uses it
    assert counter.sizes[-1] == 21**3 and whole.n_faces > 100
    assert torch.equal(chunked.t_pos_idx, whole.t_pos_idx) and torch.allclose(chunked.v_pos, whole.v_pos.detach(), atol=1e-5)


def test_dmtet_conversion_queries_the_source_field_in_chunks():
    from lift3d.geometry.tetrahedra_sdf_grid import query_field

    geo = random_field("implicit-volume")
    points = torch.rand(5000, 3) * 2 - 1
    counter = PointCounter(geo, "forward_field")
    chunked = query_field(geo, points, chunk=600)
    assert max(counter.sizes) <= 600 and len(counter.sizes) == 9
    with torch.no_grad():
        whole = geo.forward_field(points).reshape(-1)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_rasterizer_evaluation_shades_in_chunks_and_matches_the_whole():
    from lift3d.data.cameras import get_mvp_matrix, get_projection_matrix

    torch.manual_seed(0)
    geo = find("tetrahedra-sdf-grid")({"radius": 1.0, "isosurface_resolution": 12, "pos_encoding_config": SMALL_GRID,
                                        "shape_init": "sphere", "shape_init_params": 0.5})
    geo.initialize_shape()
    with torch.no_grad():
        for p in geo.parameters():
            if p.dim() == 1 and p.numel() > 1000:
                p.uniform_(-1.0, 1.0)
    material = find("diffuse-with-point-light-material")({})
    background = find("solid-color-background")({"color": [0.0, 0.0, 0.0]})
    r = find("mesh-rasterizer")({"eval_max_samples": 150}, geometry=geo, material=material, background=background)
    for module in (geo, material, background, r):
        module.eval()
    pos = spherical_to_cartesian(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]))
    c2w = look_at_c2w(pos)
    mvp = get_mvp_matrix(c2w, get_projection_matrix(torch.tensor([math.radians(40.0)]), 1.0, 0.1, 100.0))
    batch = {"mvp_mtx": mvp, "camera_positions": pos, "light_positions": pos, "height": 32, "width": 32}
    counter = PointCounter(geo, "forward")
    with torch.no_grad():
        bounded = r(**batch)
        r.cfg.eval_max_samples = 10**9
        whole = r(**batch)
    covered = int((whole["opacity"] > 0).sum())
    assert covered > 200 and len(counter.sizes) >= 3 and max(counter.sizes[:-1]) <= 150 and counter.sizes[-1] >= covered - 50
    for key in ("comp_rgb", "comp_rgb_fg", "opacity", "comp_normal"):
        assert torch.allclose(bounded[key], whole[key], atol=1e-6), key


def test_texture_baking_and_vertex_colours_in_chunks_match_the_whole():
    import trimesh

    from lift3d.export.texture_baking import bake_texture
    from lift3d.mesh import Mesh

    s = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh = Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.long))
    mesh.unwrap_uv({}, {}, reindex=True)
    sizes: list[int] = []

    def query(p):
        sizes.append(p.shape[0])
        return torch.stack([torch.sin(5 * p[:, 0]), p[:, 1] * p[:, 2], p.norm(dim=-1)], -1)

    chunked, covered = bake_texture(mesh, query, size=128, dilate=2, chunk=1000)
    assert len(sizes) > 3 and max(sizes) <= 1000
    whole, covered_whole = bake_texture(mesh, query, size=128, dilate=2, chunk=10**9)
    assert torch.equal(covered, covered_whole) and int(covered.sum()) > 3000 and torch.equal(chunked, whole)

    geo = random_field("implicit-volume")
    exp = find("mesh-exporter")({"chunk_size": 100}, geometry=geo, material=find("no-material")({}),
                                background=find("solid-color-background")({}))
    counter = PointCounter(geo, "export")
    v = torch.rand(1234, 3) - 0.5
    colours = exp.vertex_colors(v)
    assert max(counter.sizes) <= 100 and len(counter.sizes) == 13
    exp.cfg.chunk_size = 10**9
    assert torch.allclose(colours, exp.vertex_colors(v), atol=1e-6)


def _train_render(checkpoint_samples: int, patch: bool, calls: Optional[list] = None):
    """One training render (stratified sampling, normals for the diffuse material) and its gradients;
    `calls` collects, per geometry call, whether it came during the backward pass (a recomputation)."""
    base = {"num_samples_per_ray": 64, "grid_prune": False, "checkpoint_samples": checkpoint_samples}
    r = volume_renderer(base)
    if patch:  # usd-patch's renderer: a low-resolution frame plus one full-resolution patch
        r = find("patch-renderer")({"patch_size": 8, "global_downsample": 2, "base_renderer": base},
                                   geometry=r.geometry, material=r.material, background=r.background)
    for module in (r, r.geometry, r.material, r.background):
        module.train()
    if calls is not None:
        phase = ["forward"]
        plain = r.geometry.forward
        r.geometry.forward = lambda *a, **k: calls.append(phase[0]) or plain(*a, **k)
    torch.manual_seed(1)  # the stratified offsets and the patch position
    random.seed(1)  # the diffuse material's shading choice
    out = r(**frame())
    loss = (out["comp_rgb"] * torch.linspace(0, 1, 3)).sum() + out["opacity"].square().sum() + out["weights"].sum()
    if calls is not None:
        phase[0] = "backward"
    loss.backward()
    grads = {n: p.grad.clone() for n, p in r.geometry.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("patch, budget", [(False, 1 << 18), (True, 1 << 18), (False, 100), (True, 150)])
def test_checkpointed_training_samples_give_the_same_images_and_gradients(patch, budget):
    """Training with more kept samples than checkpoint_samples recomputes their geometry in the backward
    pass, in runs of checkpoint_samples (#24); up to that many, the activations are held (no recomputation,
    bit for bit the held path). Images, per-sample outputs and every parameter's gradient equal those of
    the held activations (checkpoint_samples=0), to rounding when cut into runs of 100 / 150 samples."""
    held, held_grads = _train_render(0, patch)
    calls: list = []
    recomputed, grads = _train_render(budget, patch, calls)
    assert held.keys() == recomputed.keys() and held["weights"].shape[0] > 200
    recomputations = calls.count("backward")
    if budget >= held["weights"].shape[0]:
        assert recomputations == 0, calls
    else:  # every run of the forward pass is recomputed once in the backward pass
        assert recomputations == calls.count("forward") >= 2, calls
    for key in held:
        if budget >= held["weights"].shape[0]:
            assert torch.equal(held[key], recomputed[key]), key
        else:
            assert torch.allclose(held[key], recomputed[key], rtol=1e-5, atol=1e-6), key
    assert held_grads.keys() == grads.keys() and any("encoding" in n for n in grads)
    for name in held_grads:
        assert held_grads[name].abs().sum() > 0, name
        # runs sum a parameter's gradient in another order: float32 rounding, ~1e-6 of |grad| <= 2.3 here
        assert torch.allclose(held_grads[name], grads[name], rtol=1e-5, atol=2e-6), name


@pytest.mark.parametrize("in_file, cli, enabled", [(None, None, True), (False, None, False), (False, "true", True),
                                                   (None, "false", False)])
def test_memory_check_switch_from_the_config_file_or_the_command_line(tmp_path, monkeypatch, in_file, cli, enabled):
    """`memory_check: false` at the config's top level, or memory_check=false on the command line (which wins),
    turns the refusal off; the check (which prints the estimate) still runs."""
    import launch
    from lift3d import memory_check
    from lift3d.errors import ConfigError
    from tests.helpers import REPO

    seen = []

    def record(cfg, device, fitting, enabled=True, log=print):
        seen.append(enabled)
        raise ConfigError("stop after the check")

    monkeypatch.setattr(memory_check, "check", record)
    config = tmp_path / "exp.yaml"
    text = (REPO / "configs/reconstruct-nerf.yaml").read_text()
    config.write_text(text + ("" if in_file is None else f"\nmemory_check: {str(in_file).lower()}\n"))
    args = ["--config", str(config), "--train", f"exp_root_dir={tmp_path / 'out'}"]
    assert launch.main(args + ([] if cli is None else [f"memory_check={cli}"])) == 2
    assert seen == [enabled] and not (tmp_path / "out").exists()


def test_guidance_encoder_activations_follow_the_models_vae_config(tmp_path, monkeypatch):
    """The VAE encoder's autograd activations in the training step: views × resolution² × Σ C_l / 4^l × 58 B,
    the resolution from system.guidance.resolution or UNet sample_size × the VAE's downsampling; SD's VAE when
    a hub id's config is not cached; 0 for pixel-space IF and for a local model without a VAE; half on a GPU."""
    import json

    from omegaconf import OmegaConf

    from lift3d.memory_check import VAE_ENCODER_PER_CHANNEL_PIXEL as K, guidance_encoder_bytes

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    model = tmp_path / "model"
    for sub, conf in (("vae", {"block_out_channels": [32, 64]}), ("unet", {"sample_size": 16})):
        (model / sub).mkdir(parents=True)
        (model / sub / "config.json").write_text(json.dumps(conf))

    def cfg(name, guidance_type="stable-diffusion-guidance", **guidance):
        return OmegaConf.create({"system": {"guidance_type": guidance_type,
                                            "guidance": {"pretrained_model_name_or_path": name, **guidance}}})

    local = guidance_encoder_bytes(cfg(str(model)), 4, "cpu")
    assert local == int(4 * 32 * 32 * (32 + 64 / 4) * K)  # sample_size 16 × downsampling 2 = 32²
    assert guidance_encoder_bytes(cfg(str(model), resolution=64), 4, "cpu") == 4 * local
    assert guidance_encoder_bytes(cfg(str(model)), 4, "cuda") == local // 2
    assert guidance_encoder_bytes(cfg(str(model), half_precision_weights=False), 4, "cuda") == local
    sd = guidance_encoder_bytes(cfg("stabilityai/stable-diffusion-2-1-base"), 1, "cpu")
    assert sd == int(512 * 512 * (128 + 256 / 4 + 512 / 16 + 512 / 64) * K)  # ~3.3 GB a view in float32
    assert guidance_encoder_bytes(cfg("bennyguo/zero123-xl-diffusers"), 1, "cpu") == sd // 4  # 256²
    assert guidance_encoder_bytes(cfg("DeepFloyd/IF-I-XL-v1.0", "deep-floyd-guidance"), 4, "cpu") == 0
    (model / "vae" / "config.json").unlink()
    assert guidance_encoder_bytes(cfg(str(model)), 4, "cpu") == 0  # a local model without a VAE: pixel space


def test_estimate_reads_progressive_sizes_stage_by_stage(tmp_path, monkeypatch):
    """threestudio's progressive resolution (batch [12, 8, 4] at [64, 128, 256]²): the training step is the worst
    stage — the renderer's part at 4 × 256², the VAE encoder's part with 12 views — not 12 × 256²."""
    from lift3d.config import load_config
    from lift3d.memory_check import _frames, estimate, guidance_encoder_bytes

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # SD's VAE for the uncached hub id
    base = "configs/stable-zero123.yaml"
    cfg = load_config(base, cli_args=["data.image_path=load/images/blocks_rgba.png"])
    stages, eval_px = _frames(cfg.data)
    assert [s[:3] for s in stages] == [(12, 64, 64), (8, 128, 128), (4, 256, 256)] and eval_px == 512 * 512
    assert [s[3] for s in stages] == [(1, 128, 128), (1, 256, 256), (1, 512, 512)]  # the reference view's schedule
    per_view = guidance_encoder_bytes(cfg, 1, "cpu")
    one_stage = lambda b, s, r: estimate(load_config(base, cli_args=[  # noqa: E731
        "data.image_path=load/images/blocks_rgba.png", f"data.random_camera.batch_size={b}",
        f"data.random_camera.height={s}", f"data.random_camera.width={s}", f"data.height={r}", f"data.width={r}"]))
    worst = max(one_stage(b, s, r).train_step for b, s, r in ((12, 64, 128), (8, 128, 256), (4, 256, 512)))
    assert estimate(cfg).train_step == worst
    assert one_stage(12, 256, 512).train_step > worst + 8 * per_view  # the largest of each key, combined
