"""Latent spaces: one interface (``LatentSpace``) for every image-generator latent.

``PatchPCALatent`` is the embedded default (SD3/FLUX geometry, no downloaded weights);
``DiffusersVAELatent`` (FLUX.1, SD3, SDXL, FLUX.2) and ``RAELatent`` (DINOv2, SigLIP-2) load real
encoders from local weights; ``LatentGeometry`` carries only the geometry (decode-only use).
"""

from pid.latents.base import LatentSpace
from pid.latents.geometry import LatentGeometry
from pid.latents.patch_pca import PatchPCALatent
from pid.latents.rae import RAELatent
from pid.latents.vae import DiffusersVAELatent

__all__ = ["DiffusersVAELatent", "LatentGeometry", "LatentSpace", "PatchPCALatent", "RAELatent"]
