"""Trains the toy text-to-image prior in the Stable Diffusion layout (VAE, CLIP text encoder +
tokenizer, UNet2DConditionModel, SD 2.1-base's scheduler) on the procedural toy world.

The text encoder is trained with the UNet (the real SD freezes a pretrained CLIP; the toy world
has no such encoder). Captions: the object's prompt with the camera's view suffix (70 %), the bare
prompt (15 %) or the empty prompt (15 %, for classifier-free guidance; USD's unconditional term
is exactly eps("")). The saved weights are an EMA of the trained ones.

    python -m tools.toyworld.train_sd --out load/priors/toy-sd [--steps 4000 --vae-steps 800]

Loads with `StableDiffusionPipeline.from_pretrained(out)` like stabilityai/stable-diffusion-2-1-base.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lift3d.models.ddim import ddim_sample, ddim_timesteps
from lift3d.models.tiny_factory import TEXT_MAX_LENGTH, folder_size_bytes, write_sd_folder, write_tokenizer
from tools.toyworld import dataset as toy_dataset
from tools.toyworld.train_vae import load_vae
from tools.toyworld.diffusion_training import (
    EMA, ddpm_loss, encode_latent_distribution, make_unet, sd_alphas_cumprod, train_loop, train_vae,
)

TEXT_WIDTH = 64


def make_text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, projection_dim=TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TEXT_MAX_LENGTH, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """[N,77] ids, padded as lift3d.prompt.stable_diffusion.encode_prompts pads."""
    return tokenizer(prompts, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids


def train(out: Path, data: toy_dataset.ToyDataset, steps: int, vae_steps: int, batch_size: int, lr: float,
          seed: int = 0, vae=None, save_every: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    logs = out.parent / f"{out.name}-training"
    logs.mkdir(parents=True, exist_ok=True)
    if vae is None:
        vae = train_vae(data.images, vae_steps, batch_size, seed=seed, log_path=logs / "vae_loss.csv")
    scale = float(vae.config.scaling_factor)
    mean, std = encode_latent_distribution(vae, data.images)  # [N,4,16,16] each

    tokenizer = write_tokenizer(out / "tokenizer", pad_token="!")
    text_encoder = make_text_encoder(tokenizer, seed + 1)
    unet = make_unet(seed + 2, in_channels=4, cross_attention_dim=TEXT_WIDTH)
    # caption table: view captions, bare prompts, "" -> token ids [K,77]; per image its three choices
    view_caps, bare_caps = data.view_captions(), data.prompts()
    table = sorted(set(view_caps) | set(bare_caps) | {""})
    ids = tokenize(tokenizer, table)
    index = {c: i for i, c in enumerate(table)}
    choice = torch.tensor([[index[v], index[b], index[""]] for v, b in zip(view_caps, bare_caps)])  # [N,3]
    alphas = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(seed + 3)
    ema = EMA([unet, text_encoder])

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(mean), (batch_size,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        u = torch.rand(batch_size, generator=g)
        which = (u > 0.70).long() + (u > 0.85).long()  # 0 view caption, 1 bare prompt, 2 empty
        text = text_encoder(ids[choice[idx, which]])[0]  # [B,77,D]
        return ddpm_loss(lambda z_t, t: unet(z_t, t, encoder_hidden_states=text).sample, z0, alphas, g)

    def save_ema(step: int) -> None:  # the EMA weights so far, loadable while training goes on
        write_sd_folder(out, vae=vae, text_encoder=ema.shadow[1], tokenizer=tokenizer, unet=ema.shadow[0])

    train_loop(loss_fn, list(unet.parameters()) + list(text_encoder.parameters()), steps, lr, "SD UNet",
               log_path=logs / "unet_loss.csv", ema=ema, checkpoint=save_ema, checkpoint_every=save_every)
    unet, text_encoder = ema.shadow
    write_sd_folder(out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    save_samples(logs / "samples.png", vae, unet, text_encoder, tokenizer, data, alphas)
    return out


@torch.no_grad()
def save_samples(path: Path, vae, unet, text_encoder, tokenizer, data, alphas, guidance_scale: float = 5.0) -> None:
    """One DDIM sample per object prompt (rows: shapes, columns: colours), CFG against ""."""
    from lift3d.utils.saving import save_image

    prompts = [f"a {c} {s}" for s, c in data.objects]
    cond = text_encoder(tokenize(tokenizer, prompts))[0]
    uncond = text_encoder(tokenize(tokenizer, [""] * len(prompts)))[0]

    def eps_fn(z, t):
        e = unet(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond])).sample
        ec, eu = e.chunk(2)
        return eu + guidance_scale * (ec - eu)

    z = ddim_sample(torch.randn((len(prompts), 4, 16, 16), generator=torch.Generator().manual_seed(0)),
                    ddim_timesteps(999, 50), eps_fn, alphas)
    img = (vae.decode(z / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    n_col = len({c for _, c in data.objects})
    rows = [torch.cat(list(img[i:i + n_col]), 1) for i in range(0, len(img), n_col)]
    save_image(path, torch.cat(rows, 0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.toyworld.train_sd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output model folder (SD layout)")
    parser.add_argument("--data", help="a dataset .npz from tools.toyworld.dataset (default: generate one)")
    parser.add_argument("--vae-from", help="reuse the VAE in <folder>/vae (tools.toyworld.train_vae) instead of training one")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=0, help="also write the EMA weights every N steps")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = toy_dataset.ToyDataset.load(args.data) if args.data else toy_dataset.generate(seed=args.seed)
    vae = load_vae(args.vae_from) if args.vae_from else None
    out = train(Path(args.out), data, args.steps, args.vae_steps, args.batch_size, args.lr, args.seed, vae=vae, save_every=args.save_every)
    print(f"wrote {out} ({folder_size_bytes(out) / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
