"""`stable-diffusion-prompt-processor`: text embeddings of a prompt, per view direction, for SD guidances.

What it does (threestudio-conventions.md, "Prompt directions"):
- `prompt: "lib:<words>"` picks the one entry of the prompt library (`prompt_library`, default
  load/prompt_library.json) that contains all the words (case-insensitive, whole words; words
  separated by spaces or underscores); none or several matches is a ConfigError listing candidates.
- View-dependent prompts for side / front / back / overhead (see lift3d.prompt.directions):
  "<prompt>, front view", or "front view of <prompt>" with `view_dependent_prompt_front: true`;
  `prompt_<direction>` replaces a direction's prompt verbatim. The negative prompt
  (`negative_prompt`, default "") is the unconditional text of every direction.
- Embeddings are cached on disk (`cache_dir`, default .cache/text_embeddings) keyed by model and
  prompt (lift3d.prompt.cache: atomic writes, safe to share between runs). Only missing prompts are
  encoded; the tokenizer and text encoder are loaded for that and released right after (del + gc),
  so they do not hold memory while the guidance trains.

`processor()` returns a `PromptProcessorOutput` (the `prompt_utils` the guidances consume):
`get_text_embeddings(elevation, azimuth, camera_distances, view_dependent_prompting=True)` ->
[2B, 77, D], the B conditional embeddings followed by the B unconditional ones. With `use_perp_neg`
(Perp-Neg, docs/methods/perp_neg.md) the guidances read `get_text_embeddings_perp_neg(...)` instead:
view-interpolated positive prompts plus two weighted negative prompts per camera (keys perp_neg_f_*).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch
from omegaconf import OmegaConf
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.models.frozen import SD_TEXT_FILES, default_device, free_memory, resolve_model
from lift3d.prompt.base import BasePromptProcessor
from lift3d.prompt.cache import TextEmbeddingCache, model_fingerprint
from lift3d.prompt.directions import DIRECTION_NAMES, ViewDirection, direction_indices, make_directions, view_prompt
from lift3d.prompt.perp_neg_views import DEFAULT_F_FS, DEFAULT_F_FSB, DEFAULT_F_SB, DEFAULT_F_SF, perp_neg_views
from lift3d.registry import register
from lift3d.utils.paths import REPO_ROOT

LIBRARY_PREFIX = "lib:"
KEY = "system.prompt_processor"


# ---------------------------------------------------------------------------------- prompt library
def _library_path(path: str, key: str = KEY) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return REPO_ROOT / p
    raise ConfigError(f"{key}.prompt_library: prompt library '{path}' does not exist (looked in {Path.cwd()} and {REPO_ROOT}).")


def library_prompts(path: str, key: str = KEY) -> list[str]:
    """Every prompt of a library file: a JSON list, or an object of lists (e.g. {"dreamfusion": [...]}).
    `key`: the prompt processor's config path, for the messages."""
    lib_path = _library_path(path, key)
    try:
        data = json.loads(lib_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}.prompt_library: cannot read '{lib_path}' as JSON ({exc}).") from None
    groups = data.values() if isinstance(data, dict) else [data]
    prompts = [p for group in groups if isinstance(group, list) for p in group if isinstance(p, str)]
    return list(dict.fromkeys(prompts))


def resolve_prompt(prompt: str, library: str = "load/prompt_library.json", key: str = KEY) -> str:
    """`prompt` itself, or for "lib:<words>" the unique library entry containing all the words.
    `key`: the prompt processor's config path, for the messages."""
    if not prompt.startswith(LIBRARY_PREFIX):
        return prompt
    words = [w for w in re.split(r"[\s_]+", prompt[len(LIBRARY_PREFIX):].lower()) if w]
    if not words:
        raise ConfigError(f"{key}.prompt='{prompt}': give words after 'lib:', e.g. prompt=\"lib:pineapple\".")
    prompts = library_prompts(library, key)
    patterns = [re.compile(rf"(?<![\w]){re.escape(w)}(?![\w])") for w in words]
    matches = [p for p in prompts if all(pat.search(p.lower()) for pat in patterns)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        partial = sorted(prompts, key=lambda p: -sum(bool(pat.search(p.lower())) for pat in patterns))
        partial = [p for p in partial if any(pat.search(p.lower()) for pat in patterns)][:10]
        hint = ("Entries with some of the words: " + "; ".join(f'"{p}"' for p in partial) + ".") if partial else (
            f"The library has {len(prompts)} entries; none contains any of the words."
        )
        raise ConfigError(
            f"{key}.prompt='{prompt}': no entry of {library} contains all of {words}. {hint} "
            f"Use other words or write the prompt out in full."
        )
    shown = "; ".join(f'"{p}"' for p in matches[:10]) + (f"; ... ({len(matches)} in all)" if len(matches) > 10 else "")
    raise ConfigError(
        f"{key}.prompt='{prompt}' is ambiguous: {len(matches)} entries of {library} contain {words}: {shown}. "
        f"Add words to pick one (e.g. lib:{'_'.join(words)}_<another word>) or write the prompt out."
    )


# ---------------------------------------------------------------------------------- output
@dataclass
class PromptProcessorOutput:
    """Text embeddings per view direction; what SD guidances read (`prompt_utils`)."""

    prompt: str
    negative_prompt: str
    text_embeddings: Tensor  # [1, 77, D] the prompt without view suffix
    uncond_text_embeddings: Tensor  # [1, 77, D] the negative prompt
    directions: list[ViewDirection]
    prompts_vd: list[str]  # one per direction
    negative_prompts_vd: list[str]
    text_embeddings_vd: Tensor  # [n_directions, 77, D]
    uncond_text_embeddings_vd: Tensor  # [n_directions, 77, D]
    view_dependent_prompting: bool = True
    use_perp_neg: bool = False
    # Perp-Neg's interpolation weights (a, b, c) of a exp(-b r) + c (lift3d.prompt.perp_neg_views)
    perp_neg_f_sb: tuple = DEFAULT_F_SB
    perp_neg_f_fsb: tuple = DEFAULT_F_FSB
    perp_neg_f_fs: tuple = DEFAULT_F_FS
    perp_neg_f_sf: tuple = DEFAULT_F_SF
    direction2idx: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}

    def direction_indices(self, elevation: Tensor, azimuth: Tensor, camera_distances: Optional[Tensor] = None) -> Tensor:
        """Direction index of each camera [B] (long, on elevation's device)."""
        return direction_indices(self.directions, elevation, azimuth, camera_distances)

    def get_prompts(self, elevation: Tensor, azimuth: Tensor, camera_distances: Optional[Tensor] = None) -> list[str]:
        return [self.prompts_vd[i] for i in self.direction_indices(elevation, azimuth, camera_distances).tolist()]

    def get_text_embeddings(
        self,
        elevation: Tensor,
        azimuth: Tensor,
        camera_distances: Optional[Tensor] = None,
        view_dependent_prompting: bool = True,
    ) -> Tensor:
        """[2B, 77, D]: conditional embeddings of the B cameras, then their unconditional ones.

        elevation, azimuth [B] in degrees (lift3d's convention). Without view-dependent prompting
        (argument or processor config false) every camera gets the plain prompt. The result lives
        on elevation's device.
        """
        elevation = torch.as_tensor(elevation)
        B = elevation.reshape(-1).shape[0]
        device = elevation.device
        if view_dependent_prompting and self.view_dependent_prompting:
            idx = self.direction_indices(elevation.detach().float().cpu(), torch.as_tensor(azimuth).detach().float().cpu(),
                                         None if camera_distances is None else torch.as_tensor(camera_distances).detach().float().cpu())
            cond = self.text_embeddings_vd[idx]
            uncond = self.uncond_text_embeddings_vd[idx]
        else:
            cond = self.text_embeddings.expand(B, -1, -1)
            uncond = self.uncond_text_embeddings.expand(B, -1, -1)
        return torch.cat([cond, uncond], dim=0).to(device)

    def get_text_embeddings_perp_neg(
        self,
        elevation: Tensor,
        azimuth: Tensor,
        camera_distances: Optional[Tensor] = None,
        view_dependent_prompting: bool = True,
    ) -> Any:
        """Perp-Neg's conditioning of the B cameras (lift3d.guidance.perp_neg.PerpNegText): embeddings
        [4B, 77, D] (interpolated positive prompts, the negative prompt of each camera's direction, then
        two negative prompts per camera) and their weights [B, 2] (lift3d.prompt.perp_neg_views)."""
        from lift3d.guidance.perp_neg import PerpNegText

        if not (view_dependent_prompting and self.view_dependent_prompting):
            raise ConfigError(f"{KEY}.use_perp_neg=true needs view-dependent prompting: set "
                              "view_dependent_prompting=true in system.guidance and system.prompt_processor.")
        device = torch.as_tensor(elevation).device
        elevation = torch.as_tensor(elevation).detach().float().cpu().reshape(-1)
        azimuth = torch.as_tensor(azimuth).detach().float().cpu().reshape(-1)
        idx = self.direction_indices(elevation, azimuth, None if camera_distances is None
                                     else torch.as_tensor(camera_distances).detach().float().cpu())
        views = perp_neg_views(azimuth, idx == self.direction2idx["overhead"], self.perp_neg_f_sb,
                               self.perp_neg_f_fsb, self.perp_neg_f_fs, self.perp_neg_f_sf)
        cond = self.text_embeddings_vd  # [4, 77, D]
        table = torch.cat([cond, self.uncond_text_embeddings_vd])  # [8, 77, D]
        positive = torch.einsum("bj,jld->bld", views.pos_mix.to(cond), cond)  # [B, 77, D]
        negatives = table[views.neg_index.reshape(-1)]  # [2B, 77, D], camera-major
        embeddings = torch.cat([positive, self.uncond_text_embeddings_vd[idx], negatives])  # [4B, 77, D]
        return PerpNegText(embeddings.to(device), views.neg_weights.to(device))

    def get_uncond_embeddings(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """[B, 77, D] of the negative prompt (e.g. SD's unconditional prediction in USD)."""
        return self.uncond_text_embeddings.expand(batch_size, -1, -1).to(device)


# ---------------------------------------------------------------------------------- processor
@register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(BasePromptProcessor):
    @dataclass
    class Config(BasePromptProcessor.Config):
        prompt: str = ""  # or "lib:<words>"
        negative_prompt: str = ""
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        view_dependent_prompting: bool = True
        view_dependent_prompt_front: bool = False  # true: "front view of <prompt>"; false: "<prompt>, front view"
        front_threshold: float = 45.0  # degrees of azimuth around 0 (the +x axis)
        back_threshold: float = 45.0  # degrees of azimuth around 180
        overhead_threshold: float = 60.0  # degrees of elevation
        prompt_side: Optional[str] = None  # per-direction prompts (verbatim), null: derived from prompt
        prompt_front: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None
        use_cache: bool = True
        cache_dir: str = ".cache/text_embeddings"
        prompt_library: str = "load/prompt_library.json"
        use_perp_neg: bool = False  # Perp-Neg (docs/methods/perp_neg.md): view-interpolated prompts + negatives
        # Perp-Neg's negative-prompt weights, (a, b, c) of a exp(-b r) + c (lift3d.prompt.perp_neg_views)
        perp_neg_f_sb: List[float] = field(default_factory=lambda: list(DEFAULT_F_SB))
        perp_neg_f_fsb: List[float] = field(default_factory=lambda: list(DEFAULT_F_FSB))
        perp_neg_f_fs: List[float] = field(default_factory=lambda: list(DEFAULT_F_FS))
        perp_neg_f_sf: List[float] = field(default_factory=lambda: list(DEFAULT_F_SF))

    @classmethod
    def validate_config(cls, cfg: Any, path: str = KEY) -> None:
        missing = OmegaConf.is_config(cfg) and OmegaConf.is_missing(cfg, "prompt")
        if missing or not str(cfg.prompt).strip():
            raise ConfigError(
                f"{path}.prompt is not set: give the text to lift, e.g. {path}.prompt=\"a DSLR photo of a pineapple\" "
                f"or a prompt-library entry, {path}.prompt=\"lib:pineapple\"."
            )
        resolve_prompt(cfg.prompt, cfg.prompt_library, path)
        for name in ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf"):
            if len(cfg[name]) != 3:
                raise ConfigError(f"{path}.{name} = {list(cfg[name])}: give the three numbers (a, b, c) of "
                                  f"a exp(-b r) + c, e.g. {list(DEFAULT_F_SB)}.")
        if cfg.use_perp_neg and not cfg.view_dependent_prompting:
            raise ConfigError(f"{path}.use_perp_neg=true needs view-dependent prompts: set {path}.view_dependent_prompting=true "
                              f"or use_perp_neg=false.")
        for name in ("front_threshold", "back_threshold"):
            if not 0.0 <= float(cfg[name]) <= 180.0:
                raise ConfigError(f"{path}.{name} = {cfg[name]}: use degrees in [0, 180].")
        resolve_model(cfg.pretrained_model_name_or_path,
                      f"Stable Diffusion text encoder for {path}.pretrained_model_name_or_path", SD_TEXT_FILES)

    def configure(self) -> None:
        cfg = self.cfg
        self.validate_config(cfg)
        self.prompt = resolve_prompt(cfg.prompt, cfg.prompt_library)
        self.negative_prompt = cfg.negative_prompt
        self.model_path = resolve_model(cfg.pretrained_model_name_or_path,
                                        f"Stable Diffusion text encoder for {KEY}.pretrained_model_name_or_path", SD_TEXT_FILES)
        self.directions = make_directions(cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold)
        self.prompts_vd = [
            cfg[f"prompt_{d.name}"] if cfg[f"prompt_{d.name}"] is not None
            else view_prompt(self.prompt, d.name, cfg.view_dependent_prompt_front)
            for d in self.directions
        ]
        self.negative_prompts_vd = [self.negative_prompt for _ in self.directions]
        self.cache = TextEmbeddingCache(cfg.cache_dir, model_fingerprint(self.model_path))
        wanted = list(dict.fromkeys([self.prompt, self.negative_prompt, *self.prompts_vd, *self.negative_prompts_vd]))
        self.encoded_prompts: list[str] = []  # the prompts this instance had to encode (cache misses)
        self.embeddings = self.load_or_encode(wanted)

    # ------------------------------------------------------------------ encoding
    def load_or_encode(self, prompts: list[str]) -> dict[str, Tensor]:
        """{prompt: [77, D]} from the cache, encoding (and caching) the missing ones in one batch."""
        found: dict[str, Tensor] = {}
        if self.cfg.use_cache:
            for p in prompts:
                cached = self.cache.load(p)
                if cached is not None:
                    found[p] = cached
        missing = [p for p in prompts if p not in found]
        self.encoded_prompts = missing
        if missing:
            encoded = self.encode_prompts(missing)
            for p, emb in zip(missing, encoded):
                found[p] = emb
                if self.cfg.use_cache:
                    self.cache.save(p, emb)
        return found

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """[N, 77, D] float32 CPU embeddings of `prompts`; the text encoder is freed afterwards."""
        return encode_prompts(self.model_path, prompts)

    # ------------------------------------------------------------------ output
    def __call__(self) -> PromptProcessorOutput:
        emb = self.embeddings
        return PromptProcessorOutput(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            text_embeddings=emb[self.prompt][None],
            uncond_text_embeddings=emb[self.negative_prompt][None],
            directions=self.directions,
            prompts_vd=list(self.prompts_vd),
            negative_prompts_vd=list(self.negative_prompts_vd),
            text_embeddings_vd=torch.stack([emb[p] for p in self.prompts_vd]),
            uncond_text_embeddings_vd=torch.stack([emb[p] for p in self.negative_prompts_vd]),
            view_dependent_prompting=bool(self.cfg.view_dependent_prompting),
            use_perp_neg=bool(self.cfg.use_perp_neg),
            **{name: tuple(float(v) for v in self.cfg[name])
               for name in ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")},
        )


__all__ = ["PromptProcessorOutput", "StableDiffusionPromptProcessor", "encode_prompts", "library_prompts", "resolve_prompt", "DIRECTION_NAMES"]


def warn_truncated_prompts(tokenizer: Any, prompts: list[str], max_length: int) -> list[str]:
    """Log a warning for each prompt longer than the text encoder's `max_length` tokens (start and end
    tokens included): the tokenizer cuts it and the model never sees the end. Returns those prompts."""
    cut = []
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=False).input_ids
        if len(ids) > max_length:
            kept = tokenizer.decode(ids[1:max_length - 1])
            logging.getLogger(__name__).warning(
                "prompt has %d tokens, more than the text encoder's %d: it is cut after '...%s'; the rest "
                "('%s') is ignored. Shorten system.prompt_processor.prompt.",
                len(ids), max_length, kept[-40:], tokenizer.decode(ids[max_length - 1:-1])[:200])
            cut.append(prompt)
    return cut


@torch.no_grad()
def encode_prompts(model_path: str, prompts: list[str]) -> Tensor:
    """[N, 77, D] float32 CPU embeddings of `prompts` with the SD folder's tokenizer and text encoder,
    loaded for this call and freed afterwards."""
    from transformers import CLIPTextModel, CLIPTokenizer

    device = default_device()
    tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder").to(device)
    text_encoder.eval()
    try:
        # 77 for CLIP; a tokenizer folder without model_max_length reports a huge number
        max_length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
        warn_truncated_prompts(tokenizer, prompts, max_length)
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        embeddings = text_encoder(tokens.input_ids.to(device))[0].float().cpu()
    finally:
        del text_encoder, tokenizer
        free_memory()
    return embeddings
