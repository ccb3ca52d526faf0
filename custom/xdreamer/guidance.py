"""`xdreamer-guidance`: Stable Diffusion score distillation with CG-LoRA and the AMA loss
(X-Dreamer, docs/methods/xdreamer.md; Ma et al., arXiv 2312.00085).

It is `stable-diffusion-guidance` (model loading, VAE encoding, text embeddings, the shared SDS
step of lift3d.guidance.sds) with:

- CG-LoRA (`cg_lora.CGLoRA`) on every cross-attention to_q / to_k / to_v / to_out of the UNet,
  installed through diffusers' attention-processor interface. Per UNet call, A is generated from
  e = the text encoder's hidden state at the first EOS token of each sample's direction-aware
  prompt (conditional rows) or of the negative prompt (unconditional rows; "" by default) and
  from f = CameraEncoder(camera). The adapters (fp32) are the guidance's `trainable_modules()`:
  the system registers them as its child `guidance_params` (checkpointed, optimised with the
  optimizer group `guidance_params`). `lora_from` loads them from a previous stage's checkpoint.
- AMA (`ama_loss`), from `ama_start_step` on: the UNet call runs with autograd, records the
  conditional branch's EOS attention map of the last transformer of every block and returns
  `loss_ama` against the render's `opacity`; its gradients reach CG-LoRA, the camera encoder,
  the 3D model through the mask and (`ama_grad_to_latents`) through the noisy latents. The SDS
  term never back-propagates into the UNet (its prediction is detached). Before the start step
  the call runs without autograd and `loss_ama` is 0.
- Geometry-stage phases (§3): for the first `coarse_steps` steps the "latent" is the render's
  [normal, mask] (4 channels; world normals randomly rotated each step with
  `coarse_normal_rotation`, background −1) area-downsampled to the latent size (Fantasia3D), with
  the weighting `coarse_weighting_strategy` (w = 1 − alphabar); afterwards the guided image (e.g.
  comp_normal) is VAE-encoded and weighted by `weighting_strategy` (fantasia3d:
  sqrt(alphabar)(1 − alphabar)). The appearance stage uses coarse_steps = 0.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import WEIGHTING_STRATEGIES, Prediction, resize_nchw, sds_weight
from lift3d.models.frozen import resolve_model
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance, require_text_embeddings
from lift3d.registry import register

from .ama_loss import ama_loss
from .attention_capture import AttentionMapStore, install_processors, last_cross_attention_per_block
from .camera_encoder import camera_inputs
from .cg_lora import CGLoRA, cross_attention_layers

KEY = "system.guidance"
XDREAMER_FILES = StableDiffusion.REQUIRED_FILES + ("tokenizer",)
PARAMS_PREFIX = "guidance_params."


def random_rotations(n: int, device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None) -> Tensor:
    """n rotation matrices [n, 3, 3], uniform on SO(3) (normalised Gaussian quaternions)."""
    q = F.normalize(torch.randn(n, 4, generator=generator), dim=-1)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(n, 3, 3)
    return rot.to(device)


def load_lora_state(spec: str, key: str = f"{KEY}.lora_from") -> dict[str, Tensor]:
    """The `guidance_params.*` entries (prefix removed) of a checkpoint (file, trial folder or
    <dir>/LAST; a bare LAST reaches here already resolved by the system, see `checkpoint_keys`)."""
    from lift3d.systems.stage_chain import resolve_checkpoint

    ckpt = resolve_checkpoint(str(spec), key=key)
    state = torch.load(ckpt, map_location="cpu", weights_only=False).get("state_dict", {})
    lora = {k[len(PARAMS_PREFIX):]: v for k, v in state.items() if k.startswith(PARAMS_PREFIX)}
    if not lora:
        raise ConfigError(
            f"{key}: checkpoint '{ckpt}' holds no CG-LoRA weights (no '{PARAMS_PREFIX}*' entries): "
            f"give the checkpoint of a run that trained with xdreamer-guidance, or set lora_from=null."
        )
    return lora


@register("xdreamer-guidance")
class XDreamerGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        guidance_scale: float = 100.0
        # X-Dreamer's code (Fantasia3D lineage) guides with eps_u + s (eps_c - eps_u) (docs/faithfulness.md)
        cfg_form: str = "standard"
        weighting_strategy: str = "fantasia3d"
        # ---- CG-LoRA (§1)
        use_cg_lora: bool = True
        lora_rank: int = 4
        lora_scale: float = 1.0
        lora_bottleneck: int = 4  # width of the generators' first layer
        camera_hidden_dim: int = 512
        camera_feature_dim: Optional[int] = None  # null: the text width (cross_attention_dim; 1024 for SD 2.1)
        camera_fovy_range: list = field(default_factory=lambda: [25.7, 45.0])  # degrees, normalises the fov input
        lora_from: Optional[str] = None  # checkpoint / trial folder / LAST of a stage whose CG-LoRA to start from
        # ---- AMA (§2)
        ama_start_step: Optional[int] = 1000  # null: never
        ama_grad_to_latents: bool = True  # AMA gradients also flow through the noisy latents into the render
        # ---- geometry-stage coarse phase (§3)
        coarse_steps: int = 0  # steps with the [normal, mask] render as the latent
        coarse_weighting_strategy: str = "sds"  # w(t) = 1 - alphabar
        coarse_normal_rotation: bool = True

    produces = ("loss_sds", "loss_ama")

    # ------------------------------------------------------------------ validation
    shared_model = False  # CG-LoRA and the attention-map store are installed into this UNet
    checkpoint_keys = ("lora_from",)  # LAST is looked up under the run's exp_root_dir by the system

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        KEY = path
        if cfg.coarse_weighting_strategy not in WEIGHTING_STRATEGIES:
            raise ConfigError(
                f"{KEY}.coarse_weighting_strategy '{cfg.coarse_weighting_strategy}' is unknown: use one of "
                f"{', '.join(WEIGHTING_STRATEGIES)}."
            )
        if cfg.lora_rank < 1 or cfg.lora_bottleneck < 1 or cfg.camera_hidden_dim < 1:
            raise ConfigError(f"{KEY}.lora_rank, lora_bottleneck and camera_hidden_dim must be >= 1.")
        if cfg.coarse_steps < 0:
            raise ConfigError(f"{KEY}.coarse_steps must be >= 0.")
        fov = list(cfg.camera_fovy_range)
        if len(fov) != 2 or not float(fov[0]) < float(fov[1]):
            raise ConfigError(f"{KEY}.camera_fovy_range = {fov}: give [min, max] degrees with min < max.")
        if cfg.lora_from and not cfg.use_cg_lora:
            raise ConfigError(f"{KEY}.lora_from is set but use_cg_lora=false: nothing would receive the weights.")
        if cfg.lora_from:
            load_lora_state(cfg.lora_from, f"{path}.lora_from")
        folder = resolve_model(cfg.pretrained_model_name_or_path, cls.model_what(path), XDREAMER_FILES)
        cls.model_class.check_unet_config(folder, cls.model_what(path))

    # ------------------------------------------------------------------ setup
    def configure(self) -> None:
        from transformers import CLIPTokenizer

        super().configure()  # frozen UNet + VAE, noise schedule, resolutions
        cfg = self.cfg
        self.tokenizer = CLIPTokenizer.from_pretrained(self.model.path, subfolder="tokenizer")
        self._eos_cache: dict[str, int] = {}
        unet = self.model.unet
        self.store = AttentionMapStore(last_cross_attention_per_block(unet))
        self.cg_lora: Optional[CGLoRA] = None
        if cfg.use_cg_lora:
            self.cg_lora = CGLoRA.for_unet(
                unet, camera_dim=cfg.camera_feature_dim, camera_hidden_dim=cfg.camera_hidden_dim,
                rank=cfg.lora_rank, bottleneck=cfg.lora_bottleneck, scale=cfg.lora_scale,
            )
            if cfg.lora_from:
                self.load_lora(cfg.lora_from)
            self.cg_lora.to(self.device)
        install_processors(unet, list(cross_attention_layers(unet)),
                           self.cg_lora.delta if self.cg_lora is not None else None, self.store)

    def load_lora(self, spec: str) -> None:
        state = load_lora_state(spec)
        try:
            self.cg_lora.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"{KEY}.lora_from: the CG-LoRA weights in '{spec}' do not fit this model/config "
                f"({str(exc).splitlines()[0]}); use the same pretrained model, lora_rank, lora_bottleneck and "
                f"camera sizes as that stage."
            ) from None

    def trainable_modules(self) -> Optional[torch.nn.Module]:
        """CG-LoRA's adapters and camera encoder (the system registers them as `guidance_params`)."""
        return self.cg_lora

    def to(self, device: torch.device | str) -> "XDreamerGuidance":
        super().to(device)
        if self.cg_lora is not None:
            self.cg_lora.to(self.device)  # stays fp32
        return self

    # ------------------------------------------------------------------ phases
    def in_coarse_phase(self) -> bool:
        return self.global_step < self.cfg.coarse_steps

    def ama_active(self) -> bool:
        start = self.cfg.ama_start_step
        return start is not None and start >= 0 and self.global_step >= start

    def weight(self, t: Tensor) -> Tensor:
        strategy = self.cfg.coarse_weighting_strategy if self.in_coarse_phase() else self.cfg.weighting_strategy
        return sds_weight(self.alphas_cumprod, t, strategy)

    def coarse_latents(self, render_out: dict[str, Tensor]) -> Tensor:
        """[normal, mask] of the render -> [B, 4, h, w] at the latent resolution (area-averaged)."""
        mask = render_out["opacity"]  # [B,H,W,1]
        normal = render_out["comp_normal"] * 2.0 - mask  # = n · mask (comp_normal = (n + 1)/2 · mask)
        if self.cfg.coarse_normal_rotation:
            rot = random_rotations(normal.shape[0], normal.device).to(normal.dtype)
            normal = torch.einsum("bij,bhwj->bhwi", rot, normal)
        x = torch.cat([normal + (mask - 1.0), mask], dim=-1).permute(0, 3, 1, 2)  # background normal -1
        size = self.latent_resolution
        if x.shape[-1] > size and x.shape[-2] > size:
            return F.interpolate(x, size=(size, size), mode="area")
        return resize_nchw(x, size)

    # ------------------------------------------------------------------ CG-LoRA conditions
    def eos_index(self, prompt: str) -> int:
        """Position of the first EOS token of `prompt` (tokenized as the prompt processor does)."""
        if prompt not in self._eos_cache:
            max_length = min(int(self.tokenizer.model_max_length), 77)
            ids = self.tokenizer(prompt, max_length=max_length, truncation=True).input_ids
            eos = self.tokenizer.eos_token_id
            self._eos_cache[prompt] = ids.index(eos) if eos in ids else len(ids) - 1
        return self._eos_cache[prompt]

    def prompts_of(self, prompt_utils: Any, batch: dict[str, Any], batch_size: int) -> tuple[list[str], list[str]]:
        """The conditional and unconditional prompt of each camera (as get_text_embeddings picks them)."""
        if self.cfg.view_dependent_prompting and getattr(prompt_utils, "view_dependent_prompting", True):
            idx = prompt_utils.direction_indices(
                torch.as_tensor(batch["elevation"]).detach().float().cpu(), torch.as_tensor(batch["azimuth"]).detach().float().cpu(),
                None if batch.get("camera_distances") is None else torch.as_tensor(batch["camera_distances"]).detach().float().cpu(),
            ).tolist()
            return [prompt_utils.prompts_vd[i] for i in idx], [prompt_utils.negative_prompts_vd[i] for i in idx]
        return [prompt_utils.prompt] * batch_size, [prompt_utils.negative_prompt] * batch_size

    def conditions(self, prompt_utils: Any, batch: dict[str, Any], text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(eos [2B] long, e [2B, D] EOS embeddings, f [2B, Dc] camera features) for text [2B, 77, D]."""
        B = text.shape[0] // 2
        cond, uncond = self.prompts_of(prompt_utils, batch, B)
        eos = torch.tensor([self.eos_index(p) for p in cond + uncond], device=text.device)
        e = text[torch.arange(2 * B, device=text.device), eos].float()
        f = None
        if self.cg_lora is not None:
            inputs = camera_inputs(batch, self.cfg.camera_fovy_range).to(self.cg_lora.camera_encoder.net[0].weight.device)
            f = self.cg_lora.camera_encoder(inputs).to(text.device)
            f = torch.cat([f, f], dim=0)
        return eos, e, f

    def adapted(self, e: Tensor, f: Optional[Tensor]):
        """Context in which UNet calls use CG-LoRA with these conditions (no-op without CG-LoRA)."""
        if self.cg_lora is None:
            return contextlib.nullcontext()
        return self.cg_lora.condition(e, f)

    # ------------------------------------------------------------------ the step
    def score_step(self, latents: Tensor, predict: Any, batch: dict[str, Any], prompt_utils: Any, **kwargs: Any) -> Any:
        """The distillation step with X-Dreamer's predictor (SDS); `xdreamer-vsd-guidance` (vsd_base.py)
        puts VSD's LoRA baseline here. kwargs: distill's t, noise, grad_through_unet, grad_to_noisy_latents."""
        return self.distill(latents, predict, **kwargs)

    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        rgb_as_latents: Optional[bool] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        require_text_embeddings(prompt_utils, "xdreamer-guidance")
        coarse = self.in_coarse_phase()
        if coarse:
            if render_out is None or "comp_normal" not in render_out:
                raise ValueError("xdreamer-guidance's coarse phase needs the render's comp_normal and opacity (render_out)")
            latents, as_latents = self.coarse_latents(render_out), True
        else:
            as_latents = self.cfg.rgb_as_latents if rgb_as_latents is None else rgb_as_latents
            latents = self.get_latents(image, as_latents)  # [B,4,h,w]
        B = latents.shape[0]
        text = self.text_embeddings(prompt_utils, batch).to(latents.device)  # [2B,77,D]
        eos, e, f = self.conditions(prompt_utils, batch, text)

        def predict(z_t: Tensor, t: Tensor, noise: Tensor, extra: Any) -> Prediction:
            with self.adapted(e, f):  # CG-LoRA conditioned on these prompts and cameras
                eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text)
            eps_cond, eps_uncond = eps.chunk(2)
            return Prediction(self.guide(eps_cond, eps_uncond))

        # AMA: the step's UNet call runs with autograd and records the conditional rows' EOS maps
        ama = self.ama_active() and render_out is not None and "opacity" in render_out
        with (self.store.record(eos[:B]) if ama else contextlib.nullcontext()):
            step = self.score_step(latents, predict, batch, prompt_utils, t=t, noise=noise, grad_through_unet=ama,
                                   grad_to_noisy_latents=self.cfg.ama_grad_to_latents)
            maps = self.store.ordered_maps() if ama else []
        out = step.out
        out["loss_ama"] = ama_loss(maps, render_out["opacity"]) if ama else torch.zeros((), device=latents.device)
        out["coarse_phase"] = torch.tensor(float(coarse))
        self.add_guidance_eval(step, predict, None if as_latents else image)
        return out


__all__ = ["XDreamerGuidance", "load_lora_state", "random_rotations"]
