"""InstructNeRF2NeRF (docs/methods/instructnerf2nerf.md): InstructPix2Pix's two-scale guidance on a fake
UNet with known predictions, the edit's DDIM path, the iterative dataset update (exactly the scheduled
views change), and threestudio's configs/instructnerf2nerf.yaml verbatim end to end with tiny models."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lift3d import find
from lift3d.data.multiview_camera import whole_view_batch
from lift3d.errors import ConfigError
from lift3d.models.frozen import FrozenModels
from lift3d.models.instruct_pix2pix import InstructPix2Pix, dual_guidance
from lift3d.systems.instructnerf2nerf import InstructNeRF2NeRFSystem
from tools.config_compat_table import TinyModels, check_config, tiny_instruct_pix2pix
from tools.config_compat_table import tiny_lpips as tiny_lpips_folder
from tools.multiview_synthetic import write_multiview_scene as write_scene

REPO = Path(__file__).resolve().parent.parent
THREESTUDIO_CONFIG = REPO / "tests" / "data" / "threestudio_style" / "instructnerf2nerf.yaml"


@pytest.fixture(scope="module")
def table_models(tiny_sd_path) -> TinyModels:
    """The config table's tiny inputs; its InstructPix2Pix / LPIPS / scene are built beside the tiny SD."""
    return TinyModels(sd=str(tiny_sd_path), zero123="unused", deepfloyd_if="unused")


@pytest.fixture(scope="module")
def tiny_ip2p(table_models) -> Path:
    return Path(tiny_instruct_pix2pix(table_models))


@pytest.fixture(scope="module")
def tiny_lpips(table_models) -> Path:
    return Path(tiny_lpips_folder(table_models))


# ------------------------------------------------------------------ the two-scale guidance
class FakeUNet(torch.nn.Module):
    """eps = z_t + 2 * image_latents + mean(text): each condition's contribution is known."""

    config = SimpleNamespace(sample_size=8)

    def forward(self, x, t, encoder_hidden_states):
        eps = x[:, :4] + 2.0 * x[:, 4:] + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=eps)


def fake_ip2p() -> InstructPix2Pix:
    model = InstructPix2Pix.__new__(InstructPix2Pix)
    model.models = FrozenModels(unet=FakeUNet())
    model.weights_dtype = torch.float32
    return model


def test_two_scale_guidance_on_a_fake_unet_with_known_predictions():
    torch.manual_seed(0)
    z, c_img = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    text_c, text_u = torch.full((2, 77, 32), 3.0), torch.full((2, 77, 32), -1.0)
    s_T, s_I = 7.5, 1.5
    guided = fake_ip2p().guided_noise(z, torch.tensor([500, 500]), text_c, text_u, c_img, s_T, s_I)
    # eps(c_I, c_T) = z + 2c + 3, eps(c_I, 0) = z + 2c - 1, eps(0, 0) = z - 1; eq. 3 of arXiv 2211.09800:
    # eps_u + s_I (eps_I - eps_u) + s_T (eps_TI - eps_I) = z - 1 + s_I * 2c + s_T * 4
    expected = z - 1.0 + s_I * 2.0 * c_img + s_T * 4.0
    assert torch.allclose(guided, expected, atol=1e-5)
    # s_T = s_I = 1 is the fully conditioned prediction; s_T = s_I = 0 the unconditional one
    eps_u, eps_i, eps_t = torch.randn(3, 2, 4, 8, 8)
    assert torch.allclose(dual_guidance(eps_u, eps_i, eps_t, 1.0, 1.0), eps_t)
    assert torch.equal(dual_guidance(eps_u, eps_i, eps_t, 0.0, 0.0), eps_u)


def test_edit_denoises_from_t_back_to_the_latent_when_the_unet_predicts_the_noise(tiny_ip2p):
    # threestudio's debugging/instructpix2pix.yaml guidance keys (min/max_step_percent 0.8 / 0.98)
    guidance = find("instructpix2pix-guidance")({"ip2p_name_or_path": str(tiny_ip2p), "diffusion_steps": 5,
                                                  "min_step_percent": 0.8, "max_step_percent": 0.98})
    assert (guidance.min_step, guidance.max_step) == (800, 980)
    assert guidance.resolution == 64  # the tiny model's native size (512 for the real one)
    torch.manual_seed(1)
    z, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    calls = []

    def oracle(z_t, t):  # the exact noise: every DDIM step keeps x0 = z
        calls.append(int(t[0]))
        return noise

    out = guidance.edit_latents(z, 600, noise, oracle)
    assert torch.allclose(out, z, atol=1e-4)
    assert calls == [600, 480, 360, 240, 120]  # diffusion_steps DDIM steps from the sampled t


# ------------------------------------------------------------------ the dataset update
class RecordingEditor:
    """A guidance stand-in: edit = 1 - render; records the condition image it was given."""

    def __init__(self):
        self.conditions = []

    def __call__(self, render, batch, prompt_utils=None, cond_rgb=None):
        self.conditions.append(cond_rgb.clone())
        return {"edit_images": 1.0 - render}


class FakeSystem:
    """What update_dataset uses of the system: cfg, step, renderer mode switches, renders, guidance."""

    def __init__(self, start: int, every: int):
        self.cfg = SimpleNamespace(start_editing_step=start, per_editing_step=every)
        self.true_global_step = 0
        self.renderer = SimpleNamespace(eval=lambda: None, train=lambda: None)
        self.prompt_utils = None
        self.guidance = RecordingEditor()

    def __call__(self, batch):  # a render that differs per view: 0.1 * (view + 1)
        shape = batch["rgb"].shape
        return {"comp_rgb": (batch["index"].float() + 1.0).view(-1, 1, 1, 1).expand(shape) * 0.1}


def test_dataset_update_replaces_exactly_the_scheduled_views(tmp_path):
    dm = find("multiview-camera-datamodule")({"dataroot": str(write_scene(tmp_path / "scene", n_views=5, size=16)),
                                              "train_downsample_resolution": 2, "batch_size": 2})
    dataset = dm.train_dataset
    system = FakeSystem(start=2, every=3)
    # (step, batch views, views edited then): threestudio's rule — after start_editing_step, a view never
    # edited is edited when drawn; on steps divisible by per_editing_step every drawn view is
    plan = [(1, [0, 1], []), (2, [0, 1], []), (3, [2, 0], [2, 0]), (4, [2, 1], [1]), (5, [0, 2], []),
            (6, [3, 0], [3, 0]), (7, [4, 4], [4, 4]), (8, [4, 3], [])]
    for step, views, expected in plan:
        system.true_global_step = step
        before = dataset.images.clone()
        batch = whole_view_batch(dataset.views, views, dataset.images)
        replaced = InstructNeRF2NeRFSystem.update_dataset(system, batch, dataset)
        assert replaced == expected, f"step {step}"
        for v in range(dataset.n_views):
            if v in expected:
                assert torch.allclose(dataset.images[v], torch.full_like(before[v], 1.0 - 0.1 * (v + 1)))
            else:
                assert torch.equal(dataset.images[v], before[v]), f"step {step}: view {v} changed"
    # the editor is conditioned on the ORIGINAL photos, never on earlier edits
    conditions = torch.cat(system.guidance.conditions)
    edited_views = [v for _, _, expected in plan for v in expected]
    assert torch.equal(conditions, dataset.original_images[edited_views])
    assert sorted(dataset.replaced) == [0, 1, 2, 3, 4]


def test_a_system_with_another_guidance_or_without_lpips_weights_is_a_config_error(tmp_path, tiny_ip2p):
    cfg = {"geometry_type": "implicit-volume", "renderer_type": "nerf-volume-renderer",
           "guidance_type": "instructpix2pix-guidance", "guidance": {"ip2p_name_or_path": str(tiny_ip2p)},
           "loss": {"lambda_l1": 10.0, "lambda_p": 10.0}}
    with pytest.raises(ConfigError, match=r"system\.perceptual_model_path"):
        InstructNeRF2NeRFSystem.validate_config(cfg)
    with pytest.raises(ConfigError, match="use instructpix2pix-guidance"):
        InstructNeRF2NeRFSystem.validate_config({**cfg, "guidance_type": "reference-mesh-guidance", "guidance": {},
                                                 "loss": {"lambda_l1": 1.0}})


# ------------------------------------------------------------------ threestudio's config, verbatim
def test_threestudio_config_validates_with_the_config_tables_overrides(table_models):
    row = check_config(THREESTUDIO_CONFIG, table_models)  # the README table's check (its dataset, models, sizes)
    assert row.outcome == "validates", row.detail


def tiny_overrides(scene: Path, ip2p: Path, sd: Path, lpips: Path, root: Path) -> list[str]:
    """Model paths, the dataset, sizes and steps only."""
    return [
        f"data.dataroot={scene}", f"system.guidance.ip2p_name_or_path={ip2p}",
        f"system.prompt_processor.pretrained_model_name_or_path={sd}", f"system.perceptual_model_path={lpips}",
        "system.start_editing_step=1", "system.guidance.diffusion_steps=3",
        "trainer.max_steps=4", "trainer.val_check_interval=4", "checkpoint.every_n_train_steps=4",
        "trainer.enable_progress_bar=false", "trainer.precision=32",
        "system.renderer.patch_size=16", "system.renderer.base_renderer.num_samples_per_ray=16",
        "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
        "system.geometry.isosurface_resolution=16", f"exp_root_dir={root}", "use_timestamp=false",
    ]


@pytest.mark.slow
def test_threestudio_instructnerf2nerf_config_trains_tests_and_exports(tmp_path, tiny_ip2p, tiny_sd_path, tiny_lpips):
    import launch
    from tests.helpers import only_trial

    config = tmp_path / "instructnerf2nerf.yaml"
    shutil.copy(THREESTUDIO_CONFIG, config)
    scene = write_scene(tmp_path / "scene", n_views=4, size=32)
    root = tmp_path / "out"
    assert launch.main(["--config", str(config), "--train",
                        *tiny_overrides(scene, tiny_ip2p, tiny_sd_path, tiny_lpips, root)]) == 0
    trial = only_trial(root, "ip2p-multiview")
    save, ckpt = trial / "save", trial / "ckpts/last.ckpt"
    logged = (trial / "csv_logs/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_l1", "train/loss_p", "train/loss_orient", "train/loss_sparsity"} <= set(logged)
    assert (save / "it4-targets.png").is_file() and (save / "it4-0.png").is_file()
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert not any("unet" in k or "perceptual" in k for k in checkpoint["state_dict"])
    # the edited training views travel with the checkpoint (steps 2 and 3 edit the views they draw)
    buffer = checkpoint["MultiviewCameraDataModule"]["image_buffer"]
    assert 1 <= len(buffer["index"]) <= 2 and buffer["images"].shape[1:] == (32, 32, 3)
    parsed = trial / "configs/parsed.yaml"
    assert launch.main(["--config", str(parsed), "--test", f"resume={ckpt}"]) == 0
    assert len(list((save / "it4-test").glob("*.png"))) == 2  # eval_data_interval 3 of 4 frames
    assert launch.main(["--config", str(parsed), "--export", f"resume={ckpt}",
                        "system.geometry.isosurface_threshold=auto"]) == 0
    assert (save / "it4-export/model.obj").stat().st_size > 0


def test_lift3d_config_validates_with_the_users_inputs(tmp_path, tiny_ip2p, tiny_sd_path, tiny_lpips):
    from lift3d.config import load_config, validate_experiment

    scene = write_scene(tmp_path / "scene", n_views=3, size=16)
    inputs = [f"data.dataroot={scene}", f"system.guidance.ip2p_name_or_path={tiny_ip2p}",
              f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
              "system.prompt_processor.prompt=make it red"]
    config = str(REPO / "configs" / "instructnerf2nerf.yaml")
    validate_experiment(load_config(config, cli_args=inputs + [f"system.perceptual_model_path={tiny_lpips}"]))
    with pytest.raises(ConfigError, match=r"perceptual_model_path"):  # loss_p without LPIPS weights
        validate_experiment(load_config(config, cli_args=inputs + ["system.perceptual_model_path=null"]))
    validate_experiment(load_config(config, cli_args=inputs + ["system.perceptual_model_path=null", "system.loss.lambda_p=0"]))
