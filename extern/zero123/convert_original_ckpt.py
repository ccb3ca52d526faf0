"""Convert an original Zero-1-to-3 / Stable Zero123 `.ckpt` to the zero123 diffusers folder layout.

The original checkpoint is a torch-saved dict whose "state_dict" holds latent-diffusion keys:
`model.diffusion_model.*` (UNet, 8 input channels), `first_stage_model.*` (VAE),
`cc_projection.weight/bias` (Linear 768+4 -> 768), and `cond_stage_model.*` (the frozen OpenAI
CLIP, which is not converted: the image encoder is copied from `--image-encoder`, by default
openai/clip-vit-large-patch14, the model Zero-1-to-3 was trained with).

The UNet / VAE key mapping is diffusers' own (`diffusers.loaders.single_file_utils`, or the older
`diffusers.pipelines.stable_diffusion.convert_from_ckpt`); the LDM configs they need are inferred
from the tensor shapes, so no original YAML is required. The one thing shapes cannot tell is the
number of attention heads (`--num-heads`, 8 for every Zero-1-to-3 release, SD 1.x-style UNet).

CLI: python -m extern.zero123.convert_original_ckpt --ckpt X.ckpt --out DIR [--image-encoder PATH_OR_ID]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Optional, Union

import torch

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
SD_BETA_START, SD_BETA_END, SD_TIMESTEPS = 0.00085, 0.012, 1000


# ---------------------------------------------------------------------------------------- loading
class _Stub:
    """Stands in for classes of packages that are not installed (e.g. Lightning callbacks)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": module})


class _LenientPickle:
    """pickle-module stand-in for torch.load that tolerates unimportable classes."""

    Unpickler = _LenientUnpickler
    __name__ = "pickle"

    @staticmethod
    def load(file, **kwargs):
        return _LenientUnpickler(file, **kwargs).load()


def load_original_state_dict(ckpt_path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of an original .ckpt ("state_dict" entry, or the dict itself)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"original zero123 checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints pickle callbacks / hyper-parameters: load them without importing
        # their packages (the file is the user's own trusted checkpoint).
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(k.startswith(LDM_UNET_PREFIX) for k in state):
        raise ValueError(f"{path} does not look like a latent-diffusion checkpoint (no '{LDM_UNET_PREFIX}*' keys)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------------------- configs
def _block_ids(keys, prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def infer_ldm_unet_params(state: dict[str, torch.Tensor], num_heads: int = 8) -> dict:
    """LDM `unet_config.params` of an openaimodel UNet, read from its weights (keys with the LDM prefix)."""
    unet = {k[len(LDM_UNET_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_UNET_PREFIX)}
    model_channels, in_channels = unet["input_blocks.0.0.weight"].shape[:2]
    n_input = max(_block_ids(unet, "input_blocks.")) + 1
    n_down = sum(f"input_blocks.{i}.0.op.weight" in unet for i in range(n_input))
    levels = n_down + 1
    num_res_blocks = (n_input - 1 - n_down) // levels
    channel_mult, attention_resolutions = [], []
    block = 1
    for level in range(levels):
        channel_mult.append(unet[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0] // model_channels)
        if any(k.startswith(f"input_blocks.{block}.1.") for k in unet):
            attention_resolutions.append(2**level)
        block += num_res_blocks + 1
    attn_key = next((k for k in sorted(unet) if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    context_dim = unet[attn_key].shape[1] if attn_key else None
    if attn_key:
        block_prefix = attn_key[: attn_key.index("transformer_blocks.")]
        depth = len(_block_ids(unet, block_prefix + "transformer_blocks."))
        use_linear = unet[block_prefix + "proj_in.weight"].ndim == 2
    else:
        depth, use_linear = 1, False
    return {
        "image_size": 32,
        "in_channels": int(in_channels),
        "out_channels": int(unet["out.2.weight"].shape[0]),
        "model_channels": int(model_channels),
        "attention_resolutions": attention_resolutions,
        "num_res_blocks": int(num_res_blocks),
        "channel_mult": channel_mult,
        "num_heads": int(num_heads),
        "use_spatial_transformer": True,
        "transformer_depth": int(depth),
        "context_dim": None if context_dim is None else int(context_dim),
        "use_linear_in_transformer": bool(use_linear),
        "legacy": False,
    }


def infer_ldm_vae_ddconfig(state: dict[str, torch.Tensor]) -> dict:
    """LDM `first_stage_config.params.ddconfig` of an AutoencoderKL, read from its weights."""
    vae = {k[len(LDM_VAE_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_VAE_PREFIX)}
    if not vae:
        raise ValueError(f"checkpoint has no VAE weights ('{LDM_VAE_PREFIX}*')")
    ch, in_channels = vae["encoder.conv_in.weight"].shape[:2]
    levels = _block_ids(vae, "encoder.down.")
    return {
        "double_z": True,
        "z_channels": int(vae["decoder.conv_in.weight"].shape[1]),
        "resolution": 256,
        "in_channels": int(in_channels),
        "out_ch": int(vae["decoder.conv_out.weight"].shape[0]),
        "ch": int(ch),
        "ch_mult": [int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch) for i in levels],
        "num_res_blocks": len(_block_ids(vae, "encoder.down.0.block.")),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def original_config_from_state(state: dict[str, torch.Tensor], num_heads: int = 8, scale_factor: float = 0.18215) -> dict:
    """A latent-diffusion YAML-equivalent dict for the checkpoint (what diffusers' converters read)."""
    return {
        "model": {
            "params": {
                "scale_factor": scale_factor,
                "unet_config": {"params": infer_ldm_unet_params(state, num_heads)},
                "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": infer_ldm_vae_ddconfig(state)}},
            }
        }
    }


# ---------------------------------------------------------------------------------------- conversion
def _diffusers_converters():
    """(unet_config_fn, unet_convert_fn, vae_config_fn, vae_convert_fn) from the installed diffusers."""
    try:
        from diffusers.loaders import single_file_utils as sfu

        unet_config, unet_convert = sfu.create_unet_diffusers_config_from_ldm, sfu.convert_ldm_unet_checkpoint
        vae_config, vae_convert = sfu.create_vae_diffusers_config_from_ldm, sfu.convert_ldm_vae_checkpoint
        return (
            lambda cfg, sd: unet_config(cfg, sd),
            lambda sd, cfg, ema: unet_convert(sd, cfg, extract_ema=ema),
            lambda cfg, sd, scale: vae_config(cfg, sd, scaling_factor=scale),
            vae_convert,
        )
    except (ImportError, AttributeError):  # older diffusers: the stable_diffusion converter module
        from diffusers.pipelines.stable_diffusion import convert_from_ckpt as cfc

        def legacy_vae_config(cfg, sd, scale):
            config = cfc.create_vae_diffusers_config(cfg, image_size=256)
            config["scaling_factor"] = scale
            return config

        return (
            lambda cfg, sd: cfc.create_unet_diffusers_config(cfg, image_size=256),
            lambda sd, cfg, ema: cfc.convert_ldm_unet_checkpoint(sd, cfg, extract_ema=ema),
            legacy_vae_config,
            cfc.convert_ldm_vae_checkpoint,
        )


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what}: converted weights do not fit the inferred architecture "
            f"(missing {result.missing_keys[:5]}..., unexpected {result.unexpected_keys[:5]}...); "
            "is --num-heads right and is this a Zero-1-to-3 checkpoint?"
        )


def convert_unet(state, num_heads: int = 8, image_size: int = 256, extract_ema: bool = False):
    """diffusers UNet2DConditionModel with the checkpoint's `model.diffusion_model.*` weights."""
    from diffusers import UNet2DConditionModel

    unet_config_fn, unet_convert_fn, _, _ = _diffusers_converters()
    original = original_config_from_state(state, num_heads)
    config = dict(unet_config_fn(original, state))
    vae_factor = 2 ** (len(original["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    config["sample_size"] = image_size // vae_factor
    unet = UNet2DConditionModel(**config)
    _load_strict(unet, unet_convert_fn(state, config, extract_ema), "UNet")
    return unet


def convert_vae(state, image_size: int = 256, scaling_factor: float = 0.18215):
    """diffusers AutoencoderKL with the checkpoint's `first_stage_model.*` weights."""
    from diffusers import AutoencoderKL

    _, _, vae_config_fn, vae_convert_fn = _diffusers_converters()
    original = original_config_from_state(state, scale_factor=scaling_factor)
    config = dict(vae_config_fn(original, state, scaling_factor))
    config["sample_size"] = image_size
    vae = AutoencoderKL(**config)
    _load_strict(vae, vae_convert_fn(state, config), "VAE")
    return vae


def convert_projection(state):
    """CCProjection with `cc_projection.weight` [D, D+4] / `cc_projection.bias` [D]."""
    from extern.zero123.pipeline import CCProjection

    if "cc_projection.weight" not in state:
        raise ValueError("checkpoint has no 'cc_projection.weight': not a Zero-1-to-3 checkpoint")
    weight, bias = state["cc_projection.weight"], state["cc_projection.bias"]
    out_dim, in_dim = weight.shape
    proj = CCProjection(embedding_dim=out_dim, additional_embeddings=in_dim - out_dim)
    proj.proj.weight.data.copy_(weight)
    proj.proj.bias.data.copy_(bias)
    return proj


def make_scheduler(state):
    """DDIMScheduler with SD's schedule (the checkpoint's own betas if it carries different ones)."""
    from diffusers import DDIMScheduler

    kwargs = dict(
        num_train_timesteps=SD_TIMESTEPS, beta_start=SD_BETA_START, beta_end=SD_BETA_END,
        beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    betas = state.get("betas")
    if betas is not None:
        expected = torch.linspace(SD_BETA_START**0.5, SD_BETA_END**0.5, SD_TIMESTEPS, dtype=torch.float64) ** 2
        if betas.numel() != SD_TIMESTEPS or not torch.allclose(betas.double(), expected, atol=1e-8):
            kwargs.update(num_train_timesteps=betas.numel(), trained_betas=betas.double().tolist())
    return DDIMScheduler(**kwargs)


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
_ENCODER_WHAT = "CLIP image encoder for --image-encoder"


def _offline_var() -> Optional[str]:
    """Name of the first env variable that puts Hugging Face libraries offline, or None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def _encoder_not_found(name: str, looked: list[str]) -> FileNotFoundError:
    how = []
    if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*", name):
        how.append(f"on a machine with internet run `hf download {name}` (older huggingface_hub: "
                   f"`huggingface-cli download {name}`) and copy its Hugging Face cache here, or add "
                   f"`--local-dir DIR` and use DIR")
    how.append("set --image-encoder=/path/to/folder (a folder holding config.json)")
    how.append("for tests and dry runs make a tiny random model: "
               "`python -m lift3d.models.tiny_factory --out DIR --kind zero123`, then use DIR/image_encoder")
    lines = [f"{_ENCODER_WHAT}: no usable model found for {name!r}.", "Looked in:"]
    lines += [f"  - {item}" for item in looked] + ["To provide it:"] + [f"  - {item}" for item in how]
    return FileNotFoundError("\n".join(lines))


def resolve_image_encoder(image_encoder: str) -> str:
    """A loadable name of the CLIP image encoder — a local folder, the Hugging Face cache's snapshot of
    a Hub id, or (online) the Hub id itself — whose config.json has been read, so that a missing model
    fails before any conversion work; FileNotFoundError saying where it looked and how to provide it."""
    from transformers import CLIPVisionConfig

    name = str(image_encoder).strip()
    local = os.path.abspath(os.path.expanduser(name))
    looked = []
    if os.path.isdir(local):
        if os.path.isfile(os.path.join(local, "config.json")):
            return local
        raise _encoder_not_found(name, [f"local folder {local}: exists but lacks config.json"])
    looked.append(f"local folder {local}: does not exist")
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name, local_files_only=True)
        if os.path.isfile(os.path.join(snapshot, "config.json")):
            return snapshot
        looked.append(f"Hugging Face cache: snapshot {snapshot} lacks config.json")
    except Exception as exc:  # not cached, not a repo id, no huggingface_hub
        looked.append(f"Hugging Face cache: not cached ({exc.__class__.__name__})")
    offline = _offline_var()
    if offline:
        looked.append(f"the Hub: not asked, {offline}={os.environ[offline]}")
        raise _encoder_not_found(name, looked)
    try:
        CLIPVisionConfig.from_pretrained(name)  # one small file: the id exists and is a CLIP vision model
    except Exception as exc:
        looked.append(f"the Hub: {exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}")
        raise _encoder_not_found(name, looked) from None
    return name


def _copy_image_encoder(folder: str, out: Path) -> None:
    """Saves the CLIP vision model and its image processor (CLIP's defaults if it has none) under `out`."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(folder)
    try:
        processor = CLIPImageProcessor.from_pretrained(folder)
    except OSError:  # no preprocessor_config.json: CLIP's normalisation at the encoder's input size
        side = encoder.config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    encoder.save_pretrained(out / "image_encoder")
    processor.save_pretrained(out / "feature_extractor")


def convert_original_checkpoint(
    ckpt: Union[str, Path],
    out_dir: Union[str, Path],
    image_encoder: Optional[str] = DEFAULT_IMAGE_ENCODER,
    num_heads: int = 8,
    image_size: int = 256,
    extract_ema: bool = False,
) -> Path:
    """Writes the zero123 diffusers folder for `ckpt` to `out_dir`; returns it.

    image_encoder: folder or Hub id of a CLIPVisionModelWithProjection (+ preprocessor config);
        None skips it (then pass image_encoder= / feature_extractor= to Zero123Pipeline.from_pretrained).
    image_size: training resolution (256 for Zero-1-to-3), recorded as the UNet / VAE sample size.
    """
    from extern.zero123.pipeline import PROJECTION_COMPONENT, zero123_model_index

    out = Path(out_dir)
    encoder_folder = resolve_image_encoder(image_encoder) if image_encoder else None  # fail before the heavy work
    state = load_original_state_dict(ckpt)
    projection = convert_projection(state)
    unet = convert_unet(state, num_heads=num_heads, image_size=image_size, extract_ema=extract_ema)
    vae = convert_vae(state, image_size=image_size)
    if encoder_folder:
        from transformers import CLIPVisionConfig

        encoder_dim = CLIPVisionConfig.from_pretrained(encoder_folder).projection_dim
        if encoder_dim != projection.out_channel:
            raise ValueError(
                f"image encoder {image_encoder!r} projects to {encoder_dim}, but the checkpoint's "
                f"cc_projection expects {projection.out_channel} (Zero-1-to-3 uses CLIP ViT-L/14: 768)"
            )
    out.mkdir(parents=True, exist_ok=True)
    if encoder_folder:
        _copy_image_encoder(encoder_folder, out)
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    projection.save_pretrained(out / PROJECTION_COMPONENT)
    make_scheduler(state).save_pretrained(out / "scheduler")
    index = zero123_model_index()
    if not image_encoder:
        index.pop("image_encoder")
        index.pop("feature_extractor")
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extern.zero123.convert_original_ckpt",
        description="Convert an original Zero-1-to-3 / Stable Zero123 .ckpt to a zero123 diffusers folder.",
    )
    parser.add_argument("--ckpt", required=True, help="original checkpoint (.ckpt or .safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--image-encoder", default=DEFAULT_IMAGE_ENCODER,
        help=f"CLIP vision model folder or Hub id (default {DEFAULT_IMAGE_ENCODER}); 'none' to skip",
    )
    parser.add_argument("--num-heads", type=int, default=8, help="UNet attention heads (8 for Zero-1-to-3)")
    parser.add_argument("--image-size", type=int, default=256, help="training resolution (256 for Zero-1-to-3)")
    parser.add_argument("--extract-ema", action="store_true", help="use the EMA weights when the checkpoint has them")
    args = parser.parse_args(argv)
    encoder = None if str(args.image_encoder).lower() in ("none", "") else args.image_encoder
    try:
        out = convert_original_checkpoint(
            args.ckpt, args.out, image_encoder=encoder, num_heads=args.num_heads,
            image_size=args.image_size, extract_ema=args.extract_ema,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote zero123 diffusers folder to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
