"""Latent spaces: one interface (``LatentSpace``) for every image-generator latent.

``PatchPCALatent`` is the embedded default (SD3/FLUX geometry, no downloaded weights).
"""

from pid.latents.base import LatentSpace
from pid.latents.patch_pca import PatchPCALatent

__all__ = ["LatentSpace", "PatchPCALatent"]
