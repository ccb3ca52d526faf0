"""3D-GAN core (#17 point 1): the dataset's errors, a short toy training that moves G toward the data,
and checkpoint + resume through launch.py (lift3d/gan/)."""
import csv
import json
import sys

import pytest
import torch
from PIL import Image

from lift3d.errors import ConfigError
from lift3d.gan.eg3d_datamodule import EG3DImageDataModule, read_eg3d_labels
from lift3d.gan.gan_system import GANSystem
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny tensors: one thread

TOY_SIZE = 16
TINY_SYSTEM = {
    "generator": dict(z_dim=16, w_dim=16, mapping_layers=2, plane_resolution=16, plane_channels=8, channel_base=256,
                      channel_max=16, decoder_hidden=16, decoder_features=8, neural_rendering_resolution=TOY_SIZE,
                      image_resolution=TOY_SIZE, samples_per_ray=12, ray_start=1.1, ray_end=2.9),
    "discriminator": dict(image_resolution=TOY_SIZE, channel_base=256, channel_max=16, cmap_dim=8),
    "r1_interval": 4, "density_reg_interval": 4, "density_reg_points": 64, "ema_images": 100,
    "sample_every_n_steps": 0, "n_sample_latents": 2, "export_resolution": 24,
}


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    from tools.toyworld.eg3d_dataset import write_toy_eg3d_dataset

    return write_toy_eg3d_dataset(tmp_path_factory.mktemp("toy-eg3d"), "cube", "red", n_images=32, size=TOY_SIZE)


# ------------------------------------------------------------------ dataset errors (before any work)
def _dataset(folder, labels, sizes=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes or []):
        Image.new("RGB", (size, size), (255, 255, 255)).save(folder / f"img{i}.png")
    if labels is not None:
        (folder / "dataset.json").write_text(json.dumps(labels))
    return folder


LABEL = [1.0] * 16 + [1.0] * 9


@pytest.mark.parametrize("labels, sizes, message", [
    (None, [8], "dataset.json' not found"),
    ({"labels": None}, [8], "has no labels"),
    ({"labels": []}, [8], "has no labels"),
    ({}, [8], "has no labels"),
    ({"labels": [["img0.png", [0.0] * 24]]}, [8], r"has 24 values, an EG3D camera label has 25"),
    ({"labels": [["img0.png", LABEL], ["img1.png", LABEL]]}, [8, 16], "images of mixed sizes: 'img0.png' is 8x8 but 'img1.png' is 16x16"),
    ({"labels": [["img0.png", LABEL], ["img7.png", LABEL]]}, [8], "names 'img7.png', which is not in"),
])
def test_dataset_errors_are_one_clear_line(tmp_path, labels, sizes, message):
    folder = _dataset(tmp_path / "ds", labels, sizes)
    with pytest.raises(ConfigError, match=message) as info:
        read_eg3d_labels(str(folder))
    assert "\n" not in str(info.value)


def test_dataset_error_stops_launch_before_any_work(tmp_path, capsys):
    import launch

    folder = _dataset(tmp_path / "ds", {"labels": [["img0.png", [0.0] * 16]]}, [8])
    code = launch.main(["--config", "configs/gan/toy-triplane.yaml", "--train", f"data.dataroot={folder}",
                        f"exp_root_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "labels[0] ('img0.png') has 16 values" in err[0]
    assert not (tmp_path / "out").exists()  # nothing was written


def test_datamodule_batches(toy_dataset):
    dm = EG3DImageDataModule({"dataroot": str(toy_dataset), "batch_size": 4, "n_test_frames": 6})
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, TOY_SIZE, TOY_SIZE) and batch["label"].shape == (4, 25)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1 and batch["image"].min() < 0
    assert dm.resolution == TOY_SIZE and dm.labels.shape == (32, 25)
    assert next(iter(dm.test_dataloader()))["label"].shape == (6, 25)
    assert torch.allclose(dm.up, torch.tensor([0.0, 0.0, 1.0]), atol=0.05)  # the toy world is z-up


# ------------------------------------------------------------------ training moves G toward the data
def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [-1,1] -> [3] the mean colour (white background: the object's colour and size show)."""
    return images.mean(dim=(0, 2, 3))


def test_training_beats_the_initialisation_on_toy_kid_and_colour(toy_dataset):
    import pytorch_lightning as pl

    from lift3d.gan.fid_kid import fid_kid

    pl.seed_everything(0, verbose=False)
    dm = EG3DImageDataModule({"dataroot": str(toy_dataset), "batch_size": 8})
    system = GANSystem({**TINY_SYSTEM, "lr_g": 0.01, "lr_d": 0.01})
    data_images = torch.stack([dm.train_dataset[i]["image"] for i in range(32)])  # [32,3,H,W] in [-1,1]
    data_colour = mean_colour(data_images)
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    c = dm.labels[:32]

    def generated():
        with torch.no_grad():
            return system.G(z, c)["image"]

    def generated_colour():
        return mean_colour(generated())

    kid_before = fid_kid(data_images, generated(), kind="toy")["kid"]
    before = (generated_colour() - data_colour).norm().item()
    trainer = pl.Trainer(max_steps=40, max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, datamodule=dm)
    assert trainer.global_step == 40  # one global step per G step (D steps are not counted)
    after = (generated_colour() - data_colour).norm().item()
    kid_after = fid_kid(data_images, generated(), kind="toy")["kid"]
    print(f"mean-colour distance to the data: {before:.3f} -> {after:.3f}; toy KID {kid_before:.4f} -> {kid_after:.4f}")
    assert after < 0.6 * before
    assert kid_after < 0.75 * kid_before  # 1.13 -> 0.61 at seed 0; toy features (colour, layout, edges): lift3d/gan/fid_kid.py


# ------------------------------------------------------------------ launch.py: checkpoints, resume, test pass, export
TINY_OVERRIDES = [
    f"system.generator.{k}={v}" for k, v in TINY_SYSTEM["generator"].items()
] + [f"system.discriminator.{k}={v}" for k, v in TINY_SYSTEM["discriminator"].items()] + [
    "system.density_reg_points=64", "system.n_sample_latents=2", "system.sample_every_n_steps=2",
    "system.export_resolution=24", "data.batch_size=4", "data.n_test_frames=2", "data.eval_batch_size=2",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=2",
]


def _logged_steps(trial):
    with open(trial / "csv_logs" / "metrics.csv") as fp:
        return [int(r["step"]) for r in csv.DictReader(fp) if r.get("train/loss_g")]


def test_launch_train_resume_test_and_export(toy_dataset, tmp_path, capsys):
    import launch

    common = ["--config", "configs/gan/toy-triplane.yaml", f"data.dataroot={toy_dataset}", f"exp_root_dir={tmp_path}",
              *TINY_OVERRIDES]
    assert launch.main([*common[:2], "--train", *common[2:], "trainer.max_steps=4"]) == 0
    (trial,) = list((tmp_path / "gan-toy-triplane").iterdir())
    first = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4 and len(first["optimizer_states"]) == 2
    assert (trial / "ckpts" / "epoch=0-step=2.ckpt").is_file()
    assert (trial / "save" / "it2-samples.png").is_file() and (trial / "save" / "it4-samples.png").is_file()
    assert (trial / "save" / "it4-test-latent1.mp4").is_file() and (trial / "save" / "it4-test" / "latent0" / "1.png").is_file()
    assert any((trial / "tb_logs").iterdir())

    parsed = ["--config", str(trial / "configs" / "parsed.yaml")]
    assert launch.main([*parsed, "--train", f"resume={trial / 'ckpts' / 'last.ckpt'}", "trainer.max_steps=6"]) == 0
    resumed = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6
    # both Adam states came back: 6 updates each, not 2 since the resume
    assert [float(opt["state"][0]["step"]) for opt in resumed["optimizer_states"]] == [6.0, 6.0]
    steps = _logged_steps(trial)
    assert steps == sorted(steps) and steps[-1] == 5 and steps.count(3) == 1  # continued at step 4, no rerun
    assert not torch.equal(first["state_dict"]["G.decoder.net.0.weight"], resumed["state_dict"]["G.decoder.net.0.weight"])

    # --export: marching cubes of latent 0's density at a level its field crosses
    system = GANSystem(OmegaConfLoad(trial)["system"])
    system.load_state_dict(resumed["state_dict"])
    from lift3d.gan.mesh_export import density_grid

    ws = system.G_ema.mapping(system.sample_z[:1], toy_label(toy_dataset))
    field = density_grid(lambda p: system.G_ema.query(system.G_ema.planes(ws), p), 24, 1.0)
    level = float((field.min() + field.max()) / 2)
    assert launch.main([*parsed, "--export", f"resume={trial / 'ckpts' / 'last.ckpt'}", f"system.export_level={level}"]) == 0
    import trimesh

    mesh = trimesh.load(trial / "save" / "it6-export" / "latent0.obj", process=False)
    assert len(mesh.faces) > 0 and abs(mesh.vertices).max() <= 0.5 + 1e-4
    assert (trial / "save" / "it6-export" / "latent0.glb").is_file()


def OmegaConfLoad(trial):
    from omegaconf import OmegaConf

    return OmegaConf.load(trial / "configs" / "parsed.yaml")


def toy_label(folder):
    from lift3d.gan.eg3d_datamodule import central_label

    return central_label(read_eg3d_labels(str(folder))[1])[None]
