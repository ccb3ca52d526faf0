"""USD view distillation (docs/methods/usd.md §4): from a USD image-to-3D run's turntable renders
to a refined multi-view dataset and a NeuS mesh, as one resumable command:

    python -m custom.usd.view_distillation --config custom/usd/configs/usd-view-distillation.yaml run=<trial>

Modules (one concept each):
- (lift3d/models/ddim.py  deterministic DDIM from any timestep; per-sample seeded noise)
- rectified_sampler.py  Zero-1-to-3 novel views with CFG against SD's unconditional noise (§4.3)
- class_images.py       SD class images for prior preservation (§4.2)
- dreambooth_lora.py    DreamBooth-LoRA with peft on the UNet attention, prior-preservation loss (§4.2)
- sdedit.py             SDEdit refinement of the renders into a new transforms.json dataset (§4.4)
- sd_models.py          SD loading, prompt embeddings, the [V] / [S] [V] prompts
- config.py             strict config + inputs taken from the run (<trial>/configs/parsed.yaml)
- steps.py              resumable steps: atomic output folders + done markers
- pipeline.py           the six steps in order, NeuS through launch.py (§4.5)
Nothing here is imported by `custom.usd` (no registration): the command imports what it runs.
"""
