"""Zero-1-to-3 as a diffusers pipeline (docs/methods/usd.md §2).

Folder layout (as the published zero123-xl diffusers folders, e.g. bennyguo/zero123-xl-diffusers):

    model_index.json          {"_class_name": "Zero123Pipeline", "clip_camera_projection": ["zero123", "CLIPCameraProjection"], ...}
    vae/                      AutoencoderKL (scaling 0.18215)
    unet/                     UNet2DConditionModel, in_channels 8 = concat(z_t, reference latent)
    image_encoder/            CLIPVisionModelWithProjection (ViT-L/14, projection 768)
    feature_extractor/        CLIPImageProcessor (224², CLIP mean / std)
    clip_camera_projection/   Linear(768 + 4 -> 768) over concat(CLIP image embedding, camera embedding)
    scheduler/                DDIMScheduler with the SD schedule

The published model_index.json names the projection's library "zero123", a module no installed package
provides (stock diffusers refuses such folders: "clip_camera_projection/zero123.py ... does not
exist"). `Zero123Pipeline` therefore reads a local snapshot of the folder and points that entry at
`CCProjection` before diffusers loads the components.

Conditioning (what the UNet sees):
    context  = clip_camera_projection(concat(CLIP image embedding [B,1,D], camera [B,1,4]))  [B,1,D]
    unet_in  = concat(z_t [B,4,h,w], reference latent [B,4,h,w])  (reference latent = VAE mode, unscaled)
    unconditional = zero context and zero reference latent (Zero-1-to-3's classifier-free guidance).
"""

from __future__ import annotations

import inspect
import os
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

PROJECTION_COMPONENT = "clip_camera_projection"


class CCProjection(ModelMixin, ConfigMixin):
    """Linear(in_channel -> out_channel) over concat(CLIP image embedding, camera embedding).

    Config as the published diffusers folders write it (`embedding_dim`, `additional_embeddings`:
    in = embedding_dim + additional_embeddings, out = embedding_dim); `in_channel` / `out_channel`
    (the original zero123 names) override them when given. Weight: `proj.weight` [out, in].
    """

    @register_to_config
    def __init__(
        self,
        embedding_dim: int = 768,
        additional_embeddings: int = 4,
        in_channel: Optional[int] = None,
        out_channel: Optional[int] = None,
    ):
        super().__init__()
        self.in_channel = int(in_channel) if in_channel is not None else embedding_dim + additional_embeddings
        self.out_channel = int(out_channel) if out_channel is not None else embedding_dim
        self.proj = torch.nn.Linear(self.in_channel, self.out_channel)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [..., in_channel] -> [..., out_channel]"""
        return self.proj(embedding)


# The class name the published model_index.json / config.json use.
CLIPCameraProjection = CCProjection
_PROJECTION_CLASS_NAMES = ("CLIPCameraProjection", "CCProjection")


def _size_hw(size) -> tuple[int, int]:
    """(height, width) from a CLIPImageProcessor crop_size (dict or SizeDict) or an int."""
    if isinstance(size, int):
        return size, size
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
    if height is None or width is None:
        edge = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
        height = width = edge
    return int(height), int(width)


def _env_offline() -> bool:
    return any(
        os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    )


def zero123_model_index() -> dict:
    """model_index.json of a zero123 diffusers folder, as the published zero123-xl folders write it."""
    import diffusers

    return {
        "_class_name": "Zero123Pipeline",
        "_diffusers_version": diffusers.__version__,
        # The published folders name a module "zero123" here; Zero123Pipeline.load_config copes.
        PROJECTION_COMPONENT: ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


class Zero123Pipeline(DiffusionPipeline):
    """Zero-1-to-3 novel-view diffusion: building blocks for score distillation plus DDIM sampling."""

    model_cpu_offload_seq = "image_encoder->clip_camera_projection->unet->vae"
    _optional_components = ["safety_checker"]

    def __init__(
        self,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        feature_extractor: CLIPImageProcessor,
        clip_camera_projection: CCProjection,
        safety_checker=None,
        requires_safety_checker: bool = False,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            clip_camera_projection=clip_camera_projection,
            safety_checker=safety_checker,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        """Loads a zero123 folder in the published layout: a local folder or a Hub id.

        A Hub id is first turned into a local snapshot with huggingface_hub.snapshot_download (cache
        only when HF_HUB_OFFLINE & co. are set or local_files_only=True), because diffusers' own
        download step rejects the published model_index.json. lift3d callers resolve the id with
        lift3d.models.loading.resolve_pretrained first, which fails fast with a clear message.
        """
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            local_only = kwargs.pop("local_files_only", None)
            folder = snapshot_download(
                folder,
                cache_dir=kwargs.pop("cache_dir", None),
                revision=kwargs.pop("revision", None),
                token=kwargs.pop("token", None),
                local_files_only=_env_offline() if local_only is None else local_only,
            )
        else:
            for key in ("local_files_only", "cache_dir", "revision", "token"):
                kwargs.pop(key, None)
        return super().from_pretrained(folder, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """model_index.json, with the camera projection's entry pointed at `CCProjection`.

        The published folders write ["zero123", "CLIPCameraProjection"] (a module nothing installs);
        diffusers then refuses the folder. Any entry naming one of the projection classes is rewritten
        to this module, which diffusers resolves because it is already imported.
        """
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        for name, value in list(config.items()):
            if (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and value[1] in _PROJECTION_CLASS_NAMES
                and value[0] != CCProjection.__module__
            ):
                config[name] = [CCProjection.__module__, CCProjection.__name__]
        return loaded

    # ------------------------------------------------------------------ building blocks
    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the CLIP encoder input (the feature extractor's crop size)."""
        return _size_hw(self.feature_extractor.crop_size)

    def encode_image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding with projection: image [B,3,H,W] in [0,1] -> [B,1,D].

        Preprocessing in torch (resize to the feature extractor's crop size, bicubic, then its
        mean / std), so it runs on the image's device; differentiable w.r.t. the image.
        """
        enc = self.image_encoder
        x = image.to(device=enc.device, dtype=torch.float32)
        h, w = self.image_size
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(self.feature_extractor.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.feature_extractor.image_std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        embeds = enc(pixel_values=x.to(enc.dtype)).image_embeds  # [B, D]
        return embeds[:, None, :]

    def encode_image_latents(self, image: torch.Tensor) -> torch.Tensor:
        """Reference latent for the UNet's concat input: image [B,3,H,W] in [0,1] -> [B,4,H/8,W/8].

        VAE posterior mode, NOT multiplied by the scaling factor (Zero-1-to-3 feeds it unscaled).
        """
        x = image.to(device=self.vae.device, dtype=self.vae.dtype) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mode()

    def conditioning(self, image_embedding: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Cross-attention context: image_embedding [B|1,1,D], camera [B,4] -> [B,1,D]."""
        camera = camera.reshape(-1, 1, camera.shape[-1])  # [B,1,4]
        batch = max(image_embedding.shape[0], camera.shape[0])
        image_embedding = image_embedding.expand(batch, -1, -1)
        camera = camera.to(image_embedding).expand(batch, -1, -1)
        proj = self.clip_camera_projection
        return proj(torch.cat([image_embedding, camera], dim=-1).to(proj.dtype))

    def predict_noise(
        self,
        z_t: torch.Tensor,
        t: Union[torch.Tensor, int],
        image_latents: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """eps prediction: UNet(concat(z_t [B,4,h,w], image_latents [B|1,4,h,w]), t, context [B,1,D])."""
        batch = z_t.shape[0]
        image_latents = image_latents.to(z_t).expand(batch, -1, -1, -1)
        context = context.to(z_t).expand(batch, -1, -1)
        unet_in = torch.cat([z_t, image_latents], dim=1).to(self.unet.dtype)  # [B,8,h,w]
        return self.unet(unet_in, t, encoder_hidden_states=context.to(self.unet.dtype)).sample.to(z_t.dtype)

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _to_tensor(image) -> torch.Tensor:
        """PIL image / list of PIL / numpy [H,W,3] / tensor -> float tensor [B,3,H,W] in [0,1]."""
        if isinstance(image, torch.Tensor):
            return image if image.ndim == 4 else image[None]
        images = image if isinstance(image, (list, tuple)) else [image]
        arrays = []
        for im in images:
            arr = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.float32)
            arrays.append(arr / 255.0 if arr.max() > 1.0 else arr)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def __call__(
        self,
        image,
        camera: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        """Novel views of `image` at relative cameras `camera` [B,4] (see camera.py) by DDIM + CFG.

        image: [1|B,3,H,W] in [0,1] (or PIL); output size (height, width) defaults to the image's.
        output_type: "pt" ([B,3,H,W] in [0,1]), "np" ([B,H,W,3]), "pil", or "latent".
        """
        device = self._execution_device
        image = self._to_tensor(image).to(device)
        camera = torch.as_tensor(camera, device=device, dtype=torch.float32).reshape(-1, 4)
        batch = camera.shape[0]
        height = height or image.shape[-2]
        width = width or image.shape[-1]
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=True)

        image_latents = self.encode_image_latents(image).expand(batch, -1, -1, -1)  # [B,4,h,w]
        context = self.conditioning(self.encode_image_embedding(image), camera)  # [B,1,D]
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
            context = torch.cat([torch.zeros_like(context), context])

        shape = (batch, self.unet.config.out_channels, image_latents.shape[-2], image_latents.shape[-1])
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=generator.device if generator else device)
            latents = latents.to(device)
        latents = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_params = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {}
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        if "generator" in step_params:
            step_kwargs["generator"] = generator
        for t in self.progress_bar(self.scheduler.timesteps):
            z_in = torch.cat([latents] * 2) if do_cfg else latents
            z_in = self.scheduler.scale_model_input(z_in, t)
            eps = self.predict_noise(z_in, t, image_latents, context)
            if do_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = self.scheduler.step(eps, t, latents, **step_kwargs).prev_sample

        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images = (decoded.float() / 2 + 0.5).clamp(0, 1)  # [B,3,H,W]
            if output_type in ("np", "pil"):
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["CCProjection", "CLIPCameraProjection", "Zero123Pipeline", "PROJECTION_COMPONENT", "zero123_model_index"]
