"""Gradients of every diffusion guidance on the tiny models, for fixed inputs (issue #13's refactor check).

`compute(...)` runs each guidance through its public interface only (registered name, config dict,
`__call__` with explicit t / noise) and returns the gradients the 3D model would receive:
    sd, zero123, usd-text              d loss / d render                     [B,H,W,3]
    usd-image (with reference term)    d loss / d render, d loss / d reference render
    xdreamer (coarse and fine phases)  d loss / d render (fine), d / d normals+opacity, d / d CG-LoRA

`tests/data/guidance_golden.pt` holds the values computed by the guidance code before the frozen-model
refactor (commit bfe719a), written by `python -m tests.guidance_golden`; the refactored code (commit
a9e6312) reproduced all of them. Deliberate changes of a method since then re-record only the
entries they change, with `python -m tests.guidance_golden KEY ...`:
    zero123, usd_image, usd_image_reference   the reference image composited with its continuous
                                              alpha (docs/faithfulness.md), commit after a9e6312
tests/test_guidance_golden.py recomputes them with the current code and compares. The SD-family
guidances use the standard CFG form there (`cfg_form: standard`, the only form the old code had).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "guidance_golden.pt"
IMAGE = str(REPO / "load/images/blocks_rgba.png")
REF = {"cond_elevation_deg": 15.0, "cond_azimuth_deg": 45.0, "cond_camera_distance": 1.5}
BATCH = {
    "elevation": torch.tensor([15.0, 40.0]), "azimuth": torch.tensor([45.0, -120.0]),
    "camera_distances": torch.tensor([1.5, 2.0]),
    "camera_positions": torch.tensor([[1.3, 0.2, 0.4], [-1.5, 0.4, 1.2]]),
    "fovy": torch.deg2rad(torch.tensor([30.0, 40.0])),
}
T = torch.tensor([150, 700])
LATENT = (2, 4, 8, 8)  # the tiny models' latents


def _inputs(seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(2, size, size, 3, generator=gen)
    noise = torch.randn(*LATENT, generator=gen)
    return image, noise


def _render_out(seed: int, size: int = 32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, size, size, 1)
    mask[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1.0
    normal = torch.rand(2, size, size, 3, generator=gen) * mask
    return {"opacity": mask.requires_grad_(True), "comp_normal": normal.requires_grad_(True)}


def _grad(fn, *leaves: torch.Tensor) -> list[torch.Tensor]:
    for leaf in leaves:
        leaf.grad = None
    fn().backward()
    return [leaf.grad.detach().clone() for leaf in leaves]


def compute(sd_path: Path, zero123_path: Path, cache_dir: str, sd_family_cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor
    from lift3d.registry import find

    torch.manual_seed(0)
    prompt_utils = StableDiffusionPromptProcessor({
        "prompt": "a photo of a red car", "negative_prompt": "blurry", "overhead_threshold": 90.0,
        "pretrained_model_name_or_path": str(sd_path), "cache_dir": cache_dir,
    })()
    out: dict[str, torch.Tensor] = {}

    def run(name: str, guidance, key: str, seed: int, **kw):
        image, noise = _inputs(seed)
        image.requires_grad_(True)

        def loss():
            torch.manual_seed(seed)  # the VAE posterior sample
            return guidance(image, BATCH, prompt_utils=prompt_utils, t=T, noise=noise, **kw)[key]

        out[name] = _grad(loss, image)[0]

    sd = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(sd_path), "guidance_scale": 7.5,
                                            **sd_family_cfg})
    run("sd", sd, "loss_sds", 1)
    z123 = find("zero123-guidance")({"pretrained_model_name_or_path": str(zero123_path), "cond_image_path": IMAGE,
                                     "guidance_scale": 3.0, **REF})
    run("zero123", z123, "loss_sds", 2)
    usd_text = find("usd-text-guidance")({"pretrained_model_name_or_path": str(sd_path), "guidance_scale": 7.5,
                                          "usd_lambda": 0.3, **sd_family_cfg})
    run("usd_text", usd_text, "loss_usd", 3)

    usd = find("usd-image-guidance")({
        "pretrained_model_name_or_path": str(zero123_path), "sd_model_name_or_path": str(sd_path),
        "cond_image_path": IMAGE, "cache_dir": cache_dir, "guidance_scale": 7.5, "usd_lambda": 0.2, **REF})
    image, noise = _inputs(4)
    image.requires_grad_(True)
    ref_render = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    ref_image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(6))
    ref_noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def usd_loss():
        torch.manual_seed(4)
        o = usd(image, BATCH, t=T, noise=noise, reference_out={"comp_rgb": ref_render}, reference_image=ref_image,
                reference_t=torch.tensor([400]), reference_noise=ref_noise)
        return o["loss_usd"] + 0.5 * o["loss_usd_ref"]

    out["usd_image"], out["usd_image_reference"] = _grad(usd_loss, image, ref_render)

    # X-Dreamer: CG-LoRA drawn from seed 8 (B is zero at init: perturbed so that it acts), AMA on
    torch.manual_seed(8)
    xd = find("xdreamer-guidance")({"pretrained_model_name_or_path": str(sd_path), "guidance_scale": 7.5,
                                    "ama_start_step": 0, "coarse_steps": 1, **sd_family_cfg})
    with torch.no_grad():
        for p in xd.trainable_modules().parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    lora = list(xd.trainable_modules().parameters())
    for phase, step in (("coarse", 0), ("fine", 5)):
        xd.update_step(0, step)
        image, noise = _inputs(9 + step)
        image.requires_grad_(True)
        render_out = _render_out(10 + step)

        def xd_loss():
            torch.manual_seed(11)  # the coarse phase's random rotation and the VAE sample
            o = xd(image, BATCH, prompt_utils=prompt_utils, render_out=render_out, t=T, noise=noise)
            return o["loss_sds"] + 0.1 * o["loss_ama"]

        leaves = [image, render_out["opacity"], render_out["comp_normal"], *lora]
        for leaf in leaves:
            leaf.grad = None
        xd_loss().backward()
        out[f"xdreamer_{phase}_render"] = torch.zeros_like(image) if image.grad is None else image.grad.clone()
        out[f"xdreamer_{phase}_opacity"] = render_out["opacity"].grad.clone()
        out[f"xdreamer_{phase}_normal"] = (torch.zeros_like(render_out["comp_normal"])
                                           if render_out["comp_normal"].grad is None else render_out["comp_normal"].grad.clone())
        out[f"xdreamer_{phase}_lora"] = torch.cat([p.grad.flatten() for p in lora if p.grad is not None])
    return out


def main(keys: list[str]) -> int:
    """Records every entry, or only `keys` (the others are kept from the file)."""
    import tempfile

    from lift3d.models.tiny_factory import make_tiny_sd, make_tiny_zero123

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sd = make_tiny_sd(Path(tmp) / "tiny-sd", seed=0)
        z123 = make_tiny_zero123(Path(tmp) / "tiny-zero123", seed=0)
        values = compute(sd, z123, str(Path(tmp) / "cache"), {"cfg_form": "standard"})
    if keys:
        unknown = sorted(set(keys) - set(values))
        if unknown:
            raise SystemExit(f"unknown entries {unknown}; entries: {sorted(values)}")
        values = {**torch.load(GOLDEN), **{k: values[k] for k in keys}}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    torch.save(values, GOLDEN)
    for k, v in values.items():
        print(f"{k:28s} {tuple(v.shape)} |g| = {v.norm():.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
