"""`single-image2-datamodule`: `single-image-datamodule` with a second random-camera stream.

threestudio's experimental unified-guidance Magic123 config (configs/experimental/unified-guidance/
magic123.yaml) names this module; its `data` section is `single-image-datamodule`'s (the comment there
points at threestudio/data/image.py's SingleImageDataModuleConfig) plus `random_camera2`, a second
random-camera section with the same keys as `random_camera`. Here:

- every key of single-image-datamodule keeps its meaning (lift3d.data.single_image);
- `random_camera2` configures a second `RandomCameraIterableDataset` (its own resolution, batch size,
  ranges; seeded apart from the first stream), sampled into `batch["random_camera2"]` each training step;
  an empty section (the default) means a copy of `random_camera`;
- validation / test cameras are `random_camera`'s, as single-image-datamodule.

Which system reads `random_camera2` is the system's business: threestudio's `magic123-system` (and
lift3d's, lift3d.systems.magic123) guides the `random_camera` view only, so with that system the second
stream is drawn (cheap: rays only, never rendered) and unused — the run computes what
single-image-datamodule's would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from lift3d.data.random_camera import RandomCameraDataModule, RandomCameraIterableDataset, resolve_seed
from lift3d.data.single_image import SingleImageDataModule, SingleImageDataModuleConfig, SingleImageIterableDataset
from lift3d.registry import register

SECOND_STREAM_SEED_OFFSET = 2  # data.seed + 2 (the reference ray noise uses +0, random_camera +1)


@dataclass
class SingleImage2DataModuleConfig(SingleImageDataModuleConfig):
    random_camera2: Dict[str, Any] = field(default_factory=dict)  # random-camera keys; empty: random_camera's


def second_camera_section(cfg: Any) -> Any:
    """`random_camera2`, or `random_camera` when it is empty (a RandomCameraDataModuleConfig mapping)."""
    return cfg.random_camera2 if len(cfg.random_camera2 or {}) else cfg.random_camera


class SingleImage2IterableDataset(SingleImageIterableDataset):
    """single-image-datamodule's batches plus batch["random_camera2"] (module docstring)."""

    def __init__(self, cfg: Any, path: str = "data") -> None:
        super().__init__(cfg, path)
        self.random_camera2: Optional[RandomCameraIterableDataset] = None
        if self.cfg.use_random_camera:
            self.random_camera2 = RandomCameraIterableDataset(
                second_camera_section(self.cfg), path=f"{path}.random_camera2",
                default_seed=resolve_seed(self.cfg.seed, offset=SECOND_STREAM_SEED_OFFSET),
            )

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        if self.random_camera2 is not None:
            self.random_camera2.update_step(epoch, global_step)

    def sample(self) -> Dict[str, Any]:
        batch = super().sample()
        if self.random_camera2 is not None:
            batch["random_camera2"] = self.random_camera2.sample()
        return batch

    def stream_state(self) -> Dict[str, Any]:
        state = super().stream_state()
        if self.random_camera2 is not None:
            state["random_camera2"] = self.random_camera2.stream_state()
        return state

    def load_stream_state(self, state: Dict[str, Any]) -> None:
        super().load_stream_state(state)
        if self.random_camera2 is not None and "random_camera2" in state:
            self.random_camera2.load_stream_state(state["random_camera2"])


@register("single-image2-datamodule")
class SingleImage2DataModule(SingleImageDataModule):
    """Reference view + two random-camera streams (train); random_camera's turntables (val/test/predict)."""

    Config = SingleImage2DataModuleConfig
    COMPONENT = "data module 'single-image2-datamodule'"
    train_dataset_class = SingleImage2IterableDataset

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        super().validate_config(cfg, path)
        if len(cfg.random_camera2 or {}):
            from lift3d.config import parse_structured
            from lift3d.data.random_camera import RandomCameraDataModuleConfig

            section = parse_structured(RandomCameraDataModuleConfig, OmegaConf.create(dict(cfg.random_camera2)),
                                       path=f"{path}.random_camera2", component=cls.COMPONENT)
            RandomCameraDataModule.validate_config(section, path=f"{path}.random_camera2")


__all__ = ["SingleImage2DataModule", "SingleImage2DataModuleConfig", "SingleImage2IterableDataset"]
