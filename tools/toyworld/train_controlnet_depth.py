"""Trains the toy depth ControlNet (#17 point 4): a ControlNetModel made from the toy SD's UNet
(`ControlNetModel.from_unet`, Zhang et al. arXiv 2302.05543 §3.2: a trainable copy of the encoder
joined to the frozen UNet by zero-initialised convolutions), trained on toy renders paired with
their inverse depth (near = 1, background = 0; lift3d.gan.depth_generation.inverse_depth_image), each
pair also moved and scaled in the image plane (`moved_copies`) so that depth has to carry the layout,
so that `StableDiffusionControlNet("load/priors/toy-sd", controlnet_name_or_path=<out>)` is the
toy world's depth-conditioned prior, the role SD ControlNet-depth plays for PODIA-3D.

Only the ControlNet learns (the toy SD's UNet, VAE and text encoder stay frozen, as in the paper).
Captions: the view caption (50 %), the bare prompt (30 %) or "" (20 %, CFG's unconditional half
keeps the control image, as lift3d.gan.depth_generation feeds it). The conditioning embedding has
one stride-2 conv: 32² control images -> the 16² latents (the toy VAE downsamples by 2).

    python -m tools.toyworld.train_controlnet_depth --sd load/priors/toy-sd --out load/priors/toy-controlnet-depth \
        [--views-per-object 60 --steps 1500 --batch-size 16]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lift3d.gan.depth_generation import inverse_depth_image
from lift3d.models.tiny_factory import folder_size_bytes
from tools.toyworld import dataset as toy_dataset
from tools.toyworld.depth import render_shape_depth
from tools.toyworld.diffusion_training import (
    EMA, ddpm_loss, encode_latent_distribution, sd_alphas_cumprod, train_loop,
)
from tools.toyworld.train_sd import tokenize
from tools.toyworld.train_vae import load_vae


def depth_of_dataset(data: toy_dataset.ToyDataset) -> torch.Tensor:
    """Inverse-depth control images [N,1,S,S] of every render of `data` (same cameras, fovy 40°)."""
    size = data.images.shape[1]
    out = torch.empty(len(data.images), 1, size, size)
    for k, (shape, _colour) in enumerate(data.objects):
        idx = (data.object_index == k).nonzero().squeeze(1)
        depth = render_shape_depth(shape, data.elevation[idx], data.azimuth[idx], data.distance[idx],
                                   torch.full((len(idx),), toy_dataset.FOVY_DEG), size)
        out[idx] = inverse_depth_image(depth)
    return out


@torch.no_grad()
def moved_copies(images: torch.Tensor, control: torch.Tensor, generator: torch.Generator, max_shift: float = 0.3,
                 scale_range: tuple[float, float] = (0.6, 1.15)) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair (image [N,S,S,3] on white, inverse depth [N,1,S,S], 0 = background) moved and scaled in the
    image plane by one random similarity (shift up to `max_shift` of the half-width, zoom in `scale_range`),
    as a camera with another principal point and focal length would see it. Without such pairs the toy
    world's objects are always centred and of one size, and depth would not need to carry the layout."""
    import torch.nn.functional as F

    n = images.shape[0]
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale  # output pixel -> input pixel
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(theta, (n, 1, *control.shape[-2:]), align_corners=False)
    rgb = 1.0 - F.grid_sample(1.0 - images.permute(0, 3, 1, 2), grid, align_corners=False)  # white outside
    inv = F.grid_sample(control, grid, align_corners=False)  # background (0) outside
    return rgb.permute(0, 2, 3, 1).clamp(0, 1).contiguous(), inv.clamp(0, 1)


def train(sd: Path, out: Path, data: toy_dataset.ToyDataset, steps: int, batch_size: int, lr: float, seed: int = 0,
          save_every: int = 0) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    logs = out.parent / f"{out.name}-training"
    logs.mkdir(parents=True, exist_ok=True)
    vae = load_vae(sd)
    unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(str(sd), subfolder="text_encoder").eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(sd), subfolder="tokenizer")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    scale = float(vae.config.scaling_factor)
    control = depth_of_dataset(data)  # [N,1,32,32]
    moved_images, moved_control = moved_copies(data.images, control, torch.Generator().manual_seed(seed + 4))
    images = torch.cat([data.images, moved_images])  # [2N,32,32,3]: every render as rendered and moved
    control = torch.cat([control, moved_control]).expand(-1, 3, -1, -1).contiguous()  # [2N,3,32,32]
    mean, std = encode_latent_distribution(vae, images)  # [2N,4,16,16] each
    view_caps, bare_caps = data.view_captions() * 2, data.prompts() * 2
    table = sorted(set(view_caps) | set(bare_caps) | {""})
    with torch.no_grad():
        text_table = torch.cat([text_encoder(tokenize(tokenizer, table[i:i + 64]))[0] for i in range(0, len(table), 64)])
    index = {c: i for i, c in enumerate(table)}
    choice = torch.tensor([[index[v], index[b], index[""]] for v, b in zip(view_caps, bare_caps)])  # [N,3]
    alphas = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(seed + 3)
    ema = EMA([controlnet])

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(mean), (batch_size,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        u = torch.rand(batch_size, generator=g)
        which = (u > 0.5).long() + (u > 0.8).long()  # 0 view caption, 1 bare prompt, 2 empty
        text = text_table[choice[idx, which]]  # [B,77,D]

        def predict(z_t, t):
            down, mid = controlnet(z_t, t, encoder_hidden_states=text, controlnet_cond=control[idx], return_dict=False)
            return unet(z_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample

        return ddpm_loss(predict, z0, alphas, g)

    def save_ema(step: int) -> None:
        ema.shadow[0].save_pretrained(out)

    train_loop(loss_fn, list(controlnet.parameters()), steps, lr, "depth ControlNet", log_path=logs / "controlnet_loss.csv",
               ema=ema, checkpoint=save_ema, checkpoint_every=save_every, warmup=50)
    ema.shadow[0].save_pretrained(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.toyworld.train_controlnet_depth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd", default="load/priors/toy-sd", help="the toy SD folder the ControlNet is made from")
    parser.add_argument("--out", required=True, help="output ControlNet folder (config.json + weights)")
    parser.add_argument("--views-per-object", type=int, default=60)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=200, help="also write the EMA weights every N steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = toy_dataset.generate(args.views_per_object, 32, args.seed)
    out = train(Path(args.sd), Path(args.out), data, args.steps, args.batch_size, args.lr, args.seed, args.save_every)
    print(f"wrote {out} ({folder_size_bytes(out) / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
