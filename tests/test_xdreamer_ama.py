"""X-Dreamer's attention-mask alignment (custom/xdreamer, docs/methods/xdreamer.md §2).

- The recorded maps are the conditional branch's softmax probabilities at each sample's EOS
  column, averaged over heads, one per UNet block: checked against a direct computation from the
  plain UNet's own q and k projections (forward hooks, explicit softmax).
- AMA is 0 when the (min-max normalised) attention map equals the rendered mask, positive
  otherwise; its gradient reaches the DMTet geometry through the differentiable mask, and a
  gradient step on the SDF lowers it.
- In the guidance: 0 and no autograd before `ama_start_step`; afterwards the AMA gradient reaches
  the geometry through the mask (and, with `ama_grad_to_latents`, through the latents too).
"""
from __future__ import annotations

import math

import pytest
import torch

from lift3d.data.cameras import spherical_to_cartesian
from lift3d.data.random_camera import camera_batch
from lift3d.plugins import load_plugins
from lift3d.registry import find

load_plugins()

from custom.xdreamer.ama_loss import ama_loss, normalize_map, resize_mask  # noqa: E402
from custom.xdreamer.attention_capture import last_cross_attention_per_block  # noqa: E402

TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
             "base_resolution": 4, "per_level_scale": 2.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


def view(elevation, azimuth, distance=2.0, fovy=40.0, size=64):
    e, a, d = (torch.tensor([float(x)]) for x in (elevation, azimuth, distance))
    pos = spherical_to_cartesian(e, a, d)
    return camera_batch(pos, torch.tensor([math.radians(fovy)]), size, size, pos.clone(), e, a, d)


def dmtet_renderer(radius=0.6, res=24):
    geo = find("tetrahedra-sdf-grid")({"isosurface_resolution": res, "shape_init": "sphere", "shape_init_params": radius,
                                       "geometry_only": True, "pos_encoding_config": TINY_GRID})
    geo.initialize_shape()
    mat = find("no-material")({})
    bg = find("solid-color-background")({"color": [0.0, 0.0, 0.0]})
    return geo, find("mesh-rasterizer")({}, geometry=geo, material=mat, background=bg)


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    processor = find("stable-diffusion-prompt-processor")({
        "prompt": "a photo of a red car", "pretrained_model_name_or_path": str(tiny_sd_path),
        "cache_dir": str(tmp_path_factory.mktemp("cache")), "overhead_threshold": 90.0,
    })
    return processor()


# ------------------------------------------------------------------ the loss
def test_ama_is_zero_when_the_map_equals_the_mask_and_its_gradient_reaches_the_geometry():
    geo, renderer = dmtet_renderer()
    batch = view(20, 30)
    mask = renderer(**batch)["opacity"]  # [1,64,64,1], anti-aliased, differentiable
    sizes = (8, 16, 32, 64)
    targets = [resize_mask(mask.detach(), (s, s)) for s in sizes]
    assert all(float(t.min()) == 0.0 and float(t.max()) == 1.0 for t in targets)  # the sphere fills the centre
    # attention probabilities are small numbers: any positive affine image of the mask is "equal" after min-max
    maps = [0.013 + 0.05 * t for t in targets]
    zero = ama_loss(maps, mask)
    assert float(zero.detach()) < 1e-6
    # a map that disagrees (the mask shifted sideways) gives a positive loss with a gradient on the SDF
    shifted = [torch.roll(t, shifts=t.shape[-1] // 4, dims=-1) for t in targets]
    loss = ama_loss(shifted, mask)
    assert float(loss) > 0.05
    loss.backward()
    grad = geo.sdf.grad
    assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    # it is a descent direction: a small step on the SDF lowers the loss
    with torch.no_grad():
        geo.sdf -= 0.02 * grad / grad.abs().max()
        after = float(ama_loss(shifted, renderer(**batch)["opacity"]))
    assert after < float(loss), (after, float(loss))


def test_normalisation_and_resizing():
    m = torch.tensor([[[0.2, 0.4], [0.6, 1.0]]])
    assert torch.allclose(normalize_map(m), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))
    mask = torch.zeros(1, 8, 8, 1)
    mask[:, :4, :4] = 1.0
    assert torch.equal(resize_mask(mask, (2, 2)), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))  # area average
    assert resize_mask(mask, (16, 16)).shape == (1, 16, 16)
    every = ama_loss([torch.rand(1, 2, 2), torch.rand(1, 4, 4)], mask)
    last = ama_loss([torch.rand(1, 4, 4)], mask)
    assert every.ndim == 0 and last.ndim == 0


# ------------------------------------------------------------------ the recorded maps
def test_recorded_maps_are_eos_softmax_columns_of_the_conditional_branch(tiny_sd_path, prompt_utils):
    g = find("xdreamer-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "ama_start_step": 0})
    unet = g.model.unet
    layers = last_cross_attention_per_block(unet)
    assert g.store.layers == layers and len(layers) == 3
    batch = {"elevation": torch.tensor([10.0, 20.0]), "azimuth": torch.tensor([0.0, 90.0]),
             "camera_distances": torch.tensor([3.0, 3.0]), "camera_positions": torch.randn(2, 3),
             "fovy": torch.full((2,), 0.6)}
    text = prompt_utils.get_text_embeddings(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    eos, e, f = g.conditions(prompt_utils, batch, text)
    z = torch.randn(4, 4, 8, 8)
    t = torch.tensor([300, 600, 300, 600])
    captured = {}
    hooks = []
    for name in layers:
        attn = unet.get_submodule(name)
        hooks.append(attn.to_q.register_forward_hook(lambda m, i, o, n=name: captured.setdefault(n, {}).update(q=o)))
        hooks.append(attn.to_k.register_forward_hook(lambda m, i, o, n=name: captured[n].update(k=o)))
    try:
        with torch.no_grad(), g.adapted(e, f), g.store.record(eos[:2]):
            g.model.predict_noise(z, t, text)
    finally:
        for h in hooks:
            h.remove()
    maps = g.store.ordered_maps()
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8), (2, 4, 4), (2, 8, 8)]
    for name, got in zip(layers, maps):
        attn = unet.get_submodule(name)
        q, k = captured[name]["q"][:2], captured[name]["k"][:2]  # the conditional rows (B = 0: plain projections)
        h = attn.heads
        q = q.reshape(2, q.shape[1], h, -1).transpose(1, 2)
        k = k.reshape(2, k.shape[1], h, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [2,h,Lq,77]
        want = torch.stack([probs[b, :, :, eos[b]].mean(0) for b in range(2)])
        assert torch.allclose(got.reshape(2, -1), want, atol=1e-6)
        assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


# ------------------------------------------------------------------ in the guidance
@pytest.mark.parametrize("through_latents", [False, True])
def test_guidance_ama_from_its_start_step_reaches_the_geometry(tiny_sd_path, prompt_utils, through_latents):
    g = find("xdreamer-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "ama_start_step": 5,
                                   "ama_grad_to_latents": through_latents, "coarse_steps": 100})
    geo, renderer = dmtet_renderer(radius=0.5)
    renderer.train()
    batch = view(15, 40, distance=3.0, fovy=35.0, size=32)
    batch["fovy"] = torch.tensor([math.radians(35.0)])

    g.do_update_step(0, 4)
    out = renderer(**batch)
    early = g(out["comp_normal"], batch, prompt_utils=prompt_utils, render_out=out)
    assert g.in_coarse_phase() and float(early["loss_ama"]) == 0.0 and not early["loss_ama"].requires_grad

    g.do_update_step(0, 5)
    out = renderer(**batch)
    terms = g(out["comp_normal"], batch, prompt_utils=prompt_utils, render_out=out)
    assert float(terms["loss_ama"]) > 0
    (total,) = torch.autograd.grad(terms["loss_ama"], geo.sdf, retain_graph=True)
    assert torch.isfinite(total).all() and float(total.abs().sum()) > 0
    # the mask path alone: the same loss with the recorded maps held fixed
    mask_only = ama_loss([m.detach() for m in g.store.ordered_maps()], out["opacity"])
    (through_mask,) = torch.autograd.grad(mask_only, geo.sdf, retain_graph=True)
    assert float(through_mask.abs().sum()) > 0
    if through_latents:  # the coarse latent is the render's [normal, mask]: a second path into the SDF
        assert not torch.allclose(total, through_mask)
    else:
        assert torch.allclose(total, through_mask)
    # the SDS term still does not go through the UNet: its gradient is w(t) (eps - noise)
    assert terms["loss_sds"].requires_grad
