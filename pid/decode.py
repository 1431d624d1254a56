"""Decode a saved latent with a trained PiD decoder to an image file.

    python -m pid.decode --ckpt logs/…/pid_decoder.safetensors --latent z.safetensors --sigma 0.3 \
        --out img.png
    python -m pid.decode --ckpt … --latent sdxl_step40.pt --sigma 1.7 --frame ve --out img.png  # SDXL Euler

``--latent``: a ``.safetensors`` file (tensor ``latent``, else its only tensor) or a ``.pt`` file
(a tensor, or a dict with ``latent``; loaded weights-only), shaped (C, h, w) or (B, C, h, w),
normalised as the decoder's latent space expects (the LDM pipeline's own latents are). A σ stored
next to it (safetensors tensor ``sigma`` or dict key ``sigma``) is used when ``--sigma`` is not
given. ``--frame ve`` converts an Euler/VE-frame state (SDXL) exactly to the VP frame first. Only
the latent's geometry is loaded from the checkpoint: no VAE/encoder weights are needed.
Several images (B > 1) are written as ``out_0.png``, ``out_1.png``, …
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pid.utils.errors import MissingWeightsError, PiDConfigError


def read_latent(path: str | Path) -> tuple[torch.Tensor, float | None]:
    """(latent (B, C, h, w) float32, stored σ or None) from a .safetensors or .pt file."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            "latent file", "--latent", "a .safetensors or .pt file holding the latent", path=path
        )
    sigma = None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "sigma" in tensors:
            sigma = float(tensors.pop("sigma").reshape(-1)[0])
        if "latent" in tensors:
            latent = tensors["latent"]
        elif len(tensors) == 1:
            latent = next(iter(tensors.values()))
        else:
            raise PiDConfigError(f"{path} holds {sorted(tensors)}; name the latent tensor 'latent'")
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if "latent" not in obj:
                raise PiDConfigError(f"{path} holds a dict without a 'latent' entry ({sorted(obj)})")
            if obj.get("sigma") is not None:
                sigma = float(torch.as_tensor(obj["sigma"]).reshape(-1)[0])
            latent = obj["latent"]
        else:
            latent = obj
    latent = torch.as_tensor(latent).float()
    if latent.ndim == 5 and latent.shape[2] == 1:  # (B, C, 1, h, w) video-style latents
        latent = latent[:, :, 0]
    if latent.ndim == 3:
        latent = latent[None]
    if latent.ndim != 4:
        raise PiDConfigError(
            f"{path}: expected a (C, h, w) or (B, C, h, w) latent, got {tuple(latent.shape)}"
        )
    return latent, sigma


def save_images(images: torch.Tensor, out: str | Path) -> list[Path]:
    """Images in [-1, 1] (B, 3, H, W) → PNG/JPEG files (``out`` or ``out_i`` for several)."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    paths = (
        [out]
        if len(arrays) == 1
        else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(arrays))]
    )
    for arr, path in zip(arrays, paths):
        Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m pid.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", required=True, help="pid_decoder.safetensors export or a .ckpt of pid.train"
    )
    parser.add_argument("--latent", required=True, help=".safetensors or .pt latent file")
    parser.add_argument(
        "--sigma", type=float, default=None, help="noise level of the latent (default: stored σ or 0)"
    )
    parser.add_argument(
        "--frame",
        default="train",
        choices=["train", "flow", "vp", "ve"],
        help="'ve' for Euler/VE-frame states (SDXL); otherwise the latent is in PiD's frame",
    )
    parser.add_argument("--out", required=True, help="output image (.png/.jpg)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the file's)")
    parser.add_argument("--sampler", default=None, help="euler | sde | … (default: the file's)")
    parser.add_argument("--latent-cfg", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from pid.api import load_decoder

    latent, stored_sigma = read_latent(args.latent)
    sigma = args.sigma if args.sigma is not None else (stored_sigma or 0.0)
    decoder = load_decoder(args.ckpt, device=args.device, build_latent=False)
    if latent.shape[1] != decoder.latent.channels:
        raise PiDConfigError(
            f"{args.latent} has {latent.shape[1]} channels; the decoder expects "
            f"{decoder.latent.channels} ({decoder.latent.name})"
        )
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    images = decoder.decode(
        latent,
        sigma,
        num_steps=args.steps,
        latent_cfg=args.latent_cfg,
        sampler=args.sampler,
        generator=generator,
        frame=args.frame,
    )
    paths = save_images(images, args.out)
    print(f"decoded {tuple(latent.shape)} at σ={sigma:g} ({args.frame}) → " + ", ".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    import sys

    try:
        main()
    except (MissingWeightsError, PiDConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
