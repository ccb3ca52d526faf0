"""Trains the toy world's VAE (shared by both toy priors, as SD and Zero-1-to-3 share SD's VAE).

    python -m tools.toyworld.train_vae --out DIR [--data toyworld.npz --steps 600]

writes DIR/vae (AutoencoderKL.from_pretrained(DIR, subfolder="vae")); the training scripts of
both priors take it with --vae-from DIR.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.toyworld import dataset as toy_dataset
from tools.toyworld.diffusion_training import train_vae


def load_vae(folder: str | Path):
    """The trained VAE of `folder` (a folder with vae/, e.g. a train_vae output or an SD-layout prior)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(folder), subfolder="vae").eval().requires_grad_(False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.toyworld.train_vae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="a dataset .npz from tools.toyworld.dataset (default: generate one)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = toy_dataset.ToyDataset.load(args.data) if args.data else toy_dataset.generate(seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae = train_vae(data.images, args.steps, args.batch_size, seed=args.seed, log_path=out / "vae_loss.csv")
    vae.save_pretrained(out / "vae")
    print(f"wrote {out / 'vae'} (scaling factor {vae.config.scaling_factor:.4f}) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
