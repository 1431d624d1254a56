"""Convert a PiD weights file between layouts, for the place it will run.

    python -m pid.weights.convert model.pth model_ema_bf16.pth               # full → EMA student file
    python -m pid.weights.convert model_ema_bf16.pth pid_flux.safetensors --target comfyui
    python -m pid.weights.convert comfy.safetensors model_ema_bf16.pth       # split adaLN → joined
    python -m pid.weights.convert model_ema_bf16.pth split.safetensors --target comfyui --split-adaln

``IN`` is any file :func:`pid.weights.read_weights` reads: NVIDIA's ``model_ema_bf16.pth`` or full
``model.pth`` (its EMA weights, ``--weights raw`` for the training ones) or DCP folder, ComfyUI's files
(NVIDIA names with no prefix, ``net.`` or ``model.diffusion_model.``; pixel-block adaLN joined or split),
safetensors conversions of those, and this project's exports and ``.ckpt`` files. ``OUT`` is ``.pth``
(NVIDIA's layout) or ``.safetensors`` (the same tensors, the preset also in the metadata). The model is
described by the preset beside or inside ``IN``, its run config, or ``--release``; an NVIDIA file without
one is checked by its tensors alone. ``--target`` (official by default) refuses what the target cannot
run correctly, as ``python -m pid.weights.export`` does (the same contracts, :mod:`pid.weights.targets`).
"""

from __future__ import annotations

from pathlib import Path

from pid.weights.export import _parser, run_cli


def main(argv: list[str] | None = None) -> Path:
    """``python -m pid.weights.convert IN OUT [--target …]`` (see the module docstring)."""
    prog = "python -m pid.weights.convert"
    parser = _parser(prog, __doc__.split("\n\n")[0], "any PiD weights file pid reads (see above)")
    return run_cli(parser.parse_args(argv), prog)


if __name__ == "__main__":
    main()
