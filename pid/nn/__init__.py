"""Networks: the PixelDiT pixel-diffusion backbone and PiD's sigma-aware latent adapter."""

from pid.nn.adapter import AdapterOutput, LatentAdapter, ResBlock, SigmaAwareGate, latent_grid_ratio
from pid.nn.blocks import FinalLayer, MMDiTBlock, PatchTokenEmbedder, PiTBlock, PixelTokenEmbedder
from pid.nn.layers import FeedForward, RMSNorm, TimestepEmbedder, apply_rope, modulate, rope_1d, rope_2d
from pid.nn.pid_net import PiDNet
from pid.nn.pixel_dit import PatchContext, PixelDiT

__all__ = [
    "AdapterOutput",
    "FeedForward",
    "FinalLayer",
    "LatentAdapter",
    "MMDiTBlock",
    "PatchContext",
    "PatchTokenEmbedder",
    "PiDNet",
    "PiTBlock",
    "PixelDiT",
    "PixelTokenEmbedder",
    "RMSNorm",
    "ResBlock",
    "SigmaAwareGate",
    "TimestepEmbedder",
    "apply_rope",
    "latent_grid_ratio",
    "modulate",
    "rope_1d",
    "rope_2d",
]
