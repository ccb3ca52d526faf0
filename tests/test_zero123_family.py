"""threestudio's zero123 family in lift3d: depth / normal reference losses against estimates stored as
files (single-image-datamodule requires_depth / requires_normal), `freq` (ref_only_steps, alternate),
`refinement`, image-condition-dreamfusion-system / zero123-simple-system, and the configs
(zero123 -> zero123-refine, stable-zero123 with depth and normal files) end to end (slow)."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lift3d.errors import ConfigError
from lift3d.systems.reference_geometry import (
    normal_loss, pearson_depth_loss, reference_geometry_losses, scale_invariant_depth_loss,
)
from tests.helpers import only_trial, run_launch

pytestmark = [pytest.mark.usefixtures("one_torch_thread_per_module"),
              pytest.mark.filterwarnings("ignore:You are trying to")]  # steps called without a Trainer

IMAGE = "load/images/capsule_rgba.png"


# ------------------------------------------------------------------ the losses
def test_depth_losses_against_a_known_depth():
    torch.manual_seed(0)
    depth = 2.0 + torch.rand(200)  # rendered depth D
    # an estimate that is an affine map of the true depth: both losses are 0
    assert float(scale_invariant_depth_loss(depth, 0.3 * depth - 0.5)) < 1e-10
    assert abs(float(pearson_depth_loss(depth, 0.3 * depth - 0.5))) < 1e-6
    assert abs(float(pearson_depth_loss(depth, -depth)) - 2.0) < 1e-6  # anti-correlated: 1 - (-1)
    # a noisy estimate: the MSE of the least-squares fit (numpy's solution), the gradient only through D
    estimate = depth + 0.2 * torch.randn(200)
    A = np.stack([estimate.numpy(), np.ones(200)], axis=1).astype(np.float64)
    s, b = np.linalg.lstsq(A, depth.numpy().astype(np.float64), rcond=None)[0]
    expected = float(np.mean((s * estimate.numpy() + b - depth.numpy()) ** 2))
    D = depth.clone().requires_grad_(True)
    loss = scale_invariant_depth_loss(D, estimate)
    assert abs(float(loss.detach()) - expected) < 1e-5 * max(expected, 1e-3)
    loss.backward()
    fitted = torch.tensor(s * estimate.numpy() + b, dtype=torch.float32)
    torch.testing.assert_close(D.grad, 2 * (D.detach() - fitted) / 200, rtol=1e-3, atol=1e-7)
    corr = np.corrcoef(depth.numpy(), estimate.numpy())[0, 1]
    assert abs(float(pearson_depth_loss(depth, estimate)) - (1 - corr)) < 1e-5


def test_normal_loss_convention():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    comp = (n + 1) / 2  # rendered normal map in [0, 1]
    stored = (1 - n) / 2  # the file's convention: direction = 1 - 2 * stored
    assert float(normal_loss(comp, stored)) < 1e-6
    assert abs(float(normal_loss(comp, comp)) - 2.0) < 1e-5  # opposite direction
    perp = torch.stack([-n[:, 1], n[:, 0], torch.zeros(50)], -1)  # ⟂ n (in the xy-plane)
    perp = torch.nn.functional.normalize(perp, dim=-1)
    assert abs(float(normal_loss(comp, (1 - perp) / 2)) - 1.0) < 1e-5


def test_reference_losses_count_masked_pixels_only_and_need_the_estimates():
    H = W = 6
    mask = torch.zeros(1, H, W, 1)
    mask[:, 1:5, 1:5] = 1.0
    depth = torch.rand(1, H, W, 1) + 1.0
    est = 3.0 * depth + 1.0
    est[mask == 0] = 100.0  # garbage outside the mask must not count
    n = torch.nn.functional.normalize(torch.randn(1, H, W, 3), dim=-1)
    out = {"depth": depth, "comp_normal": (n + 1) / 2, "opacity": mask}
    batch = {"mask": mask, "ref_depth": est, "ref_normal": (1 - n) / 2}
    terms = reference_geometry_losses(out, batch, {"depth": 1.0, "depth_rel": 1.0, "normal": 1.0})
    assert set(terms) == {"loss_depth", "loss_depth_rel", "loss_normal"}
    assert all(float(v) < 1e-5 for v in terms.values()), terms
    assert reference_geometry_losses(out, batch, {"depth": 0.0}) == {}
    with pytest.raises(ConfigError, match="requires_depth"):
        reference_geometry_losses(out, {"mask": mask}, {"depth_rel": 0.1})
    with pytest.raises(ConfigError, match="requires_normal"):
        reference_geometry_losses(out, {"mask": mask, "ref_normal": None}, {"normal": 0.1})


# ------------------------------------------------------------------ the estimate files
def write_estimates(folder, size=24):
    """<name>_rgba.png with <name>_depth.png (grey ramp) and <name>_normal.png (constant colour)."""
    rgba = np.asarray(Image.open(IMAGE).convert("RGBA").resize((size, size)))
    Image.fromarray(rgba).save(folder / "obj_rgba.png")
    ramp = np.tile(np.linspace(0, 255, size).round().astype(np.uint8), (size, 1))
    Image.fromarray(ramp).save(folder / "obj_depth.png")
    normal = np.zeros((size, size, 3), np.uint8)
    normal[..., 0], normal[..., 1], normal[..., 2] = 10, 128, 250  # stored R, G, B
    Image.fromarray(normal).save(folder / "obj_normal.png")
    return folder / "obj_rgba.png", ramp


def test_single_image_datamodule_loads_depth_and_normal_files(tmp_path):
    from lift3d.data.single_image import SingleImageDataModule, SingleImageIterableDataset

    image, ramp = write_estimates(tmp_path)
    cfg = {"image_path": str(image), "height": 24, "width": 24, "requires_depth": True, "requires_normal": True,
           "random_camera": {"height": 8, "width": 8, "batch_size": 1}, "batch_size": 2}
    batch = SingleImageIterableDataset(cfg).sample()
    assert batch["ref_depth"].shape == (2, 24, 24, 1) and batch["ref_normal"].shape == (2, 24, 24, 3)
    torch.testing.assert_close(batch["ref_depth"][0, :, :, 0], torch.tensor(ramp / 255.0, dtype=torch.float32))
    # channels as OpenCV reads them (B, G, R of the file), as threestudio
    torch.testing.assert_close(batch["ref_normal"][0, 0, 0], torch.tensor([250, 128, 10]) / 255.0)
    half = SingleImageIterableDataset({**cfg, "height": 12, "width": 12}).sample()  # area-averaged
    torch.testing.assert_close(half["ref_depth"][0, :, :, 0],
                               torch.tensor(ramp / 255.0, dtype=torch.float32).reshape(12, 2, 12, 2).mean((1, 3)))
    assert "ref_depth" not in SingleImageIterableDataset({**cfg, "requires_depth": False}).sample()
    (tmp_path / "obj_normal.png").unlink()
    with pytest.raises(ConfigError, match=r"requires_normal=true but the normal estimate .*obj_normal.png"):
        SingleImageDataModule.validate_config(OmegaConf.create(cfg))
    Image.open(image).save(tmp_path / "plain.png")
    with pytest.raises(ConfigError, match="does not end in _rgba.png"):
        SingleImageDataModule.validate_config(OmegaConf.create({**cfg, "image_path": str(tmp_path / "plain.png")}))


# ------------------------------------------------------------------ freq, refinement, the systems
class CountingGuidance:
    """Stands in for a diffusion guidance: counts its calls, loss_sds = mean of the render."""

    reference_view_losses = ()

    def __init__(self):
        self.calls = 0

    def __call__(self, image, batch=None, prompt_utils=None, render_out=None, **kwargs):
        self.calls += 1
        return {"loss_sds": image.mean()}


def tiny_system(system_type, **cfg):
    from lift3d.registry import find

    field = {"radius": 1.0, "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                                                    "log2_hashmap_size": 10, "base_resolution": 4,
                                                    "per_level_scale": 2.0}}
    system = find(system_type)(OmegaConf.create({
        "geometry": field, "renderer": {"radius": 1.0, "num_samples_per_ray": 8, "grid_prune": False},
        "material_type": "no-material", "background_type": "solid-color-background",
        "loss": {"lambda_sds": 1.0, "lambda_rgb": 10.0, "lambda_mask": 1.0, "lambda_sparsity": 1.0}, **cfg}))
    system.guidance = CountingGuidance()
    return system


def sample_batch():
    from lift3d.data.single_image import SingleImageIterableDataset

    return SingleImageIterableDataset({"image_path": IMAGE, "height": 8, "width": 8, "seed": 0,
                                       "random_camera": {"height": 8, "width": 8, "batch_size": 1}}).sample()


def steps_with_guidance(system, steps):
    batch, called, logged = sample_batch(), [], []
    for step in steps:
        system._loaded_global_step = step  # true_global_step without a Trainer
        before = system.guidance.calls
        terms = {}
        system.weighted_loss = lambda t, lam: terms.update(t) or sum(lam.get(k[5:], 0) * v for k, v in t.items()
                                                                   if k.startswith("loss_"))
        system.training_step(batch, 0)
        called.append(system.guidance.calls > before)
        logged.append(sorted(terms))
    return called, logged


def test_ref_only_steps_train_the_reference_view_alone():
    system = tiny_system("zero123-system", freq={"ref_only_steps": 3})
    called, logged = steps_with_guidance(system, [0, 1, 2, 3, 4])
    assert called == [False, False, False, True, True]
    assert logged[0] == ["loss_mask", "loss_rgb"]  # only reference losses (no sparsity on the reference view)
    assert logged[3] == ["loss_mask", "loss_rgb", "loss_sds", "loss_sparsity"]
    # image-condition-dreamfusion: guidance from step ref_only_steps + 1 (threestudio's `step > ref_only_steps`)
    system = tiny_system("image-condition-dreamfusion-system", freq={"ref_only_steps": 3},
                         material_type="no-material", background_type="solid-color-background",
                         prompt_processor_type="dummy-prompt-processor")
    assert steps_with_guidance(system, [2, 3, 4])[0] == [False, False, True]
    # default (accumulate, ref_only_steps 0): both every step
    assert steps_with_guidance(tiny_system("zero123-system"), [0, 1])[0] == [True, True]


def test_alternate_mode_and_freq_checks():
    system = tiny_system("zero123-system", freq={"ref_or_zero123": "alternate", "n_ref": 2, "ref_only_steps": 1})
    called, logged = steps_with_guidance(system, [0, 1, 2, 3])
    assert called == [False, True, False, True]
    assert logged[1] == ["loss_sds", "loss_sparsity"]  # the guidance alone on its steps
    from lift3d.systems.aliases import Zero123System

    base = {"geometry_type": "implicit-volume", "renderer_type": "nerf-volume-renderer",
            "guidance_type": "reference-mesh-guidance", "guidance": {"mesh_path": "load/shapes/blocks_union.ply"}}
    with pytest.raises(ConfigError, match="freq.n_ref"):
        Zero123System.validate_config(OmegaConf.create({**base, "freq": {"ref_or_zero123": "alternate"}}))
    with pytest.raises(ConfigError, match="freq.every is unknown"):
        Zero123System.validate_config(OmegaConf.create({**base, "freq": {"every": 3}}))


def test_refinement_turns_the_nerf_regularizers_off():
    system = tiny_system("zero123-system", refinement=True)
    lam = {"orient": 1.0, "sparsity": 2.0, "opaque": 3.0, "z_variance": 4.0, "normal_consistency": 5.0, "rgb": 6.0}
    assert system.regularizer_lambdas(lam) == {"orient": 0.0, "sparsity": 0.0, "opaque": 0.0, "z_variance": 0.0,
                                               "normal_consistency": 5.0, "rgb": 6.0}
    assert tiny_system("zero123-system").regularizer_lambdas(lam) == lam


def test_zero123_simple_system_is_zero123_system_defaults():
    from lift3d.registry import find

    simple, z123 = find("zero123-simple-system").Config(), find("zero123-system").Config()
    assert (simple.guidance_type, simple.material_type, simple.prompt_processor_type) == (
        z123.guidance_type, z123.material_type, z123.prompt_processor_type)
    system = tiny_system("zero123-simple-system", loss={"lambda_sds": 1.0})
    called, logged = steps_with_guidance(system, [0])
    assert called == [True] and logged[0] == ["loss_sds"]  # no reference losses unless weighed
    # threestudio's lambda_normal_smoothness_2d (its zero123-simple config), on the random view's normal map
    system = tiny_system("zero123-simple-system", loss={"lambda_sds": 1.0, "lambda_normal_smoothness_2d": 1.0},
                         renderer={"radius": 1.0, "num_samples_per_ray": 8, "grid_prune": False,
                                   "return_comp_normal": True})
    assert steps_with_guidance(system, [0])[1][0] == ["loss_normal_smoothness_2d", "loss_sds"]
    with pytest.raises(ConfigError, match="lambda_normal_smoothness_2d"):
        find("zero123-system").validate_config(OmegaConf.create({
            "guidance_type": "reference-mesh-guidance", "guidance": {"mesh_path": "load/shapes/blocks_union.ply"},
            "loss": {"lambda_normal_smoothness_2d": 1.0}}))


# ------------------------------------------------------------------ configs end to end
def tiny(root, z123, size=32):
    return [f"system.guidance.pretrained_model_name_or_path={z123}", f"exp_root_dir={root}", "use_timestamp=false",
            "trainer.enable_progress_bar=false", f"data.height={size}", f"data.width={size}",
            f"data.random_camera.height={size}", f"data.random_camera.width={size}", "data.random_camera.batch_size=1",
            f"data.random_camera.eval_height={size}", f"data.random_camera.eval_width={size}",
            "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=2", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
            "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]


@pytest.mark.slow
def test_zero123_coarse_refine_export(tmp_path, tiny_zero123_path):
    common = tiny(tmp_path, tiny_zero123_path)
    run_launch(["--config", "configs/zero123.yaml", "--train", *common, "system.renderer.num_samples_per_ray=24"])
    coarse = only_trial(tmp_path, "zero123")
    run_launch(["--config", "configs/zero123-refine.yaml", "--train", *common, f"system.geometry_convert_from={coarse}",
                "system.geometry.isosurface_resolution=16", "system.geometry.convert_threshold=5"])
    refine = only_trial(tmp_path, "zero123-refine")
    metrics = (refine / "csv_logs/metrics.csv").read_text().splitlines()[0]
    assert "train/loss_normal_consistency" in metrics and "train/loss_sds" in metrics
    run_launch(["--config", str(refine / "configs/parsed.yaml"), "--export", f"resume={refine}/ckpts/last.ckpt",
                "system.exporter.texture_size=32"])
    assert (refine / "save/it2-test.mp4").is_file() and (refine / "save/it2-export/model.obj").is_file()


@pytest.mark.slow
def test_stable_zero123_with_depth_and_normal_files(tmp_path, tiny_zero123_path):
    image, _ = write_estimates(tmp_path, size=32)
    run_launch(["--config", "configs/stable-zero123.yaml", "--train", *tiny(tmp_path, tiny_zero123_path),
                f"data.image_path={image}", "data.resolution_milestones=[]", "data.random_camera.resolution_milestones=[]",
                "data.requires_depth=true", "data.requires_normal=true", "system.loss.lambda_depth=0.05",
                "system.loss.lambda_depth_rel=0.05", "system.loss.lambda_normal=0.05",
                "system.renderer.num_samples_per_ray=24", "system.freq.ref_only_steps=1"])
    trial = only_trial(tmp_path, "zero123-sai")
    rows = (trial / "csv_logs/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [dict(zip(header, r.split(","))) for r in rows[1:] if r.split(",")[header.index("train/loss")]]
    assert all(steps[0].get(f"train/loss_{k}") for k in ("depth", "depth_rel", "normal", "rgb"))
    assert not steps[0].get("train/loss_sds") and steps[1].get("train/loss_sds")  # ref_only_steps=1
    assert (trial / "save/it2-test.mp4").is_file()
