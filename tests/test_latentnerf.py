"""Latent-NeRF and Sketch-Shape (#16, docs/methods/latent-nerf.md): sd-latent-adapter-material's map, the
Sketch-Shape loss's value and direction, the guide mesh's signed-distance grid, a NeRF fitted to a guide mesh
by loss_shape alone, clear errors, and latentnerf -> latentnerf-refine and sketchshape end to end (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.materials.sd_latent_adapter import LATENT_TO_RGB_INIT, StableDiffusionLatentAdapterMaterial
from lift3d.systems.sketch_shape import GuideShape, sketch_shape_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def box_mesh(tmp_path_factory):
    """A closed box 2 x 1 x 1 (x, y, z) written as PLY: scaled to 0.7 it spans [-0.7,0.7] x [-0.35,0.35]^2."""
    import trimesh

    path = tmp_path_factory.mktemp("guide") / "box.ply"
    trimesh.creation.box(extents=(2.0, 1.0, 1.0)).export(path)
    return path


def box_sdf(p: torch.Tensor, half=(0.7, 0.35, 0.35)) -> torch.Tensor:
    q = p.abs() - torch.tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


# ------------------------------------------------------------------ sd-latent-adapter-material
def test_latent_adapter_maps_latents_linearly_and_learns():
    material = StableDiffusionLatentAdapterMaterial({})
    latents = torch.tensor([[0.5, -0.2, 0.1, 0.3], [3.0, 3.0, 3.0, -3.0]])  # [2,4]
    rgb = material(latents)
    A = torch.tensor(LATENT_TO_RGB_INIT)
    assert torch.allclose(rgb[0], (latents[0] @ A + 1) / 2, atol=1e-6)
    assert torch.equal(rgb[1], ((latents[1] @ A + 1) / 2).clamp(0, 1))  # clamped to [0,1]
    rgb[0].sum().backward()
    assert torch.allclose(material.adapter.grad, latents[0][:, None].expand(4, 3) / 2)  # d rgb / dA = latent / 2
    assert list(dict(material.named_parameters())) == ["adapter"]


# ------------------------------------------------------------------ Sketch-Shape loss
def test_sketch_shape_loss_value_and_direction():
    density = torch.tensor([5.0, 5.0, 5.0]).requires_grad_(True)
    sdf = torch.tensor([-1.0, 1.0, 0.0])  # inside (far), outside (far), on the surface
    loss = sketch_shape_loss(density, sdf)
    occ = 1 - math.exp(-0.2 * 5.0)
    w = 1 - math.exp(-1.0 / (2 * 0.3**2))
    inside = -(occ * math.log(1 - 1e-4) + (1 - occ) * math.log(1e-4)) * w
    outside = -(occ * math.log(1e-4) + (1 - occ) * math.log(1 - 1e-4)) * w
    assert loss.item() == pytest.approx(inside + outside, rel=1e-5)  # the surface point has weight 0
    loss.backward()
    g = density.grad
    assert g[0] < 0 < g[1] and g[2] == 0  # raise the density inside, lower it outside, leave the surface free


def test_guide_shape_grid_is_the_meshes_signed_distance(box_mesh):
    shape = GuideShape(str(box_mesh), scale=0.7, up="+z", front="+x", radius=1.0, resolution=21)
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    cell = 2.0 / 20
    assert (shape.sdf(points) - box_sdf(points)).abs().max() < cell  # trilinear in a cell: within one cell
    assert shape.sdf(torch.tensor([[0.0, 0.0, 0.0]])).item() == pytest.approx(-0.35, abs=1e-4)  # a grid node
    # threestudio's placement: mesh +y up -> world +z, mesh +z front -> world +x, so the box's long mesh x -> world y
    turned = GuideShape(str(box_mesh), radius=1.0, resolution=21)
    assert turned.sdf(torch.tensor([[0.0, 0.6, 0.0]])).item() < 0
    assert turned.sdf(torch.tensor([[0.6, 0.0, 0.0]])).item() > 0 and turned.sdf(torch.tensor([[0.0, 0.0, 0.6]])).item() > 0


def test_loss_shape_alone_fits_a_nerf_to_the_guide_mesh(box_mesh):
    """Optimising a small implicit-volume by loss_shape alone classifies points away from the surface
    (|sdf| > 0.15) as inside (density > 1/delta) or outside like the mesh."""
    from lift3d.geometry.implicit_volume import ImplicitVolume

    torch.manual_seed(0)
    geometry = ImplicitVolume({
        "radius": 1.0, "n_feature_dims": 4, "normal_type": None, "density_bias": 0.0,
        "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                "log2_hashmap_size": 12, "base_resolution": 4, "per_level_scale": 2.0},
        "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                               "n_neurons": 16, "n_hidden_layers": 1},
    })
    shape = GuideShape(str(box_mesh), up="+z", front="+x", radius=1.0, resolution=21)
    optimizer = torch.optim.Adam(geometry.parameters(), lr=0.03)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        points = torch.rand(1024, 3, generator=gen) * 2 - 1
        loss = sketch_shape_loss(geometry(points)["density"].reshape(-1), shape.sdf(points)) / points.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = torch.rand(4000, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    truth = box_sdf(test)
    far = truth.abs() > 0.15
    with torch.no_grad():
        occupied = geometry(test)["density"].reshape(-1) > 1 / 0.2
    accuracy = (occupied[far] == (truth[far] < 0)).float().mean().item()
    assert accuracy > 0.95, accuracy


def test_threestudio_sequential_lr_milestones_next_to_schedulers():
    """latentnerf's schedule as threestudio writes it: LinearLR warm-up for 4 steps, then ExponentialLR."""
    from lift3d.systems.optim import make_scheduler

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = make_scheduler({"name": "SequentialLR", "interval": "step", "milestones": [4], "schedulers": [
        {"name": "LinearLR", "args": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 4}},
        {"name": "ExponentialLR", "args": {"gamma": 0.5}}]}, opt)["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.001, 0.00325, 0.0055, 0.00775, 0.01, 0.005])


# ------------------------------------------------------------------ configs end to end
SMALL = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "system.renderer.num_samples_per_ray=16",
    "system.geometry.isosurface_resolution=16", "system.geometry.isosurface_threshold=auto",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a red cube",
]
HASH = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10"]


def run_stage(launch, config, root, sd, cache, *extra):
    common = [f"exp_root_dir={root}", f"system.prompt_processor.pretrained_model_name_or_path={sd}",
              f"system.guidance.pretrained_model_name_or_path={sd}", f"system.prompt_processor.cache_dir={cache}"]
    assert launch.main(["--config", f"configs/{config}.yaml", "--train", *common, *SMALL, *extra]) == 0


@pytest.mark.slow
def test_latentnerf_then_refine_train_test_and_export(tmp_path, tiny_sd_path):
    import launch
    from tests.helpers import only_trial

    root, cache = tmp_path / "out", tmp_path / "cache"
    run_stage(launch, "latentnerf", root, tiny_sd_path, cache, *HASH)
    latent = only_trial(root, "latentnerf")
    save = latent / "save"
    frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(save / "it2-test/0.png"))
    assert frame.shape[0] == 64 and frame.shape[1] in (128, 192)  # VAE-decoded (tiny SD: 64²) | [normal |] opacity
    assert (save / "it2-test.mp4").is_file()
    logged = (latent / "csv_logs/metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss_sds" in logged
    state = torch.load(latent / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any("unet" in k or "vae" in k for k in state)
    assert launch.main(["--config", str(latent / "configs/parsed.yaml"), "--export",
                        f"resume={latent / 'ckpts/last.ckpt'}"]) == 0
    assert (save / "it2-export/model.obj").stat().st_size > 0

    run_stage(launch, "latentnerf-refine", root, tiny_sd_path, cache, *HASH,
              f"system.weights={latent / 'ckpts/last.ckpt'}")
    refine = only_trial(root, "latentnerf-refine")
    refined = torch.load(refine / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert refined["material.adapter"].shape == (4, 3)
    # the geometry started from the latent stage's (two Adam steps of lr <= 0.01 since); the new modules did not
    geometry = [k for k in state if k.startswith("geometry.") and state[k].is_floating_point()]
    assert geometry and max((refined[k] - state[k]).abs().max().item() for k in geometry) < 0.03
    assert max(state[k].abs().max().item() for k in geometry) > 0.1  # so a fresh geometry would not pass
    frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(refine / "save/it2-test/0.png"))
    assert frame.shape[0] == 16 and frame.shape[1] in (32, 48)  # RGB render | [normal |] opacity: no decoding
    assert launch.main(["--config", str(refine / "configs/parsed.yaml"), "--export",
                        f"resume={refine / 'ckpts/last.ckpt'}"]) == 0
    assert (refine / "save/it2-export/model.obj").stat().st_size > 0


@pytest.mark.slow
def test_sketchshape_trains_with_the_shape_loss(tmp_path, tiny_sd_path):
    import launch
    from tests.helpers import only_trial

    root = tmp_path / "out"
    run_stage(launch, "sketchshape", root, tiny_sd_path, tmp_path / "cache", *HASH, "system.guide_shape_resolution=16")
    trial = only_trial(root, "latentnerf")
    logged = (trial / "csv_logs/metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    values = [row.split(",")[header.index("train/loss_shape")] for row in logged[1:]]
    assert any(v and float(v) > 0 for v in values)


def test_latent_stage_needs_four_channels_and_shape_loss_needs_a_mesh(tmp_path, tiny_sd_path, capfd):
    import launch

    base = ["--config", "configs/latentnerf.yaml", "--train", f"exp_root_dir={tmp_path}", *SMALL,
            f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
            f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}"]
    for extra, message in (("system.material.n_output_dims=3", "renders SD's 4 latent channels"),
                           ("system.loss.lambda_shape=1.0", "guide_shape is not set"),
                           (f"system.guide_shape={tmp_path / 'missing.obj'}", "system.guide_shape"),
                           ("system.weights_ignore_modules=[guidance]", "not a module of the system")):
        extra = [extra, f"system.weights={tmp_path}/LAST"] if "weights" in extra else [extra]
        if "weights" in extra[0]:  # a checkpoint to find first
            (tmp_path / "t/ckpts").mkdir(parents=True, exist_ok=True)
            (tmp_path / "t/ckpts/last.ckpt").write_bytes(b"")
        assert launch.main([*base, *extra]) == 2
        assert message in capfd.readouterr().err, extra
