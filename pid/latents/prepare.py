"""The embedded latent's factory under its former name: run configs written into earlier checkpoints and
exports name ``pid.latents.prepare.embedded_latent``. Latent spaces get ready for training through their own
``prepare`` hook (:meth:`pid.latents.base.LatentSpace.prepare`)."""

from pid.latents.patch_pca import embedded_latent

__all__ = ["embedded_latent"]
