"""StyleAvatar3D's LoRA characters (arXiv 2305.19012, "LoRA" in the data generation; docs/methods/styleavatar3d.md):
a DreamBooth-LoRA of the image model trained on a few images of one character, then the data generation of
stage 1 with it (`system.lora_path=<out>`, the character's token in `system.style_prompts`).

    python -m custom.styleavatar3d.character_lora --images my_character/ --token sks --class-name person \\
        --out outputs/character-lora [--model stable-diffusion-v1-5/stable-diffusion-v1-5 --steps 600]

The trainer is lift3d's DreamBooth-LoRA of USD's view distillation (custom/usd/view_distillation/
dreambooth_lora.py: peft LoRA on the UNet attention, prior-preservation loss, diffusers-format safetensors):
instances = the character images with "a <token> <class>", prior = class images the base model paints for
"a <class>" (class_images.py), one training run. Written to `--out`: pytorch_lora_weights.safetensors (what
`system.lora_path` loads), losses.csv, class_images/, character_lora.json (prompts, settings, first/last loss).
Bad inputs are one-line errors (exit code 2) before any work.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from lift3d.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class CharacterLoraSettings:
    images: str  # a folder of character images (or one image file)
    out: str
    token: str = "sks"
    class_name: str = "person"
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the data generation's image model
    rank: int = 4
    steps: int = 600
    learning_rate: float = 2e-4
    class_images: int = 50  # 0: no prior preservation
    class_steps: int = 30  # DDIM steps of the class images
    prior_loss_weight: float = 1.0
    resolution: Optional[int] = None  # None: the model's native size
    seed: int = 0

    @property
    def instance_prompt(self) -> str:  # what style_prompts of the data stage name
        return f"a {self.token} {self.class_name}"

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_name}"


def character_images(spec: str) -> list[Path]:
    path = Path(spec)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files or not all(p.is_file() for p in files):
        raise ConfigError(f"--images {spec}: no character images there; give a folder of PNG / JPEG images of the "
                          f"character (3-20 views) or one image file.")
    return files


def check_settings(s: CharacterLoraSettings) -> list[Path]:
    """Every check before work starts; returns the character images."""
    from lift3d.models.stable_diffusion import StableDiffusion

    files = character_images(s.images)
    if not s.token.strip() or " " in s.token.strip():
        raise ConfigError(f"--token '{s.token}': give one rare word (e.g. sks) that names the character in prompts.")
    if s.rank < 1 or s.steps < 1 or s.class_images < 0 or s.class_steps < 1 or s.learning_rate <= 0:
        raise ConfigError("--rank, --steps, --class-steps must be >= 1, --class-images >= 0 and --learning-rate > 0.")
    if s.resolution is not None and (s.resolution < 8 or s.resolution % 8):
        raise ConfigError(f"--resolution {s.resolution}: use a multiple of 8 (or leave it out for the model's size).")
    for path in files:  # a damaged picture stops here, not after the class images are painted
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError) as exc:
            raise ConfigError(f"--images: {path} is not a readable image ({exc}); replace or remove it.") from None
    StableDiffusion.resolve(s.model, "the image model (--model)")
    return files


def train_character_lora(s: CharacterLoraSettings, progress: Optional[Callable] = None) -> dict:
    """Class images (when class_images > 0), then the DreamBooth-LoRA; returns the summary it writes."""
    import torch

    from custom.usd.view_distillation.class_images import write_class_images
    from custom.usd.view_distillation.dreambooth_lora import (TrainingSet, add_lora, encode_image_files, save_lora,
                                                               train_lora)
    from custom.usd.view_distillation.sd_models import load_stable_diffusion, text_embeddings

    files = check_settings(s)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    emb = text_embeddings(s.model, [s.instance_prompt, s.class_prompt, ""])  # [3,77,D]
    sd = load_stable_diffusion(s.model, half_precision_weights="false", resolution=s.resolution)
    prior_files = files  # no prior preservation: prior_loss_weight 0 below, the term is computed on instances
    if s.class_images > 0:
        prior_files = write_class_images(sd, emb[1:2], emb[2:3], out / "class_images", s.class_images, s.class_steps,
                                         s.seed, progress=progress)
    torch.manual_seed(s.seed)  # the LoRA's initial weights and the latents' samples: the same for every call
    params = add_lora(sd.unet, s.rank)
    instances = TrainingSet(encode_image_files(sd, files), emb[:1])
    prior = TrainingSet(encode_image_files(sd, prior_files), emb[1:2])
    losses = train_lora(sd, params, instances, prior, s.steps, out / "losses.csv", s.learning_rate,
                        prior_loss_weight=s.prior_loss_weight if s.class_images > 0 else 0.0, seed=s.seed,
                        progress=progress)
    save_lora(sd.unet, out)
    summary = {**asdict(s), "instance_prompt": s.instance_prompt, "class_prompt": s.class_prompt,
               "character_images": [str(p) for p in files], "first_loss": losses[0], "last_loss": losses[-1],
               "lora": str(out / "pytorch_lora_weights.safetensors")}
    (out / "character_lora.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custom.styleavatar3d.character_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = CharacterLoraSettings("", "")
    parser.add_argument("--images", required=True, help="folder of character images (or one image)")
    parser.add_argument("--out", required=True, help="folder for the LoRA (then system.lora_path=<out>)")
    parser.add_argument("--token", default=d.token)
    parser.add_argument("--class-name", default=d.class_name)
    parser.add_argument("--model", default=d.model)
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--class-images", type=int, default=d.class_images)
    parser.add_argument("--class-steps", type=int, default=d.class_steps)
    parser.add_argument("--prior-loss-weight", type=float, default=d.prior_loss_weight)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)
    settings = CharacterLoraSettings(a.images, a.out, a.token, a.class_name, a.model, a.rank, a.steps, a.learning_rate,
                                     a.class_images, a.class_steps, a.prior_loss_weight, a.resolution, a.seed)
    progress = None
    if not a.no_progress:
        from functools import partial

        from tqdm.auto import tqdm

        progress = partial(tqdm, leave=False)
    try:
        summary = train_character_lora(settings, progress)
    except ConfigError as exc:
        print(f"lift3d character-lora: error: {exc}", file=sys.stderr)
        return 2
    print(f"lift3d character-lora: loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; LoRA in {a.out}. "
          f"Next: the data stage with system.lora_path={a.out} and '{settings.instance_prompt}' in system.style_prompts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
