"""Trains the toy novel-view prior in the Zero-1-to-3 layout (zero123-xl diffusers folder) on view
pairs of the procedural toy world.

A sample is a pair of renders of one object: the conditioning view c and a target view x, with
the relative camera T = [Δpolar, sin Δazimuth, cos Δazimuth, Δradius] (extern/zero123/camera.py).
The model sees exactly what `zero123-guidance` and USD feed it, through the same pipeline methods:
UNet(concat(z_t, VAE mode of c)) with context = Linear(concat(CLIP embedding of c, T)). For
classifier-free guidance 10 % of the samples get the zero reference latent and zero context
(Zero-1-to-3's unconditional). The CLIP image encoder is trained with the UNet (the toy world has
no pretrained CLIP); the VAE is the toy SD prior's (train_vae.py). Saved weights are an EMA.

    python -m tools.toyworld.train_zero123 --out load/priors/toy-zero123 --vae-from DIR [--steps 4000]

Loads with `extern.zero123.pipeline.Zero123Pipeline.from_pretrained(out)` like zero123-xl.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from extern.zero123.camera import relative_camera_embedding
from lift3d.models.ddim import ddim_sample, ddim_timesteps
from lift3d.models.tiny_factory import clip_image_processor, folder_size_bytes, write_zero123_folder
from tools.toyworld import dataset as toy_dataset
from tools.toyworld.diffusion_training import (
    EMA, IMAGE_SIZE, ddpm_loss, encode_latent_distribution, make_unet, sd_alphas_cumprod, train_loop,
)
from tools.toyworld.train_vae import load_vae

EMBED_WIDTH = 64
UNCOND_PROBABILITY = 0.1


def make_pipeline(vae, seed: int):
    """A Zero123Pipeline of fresh toy components around a trained VAE."""
    from diffusers import DDIMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from extern.zero123.pipeline import CCProjection, Zero123Pipeline
    from lift3d.models.tiny_factory import SD_SCHEDULE

    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=EMBED_WIDTH, intermediate_size=128, projection_dim=EMBED_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu",
    ))
    unet = make_unet(seed + 1, in_channels=8, cross_attention_dim=EMBED_WIDTH)
    torch.manual_seed(seed + 2)
    projection = CCProjection(embedding_dim=EMBED_WIDTH, additional_embeddings=4)
    return Zero123Pipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=DDIMScheduler(**SD_SCHEDULE, set_alpha_to_one=False),
        feature_extractor=clip_image_processor(IMAGE_SIZE), clip_camera_projection=projection,
    )


def relative_cameras(data: toy_dataset.ToyDataset, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """T [B,4] of target views relative to conditioning views (indices into data)."""
    return relative_camera_embedding(
        data.elevation[target], data.azimuth[target], data.distance[target],
        data.elevation[cond], data.azimuth[cond], data.distance[cond], variant="zero123",
    )


def train(out: Path, data: toy_dataset.ToyDataset, vae, steps: int, batch_size: int, lr: float, seed: int = 0) -> Path:
    logs = out.parent / f"{out.name}-training"
    logs.mkdir(parents=True, exist_ok=True)
    pipe = make_pipeline(vae, seed)
    scale = float(vae.config.scaling_factor)
    mean, std = encode_latent_distribution(vae, data.images)  # [N,4,16,16]; the mean is the posterior mode
    cond_images = data.images.permute(0, 3, 1, 2).contiguous()  # [N,3,32,32] on white
    views = data.views_per_object
    alphas = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(seed + 3)
    trained = [pipe.unet, pipe.image_encoder, pipe.clip_camera_projection]
    ema = EMA(trained)

    def loss_fn(step: int) -> torch.Tensor:
        target = torch.randint(len(mean), (batch_size,), generator=g)
        cond = (target // views) * views + torch.randint(views, (batch_size,), generator=g)  # same object
        z0 = (mean[target] + std[target] * torch.randn(mean[target].shape, generator=g)) * scale
        context = pipe.conditioning(pipe.encode_image_embedding(cond_images[cond]), relative_cameras(data, target, cond))
        keep = (torch.rand(batch_size, generator=g) >= UNCOND_PROBABILITY).float()  # [B]
        ref = mean[cond] * keep[:, None, None, None]
        context = context * keep[:, None, None]
        return ddpm_loss(lambda z_t, t: pipe.predict_noise(z_t, t, ref, context), z0, alphas, g)

    params = [p for m in trained for p in m.parameters()]
    train_loop(loss_fn, params, steps, lr, "Zero123 UNet", log_path=logs / "unet_loss.csv", ema=ema)
    unet, image_encoder, projection = ema.shadow
    write_zero123_folder(out, vae=vae, unet=unet, image_encoder=image_encoder,
                         feature_extractor=clip_image_processor(IMAGE_SIZE), projection=projection)
    pipe.unet, pipe.image_encoder, pipe.clip_camera_projection = unet, image_encoder, projection
    save_samples(logs / "samples.png", pipe, data, alphas)
    return out


@torch.no_grad()
def save_samples(path: Path, pipe, data: toy_dataset.ToyDataset, alphas, guidance_scale: float = 3.0) -> None:
    """Per object (rows): the conditioning view, then DDIM samples at the cameras of 5 other views
    of it, each followed by the true view."""
    from lift3d.utils.saving import save_image

    views, n_targets = data.views_per_object, 5
    rows = []
    for k in range(0, len(data.objects), 3):
        cond = torch.full((n_targets,), k * views)
        target = k * views + 1 + torch.arange(n_targets)
        image = data.images[cond[:1]].permute(0, 3, 1, 2)
        emb, ref = pipe.encode_image_embedding(image), pipe.encode_image_latents(image)
        context = pipe.conditioning(emb, relative_cameras(data, target, cond))

        def eps_fn(z, t):
            e = pipe.predict_noise(torch.cat([z, z]), torch.cat([t, t]), torch.cat([ref.expand(len(z), -1, -1, -1), torch.zeros_like(ref).expand(len(z), -1, -1, -1)]),
                                   torch.cat([context, torch.zeros_like(context)]))
            ec, eu = e.chunk(2)
            return eu + guidance_scale * (ec - eu)

        noise = torch.randn((n_targets, 4, ref.shape[-2], ref.shape[-1]), generator=torch.Generator().manual_seed(k))
        z = ddim_sample(noise, ddim_timesteps(999, 50), eps_fn, alphas)
        img = (pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        tiles = [data.images[k * views]] + [x for i in range(n_targets) for x in (img[i], data.images[target[i]])]
        rows.append(torch.cat(tiles, 1))
    save_image(path, torch.cat(rows, 0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.toyworld.train_zero123", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output model folder (zero123-xl diffusers layout)")
    parser.add_argument("--vae-from", required=True, help="folder with the trained toy VAE in vae/ (train_vae.py or the toy SD prior)")
    parser.add_argument("--data", help="a dataset .npz from tools.toyworld.dataset (default: generate one)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = toy_dataset.ToyDataset.load(args.data) if args.data else toy_dataset.generate(seed=args.seed)
    out = train(Path(args.out), data, load_vae(args.vae_from), args.steps, args.batch_size, args.lr, args.seed)
    print(f"wrote {out} ({folder_size_bytes(out) / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
