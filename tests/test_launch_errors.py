"""Bad input fails before any work starts, with a message naming the problem and the fix."""
import subprocess
import sys

import pytest

import launch

CONFIG = "configs/reconstruct-nerf.yaml"


def run_launch(capsys, tmp_path, *extra):
    code = launch.main(["--config", CONFIG, "--train", f"exp_root_dir={tmp_path}", *extra])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "override, expected",
    [
        # unknown key: names the key, the component and the valid keys
        ("system.geometry.density_biass=1.0",
         ["system.geometry.density_biass", "geometry 'implicit-volume'", "Did you mean: density_bias", "Valid keys:"]),
        ("system.renderer.num_sample_per_ray=8",
         ["system.renderer.num_sample_per_ray", "renderer 'nerf-volume-renderer'", "num_samples_per_ray"]),
        ("data.random_thing=1", ["data.random_thing", "random-camera-datamodule"]),
        ("trainer.max_step=3", ["trainer.max_step", "Trainer", "max_steps"]),
        ("system.loss.lambda_sparsty=1", ["system.loss.lambda_sparsty", "lambda_sparsity"]),
        # unknown registered name: suggests close names
        ("system.geometry_type=implicit-volum", ["unknown registered name 'implicit-volum'", "implicit-volume"]),
        ("system.material_type=no-materal", ["no-material"]),
        # missing files
        ("system.guidance.mesh_path=load/shapes/nope.ply", ["system.guidance.mesh_path", "nope.ply", "does not exist"]),
        ("system.geometry_convert_from=outputs/none/ckpts/last.ckpt", ["geometry_convert_from", "does not exist"]),
        ("resume=outputs/none/ckpts/last.ckpt", ["resume", "does not exist"]),
        # bad override syntax
        ("trainer.max_steps", ["bad override", "key=value"]),
        # a wrong type
        ("system.renderer.num_samples_per_ray=lots", ["system.renderer.num_samples_per_ray"]),
    ],
)
def test_error_before_work(capsys, tmp_path, override, expected):
    code, err = run_launch(capsys, tmp_path, override)
    assert code == 2, err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    # nothing was started: no trial folder was written
    assert not any(tmp_path.iterdir())


def test_missing_config_file(capsys, tmp_path):
    code = launch.main(["--config", str(tmp_path / "missing.yaml"), "--train"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.yaml" in err and "--config" in err


@pytest.mark.parametrize("modes", [[], ["--test", "--export"], ["--train", "--test"]])
def test_one_mode_or_train_then_export(capsys, tmp_path, modes):
    """One of --train --validate --test --export, or --train --export (fit, test pass, export); other
    combinations stop with argparse's exit 2 naming the allowed ones, before any work."""
    with pytest.raises(SystemExit) as stop:
        launch.main(["--config", CONFIG, *modes, f"exp_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--train --validate --test --export" in err
    assert not any(tmp_path.iterdir())


def test_eval_modes_need_a_checkpoint(capsys, tmp_path):
    code = launch.main(["--config", CONFIG, "--export", f"exp_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "resume=" in err


# a real process that records every file it opens (python's audit hook), to show structurally that an
# error comes before any work: no checkpoint or model weights read, nothing written under exp_root_dir
AUDIT_LAUNCH = r"""
import runpy, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and isinstance(args[0], (str, bytes)) else None)
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path("launch.py", run_name="__main__")
finally:
    print("OPENED " + "|".join(opened))
"""
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".bin", ".pt", ".pth")
SAFETY_S = 900  # a generous net for a hung process on a loaded machine, not a speed requirement


def test_cli_error_is_fast_and_clean(tmp_path):
    """Through a real process: exit code 2, one line naming the key, no traceback; "fast" shown
    structurally: no weights opened, no trial folder written (no wall-clock limit)."""
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT_LAUNCH, "--config", CONFIG, "--train", "system.geometry.foo=1",
         f"exp_root_dir={tmp_path}"],
        capture_output=True, text=True, timeout=SAFETY_S,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "system.geometry.foo" in proc.stderr and "Traceback" not in proc.stderr
    opened = proc.stdout.split("OPENED ", 1)[1].split("|")
    assert [f for f in opened if f.endswith(WEIGHT_SUFFIXES)] == []
    assert not any(f.startswith(str(tmp_path)) for f in opened)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("config, key", [("configs/dreamfusion-sd.yaml", "system.prompt_processor.prompt"),
                                         ("configs/reconstruct-dmtet.yaml", "system.geometry_convert_from")])
def test_mandatory_value_missing(capsys, tmp_path, config, key):
    code = launch.main(["--config", config, "--train", f"exp_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "???" in err
    assert not any(tmp_path.iterdir())


def test_truncated_model_weights_stop_the_run_before_any_folder(capsys, tmp_path, tiny_sd_path):
    """A model folder whose UNet weights were cut short (an interrupted download) is one error line naming
    the file, found from the weight files' headers before any trial folder exists (#21)."""
    import shutil

    broken = tmp_path / "tiny-sd-truncated"
    shutil.copytree(tiny_sd_path, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1000])
    root = tmp_path / "out"
    code = launch.main(["--config", "custom/usd/configs/usd-text-to-3D-patch.yaml", "--train", f"exp_root_dir={root}",
                        "system.prompt_processor.prompt=a red car", f"system.prompt_processor.cache_dir={tmp_path / 'c'}",
                        f"system.prompt_processor.pretrained_model_name_or_path={broken}",
                        f"system.guidance.pretrained_model_name_or_path={broken}", "memory_check=false"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lift3d:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(weights) in lines[0] and "is truncated or damaged" in lines[0] and "the file holds" in lines[0]
    assert "pretrained_model_name_or_path=/path/to/a/complete/folder" in lines[0]
    assert not root.exists()  # no trial folder, no config dump
