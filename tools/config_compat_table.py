"""Which threestudio / USD configs run in lift3d: tries each config and writes the README table.

    python -m tools.config_compat_table DIR [DIR ...] [--check-only] [--readme README.md] [--out table.md]

Each YAML under the given folders is tried as a new user would: the file unchanged, plus command-line
overrides of only the model paths (tiny random models in the real layouts, lift3d.models.tiny_factory),
the prompt / input image / input files, the sizes (32² renders, a few samples per ray, a small hash
grid) and the step counts (`tiny_overrides`). A stage that continues another
(`system.geometry_convert_from: ???`) runs from the checkpoint of the stage named in `PREVIOUS_STAGE`
(with --check-only, or when that stage is not among the configs, from a fresh geometry).

Outcomes, one row per config:
- `runs`: train (2 steps) + test pass + export through launch.py, each exit code 0 (with --check-only:
  the whole experiment validates with the tiny models, `validates`);
- `needs <component> (#issue)`: stops before any work with lift3d.compat.missing's message;
- `not an experiment`: a guidance snippet without data/system (threestudio's configs/debugging/);
- `error: ...`: any other ConfigError (a gap to fix), `crash: ...`: any other exception.
The table is generated, so it cannot drift from the code: rerun the script after a change.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

TABLE_BEGIN = "<!-- config-compat-table:begin -->"
TABLE_END = "<!-- config-compat-table:end -->"
PROMPT = "a red cube"
IMAGE = "load/images/blocks_rgba.png"
ENV_MAP = "load/lights/studio_sky.hdr"  # threestudio's configs name load/lights/mud_road_puresky_1k.hdr
# stage -> the stage whose checkpoint it continues (file names without .yaml, relative to its folder)
PREVIOUS_STAGE = {
    "magic3d-refine-sd": "magic3d-coarse-sd",
    "fantasia3d-texture": "fantasia3d",
    "prolificdreamer-geometry": "prolificdreamer",  # threestudio README: stage 1 is prolificdreamer.yaml
    "prolificdreamer-texture": "prolificdreamer-geometry",
    "zero123-geometry": "stable-zero123",  # its texture field matches (zero123.yaml: progressive band, 1 layer)
    "magic123-refine-sd": "magic123-coarse-sd",
    "magic123-hifa-refine-sd": "magic123-hifa-coarse-sd",
    "usd-text-to-3D-geometry": "usd-text-to-3D-patch",
    "usd-text-to-3D-texture": "usd-text-to-3D-geometry",
    "imagecondition_zero123nerf_refine": "stable-zero123",  # its texture field matches (imagecondition's: 1 layer)
    "latentnerf-refine": "latentnerf",
}
SINGLE_IMAGE_MODULES = ("single-image-datamodule", "single-image2-datamodule")
ZERO123_GUIDANCES = ("zero123-guidance", "stable-zero123-guidance", "zero123-unified-guidance")
IF_GUIDANCES = ("deep-floyd-guidance",)
MODEL_KEYS = ("pretrained_model_name_or_path", "pretrained_model_name_or_path_lora", "vsd_phi_model_name_or_path",
              "sd_model_name_or_path", "zero123_model_name_or_path", "ip2p_name_or_path")


def make_inputs(folder: Path) -> str:
    """An input image as threestudio's preprocessing leaves it: <name>_rgba.png with <name>_depth.png and
    <name>_normal.png beside it (synthetic estimates of the shipped blocks image: depth from the
    alpha, normals facing the camera). Returns the image path."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgba = np.asarray(Image.open(REPO / IMAGE).convert("RGBA"))
    image = folder / "blocks_rgba.png"
    Image.fromarray(rgba).save(image)
    alpha = rgba[..., 3]
    Image.fromarray((255 - alpha // 2).astype(np.uint8)).save(folder / "blocks_depth.png")
    normal = np.zeros(rgba.shape[:2] + (3,), np.uint8)
    normal[alpha > 127] = (128, 128, 255)
    Image.fromarray(normal).save(folder / "blocks_normal.png")
    return str(image)


@dataclass
class TinyModels:
    sd: str
    zero123: str
    deepfloyd_if: str
    image: str = IMAGE

    @classmethod
    def build(cls, folder: Path) -> "TinyModels":
        from lift3d.models.tiny_factory import make_tiny_deepfloyd_if, make_tiny_sd, make_tiny_zero123

        paths = {}
        for name, make in (("sd", make_tiny_sd), ("zero123", make_tiny_zero123), ("deepfloyd_if", make_tiny_deepfloyd_if)):
            target = folder / name
            if not (target / "model_index.json").is_file():
                make(target, seed=0)
            paths[name] = str(target)
        return cls(**paths, image=make_inputs(folder / "inputs"))


def co3d_sequence(models: TinyModels) -> str:
    """A synthetic CO3D sequence (tools/co3d_synthetic.py, 101 views: threestudio's train_views [0, 50, 100]
    exist) beside the input image (in the temp folder when that image is the repository's), written once."""
    import os
    import tempfile

    from tools.co3d_synthetic import write_co3d_sequence

    root = Path(models.image).resolve().parent / "co3d"
    if REPO in root.parents:
        root = Path(tempfile.gettempdir()) / f"lift3d-co3d-{os.getuid()}"
    if not (root / "toy" / "frame_annotations.jgz").is_file():  # written last
        write_co3d_sequence(root, n_frames=101)
    return str(root / "toy" / "seq_0")


def _tiny_beside(models: TinyModels, name: str, make: Any, marker: str) -> str:
    """A tiny model / dataset `name` built once beside the tiny SD (the table's model folder)."""
    target = Path(models.sd).parent / name
    if not (target / marker).is_file():
        make(target)
    return str(target)


def multiview_scene(models: TinyModels) -> str:
    """A posed-photo scene (tools/multiview_synthetic.py, 6 views of 32²) for multiview-camera-datamodule."""
    from tools.multiview_synthetic import write_multiview_scene

    return _tiny_beside(models, "multiview-scene", write_multiview_scene, "transforms.json")


def tiny_instruct_pix2pix(models: TinyModels) -> str:
    from lift3d.models.tiny_factory import make_tiny_instruct_pix2pix

    return _tiny_beside(models, "instruct-pix2pix", make_tiny_instruct_pix2pix, "model_index.json")


def tiny_lpips(models: TinyModels) -> str:
    from lift3d.models.lpips import LIN_FILE
    from lift3d.models.tiny_factory import make_tiny_lpips

    return _tiny_beside(models, "lpips", make_tiny_lpips, LIN_FILE)


def tiny_controlnet(models: TinyModels) -> str:
    """A ControlNet folder built from the tiny SD (stable-diffusion-controlnet-guidance's controlnet_name_or_path)."""
    from lift3d.models.tiny_factory import make_tiny_controlnet

    return _tiny_beside(models, "controlnet", lambda target: make_tiny_controlnet(target, models.sd), "config.json")


# ---------------------------------------------------------------- overrides
def _plain(raw: Any, key: str) -> Any:
    return OmegaConf.select(raw, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)


def _is_missing(raw: Any, key: str) -> bool:
    """Whether `key` holds ??? (a value the config leaves to the user)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(raw, parent_key, default=None, throw_on_missing=False) if parent_key else raw
    if not OmegaConf.is_dict(parent) or leaf not in parent.keys():
        return False
    return OmegaConf.is_missing(parent, leaf)


def _positive_somewhere(value: Any) -> bool:
    from lift3d.config import schedule_max

    try:
        return value is not None and schedule_max(value) > 0
    except Exception:  # noqa: BLE001 - not a schedule: the config's own check reports it
        return False


def _declares(type_name: Any, key: str) -> bool:
    """Whether the registered component `type_name` has the config key `key`."""
    import dataclasses

    from lift3d.registry import find, is_registered

    if not isinstance(type_name, str) or not is_registered(type_name):
        return False
    return any(f.name == key for f in dataclasses.fields(find(type_name).Config))


def _has_isosurface_threshold(geometry_type: Any) -> bool:
    """Whether the geometry extracts its surface at a level (`isosurface_threshold`, "auto" allowed)."""
    import dataclasses

    from lift3d.registry import find, is_registered

    if not isinstance(geometry_type, str) or not is_registered(geometry_type):
        return False
    return any(f.name == "isosurface_threshold" for f in dataclasses.fields(find(geometry_type).Config))


def _sized(value: Any, size: Any) -> str:
    """`size` as an override value shaped like `value` (an int, or a list of the same length)."""
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return "[" + ",".join(str(size) for _ in range(len(value))) + "]"
    return str(size)


def _model_for(section_type: Optional[str], key: str, models: TinyModels, section: str) -> str:
    if key == "ip2p_name_or_path":
        return tiny_instruct_pix2pix(models)
    if key == "zero123_model_name_or_path" or (section_type in ZERO123_GUIDANCES and key == "pretrained_model_name_or_path"):
        return models.zero123
    if section_type in IF_GUIDANCES or (section == "prompt_processor" and section_type == "deep-floyd-prompt-processor"):
        return models.deepfloyd_if
    return models.sd


def input_overrides(raw: Any, models: TinyModels, previous_ckpt: Optional[str] = None) -> list[str]:
    """Model paths, prompt, input image / files and the previous stage: what a user changes."""
    out: list[str] = []
    system = raw.get("system") or {}
    for section in ("guidance", "guidance_3d", "prompt_processor"):
        body = system.get(section)
        if not isinstance(body, dict) and not OmegaConf.is_dict(body):
            continue
        section_type = system.get(f"{section}_type")
        for key in MODEL_KEYS:
            given = key in body and isinstance(body.get(key), str) and body.get(key)
            # a model the config leaves to the component's default (a hub id) is given too
            default = key in ("pretrained_model_name_or_path", "ip2p_name_or_path") and key not in body \
                and section != "prompt_processor" and _declares(section_type, key)
            if given or default:
                out.append(f"system.{section}.{key}={_model_for(section_type, key, models, section)}")
    if system.get("guidance_type") == "usd-guidance":  # the USD repository hard-codes its Zero-1-to-3 folder
        out.append(f"system.guidance.zero123_model_name_or_path={models.zero123}")
    if _is_missing(raw, "system.prompt_processor.prompt"):
        out.append(f"system.prompt_processor.prompt={PROMPT}")
    elif raw.get("data_type") == "multiview-camera-datamodule" and "prompt" not in (system.get("prompt_processor") or {}):
        out.append(f"system.prompt_processor.prompt={PROMPT}")  # control4d-static.yaml: given on the command line
    data = raw.get("data") or {}
    if "image_path" in data.keys():  # (a ??? value is not `in` a DictConfig)
        out.append(f"data.image_path={models.image}")
    if raw.get("data_type") == "co3d-datamodule" and _is_missing(raw, "data.root_dir"):  # a CO3D sequence
        out.append(f"data.root_dir={co3d_sequence(models)}")
    loss = system.get("loss") or {}
    if raw.get("data_type") == "multiview-camera-datamodule" and (_is_missing(raw, "data.dataroot")
                                                                  or not _plain(raw, "data.dataroot")):
        out.append(f"data.dataroot={multiview_scene(models)}")  # posed photos (InstructNeRF2NeRF, Control4D)
    if _declares(raw.get("system_type"), "perceptual_model_path") and _positive_somewhere(loss.get("lambda_p")):
        out.append(f"system.perceptual_model_path={tiny_lpips(models)}")  # LPIPS weights (lift3d.models.lpips)
    if _declares(system.get("guidance_type"), "controlnet_name_or_path"):  # threestudio picks one per control_type
        out.append(f"system.guidance.controlnet_name_or_path={tiny_controlnet(models)}")
    if raw.get("data_type") in SINGLE_IMAGE_MODULES and "requires_depth" not in data.keys() \
            and _positive_somewhere(loss.get("lambda_depth")):  # older configs: the depth estimate is an input
        out.append("data.requires_depth=true")
    if isinstance(system.get("guidance"), dict) or OmegaConf.is_dict(system.get("guidance")):
        if "image_path" in system.guidance:
            out.append(f"system.guidance.image_path={models.image}")
    material = system.get("material") or {}
    if "environment_texture" in material:
        out.append(f"system.material.environment_texture={ENV_MAP}")
    for key in ("system.geometry_convert_from", "system.weights"):  # a stage that continues another
        if _is_missing(raw, key):
            out.append(f"{key}={previous_ckpt if previous_ckpt else 'null'}")
    return out


def tiny_overrides(raw: Any, steps: int = 2) -> list[str]:
    """Sizes and steps small enough for a CPU (lists keep their length: resolution stages stay)."""
    out = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"checkpoint.every_n_train_steps={steps}",
           "trainer.enable_progress_bar=false", "trainer.precision=32", "trainer.num_sanity_val_steps=0"]
    if "limit_val_batches" in (raw.get("trainer") or {}):
        out.append("trainer.limit_val_batches=1")
    data = raw.get("data") or {}
    cameras = ["data"] + (["data.random_camera"] if "random_camera" in data or raw.get("data_type") in SINGLE_IMAGE_MODULES else [])
    cameras += ["data.random_camera2"] if "random_camera2" in data else []  # single-image2-datamodule's second stream
    for prefix in cameras:
        section = _plain(raw, prefix) or {}
        for key, size in (("height", 32), ("width", 32), ("batch_size", 1)):
            value = section.get(key) if key in section else None
            out.append(f"{prefix}.{key}={_sized(value, size)}")
        if prefix.startswith("data.random_camera") or raw.get("data_type") not in SINGLE_IMAGE_MODULES:
            out += [f"{prefix}.eval_height=32", f"{prefix}.eval_width=32", f"{prefix}.n_val_views=1",
                    f"{prefix}.n_test_views=2"]
    if raw.get("data_type") == "co3d-datamodule":  # its eval cameras are data.random_camera's only
        out = [o for o in out if not o.startswith(("data.eval_", "data.n_val_views=", "data.n_test_views="))]
    if raw.get("data_type") == "co3d-datamodule":  # its eval cameras are data.random_camera's only
        out = [o for o in out if not o.startswith(("data.eval_", "data.n_val_views=", "data.n_test_views="))]
    if raw.get("data_type") == "multiview-camera-datamodule":  # sizes are the photos' (32²) / downsampling
        out = [o for o in out if not o.startswith(("data.height=", "data.width=", "data.eval_", "data.n_val_views=",
                                                   "data.n_test_views="))]
    if raw.get("system_type") == "instructnerf2nerf-system":
        out.append("system.start_editing_step=0")  # dataset updates within the tiny run
    if raw.get("system_type") == "control4d-multiview-system":  # the PatchGAN needs views of 24+ px; an edit at step 0
        out += ["data.train_downsample_resolution=1", "system.start_editing_step=-1"]
    if "sample_height" in data:
        out += ["data.sample_height=16", "data.sample_width=16"]
    system = raw.get("system") or {}
    geometry = system.get("geometry") or {}
    encoding = geometry.get("pos_encoding_config") or {}
    if encoding:
        out += ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]
        if "start_level" in encoding:
            out.append("system.geometry.pos_encoding_config.start_level=2")
    if _has_isosurface_threshold(system.get("geometry_type")):  # 2 steps leave a faint field: its mean level
        out.append("system.geometry.isosurface_threshold=auto")
    if "shape_init" in geometry:  # the SDF's fit to its initial shape: a few steps on few points
        out += ["system.geometry.shape_init_steps=10", "system.geometry.shape_init_batch_size=1000"]
    # (implicit-sdf's marching tetrahedra at its default 128 take most of a tiny run's time)
    if "isosurface_resolution" in geometry or system.get("geometry_type") in ("tetrahedra-sdf-grid", "implicit-sdf"):
        out.append("system.geometry.isosurface_resolution=16")
    renderer = system.get("renderer") or {}
    if system.get("renderer_type") == "patch-renderer":
        out += ["system.renderer.patch_size=16"]
        if "base_renderer" in renderer:
            out.append("system.renderer.base_renderer.num_samples_per_ray=16")
        if "num_samples_per_ray" in renderer:  # a base-renderer key beside the patch keys (threestudio's form)
            out.append("system.renderer.num_samples_per_ray=16")
    elif "num_samples_per_ray" in renderer:
        out.append("system.renderer.num_samples_per_ray=16")
    for key in ("num_samples_per_ray_importance", "num_samples_per_ray_proposal"):  # importance / proposal samplers
        if key in renderer:
            out.append(f"system.renderer.{key}=16")
    return out


# ---------------------------------------------------------------- one config
@dataclass
class Row:
    config: str
    outcome: str  # runs | validates | needs | not an experiment | error | crash
    detail: str = ""
    seconds: float = 0.0
    trial: Optional[Path] = None


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("lift3d: "):
            return ln[len("lift3d: "):]
    return lines[-1] if lines else ""


def _launch(argv: list[str]) -> tuple[int, str]:
    import launch

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = launch.main(argv)
    return code, err.getvalue()


def _outcome_of_error(message: str) -> tuple[str, str]:
    if message.startswith("error: this config cannot run yet:"):
        return "needs", message[len("error: this config cannot run yet: "):]
    if "not a launch.py experiment" in message:
        return "not an experiment", message[len("error: "):]
    if message.startswith("error:"):
        return "error", message[len("error: "):]
    return "crash", message


def check_config(path: Path, models: TinyModels, previous_ckpt: Optional[str] = None) -> Row:
    """Validate the experiment as launch.py --train would (no build, no model weights read)."""
    from lift3d.config import load_config, validate_experiment
    from lift3d.errors import Lift3DError

    start = time.perf_counter()
    try:
        raw = OmegaConf.load(path)
        overrides = input_overrides(raw, models, previous_ckpt) + tiny_overrides(raw)
        cfg = load_config(str(path), cli_args=overrides)
        validate_experiment(cfg, fitting=True, cli_args=overrides)
        return Row(str(path), "validates", "", time.perf_counter() - start)
    except Lift3DError as exc:
        outcome, detail = _outcome_of_error(f"error: {exc}")
        return Row(str(path), outcome, detail, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a crash is what this table reports
        return Row(str(path), "crash", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


def run_config(path: Path, models: TinyModels, root: Path, previous_ckpt: Optional[str] = None) -> Row:
    """Train + test + export through launch.py (in this process), as a user would."""
    start = time.perf_counter()
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001
        return Row(str(path), "crash", f"{type(exc).__name__}: {exc}")
    overrides = input_overrides(raw, models, previous_ckpt) + tiny_overrides(raw) + [f"exp_root_dir={root}", "use_timestamp=false"]
    code, err = _launch(["--config", str(path), "--train", *overrides])
    if code != 0:
        outcome, detail = _outcome_of_error(_first_line(err)) if code == 2 else ("crash", _first_line(err))
        return Row(str(path), outcome, detail, time.perf_counter() - start)
    trials = sorted((p for p in root.rglob("parsed.yaml")), key=lambda p: p.stat().st_mtime)
    trial = trials[-1].parent.parent
    ckpts = sorted((trial / "ckpts").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return Row(str(path), "error", "training wrote no checkpoint", time.perf_counter() - start, trial)
    # 2 steps leave a faint density: export at its mean level (threestudio's advice for NeRF exports)
    export_level = ["system.geometry.isosurface_threshold=auto"] if _has_isosurface_threshold(_plain(raw, "system.geometry_type")) else []
    for mode, extra in (("--test", []), ("--export", export_level)):
        code, err = _launch(["--config", str(trial / "configs/parsed.yaml"), mode, f"resume={ckpts[-1]}", *extra])
        if code != 0:
            return Row(str(path), "crash" if code != 2 else "error", f"{mode}: {_first_line(err)}",
                       time.perf_counter() - start, trial)
    return Row(str(path), "runs", "train, test, export", time.perf_counter() - start, trial)


# ---------------------------------------------------------------- all configs
def config_files(folders: list[Path]) -> list[tuple[Path, Path]]:
    """(folder, yaml) for every YAML under the folders, sorted."""
    found = []
    for folder in folders:
        found += [(folder, p) for p in sorted(folder.rglob("*.yaml"))]
    return found


def previous_of(folder: Path, path: Path, files: list[tuple[Path, Path]]) -> Optional[Path]:
    """The config of the stage `path` continues (PREVIOUS_STAGE): in its own folder first, else
    anywhere under the same root folder."""
    previous = PREVIOUS_STAGE.get(path.stem)
    if not previous:
        return None
    same_root = [p for f, p in files if f == folder and p.stem == previous]
    near = [p for p in same_root if p.parent == path.parent]
    return (near or same_root or [None])[0]


def stage_order(files: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Files with every previous stage before the stage that continues it."""
    by_path = {p: (f, p) for f, p in files}
    ordered: list[tuple[Path, Path]] = []

    def visit(item: tuple[Path, Path]) -> None:
        if item in ordered:
            return
        previous = previous_of(item[0], item[1], files)
        if previous is not None:
            visit(by_path[previous])
        ordered.append(item)

    for item in files:
        visit(item)
    return ordered


def evaluate(folders: list[Path], check_only: bool, work: Path, log=print) -> list[Row]:
    models = TinyModels.build(work / "tiny-models")
    files = config_files(folders)
    rows: dict[Path, Row] = {}
    for folder, path in stage_order(files):
        previous = previous_of(folder, path, files)
        prev_row = rows.get(previous) if previous is not None else None
        prev_ckpt = None
        if prev_row is not None and prev_row.trial is not None:
            ckpts = sorted((prev_row.trial / "ckpts").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
            prev_ckpt = str(ckpts[-1]) if ckpts else None
        row = check_config(path, models, prev_ckpt)
        if not check_only and row.outcome == "validates":  # one run folder per file (two stages may share a stem)
            row = run_config(path, models, work / "runs" / path.relative_to(folder).with_suffix(""), prev_ckpt)
        row.config = str(path.relative_to(folder.parent))
        rows[path] = row
        log(f"{row.outcome:18s} {row.config} ({row.seconds:.1f} s) {row.detail[:160]}")
    return list(rows.values())


def table(rows: list[Row], check_only: bool) -> str:
    done = "validates" if check_only else "runs"
    counts = {k: sum(r.outcome == k for r in rows) for k in (done, "needs", "not an experiment", "error", "crash")}
    lines = [f"{len(rows)} configs: {counts[done]} {done.replace('runs', 'run')}, {counts['needs']} stop before any work "
             f"naming a missing component, {counts['not an experiment']} not an experiment, "
             f"{counts['error']} other errors, {counts['crash']} crashes "
             f"({'--check-only: validated with tiny models' if check_only else 'train + test + export, tiny models, 2 steps'}; "
             f"`python -m tools.config_compat_table`).", "", "| config | outcome |", "|---|---|"]
    for r in sorted(rows, key=lambda r: r.config):
        if r.outcome in ("runs", "validates"):
            text = r.outcome
        elif r.outcome == "needs":
            found = re.findall(r"= '([^']+)' needs .*? of (.*?), which lift3d does not have yet \(issue #(\d+)\)", r.detail)
            text = "needs " + ", ".join(f"`{name}` ({method}, #{issue})" for name, method, issue in found)
        else:
            text = f"{r.outcome}: {r.detail}"
        lines.append(f"| `{r.config}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if TABLE_BEGIN not in content or TABLE_END not in content:
        raise SystemExit(f"{readme} has no {TABLE_BEGIN} ... {TABLE_END} markers")
    head, rest = content.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    readme.write_text(f"{head}{TABLE_BEGIN}\n{text}{TABLE_END}{tail}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.config_compat_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders of YAML configs (searched recursively)")
    parser.add_argument("--check-only", action="store_true", help="only parse and validate (quick)")
    parser.add_argument("--readme", type=Path, help="write the table between the markers of this README")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--work", type=Path, help="folder for tiny models and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    with tempfile.TemporaryDirectory(prefix="config-compat-") as tmp:
        work = args.work or Path(tmp)
        rows = evaluate([f.resolve() for f in args.folders], args.check_only, work)
    text = table(rows, args.check_only)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    if args.readme:
        write_readme(args.readme, text)
    return 1 if any(r.outcome == "crash" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
