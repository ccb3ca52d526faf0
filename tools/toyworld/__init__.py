"""Toy world: simple coloured shapes, their renders and captions, and the tiny diffusion priors
lift3d trains on them (issue #7: the embedded default that runs text-/image-to-3D on a CPU).

    shapes.py       the catalogue (cube, sphere, cone, cylinder, torus × colours) as meshes
    render.py       shaded renders + masks of a shape at lift3d cameras (the conventions' camera model)
    dataset.py      the procedural dataset: random cameras, renders, captions; CLI
    diffusion_training.py   the VAE, the DDPM objective, EMA and the training loop both priors share
    train_vae.py    trains the VAE both priors share; CLI
    train_sd.py     trains the tiny Stable-Diffusion-layout prior (text encoder, UNet); CLI
    train_zero123.py  trains the tiny Zero-1-to-3-layout prior on view pairs; CLI
    scoring.py      silhouette IoU and colour of a result against the true shape
"""
