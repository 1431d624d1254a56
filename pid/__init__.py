"""pid: train, distil and evaluate PiD-style pixel-diffusion decoders."""

__version__ = "0.1.0"
