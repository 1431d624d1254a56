"""VAE latent spaces through diffusers: FLUX.1 (also Z-Image), SD3, SDXL and FLUX.2 (SPEC §5).

One class, ``DiffusersVAELatent``, covers them all; the per-model facts live in ``conf/latent/*.yaml``:

| latent | diffusers class        | latent as PiD sees it           | normalisation          | noising |
|--------|------------------------|---------------------------------|------------------------|---------|
| FLUX.1 | ``AutoencoderKL``      | 16 ch, 8×                       | (z − 0.1159)·0.3611    | flow    |
| SD3    | ``AutoencoderKL``      | 16 ch, 8×                       | (z − 0.0609)·1.5305    | flow    |
| SDXL   | ``AutoencoderKL``      | 4 ch, 8×                        | z·0.13025              | vp      |
| FLUX.2 | ``AutoencoderKLFlux2`` | 32 ch 8×, packed 2×2: 128 ch 16× | batch-norm, eps 1e-4  | flow    |

The encoder's posterior *mean* is used (deterministic). For FLUX.2 the 2×2 packing follows
diffusers' ``Flux2Pipeline._patchify_latents`` (channel ``c·4 + 2·i + j`` holds pixel (i, j) of
channel c), the layout the adapter's ``latent_unpatchify=2`` undoes; its batch-norm statistics come
from the checkpoint (``bn.running_mean`` / ``bn.running_var``), not from the config.

Weights: a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a whole
pipeline folder with ``subfolder: vae``), a single original-format ``.safetensors`` file, or a hub id
for users with internet. A missing path raises one :class:`MissingWeightsError` naming
``latent.path``.

Native decoding (the cascade baseline) can be tiled for large sizes (``tiled_decode: true``), using
diffusers' overlapping-tile decoder with blended seams.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pid.latents.base import LatentSpace
from pid.utils.errors import MissingWeightsError, PiDConfigError

VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2")
DTYPES = ("float32", "bfloat16", "float16")


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _is_hub_id(path: str) -> bool:
    """``owner/name`` (e.g. ``black-forest-labs/FLUX.1-dev``), for users with internet."""
    return (
        path.count("/") == 1 and not path.startswith((".", "/", "~")) and not path.endswith(WEIGHT_SUFFIXES)
    )


def resolve_weights(path, config_key: str, what: str, expected: str, source: str | None = None) -> str:
    """A local path (expanded) or a hub id; else one MissingWeightsError naming ``config_key``."""
    if path not in (None, "", "???"):
        local = Path(str(path)).expanduser()
        if local.exists():
            return str(local)
        if _is_hub_id(str(path)):
            return str(path)
    raise MissingWeightsError(what, config_key, expected, source=source, path=path or None)


class DiffusersVAELatent(LatentSpace):
    """A frozen diffusers VAE with its published normalisation.

    Args:
        path: diffusers folder, single-file checkpoint (``.safetensors``/``.ckpt``/``.pt``) or hub id.
        channels, down_factor: the latent geometry *as the decoder network sees it* (after packing),
            checked against the loaded model: 128 / 16 for FLUX.2, 16 / 8 for FLUX.1 and SD3, 4 / 8 for SDXL.
        shift, scale: published constants, ``normalize(z) = (z − shift)·scale`` (unused with bn_stats).
        noise_form: "flow" (flow-matching LDMs) or "vp" (SDXL).
        dtype: weights dtype: "float32" or "bfloat16" (float16 overflows in the SDXL VAE).
        subfolder: e.g. ``vae`` for a whole pipeline folder.
        vae_class: "AutoencoderKL" or "AutoencoderKLFlux2".
        packing: p×p space-to-channel packing after the encoder (2 for FLUX.2, else 1).
        bn_stats: normalise with the checkpoint's batch-norm running stats (FLUX.2).
        tiled_decode: decode in overlapping tiles (native-decode baseline at large sizes).
        tile_size: tile side in *pixels* for tiled decoding (latent tile = tile_size / 8).
        config_key: the config key named in errors.
        name: short name for logs and errors.
        single_file_config: for a single-file ``path`` offline, a folder (or repo id online) with the VAE's
            ``config.json`` (diffusers otherwise looks the config up on the hub).
        vae: an already built diffusers model (tests, or callers that loaded it themselves); skips loading.
    """

    def __init__(
        self,
        path: str | None = None,
        channels: int = 16,
        down_factor: int = 8,
        shift: float = 0.0,
        scale: float = 1.0,
        noise_form: str = "flow",
        dtype: str = "bfloat16",
        subfolder: str | None = None,
        vae_class: str = "AutoencoderKL",
        packing: int = 1,
        bn_stats: bool = False,
        tiled_decode: bool = False,
        tile_size: int = 512,
        config_key: str = "latent.path",
        name: str | None = None,
        single_file_config: str | None = None,
        vae=None,
    ):
        super().__init__()
        if vae_class not in VAE_CLASSES:
            raise PiDConfigError(f"latent.vae_class={vae_class!r}; expected one of {VAE_CLASSES}")
        if dtype not in DTYPES:
            raise PiDConfigError(f"latent.dtype={dtype!r}; expected one of {DTYPES}")
        if noise_form not in ("flow", "vp"):
            raise PiDConfigError(f"latent.noise_form={noise_form!r}; expected 'flow' or 'vp'")
        self._name = name or f"{vae_class}_{channels}x{down_factor}"
        if vae is None:
            vae = self._load(
                path,
                vae_class,
                subfolder,
                getattr(torch, dtype),
                config_key,
                channels,
                down_factor,
                single_file_config,
            )
        elif next(vae.parameters()).dtype != getattr(torch, dtype):
            vae = vae.to(getattr(torch, dtype))
        self.vae = vae
        self.packing = int(packing)
        raw_channels = int(vae.config.latent_channels)
        vae_down = 2 ** (len(vae.config.block_out_channels) - 1)
        got = (raw_channels * self.packing**2, vae_down * self.packing)
        if got != (channels, down_factor):
            raise PiDConfigError(
                f"{path}: the VAE gives {raw_channels} channels at {vae_down}× down"
                + (
                    f", packed {self.packing}×{self.packing} → {got[0]} channels at {got[1]}×"
                    if self.packing > 1
                    else ""
                )
                + f", but the config says latent.channels={channels}, latent.down_factor={down_factor}"
            )
        self._channels, self._down, self._noise_form = channels, down_factor, noise_form
        self.bn_stats = bool(bn_stats)
        if self.bn_stats:
            bn = getattr(vae, "bn", None)
            if bn is None or bn.running_mean is None:
                raise PiDConfigError(
                    f"latent.bn_stats=true but {type(vae).__name__} has no batch-norm statistics"
                )
            if bn.running_mean.numel() != channels:
                raise PiDConfigError(
                    f"batch-norm statistics have {bn.running_mean.numel()} channels, latent has {channels}"
                )
            # normalize(z) = (z − mean) / sqrt(var + eps): per-channel shift/scale buffers
            self.shift = bn.running_mean.detach().float().clone()
            self.scale = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
        else:
            self.shift.fill_(float(shift))
            self.scale.fill_(float(scale))
        self.tiled_decode = bool(tiled_decode)
        if self.tiled_decode:
            self.set_tiling(tile_size)
        self.freeze()

    # --- loading ---------------------------------------------------------------------------------
    @staticmethod
    def _load(
        path, vae_class, subfolder, torch_dtype, config_key, channels, down_factor, single_file_config=None
    ):
        import diffusers

        where = resolve_weights(
            path,
            config_key,
            f"VAE latent ({channels} ch, {down_factor}×)",
            "a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors), a pipeline "
            "folder with "
            "latent.subfolder=vae, or a single .safetensors file",
            source="the LDM's release (e.g. black-forest-labs/FLUX.1-dev/vae, "
            "stabilityai/stable-diffusion-3-medium-diffusers/vae, madebyollin/sdxl-vae-fp16-fix, "
            "black-forest-labs/FLUX.2-dev/vae)",
        )
        cls = getattr(diffusers, vae_class)
        if where.endswith(WEIGHT_SUFFIXES):
            if vae_class == "AutoencoderKL":
                # offline, diffusers needs the model's config: pass a local folder with config.json
                kwargs = {"config": str(Path(single_file_config).expanduser())} if single_file_config else {}
                return cls.from_single_file(where, torch_dtype=torch_dtype, **kwargs)
            return _flux2_from_file(cls, where, torch_dtype, single_file_config)
        return cls.from_pretrained(where, subfolder=subfolder, torch_dtype=torch_dtype)

    def set_tiling(self, tile_size: int = 512, overlap: float = 0.25) -> None:
        """Decode in overlapping tiles of ``tile_size`` pixels (diffusers' blended tiled decoder); encoding
        stays untiled."""
        vae_down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        lat = tile_size / vae_down
        # diffusers' tiles only tile the image exactly when stride and blend are whole latent/pixel counts
        if (
            lat != int(lat)
            or lat * (1 - overlap) != int(lat * (1 - overlap))
            or lat * overlap != int(lat * overlap)
        ):
            raise PiDConfigError(
                f"latent.tile_size={tile_size}: use a multiple of {int(vae_down / overlap)} pixels "
                f"(the VAE's {vae_down}× down with {overlap:g} overlap)"
            )
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = int(tile_size)
        self.vae.tile_latent_min_size = int(tile_size) // vae_down
        self.vae.tile_overlap_factor = float(overlap)
        self.tiled_decode = True

    # --- packing (FLUX.2) ------------------------------------------------------------------------
    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, C·p², h/p, w/p); channel c·p² + i·p + j holds pixel (i, j) of channel c."""
        p = self.packing
        if p == 1:
            return z
        b, c, h, w = z.shape
        return (
            z.view(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)
        )

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack`."""
        p = self.packing
        if p == 1:
            return z
        b, c, h, w = z.shape
        return (
            z.view(b, c // (p * p), p, p, h, w)
            .permute(0, 1, 4, 2, 5, 3)
            .reshape(b, c // (p * p), h * p, w * p)
        )

    # --- the two maps ----------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        tiling, self.vae.use_tiling = self.vae.use_tiling, False  # tiles are for decoding only: exact latents
        try:
            mean = self.vae.encode(images.to(self._dtype())).latent_dist.mean
        finally:
            self.vae.use_tiling = tiling
        return self.pack(mean.float())

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.unpack(raw).to(self._dtype())).sample.float()


def _flux2_from_file(cls, path: str, torch_dtype, config_folder: str | None = None):
    """One FLUX.2 VAE file → ``AutoencoderKLFlux2`` (the default FLUX.2 config, or ``config_folder``'s).

    Accepts diffusers-layout weights and BFL's original ``ae.safetensors`` layout: its encoder/decoder
    follow the LDM VAE naming that diffusers' converter maps, once the 1×1 ``quant_conv`` /
    ``post_quant_conv`` (inside the encoder/decoder there) are moved to the top level; the batch-norm
    statistics (``bn.*``) keep their names.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    state = (
        load_file(path)
        if path.endswith(".safetensors")
        else torch.load(path, map_location="cpu", weights_only=True)
    )
    if config_folder:
        vae = cls.from_config(cls.load_config(str(Path(config_folder).expanduser())))
    else:
        vae = cls()
    bn = {k: v for k, v in state.items() if k.startswith("bn.")}
    rest = {k: v for k, v in state.items() if not k.startswith("bn.")}
    if any(k.startswith("encoder.down.") for k in rest):  # original layout
        moved = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}
        for old, new in moved.items():
            rest = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in rest.items()}
        rest = convert_ldm_vae_checkpoint(rest, dict(vae.config))
    missing, unexpected = vae.load_state_dict({**rest, **bn}, strict=False)
    missing = [k for k in missing if "num_batches_tracked" not in k]
    if missing or unexpected:
        raise PiDConfigError(
            f"{path} does not look like a FLUX.2 VAE checkpoint: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return vae.to(torch_dtype)


def tiny_vae_config(vae_class: str = "AutoencoderKL", latent_channels: int = 4, levels: int = 4) -> dict:
    """A CPU-sized config of the same diffusers class (tests): 2^(levels−1)× down."""
    return {
        "block_out_channels": (8,) * levels,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "latent_channels": latent_channels,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "sample_size": 32,
    }


__all__ = ["DiffusersVAELatent", "resolve_weights", "tiny_vae_config"]
