"""Decode a saved latent with a trained PiD decoder to an image file.

    python -m pid.decode --ckpt logs/…/pid_decoder.safetensors --latent z.safetensors --sigma 0.3 \
        --out img.png
    python -m pid.decode --ckpt … --latent sdxl_step40.pt --sigma 1.7 --frame ve --out img.png  # SDXL Euler
    # an NVIDIA release (text: --text-encoder, --caption)
    python -m pid.decode --release flux_2kto4k_v1pt5 --ckpt …/model_ema_bf16.pth --latent z.safetensors \
        --out img.png
    # from clean: encode, then PiD-decode at 4x
    python -m pid.decode --release flux_2kto4k_v1pt5 --ckpt … --image photo.png \
        --latent-path …/FLUX.1-dev/vae --out img.png
    # from LDM: the generator stopped at step K
    python -m pid.decode --release flux_2kto4k_v1pt5 --ckpt … --pipeline …/FLUX.1-dev --prompt "…" \
        --pipeline-steps 28 --exit-after 20 --out img.png
    # larger than the device holds: overlapping 1024-px tiles, velocities blended every step
    python -m pid.decode --release flux_2kto4k_v1pt5 --ckpt … --latent z.safetensors --tile 1024 --out img.png

Before it encodes or decodes, the command plans the size (``--image`` sides rounded to the latent grid,
and said) and estimates the decode (pid.guard); over budget (a CPU: ``--time-budget``, default 300 s;
memory: 80 % of what the device has free) it stops and names the ways on; ``--force`` goes ahead.

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
import os
from pathlib import Path

import numpy as np
import torch

from pid.utils.errors import MissingWeightsError, PiDConfigError


def read_latent(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(latent (B, C, h, w) float32, stored σ (scalar or (B,)) or None, caption states (B, L, D) or None).

    A ``.safetensors`` file holds tensor ``latent`` (else its only tensor) and optionally ``sigma`` and
    ``text`` (precomputed caption states of the decoder's text encoder); a ``.pt`` file a tensor or a dict
    with the same keys (loaded weights-only).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            "latent file", "--latent", "a .safetensors or .pt file holding the latent", path=path
        )
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise PiDConfigError(f"{path}: latent files are .safetensors (tensor 'latent') or .pt/.pth "
                             "(torch.save of a tensor or {'latent': ...}); convert a .npy with "
                             "torch.save(torch.from_numpy(a), path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as err:  # noqa: BLE001 — a truncated or foreign file
            raise PiDConfigError(f"{path} cannot be read as a safetensors file ({err})") from err
        if "latent" not in obj:
            others = {k: v for k, v in obj.items() if k not in ("sigma", "text")}
            if len(others) != 1:
                raise PiDConfigError(f"{path} holds {sorted(obj)}; name the latent tensor 'latent'")
            obj["latent"] = next(iter(others.values()))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 — a truncated file, a pickle that needs code
            raise PiDConfigError(f"{path} cannot be read as a weights-only torch file ({err})") from err
        if isinstance(obj, dict) and "latent" not in obj:
            raise PiDConfigError(f"{path} holds a dict without a 'latent' entry ({sorted(obj)})")
        if not isinstance(obj, dict):
            obj = {"latent": obj}
    latent = torch.as_tensor(obj["latent"]).float()
    sigma = None if obj.get("sigma") is None else torch.as_tensor(obj["sigma"]).float().reshape(-1)
    text = None if obj.get("text") is None else torch.as_tensor(obj["text"]).float()
    if latent.ndim == 5 and latent.shape[2] == 1:  # (B, C, 1, h, w) video-style latents
        latent = latent[:, :, 0]
    if latent.ndim == 3:
        latent = latent[None]
    if latent.ndim != 4:
        raise PiDConfigError(
            f"{path}: expected a (C, h, w) or (B, C, h, w) latent, got {tuple(latent.shape)}"
        )
    if text is not None and text.ndim == 2:
        text = text[None]
    return latent, sigma, text


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pid.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True,
                        help="pid_decoder.safetensors / .ckpt of pid.train, or (with --release) an official "
                             "model_ema_bf16.pth, model.pth or DCP folder")
    parser.add_argument("--release", default=None,
                        help="release preset (name, alias, official name or preset file) of --ckpt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--latent", help=".safetensors or .pt latent file")
    source.add_argument("--image", help="an image: encoded with the decoder's latent space, then decoded "
                                        "(the official 'from clean'); needs latent.path via --latent-path")
    source.add_argument("--pipeline", help="a local diffusers pipeline folder run to --exit-after steps "
                                           "(the official 'from LDM'); needs --prompt")
    parser.add_argument("--latent-path", default=None, help="weights of the latent space (for --image)")
    parser.add_argument("--prompt", default=None, help="--pipeline: the generator's prompt")
    parser.add_argument("--pipeline-steps", type=int, default=28, help="--pipeline: its schedule length N")
    parser.add_argument("--exit-after", type=int, default=None,
                        help="--pipeline: stop after K steps (default N)")
    parser.add_argument("--pipeline-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="--pipeline: another keyword of the pipeline call (a YAML value), "
                             "e.g. guidance_scale=3.5")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="--pipeline: the generator's image size; --image: resize to it first. Sides are "
                             "rounded to the latent grid (the log says so)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise level of the latent (default: stored σ or 0)")
    parser.add_argument("--frame", default="train", choices=["train", "flow", "vp", "ve"],
                        help="'ve' for Euler/VE-frame states (SDXL); otherwise the latent is in PiD's frame")
    parser.add_argument("--caption", default=None, help="text for the decoder (needs --text-encoder)")
    parser.add_argument("--text-encoder", default=None, help="local Gemma-2 folder for --caption")
    parser.add_argument("--out", required=True, help="output image (.png/.jpg)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the file's / release's)")
    parser.add_argument("--sampler", default=None,
                        help="sde | dpmpp_2m | euler | heun (default: the release's)")
    parser.add_argument("--latent-cfg", type=float, default=None)
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="decode in overlapping tiles of PX×PX output pixels (a multiple of the patch "
                             "size), velocities blended every step: memory of one tile, for outputs larger "
                             "than the device holds")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                        help="--tile: pixels neighbouring tiles share (default a quarter of the tile)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="on a CPU, stop before a decode estimated to take longer than S seconds "
                             "(default 300); memory is checked against 80%% of what is available")
    parser.add_argument("--force", action="store_true",
                        help="decode even when the estimate is over the time or memory budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context-parallel", type=int, default=1, metavar="N",
                        help="split each image over N processes started by `torchrun --nproc_per_node N` "
                             "(patch rows per process; the image is the one a single process decodes; "
                             "rank 0 writes it)")
    return parser


#: config keys named by errors of the shared code → this command's flags
CLI_FLAGS = {"latent.path": "--latent-path", "release": "--release", "ckpt": "--ckpt"}


def cli_message(err: BaseException) -> str:
    """An error's message in this command's words: ``latent.path=X`` → ``--latent-path X`` etc."""
    import re

    text = str(err)
    for key, flag in CLI_FLAGS.items():
        text = re.sub(rf"`?(?<![\w.]){re.escape(key)}=(\.\.\.|[^\s`,;)]*)`?", rf"{flag} \1", text)
    return re.sub(r"(?<![\w.])latent\.path(?![\w])", "--latent-path", text)


def _plan(decoder, source_hw, size, what: str):
    """The size rule of pid.guard for this decoder: (H, W) of the input → SizePlan, logged."""
    import logging

    from pid.guard import plan_input_size

    plan = plan_input_size(source_hw, latent_down=decoder.latent.down_factor, sr_scale=decoder.sr_scale,
                           patch_size=int(getattr(decoder.net, "patch_size", 16)),
                           size=tuple(size) if size else None, what=what)
    logging.getLogger("pid.decode").info("%s", plan.describe(what))
    return plan


def _guard(decoder, args, latent_shape, plan=None) -> None:
    """Estimate the decode (pid.guard) and stop, naming the ways on, when it is over the budget."""
    import logging

    from pid.guard import CPU_TIME_BUDGET_S, Budget, OverBudgetError, guard_decode

    log = logging.getLogger("pid.decode")
    budget = Budget(seconds=CPU_TIME_BUDGET_S if args.time_budget is None else args.time_budget)
    res = guard_decode(decoder, tuple(latent_shape), budget, num_steps=args.steps, sampler=args.sampler,
                       latent_cfg=args.latent_cfg, tile=args.tile, tile_overlap=args.tile_overlap)
    est = res.estimate
    if not res.reasons:
        log.info("estimate: %s", est.describe())
        return
    if args.force:
        log.warning("over budget (%s); decoding anyway (--force)", "; ".join(res.reasons))
        return
    if getattr(args, "context_parallel", 1) > 1:  # the estimate is one process's whole decode
        log.warning("estimate for one process: %s (%s); with --context-parallel %d each process holds a "
                    "share of the activations, so the decode goes ahead", est.describe(),
                    "; ".join(res.reasons), args.context_parallel)
        return
    down, sr = decoder.latent.down_factor, decoder.sr_scale
    ways = []
    if res.fit_latent_hw is not None:
        fit = res.fit_estimate
        if args.latent:
            ways.append(f"  a smaller latent, e.g. {res.fit_latent_hw[0]}×{res.fit_latent_hw[1]} cells "
                        f"(output {fit.output_hw[0]}×{fit.output_hw[1]} px; {fit.short()})")
        else:
            unit = plan.unit if plan is not None else down
            h, w = (max(unit, v * down // unit * unit) for v in res.fit_latent_hw)
            ways.append(f"  --size {h} {w}   a smaller input: output {h * sr}×{w * sr} px "
                        f"({fit.short()})")
    if args.image:
        ways.append("  a smaller image (or a crop of it) as --image")
    if res.fit_tile is not None:
        ways.append(f"  --tile {res.fit_tile}   decode in tiles of {res.fit_tile} px: the memory of one tile "
                    f"({res.fit_tile_estimate.short()})")
    if any(r.startswith("time") for r in res.reasons):
        ways.append(f"  --time-budget S   allow S seconds (now {budget.seconds:g})")
    ways.append("  --force   decode anyway")
    oh, ow = est.output_hw
    where = "" if plan is not None else (
        f"planned: latent {latent_shape[-2]}×{latent_shape[-1]} → output {oh}×{ow} px\n")
    raise OverBudgetError(
        f"this decode is over budget — {'; '.join(res.reasons)}.\n{where}estimate: {est.describe()}\n"
        "Ways on:\n" + "\n".join(ways), est, res.reasons)


def _latent_from_image(decoder, args) -> torch.Tensor:
    """--image → the planned size (pid.guard's rule, logged) → the guard → the decoder's latent."""
    from pid.data.io import load_rgb

    path = args.image
    try:
        pixels = load_rgb(path)
    except (OSError, ValueError) as err:  # missing, not an image, unsupported pixels
        raise PiDConfigError(f"--image {path}: {err}") from err
    rgb = torch.from_numpy(np.asarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1
    rgb = rgb[None]
    plan = _plan(decoder, tuple(rgb.shape[-2:]), args.size, f"--image {path}")
    _guard(decoder, args, (1, decoder.latent.channels, *plan.latent_hw), plan)
    if plan.input_hw != tuple(rgb.shape[-2:]):
        rgb = torch.nn.functional.interpolate(rgb, size=plan.input_hw, mode="bicubic",
                                              antialias=True).clamp(-1, 1)
    return decoder.encode(rgb.to(decoder.device)).cpu()


def _latent_from_pipeline(decoder, args) -> tuple[torch.Tensor, float, str]:
    from diffusers import DiffusionPipeline

    from pid.early_exit import run_pipeline_to_step

    if not args.prompt:
        raise PiDConfigError("--pipeline needs --prompt")
    if not Path(args.pipeline).is_dir():
        raise MissingWeightsError("diffusers pipeline", "--pipeline", "a local diffusers pipeline folder",
                                  path=args.pipeline)
    pipe = DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True).to(args.device)
    height, width = args.size or (1024, 1024)
    import yaml

    extra = {}
    for item in args.pipeline_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise PiDConfigError(f"--pipeline-arg {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)
    state = run_pipeline_to_step(pipe, args.exit_after or args.pipeline_steps, args.pipeline_steps,
                                 prompt=args.prompt, height=height, width=width,
                                 generator=torch.Generator(device="cpu").manual_seed(args.seed), **extra)
    return state.latent, float(state.sigma), "train"  # ExitState is in PiD's training frame already


def main(argv: list[str] | None = None) -> list[Path]:
    import logging

    from PIL import Image

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pid").setLevel(logging.INFO)  # the weights report and text-encoder notes
    if Path(args.out).suffix.lower() not in Image.registered_extensions():
        raise PiDConfigError(f"--out {args.out}: unknown image file extension (use .png or .jpg)")
    from pid.api import load_decoder

    build_latent = bool(args.image)
    latent_obj = None
    if args.image and args.release:
        from pid.weights.release import load_release

        try:
            latent_obj = load_release(args.release).build_latent(args.latent_path)
        except MissingWeightsError as err:
            raise MissingWeightsError.with_message(cli_message(err), err.config_key) from err
    from pid.weights.paths import resolve_weights_path

    if args.context_parallel < 1:
        raise PiDConfigError(f"--context-parallel {args.context_parallel}: a number of processes >= 1")
    if args.context_parallel > 1 and str(args.device) == "cuda":  # one GPU per torchrun process
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    ckpt = resolve_weights_path(args.ckpt, "--ckpt", "PiD decoder",
                                "an export, a run folder of pid.train or a released file")
    try:
        decoder = load_decoder(ckpt, device=args.device, build_latent=build_latent, latent=latent_obj,
                               release=args.release, text_encoder=args.text_encoder,
                               latent_path=args.latent_path if args.image and not args.release else None)
    except MissingWeightsError as err:  # the shared code names config keys; say this command's flags
        raise MissingWeightsError.with_message(cli_message(err), err.config_key) from err
    except PiDConfigError as err:
        raise PiDConfigError(cli_message(err)) from err
    from pid.latents.geometry import LatentGeometry

    if args.image and isinstance(decoder.latent, LatentGeometry):
        raise PiDConfigError(f"--image needs the weights of the decoder's latent space "
                             f"({decoder.latent.name}) to encode it: give them with --latent-path (e.g. a "
                             "local VAE folder)")
    frame = args.frame
    stored_sigma, states = None, None
    if args.latent:
        latent, stored_sigma, states = read_latent(args.latent)
        if latent.shape[1] == decoder.latent.channels:
            _guard(decoder, args, tuple(latent.shape))
    elif args.image:
        latent = _latent_from_image(decoder, args)
    else:
        size = args.size or (1024, 1024)
        plan = _plan(decoder, tuple(size), None, "--pipeline image")
        args.size = plan.input_hw
        _guard(decoder, args, (1, decoder.latent.channels, *plan.latent_hw), plan)
        latent, stored_sigma, frame = _latent_from_pipeline(decoder, args)
    sigma = args.sigma if args.sigma is not None else (stored_sigma if stored_sigma is not None else 0.0)
    if latent.shape[1] != decoder.latent.channels:
        raise PiDConfigError(
            f"the latent has {latent.shape[1]} channels; the decoder expects "
            f"{decoder.latent.channels} ({decoder.latent.name})"
        )
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    scale = decoder.sr_scale * decoder.latent.down_factor
    steps = args.steps or decoder.sampling.get("num_steps")
    logging.getLogger("pid.decode").info(
        "decoding a %s latent into %d×%d px (%s steps on %s); large outputs on a CPU take minutes",
        "×".join(map(str, latent.shape)), latent.shape[-2] * scale, latent.shape[-1] * scale, steps,
        decoder.device)
    context = None
    if args.context_parallel > 1:
        from pid.parallel.context import init_from_environment

        context = init_from_environment(args.context_parallel, decoder.device)
    images = decoder.decode(latent, sigma, caption=args.caption, caption_states=states,
                            num_steps=args.steps, latent_cfg=args.latent_cfg, sampler=args.sampler,
                            generator=generator, frame=frame, context=context, tile=args.tile,
                            tile_overlap=args.tile_overlap)
    if context is not None and context.rank != 0:
        return []  # every rank holds the image; the first writes it
    paths = save_images(images, args.out)
    shown = ", ".join(f"{float(v):g}" for v in torch.as_tensor(sigma).reshape(-1))
    print(f"decoded {tuple(latent.shape)} at σ={shown} ({frame}) → " + ", ".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    import sys

    try:
        main()
    except (MissingWeightsError, PiDConfigError, ValueError) as err:
        print(f"error: {cli_message(err)}", file=sys.stderr)
        sys.exit(2)
