"""Optional filters of a generated, pose-labelled set (docs/methods/podia3d.md §"Filtering"; DATID-3D
lists CLIP and pose filtering as its next step): an image is kept when

- pose: the silhouette of the generated image matches the silhouette of the source render it came from,
  IoU(foreground(generated), mask(source)) >= `pose_threshold` (the image's camera label is the source's,
  so a moved object would teach the GAN a wrong pose);
- CLIP: its CLIP image embedding is closer to the target prompt than `clip_threshold` (cosine), with any
  CLIP model in the Hugging Face layout (e.g. openai/clip-vit-base-patch32).

Foreground of an image on a known plain background: pixels farther than `tolerance` (max over RGB) from
the background colour (white for the toy world and for the source GAN's renders).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def foreground_mask(images: Tensor, background: float = 1.0, tolerance: float = 0.12) -> Tensor:
    """images [N,3,H,W] in [0,1] -> [N,1,H,W] bool: the pixels that are not background."""
    return (images - background).abs().amax(dim=1, keepdim=True) > tolerance


def foreground_colour(images: Tensor) -> Tensor:
    """images [N,3,H,W] in [0,1] on white -> [N,3]: the mean colour of each image's foreground pixels."""
    m = foreground_mask(images).float()  # [N,1,H,W]
    return (images * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)


def silhouette_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU per sample of two masks [N,1,H,W] (bool or in [0,1], thresholded at 0.5; resized to a's size) -> [N]."""
    a = a.float() > 0.5
    b = b.float()
    if b.shape[-2:] != a.shape[-2:]:
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    b = b > 0.5
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pose_scores(images: Tensor, source_masks: Tensor, background: float = 1.0, tolerance: float = 0.12) -> Tensor:
    """[N] silhouette IoU of each generated image [N,3,H,W] against its source render's mask [N,1,r,r]."""
    return silhouette_iou(foreground_mask(images, background, tolerance), source_masks)


@torch.no_grad()
def clip_scores(images: Tensor, prompts: Sequence[str], clip_model: str, batch_size: int = 32) -> Tensor:
    """[N] cosine similarity of CLIP(image i) and CLIP(prompt i) (transformers CLIPModel + CLIPProcessor)."""
    from transformers import CLIPModel, CLIPProcessor

    from lift3d.models.frozen import resolve_model

    path = resolve_model(clip_model, "the CLIP filter's model (clip_model)", ("config.json",))
    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    scores = []
    for i in range(0, images.shape[0], batch_size):
        pixels = [im.permute(1, 2, 0).mul(255).round().byte().cpu().numpy() for im in images[i:i + batch_size]]
        inputs = processor(text=list(prompts[i:i + batch_size]), images=pixels, return_tensors="pt", padding=True)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"])  # the projected embeddings in every transformers version
        image_emb = F.normalize(out.image_embeds, dim=-1)  # [B,D]
        text_emb = F.normalize(out.text_embeds, dim=-1)  # [B,D]
        scores.append((image_emb * text_emb).sum(-1))
    return torch.cat(scores)


def keep_mask(pose: Optional[Tensor], pose_threshold: float, clip: Optional[Tensor] = None,
              clip_threshold: float = 0.0) -> Tensor:
    """[N] bool: images passing every filter that was computed (None: not applied)."""
    keep = None
    for score, threshold in ((pose, pose_threshold), (clip, clip_threshold)):
        if score is not None:
            passed = score >= threshold
            keep = passed if keep is None else keep & passed
    if keep is None:
        raise ValueError("keep_mask needs at least one score (pose or clip)")
    return keep


__all__ = ["clip_scores", "foreground_colour", "foreground_mask", "keep_mask", "pose_scores", "silhouette_iou"]
