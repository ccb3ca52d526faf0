"""Pre-flight memory check (issue #24): estimate a run's peak from its config, before any model is
loaded or trial folder written, and refuse to start — exit 2, one message — when it does not fit.

    peak = process baseline + weights on disk + field parameters (× optimizer state when training)
           + max(training step, evaluation view)

- training step, volume renderers: rays × samples per ray × kept fraction × bytes held per kept
  sample + the larger of the march chunk (bytes per pruned candidate) and one recomputed run of
  `checkpoint_samples` (with checkpoint_samples=0, or at most that many kept samples, which are not
  checkpointed: march chunk + kept samples × bytes per sample with all activations); the patch
  renderer's rays are the low-resolution frame plus one patch; progressive sizes stage by stage;
- evaluation view, volume renderers: min(rays × samples per ray, `eval_max_samples`) × bytes per
  shaded sample (hash grid + MLPs + finite-difference normals, no autograd) + per-ray buffers — the
  renderer shades in sample chunks (lift3d/renderers/nerf_volume_renderer.py), so this no longer
  grows with the resolution;
- mesh rasterizer: pixels × bytes per pixel (rasterize, interpolate, antialias, texture field) +
  the DMTet grid (tets and marching tetrahedra intermediates ∝ resolution³);
- the guidance's VAE encoder (training step): every view of the step resized to the model's resolution
  and encoded with autograd — views × resolution² × the encoder's held bytes per pixel, from the model's
  vae/config.json (SD 2.1's VAE: ~13.5 KB per pixel in float32, 3.3 GB for one 512² view; half on a GPU
  in half precision); the one cost of the real models that tiny test models do not show;
- weights: the size on disk of every model folder or checkpoint the config names (keys ending in
  `model_name_or_path`, `geometry_convert_from`, `resume`), Hugging Face ids looked up in the hub cache.

The per-sample / per-pixel figures are peak RSS increments measured on CPU with the shipped hash grid
(benchmarks/bench_memory.py checks the whole estimate against measured peaks: benchmarks/RESULTS.md).
Free memory: /proc/meminfo MemAvailable on CPU, torch.cuda.mem_get_info on GPU; the environment
variable LIFT3D_FREE_MEMORY (bytes, or a number with K/M/G) replaces the measured figure (tests,
or to reserve memory for something else). `memory_check=false` on the command line, or
`memory_check: false` at the config file's top level, skips the check (the estimate is still printed).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lift3d.errors import ConfigError

MB = 2**20
GB = 2**30

# ---------------------------------------------------------------- measured figures (CPU, float32)
BASELINE_CPU = 900 * MB  # Python + torch + Lightning + diffusers + data module, before any rendering
BASELINE_GPU = 0  # device memory: the CUDA context is already taken when mem_get_info is read
EVAL_SAMPLE_BASE = 3730  # bytes per shaded sample at evaluation (finite-difference normals: 7 field queries) ...
EVAL_SAMPLE_PER_LEVEL = 127  # ... plus this per hash-grid level
MARCH_CANDIDATE = 1200  # bytes per candidate sample while marching with alpha pruning (one field query)
TRAIN_SAMPLE = 1700  # bytes per kept sample in a training step (forward + backward), activations held
# with the NeRF renderer's checkpoint_samples (default): held per kept sample until the backward pass
# (positions, directions, ray indices, density, features, compositing), and per sample of the one run
# that is recomputed at a time (geometry forward + backward, hash-grid gradient transients)
TRAIN_SAMPLE_HELD = 220
TRAIN_SAMPLE_RECOMPUTED = 2000
KEPT_FRACTION = 0.10  # kept / candidate samples of an early (blob-initialised) field (usd-patch at 512², step 1)
PER_RAY_EVAL = 160  # per-ray buffers of an evaluation view (outputs, marching bounds, images)
# mesh stages, fitted to the measured peaks of usd-text-to-3D-texture, magic3d-refine-sd and
# xdreamer-geometry with tiny models (benchmarks/RESULTS.md, #24: 1.4–1.7 GB whatever the batch, 1 or 4
# views of 512², so the per-pixel part is small next to the run-to-run spread of ~150 MB) and to
# marching tets alone (res 64 / 128: 221 B per cube held — 6 tets × 4 int64 + vertices — and
# 276–326 B at the peak of marching + backward). The guidance's VAE encoder is counted on its own (below).
RASTER_PIXEL_TRAIN = 100  # bytes per pixel of a mesh-rasterizer training view (with autograd)
RASTER_PIXEL_EVAL = 50  # bytes per pixel of a mesh-rasterizer evaluation view
DMTET_PER_CUBE = 250  # bytes per lattice cube of a DMTet grid: its tets + the marching-tets transients
DMTET_PER_VERTEX = 16  # parameters per grid vertex: SDF + deformation (float32), before optimizer state
ADAM_STATE = 4  # parameter + gradient + two moments
# the guidance's VAE encoder with autograd (render -> latents in SDS-type guidance): bytes held per channel
# and pixel of each encoder level, float32 — Stable Diffusion 2.1's VAE (channels 128/256/512/512) at 256²
# held 12.5–13.5 KB per input pixel for its backward = 232 channel-pixels per input pixel (sum of C_l / 4^l)
VAE_ENCODER_PER_CHANNEL_PIXEL = 58
SD_VAE_CHANNELS = (128, 256, 512, 512)  # when the model's config cannot be read here (a hub id not cached yet)
SD_UNET_SAMPLE_SIZE = 64

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
ENV_FREE = "LIFT3D_FREE_MEMORY"


class MemoryBudgetError(ConfigError):
    """The estimated peak does not fit in the free memory."""


@dataclass
class MemoryEstimate:
    device: str
    baseline: int
    weights: int
    params: int
    train_step: int
    eval_view: int
    keys: list[str] = field(default_factory=list)  # config keys that lower the estimate

    @property
    def peak(self) -> int:
        return self.baseline + self.weights + self.params + max(self.train_step, self.eval_view)

    def as_mb(self) -> dict[str, float]:
        return {"train_step_mb": self.train_step / MB, "eval_view_mb": self.eval_view / MB,
                "weights_mb": self.weights / MB, "params_mb": self.params / MB, "peak_mb": self.peak / MB}

    def summary(self) -> str:
        return (f"peak {self.peak / MB:.0f} MB (training step {self.train_step / MB:.0f} MB, evaluation view "
                f"{self.eval_view / MB:.0f} MB, weights {self.weights / MB:.0f} MB, field {self.params / MB:.0f} MB, "
                f"process {self.baseline / MB:.0f} MB) on {self.device}")


# ---------------------------------------------------------------- config reading
def _get(section: Any, key: str, default: Any = None) -> Any:
    try:
        value = section.get(key, default) if section is not None else default
    except Exception:  # noqa: BLE001 - a missing (???) value reads as the default
        return default
    return default if value is None else value


def _largest(value: Any) -> int:
    """A size that may be a schedule list (progressive resolution) → its largest entry."""
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return max(int(v) for v in value)
    except Exception:  # noqa: BLE001
        return 0


def _component_cfg(type_name: str, section: Any) -> Any:
    from lift3d.config import parse_structured
    from lift3d.registry import find

    return parse_structured(find(type_name).Config, section if section is not None else {})


def _schedule(section: Any, key: str, default: int) -> list[int]:
    """A size that may be a per-stage list (threestudio's resolution_milestones) -> its stages."""
    value = _get(section, key, default)
    if isinstance(value, (int, float)):
        return [int(value)]
    try:
        return [int(v) for v in value] or [int(default)]
    except Exception:  # noqa: BLE001 - an unreadable value reads as the default
        return [int(default)]


Stage = tuple  # (batch, height, width, reference views (batch, height, width) or None)


def _frames(data: Any) -> tuple[list[Stage], int]:
    """The training resolution stages of the data section, each (batch, height, width, reference), and the
    evaluation pixels per view. Sizes given as lists (threestudio's progressive resolution, batch sizes
    falling as the size grows) are read stage by stage, not as the largest of each; image-to-3D data
    (data.image_path) also renders its reference view(s) at data.height × data.width in every step."""
    cams = _get(data, "random_camera") or data
    sizes = [_schedule(cams, "batch_size", 1), _schedule(cams, "height", 64), _schedule(cams, "width", 64)]
    with_ref = bool(_get(data, "image_path")) and _get(data, "random_camera") is not None
    if with_ref:
        sizes += [_schedule(data, "batch_size", 1), _schedule(data, "height", sizes[1][-1]),
                  _schedule(data, "width", sizes[2][-1])]
    n = max(len(s) for s in sizes)
    at = [[s[min(i, len(s) - 1)] for s in sizes] for i in range(n)]  # [stage][key]
    stages = [(max(v[0], 1), v[1], v[2], (max(v[3], 1), v[4], v[5]) if with_ref else None) for v in at]
    eh, ew = _largest(_get(cams, "eval_height", 512)), _largest(_get(cams, "eval_width", 512))
    return stages, eh * ew


def _hash_levels(geo: Any) -> tuple[int, int]:
    enc = _get(geo, "pos_encoding_config", {}) or {}
    levels = int(_get(enc, "n_levels", 16)) if _get(enc, "otype", "HashGrid") in ("HashGrid", "ProgressiveBandHashGrid") else 0
    table = levels * min(2 ** int(_get(enc, "log2_hashmap_size", 19)), 2**24) * int(_get(enc, "n_features_per_level", 2)) * 4
    return levels, table


def _dir_weights(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return 0


def _hub_cache_repo(repo_id: str) -> Path:
    """The Hugging Face cache folder of a hub id (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    base = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    return base / ("models--" + repo_id.replace("/", "--"))


def _hub_cache_size(repo_id: str) -> int:
    folder = _hub_cache_repo(repo_id) / "blobs"
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.stat().st_size > MB)


def weight_paths(cfg: Any) -> list[str]:
    """Every model folder / hub id / checkpoint the config names (deduplicated, in order)."""
    from omegaconf import OmegaConf

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and (key.endswith("model_name_or_path") or key == "geometry_convert_from"):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    system = OmegaConf.to_container(cfg.system, resolve=False, throw_on_missing=False) if "system" in cfg else {}
    walk(system)
    if _get(cfg, "resume"):
        found.append(str(cfg.resume))
    out = []
    for value in found:
        if value and not value.startswith("${") and value not in out and value not in ("???", "LAST"):
            out.append(value)
    return out


def weights_bytes(cfg: Any) -> int:
    total = 0
    for value in weight_paths(cfg):
        path = Path(value)
        if path.is_dir() and (path / "ckpts/last.ckpt").is_file():  # a trial folder
            path = path / "ckpts/last.ckpt"
        size = _dir_weights(path)
        if size == 0 and re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            size = _hub_cache_size(value)
        total += size
    return total


# ---------------------------------------------------------------- the estimate
def estimate(cfg: Any, device: str = "cpu", fitting: bool = True) -> MemoryEstimate:
    """The estimated peak of one training step and one evaluation view of an experiment config."""
    system = cfg.system
    stages, eval_px = _frames(_get(cfg, "data", {}))
    geo_type = str(_get(system, "geometry_type", ""))
    geo = _component_cfg(geo_type, _get(system, "geometry")) if geo_type else {}
    levels, table = _hash_levels(geo)
    params = table + (DMTET_PER_VERTEX * (int(_get(geo, "isosurface_resolution", 0)) + 1) ** 3
                      if "tetrahedra" in geo_type else 0)
    params = params * (ADAM_STATE if fitting else 1)
    renderer_type = str(_get(system, "renderer_type", ""))
    renderer = _component_cfg(renderer_type, _get(system, "renderer")) if renderer_type else {}
    keys: list[str] = []
    evalv = 0

    def no_renderer(batch: int, h: int, w: int, ref: Optional[tuple]) -> int:
        return 0

    step = no_renderer  # the renderer's part of one training step at a stage (batch, h, w, reference)
    if renderer_type == "patch-renderer":
        base = _component_cfg(str(renderer.base_renderer_type), renderer.base_renderer)
        p, s = int(renderer.patch_size), int(renderer.global_downsample)

        def patch_rays(b: int, hh: int, ww: int) -> int:
            return b * ((-(-hh // s)) * (-(-ww // s)) + p * p) if (hh > p or ww > p) else b * hh * ww

        def patch_step(batch: int, h: int, w: int, ref: Optional[tuple]) -> int:
            return _volume_step(base, patch_rays(batch, h, w) + (patch_rays(*ref) if ref else 0))

        step = patch_step

        evalv = _volume_view(base, eval_px, levels)
        keys = ["system.renderer.base_renderer.eval_max_samples", "system.renderer.base_renderer.num_samples_per_ray",
                "system.renderer.patch_size", "data.random_camera.eval_width/eval_height"]
    elif renderer_type == "gan-volume-renderer":  # Control4D: the volume render at 1 / 2^(levels - 1) resolution
        base = _component_cfg(str(renderer.base_renderer_type), renderer.base_renderer)
        down = 2 ** (len(renderer.channel_mult) - 1)  # (the super-resolution generator's activations: not modelled)

        def gan_step(batch: int, h: int, w: int, ref: Optional[tuple]) -> int:
            return _volume_step(base, batch * (-(-h // down)) * (-(-w // down)))

        step = gan_step

        evalv = _volume_view(base, -(-eval_px // down**2), levels)
        keys = ["system.renderer.base_renderer.eval_max_samples", "system.renderer.base_renderer.num_samples_per_ray",
                "data.width/height", "data.eval_width/eval_height"]
    elif renderer_type in ("nerf-volume-renderer", "neus-volume-renderer"):

        def volume_step(batch: int, h: int, w: int, ref: Optional[tuple]) -> int:
            return _volume_step(renderer, batch * h * w + (ref[0] * ref[1] * ref[2] if ref else 0))

        step = volume_step

        evalv = _volume_view(renderer, eval_px, levels)
        keys = ["system.renderer.eval_max_samples", "system.renderer.num_samples_per_ray", "data.width/height",
                "data.batch_size"]
    elif renderer_type in ("mesh-rasterizer", "nvdiff-rasterizer"):
        grid = DMTET_PER_CUBE * int(_get(geo, "isosurface_resolution", 0)) ** 3 if "tetrahedra" in geo_type or \
            _get(geo, "isosurface_method", "mc") == "mt" else 0

        def raster_step(batch: int, h: int, w: int, ref: Optional[tuple]) -> int:
            return batch * h * w * RASTER_PIXEL_TRAIN + grid

        step = raster_step

        evalv = eval_px * RASTER_PIXEL_EVAL + grid
        keys = ["data.width/height", "data.batch_size", "system.geometry.isosurface_resolution",
                "data.eval_width/eval_height"]
    # every view of a step also goes through the guidance's VAE encoder with autograd; the worst stage counts
    per_view = guidance_encoder_bytes(cfg, 1, device)
    train = max(step(*stage) + per_view * (stage[0] + (stage[3][0] if stage[3] else 0)) for stage in stages)
    if per_view:
        keys.append("data.batch_size (each view goes through the guidance's VAE encoder with autograd)")
    weights = weights_bytes(cfg)
    if weights:
        keys.append("the diffusion model (system.guidance.*model_name_or_path)")
    baseline = BASELINE_GPU if device.startswith("cuda") else BASELINE_CPU
    if not fitting:
        train = 0
    return MemoryEstimate(device=device, baseline=baseline, weights=weights, params=params, train_step=train,
                          eval_view=evalv, keys=keys)


def _model_config(name_or_path: str, sub: str) -> Optional[dict]:
    """<model>/<sub>/config.json of a local folder or of a hub id in the Hugging Face cache (None: not here)."""
    import json

    candidates = [Path(name_or_path) / sub / "config.json"]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not Path(name_or_path).exists():
        candidates += sorted((_hub_cache_repo(name_or_path) / "snapshots").glob(f"*/{sub}/config.json"))
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def guidance_encoder_bytes(cfg: Any, views: int, device: str) -> int:
    """Activations of the guidance's VAE encoder in a training step: `views` renders per step, each resized
    to the model's resolution (system.guidance.resolution, else UNet sample_size × the VAE's downsampling)
    and encoded with autograd. 0 for a guidance without a latent model (pixel-space DeepFloyd IF, no guidance);
    an SD-sized VAE when the model's config is not readable here. Half the bytes in half precision on a GPU."""
    guidance_type = str(_get(cfg.system, "guidance_type", "") or "")
    guidance = _get(cfg.system, "guidance", {}) or {}
    name = _get(guidance, "pretrained_model_name_or_path")
    if not guidance_type or "deep-floyd" in guidance_type or not isinstance(name, str) or name in ("", "???"):
        return 0
    vae, unet = _model_config(name, "vae"), _model_config(name, "unet")
    if vae is None and (Path(name).exists() or unet is not None):  # a local model without a VAE: pixel space
        return 0
    channels = list((vae or {}).get("block_out_channels", SD_VAE_CHANNELS))
    default_size = 32 if "zero123" in name.lower() else SD_UNET_SAMPLE_SIZE  # Zero-1-to-3's UNet: 32² latents
    size = int(_get(guidance, "resolution", None) or
               int((unet or {}).get("sample_size", default_size)) * 2 ** (len(channels) - 1))
    per_pixel = sum(c / 4**level for level, c in enumerate(channels)) * VAE_ENCODER_PER_CHANNEL_PIXEL
    half = device.startswith("cuda") and str(_get(guidance, "half_precision_weights", "auto")).lower() != "false"
    return int(views * size * size * per_pixel * (0.5 if half else 1.0))


def _volume_step(renderer: Any, rays: int) -> int:
    """A volume renderer's training step over `rays` rays: marching + the kept samples (checkpointed or held)."""
    samples = int(renderer.num_samples_per_ray) + 1
    march = min(rays * samples, int(_get(renderer, "eval_max_samples", 1 << 18))) * MARCH_CANDIDATE
    kept = int(rays * samples * KEPT_FRACTION)
    run = int(_get(renderer, "checkpoint_samples", 0) or 0)
    if 0 < run < kept:  # checkpointed: held compositing inputs + the larger of marching and one recomputed run
        return kept * TRAIN_SAMPLE_HELD + max(march, run * TRAIN_SAMPLE_RECOMPUTED)
    return march + kept * TRAIN_SAMPLE


def _volume_view(renderer: Any, rays: int, levels: int) -> int:
    """A volume renderer's evaluation view of `rays` rays: at most `eval_max_samples` shaded at once."""
    samples = int(renderer.num_samples_per_ray) + 1
    shaded = min(rays * samples, int(_get(renderer, "eval_max_samples", 1 << 18)))
    return shaded * (EVAL_SAMPLE_BASE + EVAL_SAMPLE_PER_LEVEL * levels) + rays * PER_RAY_EVAL


# ---------------------------------------------------------------- free memory and the check
def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise ConfigError(f"{ENV_FREE}='{text}': give bytes or a number with K, M or G (e.g. 512M).")
    scale = {"": 1, "k": 2**10, "m": MB, "g": GB, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def free_memory(device: str) -> tuple[int, str]:
    """(free bytes, where the figure comes from)."""
    if os.environ.get(ENV_FREE):
        return parse_bytes(os.environ[ENV_FREE]), f"{ENV_FREE}"
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free), "GPU memory free (torch.cuda.mem_get_info)"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024, "RAM available (/proc/meminfo MemAvailable)"
    return 1 << 62, "RAM (unknown)"


def pop_switch(extras: list[str], default: bool = True) -> tuple[bool, list[str]]:
    """Take `memory_check=<bool>` out of launch.py's overrides → (enabled, the other overrides);
    `default` (the config file's top-level `memory_check`) when the command line does not say."""
    enabled, rest = default, []
    for arg in extras:
        if arg.split("=", 1)[0] == "memory_check":
            value = arg.split("=", 1)[1].strip().lower() if "=" in arg else ""
            if value not in ("true", "false", "1", "0"):
                raise ConfigError(f"memory_check='{value}': use memory_check=true or memory_check=false.")
            enabled = value in ("true", "1")
        else:
            rest.append(arg)
    return enabled, rest


def check(cfg: Any, device: str, fitting: bool, enabled: bool = True, log=print) -> Optional[MemoryEstimate]:
    """Print the estimate; raise MemoryBudgetError (launch.py exits 2) when it exceeds the free memory."""
    try:
        est = estimate(cfg, device=device, fitting=fitting)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a valid run
        log(f"lift3d: memory estimate unavailable ({type(exc).__name__}: {exc})")
        return None
    free, source = free_memory(device)
    log(f"lift3d: memory estimate: {est.summary()}; {source}: {free / MB:.0f} MB")
    if enabled and est.peak > free:
        raise MemoryBudgetError(
            f"the estimated peak memory, {est.peak / MB:.0f} MB ({est.summary()}), exceeds the "
            f"{free / MB:.0f} MB free ({source}). Lower {', '.join(est.keys) or 'the frame sizes'}, "
            f"or add memory_check=false to run anyway."
        )
    return est
