"""3D-aware GANs (EG3D-style tri-plane generator, camera-conditioned discriminator, GAN system).

See docs/gan.md and docs/methods/gan-adaptation.md."""
