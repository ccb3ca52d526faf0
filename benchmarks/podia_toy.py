#!/usr/bin/env python
"""PODIA-3D toy benchmark (#17 point 4; docs/methods/podia3d.md): PODIA's pose-preserved generation against
DATID-3D's SDEdit baseline on the toy world, then adversarial adaptation of the source GAN on each set.

Source: the shipped toy GAN of red cubes (load/gan/toy-red-cube-triplane.pt) rendered with depth at n cameras
(elevation 0-30°, distance 2, fovy 40°). Target prompt (large gap: another shape and colour): "a blue
cylinder". Priors: load/priors/toy-sd and its depth ControlNet load/priors/toy-controlnet-depth.

Generated sets (one image per source render, the same seeds):
- podia:        the pose-preserved model (ControlNet copy fine-tuned `--finetune-steps` on the renders + depth,
                caption "a red cube") for t >= 500, the general ControlNet after; strength 1.0 (pure noise)
- depth-general: the general ControlNet only (no fine-tuning), strength 1.0
- sdedit-0.7:   DATID-3D: SDEdit of the render with plain toy SD, strength 0.7, no depth
- sdedit-1.0:   the same at strength 1.0 (the render unused)
- podia "a cylinder" vs podia with debias prompts "a <colour> cylinder" (4 colours): diversity

Measures: target match (toy CNN classifier, tools/toyworld/classifier.py: shape = cylinder, colour = blue),
pose accuracy (silhouette IoU of the generated image vs the source render's mask), diversity (mean pairwise
distance of classifier features; number of distinct predicted colours), KID on classifier features against
true renders of the target at the same cameras (x1000). Adaptation (`--adapt-steps` gan-system steps from the
source GAN, podia3d-adapt.yaml's model) on the podia and sdedit-0.7 sets: target match and KID of the adapted
G_ema's samples, and 3D consistency (mesh of 4 latents re-rendered vs volume renders, IoU).

    python benchmarks/podia_toy.py --out outputs/bench/podia_toy [--n 48 --finetune-steps 150 --adapt-steps 150]

Writes <out>/results.json, <out>/results.md (the table of benchmarks/RESULTS.md) and figures
<out>/sets.png (rows: source, podia, depth-general, sdedit-0.7, sdedit-1.0) and <out>/adapted.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SHAPE, TARGET_COLOUR = "cylinder", "blue"
TARGET = f"a {TARGET_COLOUR} {TARGET_SHAPE}"
DEBIAS_COLOURS = ["blue", "green", "yellow", "purple"]


def kid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (k(x,y) = (x·y/d + 1)³, KID's), features [N,d] scaled to
    norm sqrt(d) (so x·y/d is their cosine: the toy features are not on Inception's scale, and a per-dimension
    standardisation explodes on the near-constant features of a one-object target set)."""
    d = real.shape[1]
    real, fake = [torch.nn.functional.normalize(f, dim=1) * d ** 0.5 for f in (real, fake)]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = real.shape[0], fake.shape[0]
    krr, kff, krf = k(real, real), k(fake, fake), k(real, fake)
    return float((krr.sum() - krr.diag().sum()) / (m * (m - 1)) + (kff.sum() - kff.diag().sum()) / (n * (n - 1))
                 - 2 * krf.mean())


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance of features [N,d]."""
    dist = torch.cdist(features, features)
    n = features.shape[0]
    return float(dist.sum() / (n * (n - 1)))


def score_set(clf, images: torch.Tensor, masks: torch.Tensor, real_feats: torch.Tensor) -> dict:
    from lift3d.gan.generated_set_filters import pose_scores

    shapes, colours = clf.predict(images)
    with torch.no_grad():
        feats = clf.features(images)
    return {"shape_match": float(np.mean([s == TARGET_SHAPE for s in shapes])),
            "colour_match": float(np.mean([c == TARGET_COLOUR for c in colours])),
            "pose_iou": float(pose_scores(images, masks).mean()) if masks is not None else None,
            "diversity": diversity(feats), "distinct_colours": len(set(colours)),
            "kid_x1000": 1000 * kid(real_feats, feats)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench/podia_toy")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--adapt-steps", type=int, default=150)
    parser.add_argument("--num-steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--controlnet", default=str(REPO / "load/priors/toy-controlnet-depth"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    from lift3d.gan.camera_label import look_at_labels
    from lift3d.gan.debias import prompts_per_image
    from lift3d.gan.depth_generation import generate_images
    from lift3d.gan.pose_preserved_model import depth_finetune_loss, specialize
    from lift3d.gan.pretrained import load_generator
    from lift3d.gan.source_renders import render_source_set
    from lift3d.models.stable_diffusion import StableDiffusion
    from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
    from lift3d.prompt.stable_diffusion import encode_prompts
    from lift3d.utils.saving import image_row, save_image
    from tools.toyworld.classifier import train_toy_classifier
    from tools.toyworld.render import render_shape

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    clf = train_toy_classifier(cache=out / "toy_classifier.pt")
    log("classifier ready")
    g = torch.Generator().manual_seed(args.seed)
    n = args.n
    elevation, azimuth = 30.0 * torch.rand(n, generator=g), 360.0 * torch.rand(n, generator=g) - 180.0
    distance, fovy = torch.full((n,), 2.0), 40.0
    labels = look_at_labels(elevation, azimuth, distance, fovy)
    source_g = load_generator(REPO / "load/gan/toy-red-cube-triplane.pt")
    src = render_source_set(source_g, labels, seed=args.seed)  # images [N,3,32,32] in [0,1], depth, mask
    true_target, _ = render_shape(TARGET_SHAPE, TARGET_COLOUR, elevation, azimuth, distance, torch.full((n,), fovy), 32)
    with torch.no_grad():
        real_feats = clf.features(true_target.permute(0, 3, 1, 2))
    log("source renders ready")

    sd_path = str(REPO / "load/priors/toy-sd")
    general = StableDiffusionControlNet.load(sd_path, controlnet_name_or_path=args.controlnet, shared=False)
    plain = StableDiffusion.load(sd_path)
    prompts = [TARGET, "a cylinder", "a red cube", ""] + [f"a {c} cylinder" for c in DEBIAS_COLOURS]
    emb = dict(zip(prompts, encode_prompts(sd_path, prompts).split(1)))

    # ---- the pose-preserved model (PODIA-3D step 2)
    specialized, network = specialize(general)
    opt = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for step in range(args.finetune_steps):
        idx = torch.randint(n, (8,), generator=g)
        caption = emb["a red cube"] if torch.rand(1, generator=g).item() > 0.1 else emb[""]
        loss = depth_finetune_loss(specialized, src["images"][idx], src["depth"][idx], caption, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    network.eval().requires_grad_(False)
    log(f"PPD fine-tuned {args.finetune_steps} steps: loss {np.mean(losses[:20]) if losses else 0:.4f} -> "
        f"{np.mean(losses[-20:]) if losses else 0:.4f}")

    seeds = list(range(args.seed, args.seed + n))
    common = dict(num_steps=args.num_steps, guidance_scale=5.0, seeds=seeds, image_size=(32, 32))
    text = lambda p: torch.cat([emb[q] for q in prompts_per_image(p, n)])  # noqa: E731
    sets = {
        "podia": generate_images(general, text([TARGET]), emb[""], depth=src["depth"], strength=1.0,
                                 specialized=specialized, switch_timestep=500, **common),
        "depth-general": generate_images(general, text([TARGET]), emb[""], depth=src["depth"], strength=1.0, **common),
        "sdedit-0.7": generate_images(plain, text([TARGET]), emb[""], images=src["images"], strength=0.7, **common),
        "sdedit-1.0": generate_images(plain, text([TARGET]), emb[""], images=src["images"], strength=1.0, **common),
        "podia-superclass": generate_images(general, text(["a cylinder"]), emb[""], depth=src["depth"], strength=1.0,
                                            specialized=specialized, switch_timestep=500, **common),
        "podia-debiased": generate_images(general, text([f"a {c} cylinder" for c in DEBIAS_COLOURS]), emb[""],
                                          depth=src["depth"], strength=1.0, specialized=specialized,
                                          switch_timestep=500, **common),
    }
    torch.save({"sets": sets, "source": src, "labels": labels, "true_target": true_target}, out / "sets.pt")
    log("generated sets")
    results = {"n": n, "finetune_steps": args.finetune_steps, "adapt_steps": args.adapt_steps,
               "ddim_steps": args.num_steps, "sets": {}}
    results["sets"]["source renders"] = score_set(clf, src["images"], src["mask"], real_feats)
    results["sets"]["true target renders"] = score_set(clf, true_target.permute(0, 3, 1, 2), None, real_feats)
    for name, images in sets.items():
        results["sets"][name] = score_set(clf, images, src["mask"], real_feats)
    k = 8
    rows = [src["images"]] + [sets[m] for m in ("podia", "depth-general", "sdedit-0.7", "sdedit-1.0", "podia-debiased")]
    save_image(out / "sets.png", np.concatenate([image_row([im.permute(1, 2, 0) for im in r[:k]]) for r in rows], 0))

    # ---- adaptation (PODIA-3D step 6 / DATID-3D): gan-system from the source GAN on each set
    results["adapted"] = {}
    adapted_rows = []
    if args.adapt_steps > 0:
        import pytorch_lightning as pl
        import yaml

        from lift3d.gan.consistency import mesh_render_iou
        from lift3d.gan.eg3d_datamodule import EG3DImageDataModule
        from lift3d.gan.gan_system import GANSystem
        from lift3d.gan.source_renders import write_eg3d_dataset

        system_cfg = yaml.safe_load((REPO / "custom/podia3d/configs/podia3d-adapt.yaml").read_text())["system"]
        system_cfg.update(init_from=str(REPO / "load/gan/toy-red-cube-triplane.pt"), sample_every_n_steps=0)
        for name in ("podia", "sdedit-0.7"):
            folder = write_eg3d_dataset(out / f"dataset-{name}", sets[name], labels)
            pl.seed_everything(args.seed, verbose=False)
            dm = EG3DImageDataModule({"dataroot": str(folder), "batch_size": 8})
            system = GANSystem(system_cfg)
            trainer = pl.Trainer(max_steps=args.adapt_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
            trainer.fit(system, datamodule=dm)
            G = system.G_ema.eval()
            with torch.no_grad():
                z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(123))
                rendered = G(z, labels)
                images = ((rendered["image"] + 1) / 2).clamp(0, 1)
                ious = []
                for j in range(4):
                    ws = G.mapping(z[j:j + 1], labels[j:j + 1])
                    ious.append(mesh_render_iou(G, ws, labels[:8], level=2.0, grid_resolution=48).mean())
            results["adapted"][name] = {**score_set(clf, images, None, real_feats),
                                        "mesh_vs_render_iou": float(torch.stack(ious).mean())}
            adapted_rows.append(images[:k])
            log(f"adapted on {name}")
        with torch.no_grad():
            before = ((source_g(torch.randn(k, source_g.z_dim, generator=torch.Generator().manual_seed(123)),
                                labels[:k])["image"] + 1) / 2).clamp(0, 1)
        save_image(out / "adapted.png", np.concatenate(
            [image_row([im.permute(1, 2, 0) for im in r]) for r in [before] + adapted_rows], 0))
    results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict) -> str:
    def f(v, spec=".2f"):
        return "–" if v is None else format(v, spec)

    lines = [f"n = {r['n']} source renders (toy red-cube GAN), target \"{TARGET}\", DDIM {r['ddim_steps']} steps, "
             f"PPD fine-tuned {r['finetune_steps']} steps, adaptation {r['adapt_steps']} steps", "",
             "| set | shape match | colour match | pose IoU vs source mask | diversity | distinct colours | KID×1000 |",
             "|---|---|---|---|---|---|---|"]
    for name, s in r["sets"].items():
        lines.append(f"| {name} | {f(s['shape_match'])} | {f(s['colour_match'])} | {f(s['pose_iou'])} | "
                     f"{f(s['diversity'])} | {s['distinct_colours']} | {f(s['kid_x1000'], '.1f')} |")
    if r.get("adapted"):
        lines += ["", "| adapted GAN (trained on) | shape match | colour match | mesh vs render IoU | diversity | KID×1000 |",
                  "|---|---|---|---|---|---|"]
        for name, s in r["adapted"].items():
            lines.append(f"| {name} | {f(s['shape_match'])} | {f(s['colour_match'])} | {f(s['mesh_vs_render_iou'])} | "
                         f"{f(s['diversity'])} | {f(s['kid_x1000'], '.1f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
