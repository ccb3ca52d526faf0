"""Perp-Neg (#16, docs/methods/perp_neg.md): the perpendicular-gradient CFG combination (orthogonality of the
negative term, reduction to plain CFG), the view interpolation of the prompts and weights, the prompt
processor's embeddings, and stable-diffusion-guidance's Perp-Neg noise against separate UNet calls."""
from __future__ import annotations

import math

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.guidance.perp_neg import PerpNegText, check_perp_neg_support, perp_neg_guidance, perpendicular_component
from lift3d.models.cfg import classifier_free_guidance
from lift3d.prompt.perp_neg_views import perp_neg_views

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def negative_term(out, eps_u, eps_p, scale):
    """sum_k w_k perp(e_k, e_pos) recovered from the combination: (out - eps_u) / scale - e_pos."""
    return (out - eps_u) / scale - (eps_p - eps_u)


def test_negative_term_is_orthogonal_to_the_positive_direction_per_sample():
    gen = torch.Generator().manual_seed(0)
    B, K = 3, 2
    eps_u, eps_p = torch.randn(B, 4, 8, 8, generator=gen, dtype=torch.float64), torch.randn(B, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps_n = torch.randn(B, K, 4, 8, 8, generator=gen, dtype=torch.float64)
    weights = torch.tensor([[-1.5, -0.3], [0.0, -2.0], [-0.7, 0.0]], dtype=torch.float64)
    out = perp_neg_guidance(eps_u, eps_p, eps_n, weights, 7.5)
    neg = negative_term(out, eps_u, eps_p, 7.5)
    e_pos = eps_p - eps_u
    for b in range(B):
        cos = float((neg[b] * e_pos[b]).sum() / (neg[b].norm() * e_pos[b].norm()))
        assert abs(cos) < 1e-10, (b, cos)
        assert float(neg[b].norm()) > 0.1  # and it is not zero: the negative prompts still act
    # the term is exactly sum_k w_k (e_k - proj_{e_pos} e_k)
    e_k = eps_n - eps_u[:, None]
    proj = ((e_k * e_pos[:, None]).sum(dim=(2, 3, 4), keepdim=True) / (e_pos * e_pos).sum(dim=(1, 2, 3))[:, None, None, None, None]) * e_pos[:, None]
    assert torch.allclose(neg, (weights[:, :, None, None, None] * (e_k - proj)).sum(1), atol=1e-12)


def test_zero_negative_weights_reduce_to_plain_cfg_exactly():
    gen = torch.Generator().manual_seed(1)
    eps_u, eps_p = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    eps_n = torch.randn(2, 2, 4, 8, 8, generator=gen)
    out = perp_neg_guidance(eps_u, eps_p, eps_n, torch.zeros(2, 2), 7.5)
    assert torch.equal(out, classifier_free_guidance(eps_u, eps_p, 7.5))


def test_a_negative_parallel_to_the_positive_changes_nothing_and_an_orthogonal_one_acts_fully():
    e1, e2 = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    e1[..., 0], e2[..., 1] = 1.0, 1.0
    zero = torch.zeros(1, 1, 1, 2)
    assert torch.equal(perpendicular_component(3 * e1, e1), zero)
    assert torch.equal(perpendicular_component(2 * e1 + 5 * e2, e1), 5 * e2)
    # eps_u = 0, e_pos = e1; negative 2 e1 + 5 e2 with weight -1: eps = s (e1 - 5 e2)
    out = perp_neg_guidance(zero, e1, (2 * e1 + 5 * e2)[:, None], torch.tensor([[-1.0]]), 2.0)
    assert torch.equal(out, 2.0 * (e1 - 5 * e2))


# ------------------------------------------------------------------ the view interpolation
def f(params, r):
    a, b, c = params
    return a * math.exp(-b * r) + c


def test_view_interpolation_of_prompts_and_weights():
    # azimuths: front, 45 deg, side (90), 135 deg, back (180), -45 deg (front half, other side), and an overhead view
    azimuth = torch.tensor([0.0, 45.0, 90.0, 135.0, 180.0, -45.0, 30.0])
    overhead = torch.tensor([False] * 6 + [True])
    v = perp_neg_views(azimuth, overhead)
    S, F_, Bk, O = 0, 1, 2, 3
    expected_mix = torch.zeros(7, 4)
    expected_mix[0, F_] = 1.0
    expected_mix[1, F_] = expected_mix[1, S] = 0.5
    expected_mix[2, S] = 1.0
    expected_mix[3, S] = expected_mix[3, Bk] = 0.5
    expected_mix[4, Bk] = 1.0
    expected_mix[5, F_] = expected_mix[5, S] = 0.5
    expected_mix[6, O] = 1.0
    assert torch.allclose(v.pos_mix, expected_mix, atol=1e-6)
    assert v.neg_index.tolist() == [[F_, S], [F_, S], [S, F_], [S, F_], [S, F_], [F_, S], [7, 7]]
    fs, sf, sb, fsb = (4, 0.5, -2.426), (4, 0.5, -2.426), (1, 0.5, -0.606), (1, 0.5, 0.967)
    expected_w = [[-f(fs, 1.0), -f(sf, 0.0)], [-f(fs, 0.5), -f(sf, 0.5)], [-f(sb, 1.0), -f(fsb, 1.0)],
                  [-f(sb, 0.5), -f(fsb, 0.5)], [-f(sb, 0.0), -f(fsb, 0.0)], [-f(fs, 0.5), -f(sf, 0.5)], [0.0, 0.0]]
    assert torch.allclose(v.neg_weights, torch.tensor(expected_w), atol=1e-6)
    # at a direction itself, that direction's own negative has (almost) no weight: f_fs(1) ~ f_sb(1) ~ 0
    assert abs(float(v.neg_weights[0, 0])) < 1e-3 and abs(float(v.neg_weights[2, 0])) < 1e-3


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    return StableDiffusionPromptProcessor({
        "prompt": "a photo of a red car", "negative_prompt": "blurry", "use_perp_neg": True,
        "pretrained_model_name_or_path": str(tiny_sd_path), "cache_dir": str(tmp_path_factory.mktemp("cache")),
    })()


def test_prompt_processor_lays_out_positive_unconditional_and_negative_rows(prompt_utils):
    assert prompt_utils.use_perp_neg
    text = prompt_utils.get_text_embeddings_perp_neg(torch.tensor([10.0, 70.0]), torch.tensor([45.0, 170.0]),
                                                     torch.tensor([1.5, 2.0]))
    vd, un = prompt_utils.text_embeddings_vd, prompt_utils.uncond_text_embeddings_vd  # [4,77,D]
    assert isinstance(text, PerpNegText) and text.embeddings.shape == (8, 77, vd.shape[-1])
    e = text.embeddings
    assert torch.allclose(e[0], 0.5 * vd[1] + 0.5 * vd[0], atol=1e-6)  # camera 0: half front, half side
    assert torch.equal(e[1], vd[3])  # camera 1: overhead (elevation 70 > 60)
    assert torch.equal(e[2], un[0]) and torch.equal(e[3], un[3])  # each camera's direction's negative prompt
    assert torch.equal(e[4], vd[1]) and torch.equal(e[5], vd[0])  # camera 0's negatives: front, side
    assert torch.equal(e[6], un[3]) and torch.equal(e[7], un[3])  # camera 1's: the negative prompt (weight 0)
    assert text.neg_weights[1].tolist() == [0.0, 0.0] and bool((text.neg_weights[0] < 0).all())


# ------------------------------------------------------------------ the guidance
def test_guidance_perp_neg_noise_matches_separate_unet_calls(tiny_sd_path, prompt_utils):
    """Batch of 2 cameras with different latents: each camera's negative rows must see its own latent."""
    from diffusers import UNet2DConditionModel

    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    g = StableDiffusionGuidance({"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_scale": 7.5})
    batch = {"elevation": torch.tensor([10.0, 20.0]), "azimuth": torch.tensor([45.0, 150.0]),
             "camera_distances": torch.tensor([1.5, 2.0])}
    text = g.text_embeddings(prompt_utils, batch)
    assert isinstance(text, PerpNegText)
    gen = torch.Generator().manual_seed(3)
    z_t, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([300, 700])
    with torch.no_grad():
        got = g.guided_noise(z_t, t, text)
        e = text.embeddings
        expected = []
        for b in range(2):
            run = lambda rows: unet(z_t[b:b + 1], t[b:b + 1], encoder_hidden_states=e[rows]).sample[0]  # noqa: E731
            eps_p, eps_u = run([b]), run([2 + b])
            negs = torch.stack([run([4 + 2 * b]), run([4 + 2 * b + 1])])
            e_pos = eps_p - eps_u
            neg = sum(text.neg_weights[b, k] * perpendicular_component((negs[k] - eps_u)[None], e_pos[None])[0] for k in range(2))
            expected.append(eps_u + 7.5 * (e_pos + neg))  # threestudio's perp-neg form: w = guidance_scale
    assert torch.allclose(got, torch.stack(expected), atol=1e-4, rtol=1e-4)
    # with the weights zeroed it is standard CFG of the interpolated prompt
    zeroed = PerpNegText(text.embeddings, torch.zeros_like(text.neg_weights))
    with torch.no_grad():
        plain = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=e[:4]).sample
        assert torch.allclose(g.guided_noise(z_t, t, zeroed), plain[2:] + 7.5 * (plain[:2] - plain[2:]), atol=1e-4)


def test_only_guidances_that_combine_perp_neg_accept_it():
    from lift3d.registry import find

    check_perp_neg_support(find("stable-diffusion-guidance"), "stable-diffusion-guidance", True)
    check_perp_neg_support(find("stable-diffusion-sdi-guidance"), "stable-diffusion-sdi-guidance", True)
    with pytest.raises(ConfigError, match="does not combine Perp-Neg"):
        check_perp_neg_support(find("deep-floyd-guidance"), "deep-floyd-guidance", True)
    with pytest.raises(ConfigError, match="needs view-dependent prompts"):
        check_perp_neg_support(find("stable-diffusion-guidance"), "stable-diffusion-guidance", False)


def test_sdi_inversion_uses_perp_neg_at_the_inversion_scale_as_given(tiny_sd_path, prompt_utils):
    """SDI's inversion with Perp-Neg: w = inversion_guidance_scale (threestudio's perp-neg form), where its
    plain branch would use s + 1 (cfg_form threestudio)."""
    from diffusers import UNet2DConditionModel

    from lift3d.guidance.sdi import StableDiffusionSDIGuidance

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    g = StableDiffusionSDIGuidance({"pretrained_model_name_or_path": str(tiny_sd_path), "t_anneal": False})
    text = g.text_embeddings(prompt_utils, {"elevation": torch.tensor([10.0]), "azimuth": torch.tensor([120.0]),
                                            "camera_distances": torch.tensor([1.5])})
    zeroed = PerpNegText(text.embeddings, torch.zeros_like(text.neg_weights))
    z, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([400])
    with torch.no_grad():
        eps = unet(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=text.embeddings[:2]).sample
        expected = eps[1:] - 7.5 * (eps[:1] - eps[1:])  # eps_u + (-7.5)(eps_p - eps_u)
        assert torch.allclose(g.inversion_predictor(zeroed)(z, t), expected, atol=1e-4)
        assert not torch.allclose(g.inversion_predictor(text)(z, t), expected, atol=1e-4)  # the negatives act
