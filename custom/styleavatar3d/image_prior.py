"""StyleAvatar3D's image-guided generation (arXiv 2305.19012; docs/methods/styleavatar3d.md): a latent
diffusion prior over the generator's W space, conditioned on an image embedding of a frontal render.

- image encoders: CLIP vision (transformers CLIPVisionModelWithProjection, `image_embeds`, L2-normalised) when
  a CLIP folder / id is given, else the toy encoder (a fixed 8x8 average-pooled thumbnail in [-1,1], 192-D),
  so the toy world runs without weights;
- the prior: diffusers' PriorTransformer (unCLIP's prior) over w [w_dim] (w and the embedding centred and scaled
  by the training set's mean / RMS), the image embedding as its `proj_embedding`; it predicts the clean w (unCLIP's x0 parameterisation) at
  a DDPM timestep of the squared-cosine schedule; the condition is replaced by zeros with probability
  `uncond_prob` in training, so sampling can use classifier-free guidance
  x0 = x0(∅) + s·(x0(c) - x0(∅)), DDIM steps in between.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ToyImageEncoder(nn.Module):
    """images [N,3,H,W] in [0,1] -> [N,192]: the 8x8 thumbnail in [-1,1] (no weights; colour and layout)."""

    dim = 3 * 8 * 8

    def forward(self, images: Tensor) -> Tensor:
        return (F.adaptive_avg_pool2d(images.float(), 8) * 2 - 1).flatten(1)


class CLIPImageEncoder(nn.Module):
    """images [N,3,H,W] in [0,1] -> [N,D] L2-normalised CLIP image embeddings (frozen)."""

    def __init__(self, name_or_path: str) -> None:
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from lift3d.models.frozen import resolve_model

        path = resolve_model(name_or_path, "the prior's image encoder (system.image_encoder)", ("config.json",))
        self.model = CLIPVisionModelWithProjection.from_pretrained(path).eval().requires_grad_(False)
        self.processor = CLIPImageProcessor.from_pretrained(path)
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        pixels = [im.permute(1, 2, 0).mul(255).round().byte().cpu().numpy() for im in images]
        inputs = self.processor(images=pixels, return_tensors="pt")
        return F.normalize(self.model(pixel_values=inputs["pixel_values"].to(images.device)).image_embeds, dim=-1)


def image_encoder(name_or_path: str) -> nn.Module:
    """'' or 'toy': the toy encoder; anything else: a CLIP vision model folder / id."""
    return ToyImageEncoder() if name_or_path in ("", "toy") else CLIPImageEncoder(name_or_path)


def cosine_alphas_cumprod(n: int = 1000) -> Tensor:
    """ᾱ_t of the squared-cosine schedule (Nichol & Dhariwal 2021; unCLIP's prior), t = 0..n-1."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2").alphas_cumprod.float()


class WSpacePrior(nn.Module):
    """p(w | image embedding) with a PriorTransformer; w [B,w_dim], cond [B,cond_dim]."""

    def __init__(self, w_dim: int, cond_dim: int, num_layers: int = 4, num_heads: int = 4, head_dim: int = 16,
                 timesteps: int = 1000) -> None:
        super().__init__()
        from diffusers import PriorTransformer

        self.net = PriorTransformer(num_attention_heads=num_heads, attention_head_dim=head_dim, num_layers=num_layers,
                                    embedding_dim=w_dim, num_embeddings=0, additional_embeddings=4,
                                    encoder_hid_proj_type=None, embedding_proj_dim=cond_dim, clip_embed_dim=w_dim)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(timesteps))
        self.register_buffer("w_mean", torch.zeros(w_dim))
        self.register_buffer("w_std", torch.ones(()))
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.ones(()))
        self.timesteps = timesteps

    def set_statistics(self, ws: Tensor, conds: Tensor) -> None:
        """Normalisation of w and of the embeddings from the training set (ws [N,w_dim], conds [N,cond_dim]):
        centred and scaled to unit RMS, so small differences between similar renders are not drowned."""
        for x, mean, std in ((ws, self.w_mean, self.w_std), (conds, self.cond_mean, self.cond_std)):
            mean.copy_(x.mean(0))
            std.copy_((x - x.mean(0)).pow(2).mean().sqrt().clamp_min(1e-6))

    def predict_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """cond: normalised embedding (0 = unconditional)."""
        return self.net(x_t, t, proj_embedding=cond).predicted_image_embedding

    def normalize_cond(self, cond: Tensor) -> Tensor:
        return (cond - self.cond_mean) / self.cond_std

    def loss(self, w: Tensor, cond: Tensor, uncond_prob: float = 0.1) -> Tensor:
        """MSE of the predicted clean (normalised) w at a random timestep; condition dropped with uncond_prob."""
        x0 = (w - self.w_mean) / self.w_std
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), device=x0.device)
        a = self.alphas_cumprod[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)
        keep = (torch.rand(b, 1, device=x0.device) >= uncond_prob).to(cond.dtype)
        return F.mse_loss(self.predict_x0(x_t, t, self.normalize_cond(cond) * keep), x0)

    @torch.no_grad()
    def sample(self, cond: Tensor, num_steps: int = 25, guidance_scale: float = 3.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """cond [B,cond_dim] -> w [B,w_dim] (DDIM, η = 0, classifier-free guidance on the x0 prediction)."""
        b, cond = cond.shape[0], self.normalize_cond(cond)
        x = torch.randn(b, self.w_mean.shape[0], generator=generator).to(cond.device)
        steps = torch.linspace(self.timesteps - 1, 0, num_steps).round().long().tolist()
        for i, t in enumerate(steps):
            tt = torch.full((b,), t, dtype=torch.long, device=cond.device)
            x0 = self.predict_x0(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([torch.zeros_like(cond), cond]))
            x0_u, x0_c = x0.chunk(2)
            x0 = x0_u + guidance_scale * (x0_c - x0_u)
            a = self.alphas_cumprod[t]
            if i + 1 == len(steps):
                x = x0
                break
            a_prev = self.alphas_cumprod[steps[i + 1]]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x * self.w_std + self.w_mean
