"""NeuS multi-view reconstruction (docs/methods/usd.md §4 step 5): `neus-volume-renderer`,
`multiview-images-datamodule`, `multiview-reconstruction-system`, configs/neus-multiview.yaml.

The acceptance test renders the shipped capsule with the true mesh at 32 cameras, writes the views
with RGBADatasetWriter (the format USD's view distillation hands over), reconstructs them through
launch.py (train, resume in the same trial, --export) and scores the exported mesh: Chamfer distance
≤ 1 % of the bounding-box diagonal. ~75 s on one CPU core; the whole file ~2 minutes.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lift3d.data.cameras import spherical_to_cartesian
from lift3d.data.random_camera import camera_batch
from lift3d.errors import ConfigError
from lift3d.ops.volume_rendering import render_weight_from_alpha
from lift3d.registry import find
from lift3d.renderers.neus_volume_renderer import neus_alpha
from lift3d.utils.rgba_dataset import RGBADatasetWriter
from tests.helpers import REPO, only_trial, run_launch

torch.set_num_threads(1)

CAPSULE = "load/shapes/capsule_bicolor.ply"
SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 4, "per_level_scale": 2.0}
SMALL_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
             "n_hidden_layers": 1}


def view(elevation, azimuth, distance=2.0, fovy=40.0, size=32):
    e, a, d = (torch.tensor([float(x)]) for x in (elevation, azimuth, distance))
    pos = spherical_to_cartesian(e, a, d)
    return camera_batch(pos, torch.tensor([math.radians(fovy)]), size, size, pos.clone(), e, a, d)


def write_capsule_dataset(folder: Path, n_views: int, size: int, distance: float = 1.8, fovy: float = 40.0) -> Path:
    """The true capsule at n_views cameras spread over the sphere (elevation -44°…64°, golden-angle
    azimuths), written as USD's view distillation writes its views (RGBADatasetWriter)."""
    guidance = find("reference-mesh-guidance")({"mesh_path": CAPSULE})
    writer = RGBADatasetWriter(folder)
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(n_views):
        elevation = math.degrees(math.asin(-0.7 + 1.6 * (i + 0.5) / n_views))
        azimuth = math.degrees(i * golden) % 360 - 180
        batch = view(elevation, azimuth, distance, fovy, size)
        color, mask = guidance.render_reference(batch["mvp_mtx"], size, size)  # premultiplied colour
        writer.add(batch, {"opacity": mask, "comp_rgb_fg": color}, 0, i)
    return writer.finish()


# ------------------------------------------------------------------ renderer
def test_alpha_formula_against_a_direct_computation():
    torch.manual_seed(0)
    S = 64
    sdf, dists = torch.randn(S) * 0.05, torch.rand(S) * 0.05 + 0.01
    normal, dirs = F.normalize(torch.randn(S, 3), dim=-1), F.normalize(torch.randn(S, 3), dim=-1)
    inv_s = torch.tensor(50.0)
    cos = (normal * dirs).sum(-1)
    for ratio in (0.0, 0.3, 1.0):
        k = -((1 - ratio) * torch.clamp(0.5 - 0.5 * cos, min=0) + ratio * torch.clamp(-cos, min=0))
        prev, nxt = torch.sigmoid(inv_s * (sdf - 0.5 * k * dists)), torch.sigmoid(inv_s * (sdf + 0.5 * k * dists))
        direct = ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0, 1)
        assert torch.allclose(neus_alpha(sdf, normal, dirs, dists, inv_s, ratio), direct, atol=1e-6)
    # head-on through a plane (cos = -1), annealed: the exact NeuS opacity of the section,
    # 1 - Φ(s_end) / Φ(s_start) with Φ = sigmoid(inv_s ·): 0.5 → ... across the zero crossing
    n = torch.tensor([[0.0, 0.0, 1.0]])
    d = -n
    a = neus_alpha(torch.tensor([0.0]), n, d, torch.tensor([0.02]), inv_s, 1.0)
    expected = 1 - torch.sigmoid(inv_s * -0.01) / torch.sigmoid(inv_s * 0.01)
    assert abs(float(a) - float(expected)) < 1e-5 and 0.3 < float(a) < 0.5
    # a ray leaving the surface (cos = +1) never becomes opaque
    assert float(neus_alpha(torch.tensor([0.0]), n, n, torch.tensor([0.02]), inv_s, 1.0)) < 1e-4


def test_weights_from_alpha_match_the_cumulative_product():
    torch.manual_seed(1)
    counts = [3, 0, 5, 1]
    ray_idx = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    alpha = torch.rand(int(sum(counts)), dtype=torch.float64)
    alpha[5] = 1.0  # an opaque sample: everything behind it on ray 2 gets (almost) nothing
    weights, trans = render_weight_from_alpha(alpha, ray_idx, 4)
    expected = []
    for r, c in enumerate(counts):
        a = alpha[ray_idx == r]
        t = torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0)[:c]
        expected.append(t * a)
    assert torch.allclose(weights, torch.cat(expected), atol=1e-6)
    assert float(weights[6:8].abs().max()) < 1e-5


def sphere_renderer(radius=0.4, variance=0.6, net_scale=0.0, **renderer_cfg):
    """implicit-sdf whose network outputs ~0: sdf = |x| - radius (exactly with net_scale 0; the
    network's weights scaled by net_scale otherwise, so that gradients reach it)."""
    geo = find("implicit-sdf")({"radius": 1.0, "sdf_bias": "sphere", "sdf_bias_params": radius,
                                "normal_type": "analytic", "pos_encoding_config": SMALL_GRID,
                                "mlp_network_config": SMALL_MLP})
    with torch.no_grad():
        for p in geo.sdf_network.parameters():
            p.mul_(net_scale)
    material = find("no-material")({})
    background = find("solid-color-background")({"color": [0.0, 0.0, 1.0]})
    cfg = {"radius": 1.0, "num_samples_per_ray": 256, "learned_variance_init": variance, **renderer_cfg}
    return find("neus-volume-renderer")(cfg, geometry=geo, material=material, background=background)


def test_sphere_silhouette_depth_normals_and_background():
    r = sphere_renderer()
    r.eval()
    size, fovy, D, rho = 32, 40.0, 2.0, 0.4
    with torch.no_grad():
        out = r(**view(0, 0, D, fovy, size))
    assert set(out) >= {"comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "comp_normal"}
    # pixel centres by distance to the image centre, against the silhouette radius f ρ / sqrt(D² - ρ²)
    f = 0.5 * size / math.tan(math.radians(fovy / 2))
    R = f * rho / math.sqrt(D**2 - rho**2)
    c = torch.arange(size) + 0.5 - size / 2
    dist = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    opacity = out["opacity"][0, ..., 0]
    assert float(opacity[dist < R - 1.0].min()) > 0.97
    assert float(opacity[dist > R + 1.0].max()) < 0.03
    centre = slice(15, 17)
    assert abs(float(out["depth"][0, centre, centre].mean()) - (D - rho)) < 0.01
    # camera on +x: the visible normal at the centre is +x → comp_normal (n + 1) / 2 = (1, .5, .5)
    assert torch.allclose(out["comp_normal"][0, centre, centre].reshape(-1, 3).mean(0), torch.tensor([1.0, 0.5, 0.5]), atol=0.02)
    # features ≈ 0 (zeroed sdf net; colour net small) → sigmoid ≈ 0.5 inside; blue background outside
    bg = torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(out["comp_rgb"], out["comp_rgb_fg"] + bg * (1 - out["opacity"]), atol=1e-6)
    assert torch.allclose(out["comp_rgb"][0, 0, 0], bg, atol=1e-3)


def test_gradients_reach_the_variance_and_the_sdf_and_eikonal_is_fed():
    r = sphere_renderer(variance=0.3, net_scale=0.01)
    r.train()
    r.update_step(0, 0)
    torch.manual_seed(0)  # the same stratified samples in every render below
    out = r(**view(20, 30, size=16))
    assert {"sdf_grad", "weights", "t_dirs", "normal", "inv_s"} <= set(out)
    assert abs(float(out["inv_s"].detach()) - math.exp(3.0)) < 1e-3
    # |∇(|x| - ρ)| = 1: the eikonal term of the (almost) exact SDF is ~0
    assert float(((out["sdf_grad"].detach().norm(dim=-1) - 1) ** 2).mean()) < 1e-4
    out["opacity"].sum().backward()
    grad = float(r.variance.grad)
    # a sharper surface (larger inv_s) makes the soft silhouette's area change: finite differences agree
    eps = 1e-3
    with torch.no_grad():
        areas = []
        for sign in (1, -1):
            r.variance += sign * eps
            torch.manual_seed(0)
            areas.append(float(r(**view(20, 30, size=16))["opacity"].sum()))
            r.variance -= sign * eps
    assert grad != 0.0
    fd = (areas[0] - areas[1]) / (2 * eps)
    assert abs(grad - fd) < 0.1 * abs(fd) + 1e-2, (grad, fd)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in r.geometry.sdf_network.parameters())


def test_cos_annealing_schedule_and_renderer_config_errors():
    r = sphere_renderer(cos_anneal_end_steps=100)
    r.train()
    r.update_step(0, 25)
    assert r.cos_anneal_ratio == pytest.approx(0.25)
    r.update_step(0, 400)
    assert r.cos_anneal_ratio == 1.0
    with pytest.raises(ConfigError, match="implicit-sdf"):
        geo = find("implicit-volume")({"pos_encoding_config": SMALL_GRID, "mlp_network_config": SMALL_MLP})
        find("neus-volume-renderer")({}, geometry=geo, material=find("no-material")({}),
                                     background=find("solid-color-background")({}))
    with pytest.raises(ConfigError, match="cos_anneal_end_steps"):
        sphere_renderer(cos_anneal_end_steps=-1)


# ------------------------------------------------------------------ data module
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("views") / "capsule"
    write_capsule_dataset(folder, n_views=4, size=32)
    return folder


def test_datamodule_reads_the_written_dataset_poses_intrinsics_and_pixels(small_dataset):
    dm = find("multiview-images-datamodule")({"dataroot": str(small_dataset), "train_num_rays": 256, "n_val_views": 2})
    meta = json.loads((small_dataset / "transforms.json").read_text())
    assert len(dm.test_dataset) == 4 and dm.val_ids == [0, 2]
    batch = dm.test_dataset.collate([1])
    golden = math.pi * (3 - math.sqrt(5))
    elevation = math.degrees(math.asin(-0.7 + 1.6 * 1.5 / 4))
    truth = view(elevation, math.degrees(golden) % 360 - 180, 1.8, 40.0, 32)
    # poses and intrinsics round-trip: the same rays, camera and field of view as the writer's cameras
    assert torch.allclose(batch["c2w"], truth["c2w"], atol=1e-5)
    assert torch.allclose(batch["rays_o"], truth["rays_o"], atol=1e-5)
    assert torch.allclose(batch["rays_d"], truth["rays_d"], atol=1e-5)
    assert abs(float(batch["fovy"][0]) - math.radians(40.0)) < 1e-5
    assert abs(float(batch["elevation"][0]) - elevation) < 1e-3 and abs(float(batch["camera_distances"][0]) - 1.8) < 1e-5
    assert torch.allclose(batch["mvp_mtx"], truth["mvp_mtx"], atol=1e-4)
    # pixels: the straight colour and alpha of the written PNG, composited = the true render
    guidance = find("reference-mesh-guidance")({"mesh_path": CAPSULE})
    color, mask = guidance.render_reference(truth["mvp_mtx"], 32, 32)
    assert (batch["mask"] - mask).abs().max() < 1.5 / 255
    assert (batch["rgb"] * batch["mask"] - color).abs().max() < 2.5 / 255
    # random-ray batches: B rays as 1×1 images, each with its own camera as light
    train = dm.train_dataset.sample()
    assert train["rays_o"].shape == (256, 1, 1, 3) and train["rgb"].shape == (256, 1, 1, 3)
    assert train["mask"].shape == (256, 1, 1, 1) and train["light_positions"].shape == (256, 3)
    assert torch.allclose(train["rays_d"].norm(dim=-1), torch.ones(256, 1, 1), atol=1e-5)
    assert 0.1 < float(train["mask"].mean()) < 0.6
    # downscaling scales the intrinsics; writing the loaded views again gives the same file
    half = find("multiview-images-datamodule")({"dataroot": str(small_dataset), "img_wh": [16, 16]})
    assert half.views["rgb"].shape == (4, 16, 16, 3)
    assert torch.allclose(half.views["focal"], dm.views["focal"] / 2) and float(half.views["principal"][0, 0]) == 8.0
    writer = RGBADatasetWriter(small_dataset.parent / "again")
    for i in range(4):
        b = dm.test_dataset.collate([i])
        writer.add(b, {"opacity": b["mask"], "comp_rgb_fg": b["rgb"] * b["mask"]}, 0, i)
    again = json.loads(writer.finish().read_text())
    assert again["fl_x"] == pytest.approx(meta["fl_x"], rel=1e-5)
    for fa, fb in zip(again["frames"], meta["frames"]):
        assert np.allclose(fa["transform_matrix"], fb["transform_matrix"], atol=1e-5)


def test_datamodule_errors_name_the_problem(small_dataset, tmp_path):
    make = find("multiview-images-datamodule")
    with pytest.raises(ConfigError, match="data.dataroot is empty"):
        make({})
    with pytest.raises(ConfigError, match="transforms.json.*not found"):
        make({"dataroot": str(tmp_path)})
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        make({"dataroot": str(tmp_path)})
    (tmp_path / "images").mkdir()
    for p in (small_dataset / "images").glob("*.png"):
        (tmp_path / "images" / p.name).write_bytes(p.read_bytes())
    meta = json.loads((small_dataset / "transforms.json").read_text())
    meta["frames"][2]["file_path"] = "images/missing.png"
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"frames\[2\].*missing.png.*not found"):
        make({"dataroot": str(tmp_path)})
    meta["frames"][2]["file_path"] = "images/0002.png"
    meta["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"frames\[1\].transform_matrix"):
        make({"dataroot": str(tmp_path)})
    meta["frames"][1]["transform_matrix"] = meta["frames"][0]["transform_matrix"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    (tmp_path / "images" / "0003.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="0003.png.*corrupt"):
        make({"dataroot": str(tmp_path)})
    with pytest.raises(ConfigError, match="img_wh and data.downscale"):
        make({"dataroot": str(small_dataset), "img_wh": [16, 16], "downscale": 2})


def test_config_unknown_key_and_missing_dataroot_fail_before_work(small_dataset):
    from lift3d.config import load_config, validate_experiment

    with pytest.raises(ConfigError, match="mandatory.*data.dataroot"):
        load_config(str(REPO / "configs/neus-multiview.yaml"))
    cfg = load_config(str(REPO / "configs/neus-multiview.yaml"),
                      cli_args=[f"data.dataroot={small_dataset}", "system.renderer.num_sample_per_ray=8"])
    with pytest.raises(ConfigError, match=r"unknown config key 'system.renderer.num_sample_per_ray'.*num_samples_per_ray"):
        validate_experiment(cfg)


# ------------------------------------------------------------------ acceptance: capsule → NeuS → mesh
ACCEPT = [
    "use_timestamp=false", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "data.n_val_views=1", "data.n_test_views=1",
    # a smaller field and bbox than the config's defaults, for the CPU budget
    "system.geometry.radius=0.7", "system.geometry.pos_encoding_config.n_levels=8",
    "system.geometry.pos_encoding_config.log2_hashmap_size=15",
    "system.geometry.pos_encoding_config.per_level_scale=1.447", "system.geometry.mlp_network_config.n_neurons=32",
    "system.geometry.isosurface_resolution=96", "system.renderer.num_samples_per_ray=64",
    "system.renderer.grid_update_interval=8", "system.renderer.cos_anneal_end_steps=240",
    "checkpoint.every_n_train_steps=120", "trainer.val_check_interval=120",
]


def test_reconstructs_the_capsule_within_one_percent_of_its_diagonal(tmp_path):
    import trimesh

    from lift3d.ops.mesh_io import load_mesh
    from lift3d.utils.metrics import chamfer_distance

    data = tmp_path / "views"
    write_capsule_dataset(data, n_views=32, size=96)
    root = tmp_path / "out"
    # train half the steps, then resume in the same trial (as a killed run would) to the end
    run_launch(["--config", "configs/neus-multiview.yaml", "--train", f"data.dataroot={data}",
                f"exp_root_dir={root}", "trainer.max_steps=120", *ACCEPT])
    trial = only_trial(root, "neus-multiview")
    assert trial.name == "views"  # tag = the dataset folder's name
    last = trial / "ckpts" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 120 and "renderer.variance" in ckpt["state_dict"]
    assert "renderer.occupancy_grid.binary" in ckpt["state_dict"]
    run_launch(["--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={last}",
                "trainer.max_steps=240", *ACCEPT])
    assert only_trial(root, "neus-multiview") == trial
    with open(trial / "csv_logs" / "metrics.csv") as fp:
        rows = list(csv.DictReader(fp))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == list(range(240)), steps
    inv_s = [float(r["train/inv_s"]) for r in rows if r.get("train/inv_s")]
    assert inv_s[-1] > 3 * inv_s[0]  # the learned variance sharpens the surface
    psnr = [float(r["val/psnr"]) for r in rows if r.get("val/psnr")]
    assert len(psnr) == 2 and psnr[-1] > 24.0, psnr
    for rel in ("save/it120-0.png", "save/it240-0.png", "save/it240-test.mp4"):
        assert (trial / rel).is_file(), rel

    run_launch(["--config", str(trial / "configs" / "parsed.yaml"), "--export", f"resume={last}"])
    mesh = trimesh.load(trial / "save" / "it240-export" / "model.obj", process=False, force="mesh")
    rv, rf, _ = load_mesh(REPO / CAPSULE)
    a = trimesh.sample.sample_surface(mesh, 20000, seed=0)[0]
    b = trimesh.sample.sample_surface(trimesh.Trimesh(rv, rf, process=False), 20000, seed=1)[0]
    chamfer = float(chamfer_distance(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    diagonal = float(np.linalg.norm(rv.max(0) - rv.min(0)))
    print(f"NeuS capsule: Chamfer {chamfer:.5f} = {100 * chamfer / diagonal:.3f} % of the diagonal, val PSNR {psnr}")
    assert chamfer <= 0.01 * diagonal, f"Chamfer {chamfer:.4f} = {100 * chamfer / diagonal:.2f} % of the diagonal"
    # two-tone capsule: the exported vertex colours are orange on top (+z), teal below
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    z = np.asarray(mesh.vertices)[:, 2]
    top, bottom = colors[z > 0.3].mean(0), colors[z < -0.3].mean(0)
    assert top[0] > top[2] + 60 and bottom[2] > bottom[0] + 40, (top, bottom)
