"""Checks that run before anything is built, so a misconfigured run fails in seconds, not after loading."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import MissingWeightsError, PiDConfigError


def check_latent_geometry(cfg: DictConfig) -> None:
    """The latent (``latent=…``), ``sr_scale`` and the backbone patch size must fit together.

    One latent cell covers r = sr_scale × (latent.down_factor / latent.packing) / patch_size patch cells;
    the adapter needs r = 2^k or 1/2^k. The low-res image (data.crop_size / sr_scale) must also be a
    multiple of the latent's down factor. Raises PiDConfigError saying why and what to change.
    """
    latent = cfg.get("latent") or {}
    net = OmegaConf.select(cfg, "model.net", default=None) or {}
    down, channels = latent.get("down_factor"), latent.get("channels")
    sr, patch = cfg.get("sr_scale"), net.get("patch_size")
    if down is None or sr is None:
        return
    name = latent.get("name") or str(latent.get("_target_", "?")).rsplit(".", 1)[-1]  # no name: its factory
    packing = int(latent.get("packing") or 1)
    if down % packing or (channels is not None and channels % (packing * packing)):
        raise PiDConfigError(f"latent {name}: packing={packing} must divide down_factor={down} and packing² "
                             f"must divide channels={channels}")
    if patch is not None and net.get("adapter") is not None:
        from pid.nn.adapter import latent_grid_ratio

        try:
            latent_grid_ratio(int(sr), int(down) // packing, int(patch))
        except ValueError as err:
            raise PiDConfigError(
                f"latent={name} (down factor {down // packing}) cannot be used with sr_scale={sr} and "
                f"model.net.patch_size={patch}: {err}") from None
    crop = OmegaConf.select(cfg, "data.crop_size", default=None)
    if isinstance(crop, int) and crop % (int(sr) * int(down)):
        raise PiDConfigError(
            f"data.crop_size={crop} with sr_scale={sr} gives a {crop / int(sr):g}-pixel low-res image, "
            f"which is not a multiple of the latent's down factor {down} ({name}): use a crop size that is a "
            f"multiple of {int(sr) * int(down)}")
    buckets = OmegaConf.select(cfg, "data.buckets", default=None) or {}
    multiple = buckets.get("multiple")
    square = buckets.get("kind", "single") == "square"
    if isinstance(multiple, int) and not square and multiple % (int(sr) * int(down)):
        raise PiDConfigError(
            f"data.buckets.multiple={multiple}: the aspect-ratio buckets have sides that are multiples of "
            f"{multiple} pixels, but with sr_scale={sr} the low-res image must be a multiple of the latent's "
            f"down factor {down} ({name}): set data.buckets.multiple to a multiple of {int(sr) * int(down)} "
            "(or data.buckets.kind=square)")


def _present(value) -> bool:
    if value in (None, "", "???"):
        return False
    path = Path(str(value)).expanduser()
    return path.exists()


def check_required_weights(cfg: DictConfig) -> None:
    """Every key listed in ``cfg.required_weights`` must point to an existing file or folder.

    Raises one MissingWeightsError naming every key still to set and what it expects. The cheap
    latent-geometry check (:func:`check_latent_geometry`) runs first, so a misconfigured combination
    fails before anything is looked up or loaded.
    """
    check_latent_geometry(cfg)
    required = cfg.get("required_weights") or {}
    missing = []
    for key, expected in required.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if not _present(value):
            shown = "unset" if value in (None, "", "???") else f"'{value}' does not exist"
            missing.append(f"  {key}  ({shown})\n      expected: {expected}")
    if missing:
        lines = "\n".join(missing)
        overrides = " ".join(f"{line.split()[0]}=/path/to/..." for line in missing)
        raise MissingWeightsError.with_message(
            f"This experiment needs weights that are not on disk:\n{lines}\n"
            f"Set them on the command line, e.g.  make train exp=<name> {overrides}",
            config_key=missing[0].split()[0])


def check_mandatory_values(cfg: DictConfig) -> None:
    """Keys left as ``???`` in the config must be set on the command line."""
    from pid.utils.errors import PiDConfigError

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise PiDConfigError("These config keys must be set: " + ", ".join(missing)
                             + "  (e.g. " + " ".join(f"{k}=..." for k in missing) + ")")


def check_config(cfg: DictConfig) -> None:
    """All checks that need nothing but the config."""
    check_required_weights(cfg)
    check_mandatory_values(cfg)
