"""Guidance base: turns renders into named losses (docs/DESIGN.md "Core contracts").

`__call__(image [B,H,W,C], batch, prompt_utils=None, render_out=None) -> dict` with entries
`loss_<name>` (scalars the system weights by `system.loss.lambda_<name>`) and optional extra
scalars to log. `produces` lists the loss names a guidance can return, so that the experiment's
`lambda_*` keys are checked before training starts. Frozen models are held as plain attributes,
never as nn.Module children, so they stay out of checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lift3d.utils.base import BaseObject


class BaseGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        pass

    produces: tuple[str, ...] = ()
    # losses (of `produces`) scored on the reference view too: while any of their lambdas is > 0,
    # lift3d-system renders the reference camera and passes `reference_out` / `reference_image`
    # to `__call__` (lift3d.systems.lift3d_system)
    reference_view_losses: tuple[str, ...] = ()

    def trainable_modules(self) -> Optional[torch.nn.Module]:
        """The guidance's trainable weights (e.g. X-Dreamer's CG-LoRA), or None (the default: the
        frozen models are all it holds). The system registers the module as its child
        `guidance_params`: checkpointed, optimised (optimizer group `guidance_params`), moved with
        the system and reached by `update_step` (lift3d.systems.base)."""
        return None

    def __call__(
        self,
        image: torch.Tensor,
        batch: dict[str, Any],
        prompt_utils: Optional[Any] = None,
        render_out: Optional[dict[str, torch.Tensor]] = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError
