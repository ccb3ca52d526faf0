"""X-Dreamer's guidance computes the method, checked against independent computations on the tiny SD
model (docs/methods/xdreamer.md §2-3; Ma et al., arXiv 2312.00085). Each test fails for one way of
breaking it (docs/faithfulness.md, "Tests that catch a broken X-Dreamer"):

(a) the SDS gradient on the latents is w(t) (eps_guided - noise) / B, eps_guided from direct calls of
    the UNet (loaded here on its own) at the same t and noise — not eps_uncond, not eps_cond alone;
(b) the weighting is phase-dependent: w = 1 - alphabar_t in the coarse phase, sqrt(alphabar_t)
    (1 - alphabar_t) in the fine phase (DreamFusion arXiv 2209.14988 §3 / Fantasia3D arXiv 2303.13873 §3.1);
(c) the coarse "latent" is the render's [normal, mask], area-downsampled: its first 3 channels are the
    normals (zeroing them is caught), rotated only by a proper rotation;
(d) AMA averages one term per UNet block with cross-attention: every block's map counts (not only the
    last one), the value matches a recomputation from the UNet's own q / k projections.

Only the guidance's public interface is used: `XDreamerGuidance(cfg)`, `__call__(image, batch,
prompt_utils, render_out=..., t=..., noise=...)`, `coarse_latents`, `weight`, `update_step`, and
`ama_loss(maps, opacity)`; the UNet is reached for forward hooks only (test (d)).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from custom.xdreamer.ama_loss import ama_loss
from custom.xdreamer.guidance import XDreamerGuidance

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread

B = 2
T = torch.tensor([150, 700])  # one low and one high noise level: alphabar differs a lot between them
BATCH = {
    "elevation": torch.tensor([15.0, 40.0]), "azimuth": torch.tensor([45.0, -120.0]),
    "camera_distances": torch.tensor([3.0, 3.0]),
    "camera_positions": torch.tensor([[2.0, 1.5, 1.2], [-1.4, -2.3, 1.9]]),
    "fovy": torch.deg2rad(torch.tensor([30.0, 40.0])),
}
PROMPT = "a photo of a red car"


# ------------------------------------------------------------------ independent references
@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    return StableDiffusionPromptProcessor({
        "prompt": PROMPT, "negative_prompt": "blurry", "overhead_threshold": 90.0,
        "pretrained_model_name_or_path": str(tiny_sd_path), "cache_dir": str(tmp_path_factory.mktemp("cache")),
    })()


@pytest.fixture(scope="module")
def reference(tiny_sd_path):
    """The tiny SD's UNet and DDPM schedule, loaded here, not through the guidance."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd_path), subfolder="unet").float().eval()
    alphas = DDPMScheduler.from_pretrained(str(tiny_sd_path), subfolder="scheduler").alphas_cumprod.float()
    return unet, alphas


def guidance(tiny_sd_path, **cfg) -> XDreamerGuidance:
    # CG-LoRA's B starts at zero, so the adapted UNet predicts what the plain UNet predicts
    return XDreamerGuidance({"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_scale": 100.0,
                             "ama_start_step": None, **cfg})


def guided(g: XDreamerGuidance, eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in the guidance's `cfg_form` (threestudio: eps_c + s (eps_c - eps_u);
    standard, arXiv 2207.12598 eq. 6: eps_u + s (eps_c - eps_u), the only form before the key existed)."""
    s = float(g.cfg.guidance_scale)
    form = getattr(g.cfg, "cfg_form", None) or "standard"
    if form == "threestudio":
        return eps_cond + s * (eps_cond - eps_uncond)
    assert form == "standard", form
    return eps_uncond + s * (eps_cond - eps_uncond)


def expected_grad(g, reference, prompt_utils, latents, noise, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(w(t) (eps_guided - noise) / B, s (eps_cond - eps_uncond)) for latents [B,4,h,w], from direct UNet calls."""
    unet, alphas = reference
    a = alphas[T].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise  # DDPM forward diffusion (arXiv 2006.11239 eq. 4)
    text = prompt_utils.get_text_embeddings(BATCH["elevation"], BATCH["azimuth"], BATCH["camera_distances"], True)
    with torch.no_grad():
        eps = unet(torch.cat([z_t, z_t]), torch.cat([T, T]), encoder_hidden_states=text).sample
    eps_cond, eps_uncond = eps.chunk(2)  # lift3d's text embeddings: conditional rows first
    delta = float(g.cfg.guidance_scale) * (eps_cond - eps_uncond)
    return weight.view(-1, 1, 1, 1) * (guided(g, eps_cond, eps_uncond) - noise) / B, delta


def sds_weight(alphas: torch.Tensor, strategy: str) -> torch.Tensor:
    a = alphas[T]
    return {"sds": 1 - a, "fantasia3d": a.sqrt() * (1 - a)}[strategy]


def render_out(seed: int, size: int = 32, full_mask: bool = False) -> dict[str, torch.Tensor]:
    """A render's comp_normal ((n + 1) / 2 · mask, n unit normals) [B,H,W,3] and opacity [B,H,W,1], leaves."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, size, size, 1)
    if not full_mask:
        mask = torch.zeros(B, size, size, 1)
        mask[:, size // 4: 3 * size // 4, size // 8: 5 * size // 8] = 1.0
    n = F.normalize(torch.randn(B, size, size, 3, generator=gen), dim=-1)
    return {"comp_normal": ((n + 1) / 2 * mask).requires_grad_(True), "opacity": mask.requires_grad_(True)}


# ------------------------------------------------------------------ (a) the guided noise
def test_sds_gradient_is_w_times_guided_noise_minus_noise(tiny_sd_path, reference, prompt_utils):
    g = guidance(tiny_sd_path, coarse_steps=0)  # fine phase: the image is encoded (here: given as latents)
    g.update_step(0, 0)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(B, 8, 8, 4, generator=gen).requires_grad_(True)  # [B,h,w,4] = the latents
    noise = torch.randn(B, 4, 8, 8, generator=gen)
    out = g(image, BATCH, prompt_utils, rgb_as_latents=True, t=T, noise=noise)
    (got,) = torch.autograd.grad(out["loss_sds"], image)
    got = got.permute(0, 3, 1, 2)  # d loss / d latents [B,4,h,w]

    want, delta = expected_grad(g, reference, prompt_utils, image.permute(0, 3, 1, 2), noise,
                                sds_weight(reference[1], "fantasia3d"))
    # the guidance term is what tells eps_guided from eps_uncond / eps_cond: it must be large here
    w = sds_weight(reference[1], "fantasia3d").view(-1, 1, 1, 1)
    assert float((w * delta / B).abs().max()) > 100 * float(want.abs().max()) * 1e-5 + 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


# ------------------------------------------------------------------ (b) phase weighting
def test_coarse_and_fine_phases_weight_by_their_own_strategy(tiny_sd_path, reference, prompt_utils):
    _, alphas = reference
    g = guidance(tiny_sd_path, coarse_steps=10, coarse_weighting_strategy="sds", weighting_strategy="fantasia3d",
                 coarse_normal_rotation=False)
    coarse_w, fine_w = sds_weight(alphas, "sds"), sds_weight(alphas, "fantasia3d")
    assert not torch.allclose(coarse_w, fine_w)  # the two strategies differ by sqrt(alphabar_t) < 1

    # coarse phase (steps 0..9): the latent is the render's [normal, mask]; d loss / d render = J^T grad_z
    g.update_step(0, 9)
    torch.testing.assert_close(g.weight(T).float().cpu(), coarse_w)
    ro = render_out(2)
    noise = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = g(ro["comp_normal"], BATCH, prompt_utils, render_out=ro, t=T, noise=noise)
    got = torch.autograd.grad(out["loss_sds"], [ro["comp_normal"], ro["opacity"]])
    z = g.coarse_latents(ro)  # [B,4,8,8], deterministic without the normal rotation
    want_z, _ = expected_grad(g, reference, prompt_utils, z, noise, coarse_w)
    want = torch.autograd.grad((z * want_z).sum(), [ro["comp_normal"], ro["opacity"]])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))

    # fine phase (from step 10): the encoded image, w = sqrt(alphabar)(1 - alphabar)
    g.update_step(0, 10)
    torch.testing.assert_close(g.weight(T).float().cpu(), fine_w)
    image = torch.randn(B, 8, 8, 4, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    out = g(image, BATCH, prompt_utils, render_out=render_out(5), rgb_as_latents=True, t=T, noise=noise)
    (got,) = torch.autograd.grad(out["loss_sds"], image)
    want, _ = expected_grad(g, reference, prompt_utils, image.permute(0, 3, 1, 2), noise, fine_w)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


# ------------------------------------------------------------------ (c) the coarse latent
def test_coarse_latent_is_the_area_downsampled_normal_and_mask(tiny_sd_path):
    g = guidance(tiny_sd_path, coarse_steps=10, coarse_normal_rotation=False)
    g.update_step(0, 0)
    # object everywhere: channels 0-2 are the normals n = 2 comp_normal - 1, channel 3 the mask (1)
    ro = render_out(6, full_mask=True)
    z = g.coarse_latents(ro)
    assert z.shape == (B, 4, 8, 8)
    normals = (2 * ro["comp_normal"] - 1).permute(0, 3, 1, 2)  # [B,3,32,32]
    torch.testing.assert_close(z[:, :3], F.interpolate(normals, size=(8, 8), mode="area"))
    torch.testing.assert_close(z[:, 3], torch.ones(B, 8, 8))
    assert float(z[:, :3].detach().abs().mean()) > 0.1  # unit normals averaged over 4x4 pixels: far from 0
    # the normals reach the latent: another normal map, another latent; its gradient is the area weight
    (dn,) = torch.autograd.grad(z[:, :3].sum(), ro["comp_normal"])
    torch.testing.assert_close(dn, torch.full_like(dn, 2.0 / 16))
    other = render_out(7, full_mask=True)
    assert not torch.allclose(g.coarse_latents(other)[:, :3], z[:, :3])

    # a partial mask: channel 3 is its area average; cells inside the object hold their normals
    ro = render_out(8)
    z = g.coarse_latents(ro)
    mask8 = F.interpolate(ro["opacity"].permute(0, 3, 1, 2), size=(8, 8), mode="area")[:, 0]
    torch.testing.assert_close(z[:, 3], mask8)
    inside = mask8 == 1.0
    assert int(inside.sum()) >= 2 * B
    want = F.interpolate((2 * ro["comp_normal"] - ro["opacity"]).permute(0, 3, 1, 2), size=(8, 8), mode="area")
    torch.testing.assert_close(z[:, :3].permute(0, 2, 3, 1)[inside], want.permute(0, 2, 3, 1)[inside])

    # with the random rotation (the default): a proper rotation of the same normals, per sample
    g = guidance(tiny_sd_path, coarse_steps=10)
    g.update_step(0, 0)
    ro = render_out(9, full_mask=True)
    avg = F.interpolate((2 * ro["comp_normal"] - 1).permute(0, 3, 1, 2), size=(8, 8), mode="area")
    z = g.coarse_latents(ro)
    src, dst = avg.detach().flatten(2), z[:, :3].detach().flatten(2)  # [B,3,64]
    for b in range(B):  # least-squares R with dst = R src; it is orthonormal with det +1 and fits exactly
        rot = torch.linalg.lstsq(src[b].T, dst[b].T).solution.T
        torch.testing.assert_close(rot @ src[b], dst[b], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rot @ rot.T, torch.eye(3), atol=1e-4, rtol=0)
        assert float(torch.linalg.det(rot)) == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------ (d) AMA over every block
def _normalise(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).min(1).values.view(-1, 1, 1)
    hi = m.flatten(1).max(1).values.view(-1, 1, 1)
    return (m - lo) / (hi - lo)


def _ama_reference(maps: list[torch.Tensor], opacity: torch.Tensor) -> torch.Tensor:
    """(1/K) sum_k mean |minmax(M_k) - area-resize(mask)| (docs/methods/xdreamer.md §2)."""
    terms = []
    for m in maps:
        mask = F.interpolate(opacity.permute(0, 3, 1, 2), size=tuple(m.shape[-2:]), mode="area")[:, 0]
        terms.append((_normalise(m) - mask).abs().mean())
    return torch.stack(terms).mean()


def test_ama_loss_averages_one_term_per_map():
    gen = torch.Generator().manual_seed(10)
    maps = [torch.rand(B, 8, 8, generator=gen), torch.rand(B, 4, 4, generator=gen), torch.rand(B, 8, 8, generator=gen)]
    opacity = render_out(11)["opacity"].detach()
    loss = ama_loss(maps, opacity)
    torch.testing.assert_close(loss, _ama_reference(maps, opacity))
    # the first map counts: another first map, another loss (the released code kept only the last one)
    changed = ama_loss([maps[0].flip(-1) ** 3, *maps[1:]], opacity)
    assert abs(float(changed) - float(loss)) > 1e-3


def _unet_of(g: XDreamerGuidance):
    for path in ("model.unet", "unet", "models.unet"):
        obj = g
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    raise AttributeError("the guidance's UNet (model.unet) is needed for forward hooks")


def _cross_attention_per_block(unet) -> list:
    """The last transformer's cross-attention of every UNet block that has cross-attention."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [blk.attentions[-1].transformer_blocks[-1].attn2 for blk in blocks if getattr(blk, "attentions", None)]


def test_guidance_ama_uses_the_map_of_every_block_with_cross_attention(tiny_sd_path, prompt_utils):
    from transformers import CLIPTokenizer

    g = guidance(tiny_sd_path, coarse_steps=0, ama_start_step=0, view_dependent_prompting=False)
    g.update_step(0, 0)
    unet = _unet_of(g)
    layers = _cross_attention_per_block(unet)
    n_blocks = sum(1 for blk in [*unet.down_blocks, unet.mid_block, *unet.up_blocks] if getattr(blk, "attentions", None))
    assert len(layers) == n_blocks == 3  # tiny SD: one down block, the mid block, one up block
    captured: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    hooks = []
    for i, attn in enumerate(layers):
        hooks.append(attn.to_q.register_forward_hook(lambda m, inp, o, i=i: captured[i].__setitem__("q", o.detach())))
        hooks.append(attn.to_k.register_forward_hook(lambda m, inp, o, i=i: captured[i].__setitem__("k", o.detach())))
    ro = render_out(12)
    image = torch.randn(B, 8, 8, 4, generator=torch.Generator().manual_seed(13))
    noise = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(14))
    try:
        out = g(image, BATCH, prompt_utils, render_out=ro, rgb_as_latents=True, t=T, noise=noise)
    finally:
        for h in hooks:
            h.remove()

    tok = CLIPTokenizer.from_pretrained(str(tiny_sd_path), subfolder="tokenizer")
    ids = tok(PROMPT).input_ids
    eos = ids.index(tok.eos_token_id)  # the first EOS token of the (conditional) prompt
    maps = []
    for attn, cap in zip(layers, captured):
        q, k = cap["q"][:B], cap["k"][:B]  # conditional rows (CG-LoRA adds B x A = 0 at init)
        h = attn.heads
        q = q.reshape(B, q.shape[1], h, -1).transpose(1, 2)
        k = k.reshape(B, k.shape[1], h, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B,h,L,77]
        side = int(round(math.sqrt(q.shape[2])))
        maps.append(probs[:, :, :, eos].mean(1).reshape(B, side, side))
    assert [tuple(m.shape) for m in maps] == [(B, 8, 8), (B, 4, 4), (B, 8, 8)]
    want = _ama_reference(maps, ro["opacity"].detach())
    torch.testing.assert_close(out["loss_ama"].detach(), want, rtol=1e-4, atol=1e-6)
    # every block matters: the loss of the last map alone (the released code's) is another value
    last_only = _ama_reference(maps[-1:], ro["opacity"].detach())
    assert abs(float(last_only) - float(want)) > 1e-3
