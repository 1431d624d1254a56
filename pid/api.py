"""Public decode API: load a trained PiD decoder and decode latents (possibly still noisy) to images.

    from pid.api import load_decoder
    decoder = load_decoder("logs/quickstart/runs/<time>/pid_decoder.safetensors")
    images = decoder.decode(z, sigma=0.0)            # [-1, 1], sr_scale × the latent's image size
    images = decoder.decode(z_k, sigma=sigma_k)       # early exit: an LDM state after K of N steps

Files: the ``pid_decoder.safetensors`` that training exports (EMA weights + config) or a Lightning
``.ckpt`` (EMA weights when present). Tensors load weights-only; no code is executed from files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pid.utils.errors import MissingWeightsError, PiDConfigError

EXPORT_FORMAT = "pid-decoder-1"


@dataclass
class PiDDecoder:
    """A PiD network with its latent space and sampling defaults."""

    net: nn.Module
    latent: nn.Module
    sr_scale: int
    sampling: dict = field(default_factory=dict)
    time: dict = field(default_factory=dict)

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

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, sigma: float | torch.Tensor = 0.0, *, num_steps: int | None = None,
               latent_cfg: float | None = None, sampler: str | None = None, timesteps=None,
               generator: torch.Generator | None = None, frame: str = "train") -> torch.Tensor:
        """Decode a normalised latent at noise level σ to an image in [-1, 1].

        ``sampler`` defaults to the file's ``sampling.sampler`` ("euler" for teachers; "sde" or "euler" for
        DMD2 students, whose file also carries ``sampling.t_list``: then ``num_steps`` picks
        ``student_timesteps(t_list, num_steps)`` whatever the sampler). Explicit ``timesteps`` always win.

        ``frame``: "train" (default; also "flow"/"vp") when latent and σ are in the frame PiD was trained
        in, or "ve" for an Euler/VE-frame state z + σ_ve·ξ (SDXL's EulerDiscreteScheduler), converted
        exactly to the VP frame by dividing latent and σ by √(σ_ve² + 1) (see ``pid.early_exit``).
        """
        from pid.diffusion.schedules import student_timesteps
        from pid.sampling import decode_latent

        if frame == "ve":
            from pid.diffusion.noising import ve_to_vp

            latent, sigma = ve_to_vp(latent.float(), sigma)
        elif frame not in ("train", "flow", "vp"):
            raise ValueError(f"frame must be 'train', 'flow', 'vp' or 've', got {frame!r}")
        sampler = sampler or self.sampling.get("sampler", "euler")
        num_steps = num_steps or self.sampling.get("num_steps", 25)
        if timesteps is None and self.sampling.get("t_list"):
            timesteps = student_timesteps(self.sampling["t_list"], num_steps)
        return decode_latent(
            self.net, latent.to(self.device).float(), sigma, sr_scale=self.sr_scale,
            latent_down=self.latent.down_factor, num_steps=num_steps,
            latent_cfg=self.sampling.get("latent_cfg", 1.0) if latent_cfg is None else latent_cfg,
            shift_base=self.time.get("shift_base", 6.0), shift_ref_size=self.time.get("shift_ref_size", 2048),
            generator=generator, sampler=sampler, timesteps=timesteps)


def _net_and_latent(config: dict, build_latent: bool = True) -> tuple[nn.Module, nn.Module | None]:
    from hydra.utils import instantiate

    net_cfg = dict(config["model"]["net"])
    latent_cfg = dict(config["latent"])
    if not build_latent:
        return instantiate(net_cfg), None
    if latent_cfg.get("_target_", "").endswith("embedded_latent"):
        latent_cfg["fit_if_missing"] = True  # its tensors travel in the file
    return instantiate(net_cfg), instantiate(latent_cfg)


def export_decoder(module, path: str | Path, ema=None, net_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the network (EMA weights when an EMA callback is given), small latents and the config.

    ``net_state``: the network's (EMA) weights gathered already (``pid.lit.ema.averaged_net_state``, which
    FSDP runs need: there every rank holds a shard); without it the state is taken here the same way."""
    from safetensors.torch import save_file

    from pid.lit.ema import averaged_net_state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if net_state is None:
        net_state = averaged_net_state(None, module, ema)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net_state.items()}
    if getattr(module.latent, "store_in_checkpoint", False):
        tensors.update({f"latent.{k}": v.detach().cpu().contiguous() for k, v in module.latent.state_dict().items()})
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(module.run_config or {}),
            "sr_scale": str(module.sr_scale), "ema": str(ema is not None)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors with 'net.'/'latent.' prefixes, run config) from an export or a Lightning checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EXPORT_FORMAT:
                raise PiDConfigError(f"{path} is not a PiD decoder export (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return tensors, json.loads(meta["config"])
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if "pid" not in ckpt or not ckpt["pid"].get("config"):
        raise PiDConfigError(f"{path} is not a checkpoint written by `pid.train` (no 'pid' section)")
    tensors = dict(ckpt["state_dict"])
    for k, v in (ckpt.get("ema") or {}).get("shadow", {}).items():
        tensors[f"net.{k}"] = v
    return tensors, ckpt["pid"]["config"]


def load_decoder(path: str | Path, device: str | torch.device = "cpu", latent: nn.Module | None = None,
                 build_latent: bool = True) -> PiDDecoder:
    """Load a decoder from an export or checkpoint; pass ``latent`` to reuse an already loaded latent space.

    ``build_latent=False`` loads only the latent's geometry (channels, down factor, noise form): enough to
    decode latents with PiD, without the latent encoder's weights (``decoder.encode`` is then unavailable).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError("PiD decoder", "ckpt", "a pid_decoder.safetensors export or a .ckpt of pid.train",
                                  path=path)
    tensors, config = _read(path)
    net, built_latent = _net_and_latent(config, build_latent=build_latent and latent is None)
    geometry_only = latent is None and built_latent is None
    if geometry_only:
        from pid.latents.geometry import LatentGeometry

        latent = LatentGeometry.from_config(dict(config["latent"]))
    latent = latent or built_latent
    net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    net.load_state_dict(net_state, strict=True)
    latent_state = {k[7:]: v for k, v in tensors.items() if k.startswith("latent.")}
    if latent_state and not geometry_only:
        latent.load_state_dict(latent_state, strict=True)
    model_cfg = config["model"]
    decoder = PiDDecoder(net.eval(), latent.eval(), int(config["sr_scale"]),
                         sampling=dict(model_cfg.get("sampling") or {}), time=dict(model_cfg.get("time") or {}))
    return decoder.to(device)
