"""TextMesh (#16, docs/methods/textmesh.md): textmesh-system's SDF stage with Stable Diffusion and with DeepFloyd
IF (tiny models), and the textured-mesh refinement that keeps stage 1's surface: its fixed DMTet mesh is the SDF's
zero level set (Chamfer distance to stage 1's own export) and --export writes a textured OBJ; the
sphere-initialised SDF network (SphereInitVanillaMLP)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

NEUS = ["system.renderer.num_samples_per_ray=16"]
SMALL = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.isosurface_resolution=24",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a red cube",
]


def train(launch, config, root, model, cache, *extra):
    args = ["--config", f"configs/{config}.yaml", "--train", f"exp_root_dir={root}", *SMALL,
            f"system.prompt_processor.pretrained_model_name_or_path={model}", f"system.prompt_processor.cache_dir={cache}",
            *extra]
    assert launch.main(args) == 0


def vertices(obj_path) -> torch.Tensor:
    return torch.tensor([list(map(float, line.split()[1:4])) for line in open(obj_path) if line.startswith("v ")])


@pytest.mark.slow
def test_textmesh_sd_then_textured_mesh_refinement(tmp_path, tiny_sd_path):
    import launch
    from tests.helpers import only_trial

    root, cache = tmp_path / "out", tmp_path / "cache"
    train(launch, "textmesh-sd", root, tiny_sd_path, cache, *NEUS)
    sdf = only_trial(root, "textmesh-sd")
    header = (sdf / "csv_logs/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_sds", "train/loss_eikonal", "train/inv_std"} <= set(header)
    assert (sdf / "save/it2-test.mp4").is_file()

    train(launch, "textmesh-refine-sd", root, tiny_sd_path, cache, f"system.geometry_convert_from={sdf}",
          "system.geometry.isosurface_resolution=24", "system.exporter.texture_size=64")
    refine = only_trial(root, "textmesh-refine-sd")
    assert launch.main(["--config", str(refine / "configs/parsed.yaml"), "--export",
                        f"resume={refine / 'ckpts/last.ckpt'}"]) == 0
    export = refine / "save/it2-export"
    assert (export / "model.mtl").is_file() and any(export.glob("texture_kd*.png"))
    # stage 1 starts as the sphere |x| = 0.5 (sdf_bias) and moved two small steps: the fixed refinement mesh is
    # its zero level set, within about a cell of the 24³ conversion grid over [-2, 2]³
    # the refinement's fixed mesh is stage 1's zero level set: against stage 1's own export, a small Chamfer
    # distance (the 24³ grids over [-2, 2]³ have cells of 0.17); both near the initial sphere, radius 0.5 of
    # the [-1, 1] box = 1.0 in world units (geometric initialisation is approximate)
    assert launch.main(["--config", str(sdf / "configs/parsed.yaml"), "--export", f"resume={sdf / 'ckpts/last.ckpt'}"]) == 0
    first, second = vertices(sdf / "save/it2-export/model.obj"), vertices(export / "model.obj")
    d = torch.cdist(second, first)
    chamfer = 0.5 * (d.min(1).values.mean() + d.min(0).values.mean()).item()
    assert second.shape[0] > 50 and chamfer < 0.05, chamfer
    assert 0.8 < float(second.norm(dim=-1).median()) < 1.15


@pytest.mark.slow
def test_textmesh_if_trains_with_deepfloyd(tmp_path):
    import launch
    from lift3d.models.tiny_factory import make_tiny_deepfloyd_if
    from tests.helpers import only_trial

    tiny_if = make_tiny_deepfloyd_if(tmp_path / "tiny-if", seed=3)
    root = tmp_path / "out"
    train(launch, "textmesh-if", root, tiny_if, tmp_path / "cache", *NEUS)
    trial = only_trial(root, "textmesh-if")
    parsed = (trial / "configs/parsed.yaml").read_text()
    assert "deep-floyd-guidance" in parsed and "neus-volume-renderer" in parsed
    state = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("renderer.") for k in state)  # NeuS's learned variance is trained (renderer lr)
    assert not any("unet" in k or "text_encoder" in k for k in state)


def test_sphere_init_mlp_starts_as_a_sphere_sdf_ignoring_the_encoding():
    from lift3d.errors import ConfigError
    from lift3d.networks.mlp import get_mlp

    torch.manual_seed(0)
    cfg = {"otype": "SphereInitVanillaMLP", "activation": "ReLU", "n_neurons": 64, "n_hidden_layers": 1,
           "sphere_init_radius": 0.5, "inside_out": False}
    mlp = get_mlp(3 + 8, 1, cfg)
    x = torch.rand(3000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    r = x.norm(dim=-1)
    sdf = mlp(torch.cat([x, torch.randn(3000, 8)], -1)).squeeze(-1)
    assert torch.equal(sdf, mlp(torch.cat([x, torch.zeros(3000, 8)], -1)).squeeze(-1))  # encoding weights start at 0
    assert bool((sdf[r < 0.3] < 0).all()) and bool((sdf[r > 0.8] > 0).all())  # |x| - 0.5, roughly
    assert torch.corrcoef(torch.stack([sdf, r]))[0, 1] > 0.8
    inside_out = get_mlp(11, 1, {**cfg, "inside_out": True})(torch.cat([x, torch.zeros(3000, 8)], -1)).squeeze(-1)
    assert bool((inside_out[r < 0.3] > 0).all())
    with pytest.raises(ConfigError, match="sphere_init_radius"):
        get_mlp(11, 1, {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1, "sphere_init_radius": 0.5})


def test_textmesh_system_defaults_are_textmeshs():
    from lift3d.registry import find

    cfg = find("textmesh-system").Config()
    assert (cfg.geometry_type, cfg.renderer_type, cfg.guidance_type, cfg.prompt_processor_type) == (
        "implicit-sdf", "neus-volume-renderer", "deep-floyd-guidance", "deep-floyd-prompt-processor")
