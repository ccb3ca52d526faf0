"""Tiny, randomly initialised stand-ins for the diffusion models lift3d loads (docs/DESIGN.md "Models and weights").

Each factory writes a folder in the exact layout of the real model, built from the same classes, so
the code under test loads it with the same `from_pretrained` call it uses for the real one:

    make_tiny_sd(out)        Stable Diffusion 2.1-base layout (StableDiffusionPipeline)
    make_tiny_zero123(out)   zero123-xl diffusers layout (extern.zero123.Zero123Pipeline)

The shapes that matter to callers match the real models: 4 latent channels, VAE downsampling 8
(64² images <-> 8² latents), scaling factor 0.18215, 77-token prompts, SD's noise schedule, an
8-channel zero123 UNet whose cross-attention width is the image encoder's projection width.
Everything else is as small as possible (each folder about 5 MB, built in well under a second
once diffusers and transformers are imported).

CLI:  python -m lift3d.models.tiny_factory --out DIR --kind sd|zero123 [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]

# Stable Diffusion 2.1-base's noise schedule (its scheduler_config.json).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
    timestep_spacing="leading",
)
VAE_SCALING_FACTOR = 0.18215
TEXT_MAX_LENGTH = 77
TINY_WIDTH = 32  # text / image embedding width of the tiny models (cross_attention_dim)
TINY_IMAGE_SIZE = 64  # image side that maps to the UNets' sample_size (8) through the VAE

# Words that get whole-word merges in the tiny BPE vocab; any other text falls back to characters.
_VOCAB_WORDS = """
a an the of on in at to with and or is are by for from as its it this that near under over
photo photograph picture image render rendering dslr zoomed out view front side back overhead
top bottom left right high quality detailed highly realistic photorealistic beautiful model
object toy small large big red green blue yellow white black orange purple pink brown gray wooden
metal glass plastic stone hamburger pineapple car chair table dog cat bird horse teddy bear robot
house tree flower cake cup mug lamp shoe hat castle ship boat plane bunny rabbit frog fox owl
sitting standing holding wearing made cute old new delicious plate of
cube sphere cone cylinder torus
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character table of byte-level BPE (GPT-2 / CLIP convention)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Greedy BPE: merge the lowest-ranked adjacent pair until none is in `ranks`."""
    while len(symbols) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_tiny_clip_vocab(words=_VOCAB_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocab (token -> id) and merge list covering every byte plus `words`.

    Layout as CLIP's: 256 byte characters, the same with the end-of-word marker `</w>`, the merge
    results, then <|startoftext|> and <|endoftext|> last. Every merge result is in the vocab, so
    any text tokenizes (unknown words fall back to single characters or known pieces). Each word
    is first split with the merges made so far, then its pieces are joined left to right by new
    (lower-priority) merges, so every listed word ends up as one token.
    """
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        pieces = _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in ranks:
                ranks[(merged, piece)] = len(ranks)
                vocab_list.append(merged + piece)
            merged += piece
    vocab_list = list(dict.fromkeys(vocab_list)) + ["<|startoftext|>", "<|endoftext|>"]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _write_tokenizer_files(folder: Path) -> None:
    """Writes the hand-made vocab.json + merges.txt (CLIP's file format)."""
    vocab, merges = build_tiny_clip_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, pad_token: str):
    """A CLIPTokenizer read from the hand-made vocab files (the way any transformers version loads CLIP's)."""
    from transformers import CLIPTokenizer

    _write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=TEXT_MAX_LENGTH)


def _tiny_vae(seed: int):
    """AutoencoderKL with SD's interface: 4 down/up blocks (factor 8), 4 latent channels, 0.18215."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,  # LDM's GroupNorm(32), so original-checkpoint conversion stays exact
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=VAE_SCALING_FACTOR,
    )


def _tiny_unet(seed: int, in_channels: int, cross_attention_dim: int, sd2_style: bool):
    """UNet2DConditionModel shaped like SD's (cross-attention down block then plain down block)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        # SD 2.x: per-level head counts with linear proj_in/out; SD 1.x / zero123: 8 heads, conv proj.
        attention_head_dim=(2, 4) if sd2_style else 8,
        use_linear_projection=sd2_style,
        norm_num_groups=32,
    )


def make_tiny_sd(out_dir: PathLike, seed: int = 0) -> Path:
    """Writes a Stable-Diffusion-2.1-base-shaped diffusers folder with random weights; returns it.

    Loads with `StableDiffusionPipeline.from_pretrained(out_dir)` or per component with
    `<Class>.from_pretrained(out_dir, subfolder="unet" | "vae" | "text_encoder" | "tokenizer" | "scheduler")`.
    64×64 images <-> 4×8×8 latents; prompts -> [B, 77, 32] text embeddings.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        tokenizer = write_tokenizer(out / "tokenizer", pad_token="!")  # SD 2.x pads with "!"
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TINY_WIDTH,
                intermediate_size=37,
                projection_dim=TINY_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=TEXT_MAX_LENGTH,
                hidden_act="gelu",  # OpenCLIP ViT-H text tower of SD 2.x
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = _tiny_unet(seed + 1, in_channels=4, cross_attention_dim=TINY_WIDTH, sd2_style=True)
        vae = _tiny_vae(seed + 2)
    write_sd_folder(out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    return out


def write_sd_folder(out: PathLike, vae, text_encoder, tokenizer, unet) -> Path:
    """Saves SD components as a StableDiffusionPipeline folder (SD 2.1-base's scheduler); returns it."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    out = Path(out)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    if not (out / "tokenizer" / "merges.txt").is_file():  # transformers versions that save tokenizer.json only
        _write_tokenizer_files(out / "tokenizer")
    return out


def clip_image_processor(size: int):
    """OpenAI CLIP's preprocessing (mean / std) at a `size`² crop."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def write_zero123_folder(out: PathLike, vae, unet, image_encoder, feature_extractor, projection) -> Path:
    """Saves Zero-1-to-3 components in the zero123-xl diffusers layout (DDIM scheduler); returns it."""
    from diffusers import DDIMScheduler

    from extern.zero123.pipeline import zero123_model_index

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    image_encoder.save_pretrained(out / "image_encoder")
    feature_extractor.save_pretrained(out / "feature_extractor")
    projection.save_pretrained(out / "clip_camera_projection")
    DDIMScheduler(**SD_SCHEDULE, set_alpha_to_one=False).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(zero123_model_index(), indent=2) + "\n", encoding="utf-8")
    return out


def make_tiny_zero123(out_dir: PathLike, seed: int = 0) -> Path:
    """Writes a Zero-1-to-3-shaped folder (published zero123-xl diffusers layout); returns it.

    Loads with `extern.zero123.pipeline.Zero123Pipeline.from_pretrained(out_dir)`. The UNet takes
    8 channels (z_t ++ reference latent); its cross-attention width equals the image encoder's
    projection width (32 here, 768 in the real model); the camera projection maps 32+4 -> 32.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from extern.zero123.pipeline import CCProjection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=TINY_WIDTH,
                intermediate_size=37,
                projection_dim=TINY_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                hidden_act="quick_gelu",  # OpenAI CLIP ViT-L/14
            )
        )
        unet = _tiny_unet(seed + 1, in_channels=8, cross_attention_dim=TINY_WIDTH, sd2_style=False)
        vae = _tiny_vae(seed + 2)
        torch.manual_seed(seed + 3)
        projection = CCProjection(embedding_dim=TINY_WIDTH, additional_embeddings=4)
    return write_zero123_folder(
        out, vae=vae, unet=unet, image_encoder=image_encoder, feature_extractor=clip_image_processor(32),
        projection=projection,
    )


def make_tiny_sd_depth(out_dir: PathLike, seed: int = 0) -> Path:
    """A stable-diffusion-2-depth-shaped folder: make_tiny_sd with a 5-channel UNet (latents + depth).

    The published folder also holds the DPT depth estimator that its pipeline uses on photos; lift3d
    conditions on depth it renders itself, so the tiny folder leaves it out (model_index.json lists
    what is there)."""
    import json

    import torch

    out = make_tiny_sd(out_dir, seed=seed)
    with torch.random.fork_rng(devices=[]):
        unet = _tiny_unet(seed + 11, in_channels=5, cross_attention_dim=TINY_WIDTH, sd2_style=True)
    unet.save_pretrained(out / "unet")
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionDepth2ImgPipeline"
    for name in ("safety_checker", "feature_extractor", "requires_safety_checker", "image_encoder"):
        index.pop(name, None)
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def make_tiny_instruct_pix2pix(out_dir: PathLike, seed: int = 0) -> Path:
    """A timbrooks/instruct-pix2pix-shaped folder (StableDiffusionInstructPix2PixPipeline layout): make_tiny_sd
    with an SD-1.x-style 8-channel UNet (latents + image latents) and an Euler-ancestral scheduler
    config, as published (lift3d reads only its DDPM schedule). Safety checker / feature extractor are
    left out (model_index.json lists what is there)."""
    import json

    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    out = make_tiny_sd(out_dir, seed=seed)
    with torch.random.fork_rng(devices=[]):
        unet = _tiny_unet(seed + 21, in_channels=8, cross_attention_dim=TINY_WIDTH, sd2_style=False)
    unet.save_pretrained(out / "unet")
    schedule = {k: v for k, v in SD_SCHEDULE.items() if k != "clip_sample"}
    EulerAncestralDiscreteScheduler(**schedule).save_pretrained(out / "scheduler")
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInstructPix2PixPipeline"
    index["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]
    for name in ("safety_checker", "feature_extractor", "requires_safety_checker", "image_encoder"):
        index.pop(name, None)
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def make_tiny_lpips(out_dir: PathLike, seed: int = 0) -> Path:
    """An LPIPS-VGG weights folder (lift3d.models.lpips): vgg16.pth in torchvision's VGG-16 key layout and
    vgg.pth with LPIPS's linear heads, but 4-8 channels per layer instead of 64-512 (random weights)."""
    import torch

    from lift3d.models.lpips import LIN_FILE, VGG16_CONV_BLOCKS, VGG_FILE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    features, lins, c_in = {}, {}, 3
    for k, block in enumerate(VGG16_CONV_BLOCKS):
        c_out = 4 if k == 0 else 8
        for i in block:
            features[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) / (3 * c_in ** 0.5)
            features[f"features.{i}.bias"] = 0.1 * torch.rand(c_out, generator=generator)
            c_in = c_out
        lins[f"lin{k}.model.1.weight"] = torch.rand(1, c_out, 1, 1, generator=generator)
    torch.save(features, out / VGG_FILE)
    torch.save(lins, out / LIN_FILE)
    return out


def make_tiny_controlnet(out_dir: PathLike, sd_folder: PathLike, seed: int = 0) -> Path:
    """A ControlNetModel folder (config.json + weights, the lllyasviel/sd-controlnet-* layout) built from
    the tiny SD's UNet (ControlNet copies the encoder half; arXiv 2302.05543 §3.2), with random zero-conv
    weights so that it acts. Its conditioning image is 64² (3 stride-2 convs down to the 8² latents)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
        with torch.no_grad():  # zero convolutions start at 0 in training; a trained one is not 0
            for name, p in controlnet.named_parameters():
                if "controlnet_cond_embedding.conv_out" in name:  # the control image's way in
                    p.normal_(0.0, 0.5)
                elif "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                    p.normal_(0.0, 0.05)
    out = Path(out_dir)
    controlnet.save_pretrained(out)
    return out


def write_t5_tokenizer(folder: Path, words=_VOCAB_WORDS) -> None:
    """A T5-style tokenizer folder (Unigram over whole words "▁<word>", then characters; </s> appended;
    <pad>=0, </s>=1, <unk>=2 as in T5's vocab) written as tokenizer.json + tokenizer_config.json with
    the `tokenizers` library, so no sentencepiece is needed; `AutoTokenizer.from_pretrained` loads it."""
    import string

    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -5.0) for w in dict.fromkeys(words)]  # a whole word beats its characters
    pieces += [("\u2581", -8.0)] + [(c, -10.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": TEXT_MAX_LENGTH, "extra_ids": 0,
              "additional_special_tokens": [], **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def write_tiny_t5(out: Path, width: int, seed: int) -> None:
    """IF's text side in its folder layout: `text_encoder/` (a 1-layer T5EncoderModel of d_model `width`,
    gated-GELU like T5 v1.1) and `tokenizer/` (write_t5_tokenizer)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    write_t5_tokenizer(out / "tokenizer")
    vocab_size = len(json.loads((out / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=2 * width, num_layers=1,
                                          num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    encoder.save_pretrained(out / "text_encoder")


def make_tiny_deepfloyd_if(out_dir: PathLike, seed: int = 0) -> Path:
    """A DeepFloyd/IF-I-XL-v1.0-shaped folder (unet, scheduler, text_encoder, tokenizer) with random weights: 16² RGB pixels,
    6 output channels (noise, variance), text embeddings [B,77,16] (a tiny T5 width) projected by
    `encoder_hid_proj`; IF's cosine schedule with learned-range variance."""
    import json

    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_WIDTH, encoder_hid_dim=16, attention_head_dim=8, norm_num_groups=32,
        )
    unet.save_pretrained(out / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                  prediction_type="epsilon").save_pretrained(out / "scheduler")
    write_tiny_t5(out, width=16, seed=seed)  # text_encoder/ + tokenizer/ (deep-floyd-prompt-processor)
    index = {"_class_name": "IFPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


FACTORIES = {"sd": make_tiny_sd, "zero123": make_tiny_zero123, "sd-depth": make_tiny_sd_depth,
             "deepfloyd-if": make_tiny_deepfloyd_if}
FACTORIES["instruct-pix2pix"] = make_tiny_instruct_pix2pix
FACTORIES["lpips"] = make_tiny_lpips


def folder_size_bytes(folder: PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lift3d.models.tiny_factory",
        description="Write a tiny random-weight diffusion model folder in the real model's layout.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--kind", required=True, choices=sorted(FACTORIES), help="sd (SD 2.1-base layout), sd-depth, zero123 or deepfloyd-if")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = FACTORIES[args.kind](args.out, seed=args.seed)
    print(
        f"wrote tiny {args.kind} model to {folder} "
        f"({folder_size_bytes(folder) / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
