"""VAE latent spaces through diffusers (docs/method.md §5).

FLUX.1 (also Z-Image), SD3, SDXL, FLUX.2 and Qwen-Image.

One class, ``DiffusersVAELatent``, covers them all; the per-model facts live in ``conf/latent/*.yaml``:

| latent | diffusers class        | latent as PiD sees it           | normalisation          | noising |
|--------|------------------------|---------------------------------|------------------------|---------|
| FLUX.1 | ``AutoencoderKL``      | 16 ch, 8×                       | (z − 0.1159)·0.3611    | flow    |
| SD3    | ``AutoencoderKL``      | 16 ch, 8×                       | (z − 0.0609)·1.5305    | flow    |
| SDXL   | ``AutoencoderKL``      | 4 ch, 8×                        | z·0.13025              | vp      |
| FLUX.2 | ``AutoencoderKLFlux2`` | 32 ch 8×, packed 2×2: 128 ch 16× | batch-norm, eps 1e-4  | flow    |
| Qwen-Image | ``AutoencoderKLQwenImage`` | 16 ch, 8× (one frame) | (z − mean_c) / std_c | flow |

The encoder's posterior *mean* is used (deterministic). For FLUX.2 the 2×2 packing follows
diffusers' ``Flux2Pipeline._patchify_latents`` (channel ``c·4 + 2·i + j`` holds pixel (i, j) of
channel c), the layout the adapter's ``latent_unpatchify=2`` undoes; its batch-norm statistics come
from the checkpoint (``bn.running_mean`` / ``bn.running_var``), not from the config.

Qwen-Image's VAE is the Wan-2.1-family video VAE used on single frames: images (B, 3, H, W) go in as
(B, 3, 1, H, W) and the latent (B, 16, 1, H/8, W/8) comes out with its frame axis dropped. Its
normalisation is per channel, ``(z − latents_mean[c]) / latents_std[c]``, with the two 16-value lists of
the VAE's ``config.json``, as diffusers' ``QwenImagePipeline`` / ``QwenImageImg2ImgPipeline`` apply them.

A VAE folder of another model is refused (:func:`check_vae_config`): the folder's own ``_class_name``,
``scaling_factor`` / ``shift_factor`` (AutoencoderKL) or ``latents_mean`` / ``latents_std`` (Qwen-Image)
must equal the configured latent space's, as must its channels and down factor (checked from the model),
else a :class:`PiDConfigError` names both. A single weights file without ``single_file_config`` carries no
config of its own, so only its geometry is checked.

Weights: a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a whole
pipeline folder with ``subfolder: vae``), a single original-format ``.safetensors`` file, or a hub id
for users with internet. A missing path raises one :class:`MissingWeightsError` naming
``latent.path``.

Native decoding (the cascade baseline) can be tiled for large sizes (``tiled_decode: true``), using
diffusers' overlapping-tile decoder with blended seams.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pid.latents.base import LatentSpace
from pid.utils.errors import MissingWeightsError, PiDConfigError

VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderKLQwenImage")
#: video VAEs used on single frames: (B, 3, 1, H, W) in, (B, C, 1, h, w) out
FRAME_VAE_CLASSES = ("AutoencoderKLQwenImage",)
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
        shift, scale: published constants, ``normalize(z) = (z − shift)·scale`` (AutoencoderKL; compared with
            the VAE config's ``shift_factor`` / ``scaling_factor``).
        latents_mean, latents_std: per-channel lists for AutoencoderKLQwenImage,
            ``normalize(z)[c] = (z[c] − latents_mean[c]) / latents_std[c]``; compared with the VAE config's
            lists, which are used (``None``: take the config's lists unchecked).
        noise_form: "flow" (flow-matching LDMs) or "vp" (SDXL).
        dtype: weights dtype: "float32" or "bfloat16" (float16 overflows in the SDXL VAE).
        subfolder: e.g. ``vae`` for a whole pipeline folder.
        vae_class: "AutoencoderKL", "AutoencoderKLFlux2" or "AutoencoderKLQwenImage".
        packing: p×p space-to-channel packing after the encoder (2 for FLUX.2, else 1).
        bn_stats: normalise with the checkpoint's batch-norm running stats (FLUX.2).
        tiled_decode: decode in overlapping tiles (native-decode baseline at large sizes).
        tile_size: tile side in *pixels* for tiled decoding (latent tile = tile_size / 8).
        config_key: the config key named in errors.
        name: short name for logs and errors.
        single_file_config: for a single-file ``path`` offline, a folder (or repo id online) with the VAE's
            ``config.json`` (diffusers otherwise looks the config up on the hub).
        vae: an already built diffusers model (tests, or callers that loaded it themselves); skips loading.

    Raises:
        MissingWeightsError: ``path`` is unset or missing.
        PiDConfigError: an unknown class/dtype/noise form, or a VAE that is not the configured one: another
            class, another geometry or other normalisation constants (the message names both values).
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
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        vae=None,
    ):
        super().__init__()
        self._check_options(vae_class, dtype, noise_form)
        self._name = name or f"{vae_class}_{channels}x{down_factor}"
        latents_mean, latents_std = self._latent_stats(vae_class, latents_mean, latents_std)
        where = str(path) if path not in (None, "") else "the given VAE"
        if vae is None:
            vae, own_config = self._load(
                path,
                vae_class,
                subfolder,
                getattr(torch, dtype),
                config_key,
                channels,
                down_factor,
                single_file_config,
                self._name,
            )
        else:
            own_config = {**dict(vae.config), "_class_name": type(vae).__name__}
            if next(vae.parameters()).dtype != getattr(torch, dtype):
                vae = vae.to(getattr(torch, dtype))
        self.vae = vae
        self.packing = int(packing)
        self._frames = type(vae).__name__ in FRAME_VAE_CLASSES
        raw_channels, vae_down = vae_geometry(vae)
        self._check_geometry(where, raw_channels, vae_down, channels, down_factor)
        self._channels, self._down, self._noise_form = channels, down_factor, noise_form
        if own_config is not None:
            configured = (
                {"latents_mean": latents_mean, "latents_std": latents_std}
                if vae_class in FRAME_VAE_CLASSES
                else {} if bn_stats else {"scaling_factor": scale, "shift_factor": shift}
            )
            check_vae_config(own_config, vae_class, configured, where, self._name)
        self.bn_stats = bool(bn_stats)
        self._set_normalisation(where, raw_channels, channels, shift, scale)
        self.tiled_decode = bool(tiled_decode)
        if self.tiled_decode:
            self.set_tiling(tile_size)
        self.freeze()

    # --- construction ----------------------------------------------------------------------------
    @staticmethod
    def _check_options(vae_class: str, dtype: str, noise_form: str) -> None:
        if vae_class not in VAE_CLASSES:
            raise PiDConfigError(f"latent.vae_class={vae_class!r}; expected one of {VAE_CLASSES}")
        if dtype not in DTYPES:
            raise PiDConfigError(f"latent.dtype={dtype!r}; expected one of {DTYPES}")
        if noise_form not in ("flow", "vp"):
            raise PiDConfigError(f"latent.noise_form={noise_form!r}; expected 'flow' or 'vp'")

    @staticmethod
    def _latent_stats(vae_class: str, latents_mean, latents_std):
        """The configured per-channel lists as floats (None stays None); only frame VAEs take them."""
        if (latents_mean is not None or latents_std is not None) and vae_class not in FRAME_VAE_CLASSES:
            raise PiDConfigError(
                f"latent.latents_mean / latent.latents_std are for {FRAME_VAE_CLASSES}; latent.vae_class="
                f"{vae_class!r} normalises with latent.shift / latent.scale"
            )
        latents_mean = None if latents_mean is None else [float(v) for v in latents_mean]
        latents_std = None if latents_std is None else [float(v) for v in latents_std]
        return latents_mean, latents_std

    def _check_geometry(self, where: str, raw_channels: int, vae_down: int, channels: int, down_factor: int):
        got = (raw_channels * self.packing**2, vae_down * self.packing)
        if got != (channels, down_factor):
            raise PiDConfigError(
                f"{where}: the VAE gives {raw_channels} channels at {vae_down}× down"
                + (
                    f", packed {self.packing}×{self.packing} → {got[0]} channels at {got[1]}×"
                    if self.packing > 1
                    else ""
                )
                + f", but the config says latent.channels={channels}, latent.down_factor={down_factor}"
            )

    def _set_normalisation(self, where: str, raw_channels: int, channels: int, shift: float, scale: float):
        """Fill the shift/scale buffers: batch-norm stats, the frame VAE's lists, or the constants."""
        vae = self.vae
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
        elif self._frames:
            mean, std = vae.config.latents_mean, vae.config.latents_std
            if len(mean) != raw_channels or len(std) != raw_channels or min(std) <= 0:
                raise PiDConfigError(
                    f"{where}: latents_mean / latents_std need {raw_channels} values (std > 0), got "
                    f"{len(mean)} / {len(std)}"
                )
            self.shift = torch.tensor(mean, dtype=torch.float32)
            self.scale = 1.0 / torch.tensor(std, dtype=torch.float32)
        else:
            self.shift.fill_(float(shift))
            self.scale.fill_(float(scale))

    # --- loading ---------------------------------------------------------------------------------
    @staticmethod
    def _load(
        path,
        vae_class,
        subfolder,
        torch_dtype,
        config_key,
        channels,
        down_factor,
        single_file_config=None,
        name="vae",
    ):
        """(model, its own config or None). The config is the model's (diffusers' defaults filled in, as its
        pipelines see it) with the ``_class_name`` its ``config.json`` declares, for a folder or a single file
        with ``single_file_config``; None when diffusers had to guess the config of a bare file. A declared
        class other than ``vae_class`` is refused before any weight is read."""
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
            "black-forest-labs/FLUX.2-dev/vae, Qwen/Qwen-Image/vae)",
        )
        cls = getattr(diffusers, vae_class)
        config_folder = str(Path(single_file_config).expanduser()) if single_file_config else None
        single = where.endswith(WEIGHT_SUFFIXES)
        if single and config_folder:
            declared = cls.load_config(config_folder)
        elif single:
            declared = None
        else:
            declared = cls.load_config(where, subfolder=subfolder)
        if declared is not None:
            check_vae_config(declared, vae_class, {}, where, name)
        if single:
            if vae_class == "AutoencoderKL":
                # offline, diffusers needs the model's config: pass a local folder with config.json
                kwargs = {"config": config_folder} if config_folder else {}
                vae = cls.from_single_file(where, torch_dtype=torch_dtype, **kwargs)
            elif vae_class == "AutoencoderKLFlux2":
                vae = _flux2_from_file(cls, where, torch_dtype, config_folder)
            else:
                vae = _diffusers_layout_from_file(cls, where, torch_dtype, config_folder)
        else:
            vae = cls.from_pretrained(where, subfolder=subfolder, torch_dtype=torch_dtype)
        if declared is None:
            return vae, None
        return vae, {**dict(vae.config), "_class_name": declared.get("_class_name")}

    def set_tiling(self, tile_size: int = 512, overlap: float = 0.25) -> None:
        """Decode in overlapping tiles of ``tile_size`` pixels (diffusers' blended tiled decoder); encoding
        stays untiled."""
        vae_down = vae_geometry(self.vae)[1]
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
        if self._frames:  # the Wan-family tiler: tile and stride in pixels
            stride = int(tile_size * (1 - overlap))
            self.vae.enable_tiling(int(tile_size), int(tile_size), stride, stride)
            self.tiled_decode = True
            return
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
        """Images (B, 3, H, W) in [-1, 1] → the encoder's posterior mean, packed: (B, C, H/f, W/f) float32.
        Frame VAEs (Qwen-Image) see one frame: (B, 3, 1, H, W) → (B, C, 1, h, w), frame axis dropped."""
        x = images.to(self._dtype())
        tiling, self.vae.use_tiling = self.vae.use_tiling, False  # tiles are for decoding only: exact latents
        try:
            mean = self.vae.encode(x.unsqueeze(2) if self._frames else x).latent_dist.mean
        finally:
            self.vae.use_tiling = tiling
        return self.pack((mean.squeeze(2) if self._frames else mean).float())

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        """The encoder side and the normalisation: the VAE's decoder does not change the latent."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("vae.decoder.", "vae.post_quant_conv."))}

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, C, h, w) → images (B, 3, h·f, w·f), float32, with the VAE's own decoder."""
        z = self.unpack(raw).to(self._dtype())
        if self._frames:
            return self.vae.decode(z.unsqueeze(2)).sample.squeeze(2).float()
        return self.vae.decode(z).sample.float()


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


def vae_geometry(vae) -> tuple[int, int]:
    """(raw latent channels, spatial down factor) of a diffusers VAE, from its config: ``latent_channels`` and
    2^(levels−1) for AutoencoderKL / AutoencoderKLFlux2; ``z_dim`` and ``spatial_compression_ratio`` for the
    Wan-family frame VAEs (AutoencoderKLQwenImage)."""
    config = vae.config
    if "z_dim" in config:
        down = getattr(vae, "spatial_compression_ratio", None) or 2 ** len(config.temperal_downsample)
        return int(config.z_dim), int(down)
    return int(config.latent_channels), 2 ** (len(config.block_out_channels) - 1)


def _same(a, b) -> bool:
    """Published constants are equal up to print rounding; a list equals a list of the same length."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    return math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-6)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        head = ", ".join(f"{float(v):g}" for v in value[:4])
        return f"[{head}{', …' if len(value) > 4 else ''}] ({len(value)} values)"
    return f"{float(value):g}"


CONFIG_KEYS = {"scaling_factor": "latent.scale", "shift_factor": "latent.shift",
               "latents_mean": "latent.latents_mean", "latents_std": "latent.latents_std"}


def check_vae_config(own: dict, vae_class: str, configured: dict, where: str, name: str) -> None:
    """Refuse a VAE that is not the configured latent space's.

    Args:
        own: the VAE's own config (a folder's ``config.json`` as diffusers reads it, with ``_class_name``);
            a missing ``shift_factor`` counts as 0, as diffusers' pipelines treat it.
        vae_class: the configured ``latent.vae_class``.
        configured: config-key → configured value, e.g. ``{"scaling_factor": 0.3611, "shift_factor": 0.1159}``
            or ``{"latents_mean": [...], "latents_std": [...]}``; a ``None`` value is not checked.
        where: the path named in the error; name: the latent config's name (``flux1``).

    Raises:
        PiDConfigError: another class, or any value off by more than 1e-4 relative; the message names the
            folder's values and the configured ones (with their config keys).
    """
    cls_name = own.get("_class_name")
    if cls_name and cls_name != vae_class:
        raise PiDConfigError(
            f"{where} holds a {cls_name}, but latent={name} expects latent.vae_class={vae_class}: point "
            f"latent.path at the {name} VAE, or pick the latent config of the model this VAE belongs to"
        )
    wrong = []
    for key, want in configured.items():
        if want is None:
            continue
        have = own.get(key)
        if have is None and key == "shift_factor":
            have = 0.0
        if have is None or not _same(have, want):
            wrong.append(key)
    if wrong:
        have = ", ".join(f"{k}={'missing' if own.get(k) is None else _show(own[k])}" for k in wrong)
        want = ", ".join(f"{CONFIG_KEYS.get(k, k)}={_show(configured[k])}" for k in wrong)
        raise PiDConfigError(
            f"{where}: this VAE's config has {have}, but latent={name} is configured with {want}: it is "
            f"another model's VAE (its latents would be normalised wrongly). Point latent.path at the {name} "
            "VAE, or pick the latent config of the model this VAE belongs to"
        )


def _diffusers_layout_from_file(cls, path: str, torch_dtype, config_folder: str | None = None):
    """One weights file in diffusers' own layout (a folder's ``diffusion_pytorch_model.safetensors``) →
    ``cls`` built from ``config_folder``'s config.json (else the class defaults); every tensor must match."""
    from safetensors.torch import load_file

    state = (
        load_file(path)
        if path.endswith(".safetensors")
        else torch.load(path, map_location="cpu", weights_only=True)
    )
    vae = cls.from_config(cls.load_config(config_folder)) if config_folder else cls()
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PiDConfigError(
            f"{path} does not match {cls.__name__}"
            + (f" with the config in {config_folder}" if config_folder else " (default config)")
            + f": missing {missing[:5]}, unexpected {unexpected[:5]}; give latent.single_file_config=<folder "
            "with the VAE's config.json>, or use the diffusers VAE folder"
        )
    return vae.to(torch_dtype)


def tiny_vae_config(
    vae_class: str = "AutoencoderKL", latent_channels: int = 4, levels: int = 4, **config
) -> dict:
    """A CPU-sized config of the same diffusers class (tests): 2^(levels−1)× down; ``config`` adds or
    replaces keys (``scaling_factor``, ``shift_factor``, ``latents_mean``, …)."""
    if vae_class in FRAME_VAE_CLASSES:
        return {
            "base_dim": 8,
            "z_dim": latent_channels,
            "dim_mult": [1] * levels,
            "num_res_blocks": 1,
            "temperal_downsample": [False] + [True] * (levels - 2),
            **config,
        }
    return {
        "block_out_channels": (8,) * levels,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "latent_channels": latent_channels,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "sample_size": 32,
        **config,
    }


__all__ = ["DiffusersVAELatent", "check_vae_config", "resolve_weights", "tiny_vae_config", "vae_geometry"]
