"""Public decode API: load a PiD decoder (trained here or released by NVIDIA) and decode latents to images.

    from pid.api import load_decoder
    decoder = load_decoder("logs/quickstart/runs/<time>/pid_decoder.safetensors")
    images = decoder.decode(z, sigma=0.0)            # [-1, 1], sr_scale × the latent's image size
    images = decoder.decode(z_k, sigma=sigma_k)       # early exit: an LDM state after K of N steps

    decoder = load_decoder("/ckpt/PiD_v1pt5_..._flux_distill_4step/model_ema_bf16.pth",
                           release="flux_2kto4k_v1pt5", text_encoder="/weights/gemma-2-2b-it")
    images = decoder.decode(z, sigma=0.0, caption=["a red fox in the snow"])

Files: every layout :mod:`pid.weights` reads (our exports and ``.ckpt`` files carry their config; NVIDIA's
files need ``release=`` to say which network they hold). Tensors load weights-only and strictly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from pid.utils.errors import PiDConfigError
from pid.weights import load_weights, read_weights
from pid.weights.export import write_export
from pid.weights.paths import resolve_weights_path
from pid.weights.release import Release, find_preset, load_release

log = logging.getLogger(__name__)


@dataclass
class PiDDecoder:
    """A PiD network with its latent space, sampling defaults and (optionally) its text encoder.

    ``text``: {"uses_text": bool, "max_length", "dim", "negative_prompt"} — whether the network was trained
    with caption states (released models always are) and what stands for "no caption".
    """

    net: nn.Module
    latent: nn.Module
    sr_scale: int
    sampling: dict = field(default_factory=dict)
    time: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    text_encoder: nn.Module | None = None
    release: str | None = None
    #: what the file says it decodes (:class:`pid.identity.ModelIdentity`; None when nothing says)
    identity: object | None = None
    _warned_null: bool = False

    def to(self, device) -> "PiDDecoder":
        self.net.to(device)
        self.latent.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → normalised latent (the latent space's own encoder)."""
        return self.latent.encode(images.to(self.device))

    # ------------------------------------------------------------------ text
    def _text_states(self, caption: str | Sequence[str] | None, batch: int,
                     states: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(caption states (B, L, D), null states (1, L, D)); (None, None) for a text-free network."""
        if states is not None:
            if caption is not None:
                raise ValueError("give caption= or caption_states=, not both")
            if states.ndim != 3 or states.shape[0] not in (1, batch):
                raise ValueError(f"caption_states must be (B, L, D) for {batch} latents, "
                                 f"got {tuple(states.shape)}")
            null = self.text_encoder.null_states().to(self.device) if self.text_encoder is not None else None
            return states.to(self.device).float().expand(batch, -1, -1), null
        if not self.text.get("uses_text"):
            if caption is not None:
                raise PiDConfigError("this decoder was trained without captions; decode without caption=")
            return None, None
        if caption is not None:
            captions = [caption] * batch if isinstance(caption, str) else list(caption)
            if len(captions) != batch:
                raise ValueError(f"got {len(captions)} captions for a batch of {batch} latents")
            if self.text_encoder is None:
                raise PiDConfigError("caption= needs a text encoder: load_decoder(..., text_encoder="
                                     "'/path/to/gemma-2-2b-it') (a local Hugging Face folder)")
        if self.text_encoder is not None:
            y = self.text_encoder(captions if caption is not None else [""] * batch)[0].to(self.device)
            return y, self.text_encoder.null_states().to(self.device)
        if not self._warned_null:
            log.warning("no text encoder: zero caption states stand in for the release's null caption (its "
                        "encoded empty caption and negative prompt need text_encoder=/path/to/gemma-2-2b-it)")
            self._warned_null = True
        zeros = torch.zeros(batch, int(self.text["max_length"]), int(self.text["dim"]), device=self.device)
        return zeros, None

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, sigma: float | torch.Tensor = 0.0, *,
               caption: str | Sequence[str] | None = None, caption_states: torch.Tensor | None = None,
               num_steps: int | None = None, text_cfg: float | None = None, latent_cfg: float | None = None,
               sampler: str | None = None, timesteps=None, generator: torch.Generator | None = None,
               frame: str = "train", tile: int | None = None,
               tile_overlap: int | None = None, context=None) -> torch.Tensor:
        """Decode a normalised latent at noise level σ to an image in [-1, 1].

        Args:
            latent: (B, C, h, w) finite, normalised as the latent space's encoder outputs it.
            sigma: its noise level, scalar or (B,), in [0, 1] in the training frame (``frame="ve"``: an
                Euler/VE-frame σ ≥ 0 of SDXL's EulerDiscreteScheduler, converted exactly to the VP frame).
            caption: text per image (needs the decoder's text encoder); None: the release's null caption.
            caption_states: precomputed caption states (B, L, D) of the decoder's text encoder instead.
            num_steps, sampler, text_cfg, latent_cfg: override the file's / release's sampling defaults
                (students: "sde" on their t-list, 1 step at t = 1.0; teachers: "dpmpp_2m" with text CFG).
            timesteps: an explicit time grid (wins over num_steps).
            tile: decode in overlapping tiles of ``tile`` × ``tile`` output pixels (an int multiple of the
                network's patch size, ``decoder.net.patch_size``) whose velocities are blended at every
                sampler step (MultiDiffusion, :mod:`pid.tiling`), for outputs larger than the device holds:
                the network's activation memory is one tile's (× the guidance branches), not the image's.
                A tile that covers the image decodes it whole. Same noise, same sampler: only attention
                across tile borders differs from the whole decode.
            tile_overlap: output pixels neighbouring tiles share at least (a multiple of the patch size,
                below ``tile``; default tile / 4 on the patch grid), blended by linear ramps.
            context: a :class:`pid.parallel.context.ContextParallel` (``init_context_parallel(n)`` under
                ``torchrun --nproc_per_node n``): each network call is split by patch rows over its n ranks,
                which all call ``decode`` with the same arguments and all get the image one process decodes.
                The output's patch rows must split evenly (the error names the sizes that work).

        Raises:
            ValueError: a non-finite or integer latent, a negative guidance scale, σ outside its range
                (with the ``frame="ve"`` hint for σ > 1), a wrong latent shape, a bad frame, or a tile /
                tile_overlap off the patch grid.
        """
        from pid.diffusion.schedules import student_timesteps
        from pid.sampling import decode_latent

        latent = torch.as_tensor(latent)
        if latent.ndim != 4 or 0 in latent.shape:
            raise ValueError(f"latent must be a non-empty (B, C, h, w) tensor, got {tuple(latent.shape)}")
        if not latent.is_floating_point():
            raise ValueError(f"latent has dtype {latent.dtype}: a latent is the encoder's floating-point "
                             "output (normalised). An integer tensor is usually an image or token ids: "
                             "encode images first (python -m pid.decode --image ...), or pass latent.float() "
                             "if the values are the latent")
        if not torch.isfinite(latent).all():
            bad = int((~torch.isfinite(latent)).sum())
            raise ValueError(f"latent has {bad} non-finite value(s) (NaN/inf); decode needs a finite latent")
        sigma = check_sigma(sigma, latent.shape[0], frame)
        for name, scale in (("text_cfg", text_cfg), ("latent_cfg", latent_cfg)):
            try:  # Python, NumPy and 0-d torch numbers
                value = float(scale) if scale is not None and not isinstance(scale, (bool, str)) else None
            except (TypeError, ValueError):
                value = None
            if scale is not None and not (value is not None and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={scale!r}: a guidance scale is a finite number >= 0 "
                                 "(1: no guidance)")
        form = getattr(self.latent, "noise_form", "flow")
        if frame in ("flow", "vp") and frame != form:
            raise ValueError(f"frame={frame!r}, but this decoder's latent space is noised in the {form!r} "
                             "frame; frame='train' (default) takes the state as the decoder was trained")
        if frame == "ve":
            from pid.diffusion.noising import ve_to_vp

            if form != "vp":
                raise ValueError(f"frame='ve' converts an Euler/VE-frame state to the VP frame, but this "
                                 f"decoder's latent space is noised in the {form!r} frame: give its state "
                                 "and sigma as they are (frame='train')")
            latent, sigma = ve_to_vp(latent.float(), sigma)
        sampler = sampler or self.sampling.get("sampler")
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int)
                                      or num_steps < 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        num_steps = num_steps or self.sampling.get("num_steps")
        if not sampler or not num_steps:
            raise ValueError("this decoder has no sampling defaults: pass sampler= and num_steps=")
        if timesteps is None and self.sampling.get("t_list"):
            timesteps = student_timesteps(self.sampling["t_list"], num_steps,
                                          one_step_t=float(self.sampling.get("one_step_t", 1.0)))
        y, y_null = self._text_states(caption, latent.shape[0], caption_states)
        return decode_latent(
            self.net, latent.to(self.device).float(), sigma, sr_scale=self.sr_scale,
            latent_down=self.latent.down_factor, num_steps=num_steps, sampler=sampler,
            text_cfg=self.sampling.get("text_cfg", 1.0) if text_cfg is None else text_cfg,
            latent_cfg=self.sampling.get("latent_cfg", 1.0) if latent_cfg is None else latent_cfg,
            text=(y, None), null_text=y_null, shift_base=self.time.get("shift_base", 6.0),
            shift_ref_size=self.time.get("shift_ref_size", 2048),
            shift_rule=self.time.get("shift_rule", "area"),
            generator=generator, timesteps=timesteps, tile=tile, tile_overlap=tile_overlap, context=context)


def check_sigma(sigma: float | torch.Tensor, batch: int, frame: str) -> torch.Tensor:
    """σ as a float32 (B,) tensor, checked: finite, in [0, 1] for the training frame, ≥ 0 for "ve"."""
    if frame not in ("train", "flow", "vp", "ve"):
        raise ValueError(f"frame must be 'train', 'flow', 'vp' or 've', got {frame!r}")
    try:
        s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"sigma must be a number or one number per latent, got {sigma!r}") from err
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"sigma must be a scalar or one value per latent ({batch}), got {s.numel()} values")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigma must be finite, got {s.tolist()}")
    if frame == "ve":
        if (s < 0).any():
            raise ValueError(f"an Euler/VE-frame sigma must be >= 0, got {s.tolist()}")
    elif (s < 0).any() or (s > 1).any():
        hint = (" A sigma > 1 is usually an Euler/VE-frame sigma (SDXL's EulerDiscreteScheduler): for a "
                "VP latent space pass frame='ve' (pid.decode: --frame ve) to convert it."
                if (s > 1).any() else "")
        shown = [round(v, 4) for v in s.tolist()]
        raise ValueError(f"sigma must be in [0, 1] in the training frame, got {shown}."
                         + hint)
    return s.contiguous()


def _latent_for(latent_cfg: dict, build: bool) -> nn.Module:
    from hydra.utils import instantiate

    from pid.latents.geometry import LatentGeometry

    if not build:
        return LatentGeometry.from_config(latent_cfg)
    return instantiate(dict(latent_cfg))  # a space whose tensors travel in the file is filled from it


def export_decoder(module, path: str | Path, ema=None,
                   net_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a training module's network (EMA weights with an EMA callback), small latents and config.

    ``net_state``: the network's (EMA) weights gathered already (``pid.lit.ema.averaged_net_state``, which
    FSDP runs need: there every rank holds a shard); without it the state is taken here the same way."""
    from pid.lit.ema import averaged_net_state

    if net_state is None:
        net_state = averaged_net_state(None, module, ema)
    carried = getattr(module.latent, "store_in_checkpoint", False)
    latent_state = module.latent.state_dict() if carried else None
    config = exported_config(module.run_config or {}, net_state, path)
    from pid.identity import identity_of_module

    return write_export(path, net_state, config, module.sr_scale, latent_state, ema=ema is not None,
                        identity=identity_of_module(module).to_dict())


def exported_config(run_config: dict, net_state: dict[str, torch.Tensor], path: str | Path) -> dict:
    """The run's config with ``model.net`` describing the network as built, checked against its weights.

    A module may drop a training-only part after its config was composed (distillation drops the adapter's
    aux RGB head); the export's config says so, so that :func:`load_decoder` rebuilds the same network.
    Raises ``PiDConfigError`` when the config's network and the weights still differ (no file is written).
    """
    import copy

    from hydra.utils import instantiate

    config = copy.deepcopy(run_config)
    net_cfg = (config.get("model") or {}).get("net")
    if not isinstance(net_cfg, dict) or "_target_" not in net_cfg:
        return config
    net_cfg = config["model"]["net"] = net_config_for_weights(net_cfg, net_state)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in instantiate(net_cfg).state_dict().items()}
    differ = sorted(k for k in shapes.keys() | net_state.keys()
                    if k not in shapes or k not in net_state or shapes[k] != tuple(net_state[k].shape))
    if differ:
        raise PiDConfigError(
            f"export to {path}: the run's model.net config does not describe the trained network ("
            f"{len(differ)} tensor(s) missing or shaped otherwise, e.g. {differ[:5]}); the module changed "
            "its network after the config was composed")
    return config


def net_config_for_weights(net_cfg: dict, tensor_names) -> dict:
    """A copy of ``model.net`` whose adapter has the aux RGB head exactly when the weights do.

    The head is training-only (decoding never runs it) and distillation drops it after the config was
    composed, so exports and checkpoints of distillation runs hold no aux head while their run config still
    names one. ``tensor_names``: the weights' tensor names (a state dict's keys).
    """
    import copy

    net_cfg = copy.deepcopy(dict(net_cfg))
    adapter_cfg = net_cfg.get("adapter")
    if isinstance(adapter_cfg, dict):
        net_cfg["adapter"] = {**adapter_cfg, "aux_rgb_head": any("aux_rgb_head." in k for k in tensor_names)}
    return net_cfg


def load_decoder(path: str | Path, device: str | torch.device = "cpu", latent: nn.Module | None = None,
                 build_latent: bool = True, *, release: str | Path | Release | None = None,
                 weights: str = "ema", text_encoder: str | nn.Module | None = None,
                 latent_path: str | Path | None = None) -> PiDDecoder:
    """Load a decoder from any weights file :mod:`pid.weights` reads.

    Args:
        path: our export / ``.ckpt``, a run folder of ``pid.train`` (its export) or a glob (its newest
            match, logged); a file written by ``pid.weights.export`` / ``convert`` (its preset beside it,
            ``<stem>.yaml``, or inside a ``.safetensors``; the log says which); or with ``release``: an
            official ``model_ema_bf16.pth``, full ``model.pth``, DCP folder, a ComfyUI file.
        latent: an already built latent space to reuse.
        build_latent: False loads only the latent's geometry (channels, down factor, noise form): enough to
            decode latents, without the encoder's weights (``decoder.encode`` is then unavailable). Release
            decoders default to the geometry unless ``latent`` is given.
        release: preset name, alias, official name or preset file (:mod:`pid.weights.release`).
        weights: "ema" (default) or "raw" for files holding both.
        text_encoder: a local Gemma-2 folder (or a built encoder) for ``decode(caption=...)``.
        latent_path: weights of a release's latent space (e.g. a local VAE folder), so that
            ``decoder.encode`` works; a preset found with the file builds its own embedded latent already.
            For a file of this project, the latent's weights in place of the path its run recorded.
            Either way the latent must be the one the network was trained on (its fingerprint,
            :mod:`pid.identity`): another one raises :class:`pid.identity.IdentityMismatch` naming both.
    """
    path = resolve_weights_path(path, "path", "PiD decoder",
                                "a pid_decoder.safetensors export, a run folder of pid.train, a .ckpt of "
                                "pid.train, or a released model_ema_bf16.pth / model.pth / DCP folder (with "
                                "release=)")
    wf = read_weights(path)
    release_found, own_latent = release is None and not wf.config, False
    if release_found:
        found = find_preset(path, wf.meta)
        if found is None:
            raise PiDConfigError(
                f"{path} carries no config ({wf.layout}) and no preset was found beside it "
                f"({Path(path).with_suffix('.yaml').name}) or inside it: name its network with release=... "
                "(a preset name or file, see conf/releases/)")
        release, where = found
        own_latent = build_latent and _has_latent_file(release)
        log.info("%s: network, latent space and sampler from %s", path, where)
    if release is not None:
        rel = load_release(release)
        with torch.device("meta"):  # refuse a file of another model before allocating the network
            load_weights(rel.build_net(), wf, weights=weights, config_key="ckpt", log_summary=False,
                         dry_run=True)
        net = rel.build_net()
        load_weights(net, wf, weights=weights, config_key="ckpt")
        if latent is None and latent_path is not None:
            latent = rel.build_latent(latent_path)
        latent = latent or rel.build_latent(geometry_only=not (release_found and own_latent))
        text = {"uses_text": bool(rel.text.get("states", True)), "max_length": net.txt_max_length,
                "dim": rel.net.get("txt_embed_dim"),
                "negative_prompt": rel.text.get("negative_prompt")}
        sampling, time, sr_scale = dict(rel.sampling), dict(rel.time), int(rel.sr_scale or 1)
        text_cfg = rel.text
    else:
        config = wf.config
        from hydra.utils import instantiate

        net = instantiate(net_config_for_weights(config["model"]["net"],
                                                 [k for group in wf.groups.values() for k in group]))
        load_weights(net, wf, weights=weights, config_key="ckpt")
        if latent is None and latent_path is not None:  # checked against the file's fingerprint below
            latent = _latent_for({**dict(config["latent"]), "path": str(latent_path)}, build=True)
        if latent is None:
            latent = _latent_for(dict(config["latent"]), build=build_latent)
            if build_latent and wf.groups.get("latent"):
                latent.load_state_dict(wf.groups["latent"], strict=True)
        model_cfg = config["model"]
        sampling = dict(model_cfg.get("sampling") or {})
        sampling.setdefault("sampler", "euler")  # exports written before the sampler was part of the config
        time, sr_scale = dict(model_cfg.get("time") or {}), int(config["sr_scale"])
        uses_text = bool((config.get("text") or {}).get("_target_"))
        text = {"uses_text": uses_text, "max_length": getattr(net, "txt_max_length", 0),
                "dim": model_cfg["net"].get("txt_embed_dim")}
        text_cfg = config.get("text") or {}
    encoder = _text_encoder(text_encoder, text_cfg) if text_encoder is not None else None
    from pid.identity import checked_decoder_identity  # refuses a latent space the network was not trained on

    identity = checked_decoder_identity(wf, latent, release, label=f"path={path}")
    decoder = PiDDecoder(net.eval(), latent.eval(), sr_scale, sampling=sampling, time=time, text=text,
                         text_encoder=encoder, release=None if release is None else str(release),
                         identity=identity)
    return decoder.to(device)


def _has_latent_file(rel: Release) -> bool:
    """Whether a preset's latent space names weights that are on disk (an exported embedded latent)."""
    cfg = rel.latent_config() if rel.kind != "prior" else None
    return bool(cfg and cfg.get("path") and Path(str(cfg["path"])).expanduser().exists())


def _text_encoder(source: str | nn.Module, text_cfg: dict) -> nn.Module:
    if isinstance(source, nn.Module):
        return source
    from pid.text.hf_encoder import HFTextEncoder

    return HFTextEncoder(str(source), max_length=int(text_cfg.get("max_length", 300)),
                         prefix=text_cfg.get("prefix"),
                         null_caption=text_cfg.get("negative_prompt") or text_cfg.get("null_caption") or "")


__all__ = ["PiDDecoder", "check_sigma", "export_decoder", "load_decoder"]
