"""NVIDIA's released PiD / PixelDiT files ↔ this project's names and constructor arguments.

Facts from the official code (nv-tlabs/PiD, ``pid/_src/networks``): the backbone (``PixDiT_T2I``) uses the
same parameter names as :class:`pid.nn.PixelDiT`; the latent adapter lives under ``lq_proj.*`` (ours:
``adapter.*``), its aux RGB head under ``lq_proj.lq_aux_rgb_head.*`` and the PiT gate under
``pit_lq_gate.*``. Released files prefix every name with ``net.`` (``net_ema.`` / ``fake_score.`` /
``discriminator.`` in full training checkpoints) and store ``log_alpha`` as 0-d tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from pid.utils.errors import PiDConfigError

# official network-name prefix -> ours, most specific first
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lq_proj.lq_aux_rgb_head.", "adapter.aux_rgb_head."),
    ("pit_lq_gate.", "adapter.pit_gate."),
    ("lq_proj.", "adapter."),
)

# official discriminator (Discriminator_ImageDiT) names -> ours (pid.nn.discriminator.FeatureDiscriminator)
DISCRIMINATOR_PREFIXES: tuple[tuple[str, str], ...] = (("cls_pred_heads.", "heads."),)

# official paths this project does not implement: the LQ *image* branch, REPA projector, encoder/decoder
UNIMPLEMENTED_PREFIXES: tuple[str, ...] = (
    "lq_proj.image_conv.",
    "lq_proj.merge.",
    "encoder_ed.",
    "decoder_ed.",
    "s_ed_",
    "repa",
)

# official gate names -> ours
GATES = {"sigma_aware_per_token": "per_token", "sigma_aware_per_token_per_dim": "per_token_per_channel"}


def to_project_name(name: str) -> str:
    """One official network parameter name (no ``net.`` prefix) → the project's name."""
    for old, new in KEY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def discriminator_to_project_name(name: str) -> str:
    """An official discriminator parameter name (no ``discriminator.`` prefix) → the project's."""
    for old, new in DISCRIMINATOR_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def to_official_name(name: str) -> str:
    """Inverse of :func:`to_project_name`."""
    for old, new in KEY_PREFIXES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def is_unimplemented(name: str) -> bool:
    """True for official parameters of paths this project does not build (LQ image branch, REPA, ED)."""
    return name.startswith(UNIMPLEMENTED_PREFIXES)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official ``PixDiT_T2I`` / ``PidNet`` state dict (optionally ``net.``-prefixed) to ours.

    Parameters of unimplemented paths (:data:`UNIMPLEMENTED_PREFIXES`) are dropped; use
    :func:`pid.weights.load_weights` to load files strictly with a report of what was skipped.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("net.").removeprefix("module.")
        if not is_unimplemented(key):
            out[to_project_name(key)] = value
    return out


# Constructor arguments of the official PixDiT_T2I / PidNet (nv-tlabs/PiD @ 2c8814c, pid/_src/networks).
BACKBONE_ARGS = frozenset({
    "in_channels", "num_groups", "hidden_size", "pixel_hidden_size", "pixel_attn_hidden_size",
    "pixel_num_groups", "patch_depth", "pixel_depth", "num_text_blocks", "patch_size", "txt_embed_dim",
    "txt_max_length", "use_text_rope", "text_rope_theta", "rope_mode", "rope_ref_h", "rope_ref_w",
    "repa_encoder_index", "enable_ed", "ed_compress_ratio", "ed_depth_per_stage", "ed_window_size",
    "ed_num_heads", "ed_hidden_size", "ed_use_token_shuffle",
})
ADAPTER_ARGS = frozenset({
    "lq_inject_mode", "lq_in_channels", "lq_latent_channels", "lq_hidden_dim", "lq_num_res_blocks",
    "lq_latent_unpatchify_factor", "lq_aux_rgb_head", "lq_aux_rgb_head_latent_block_idx",
    "lq_conv_padding_mode", "lq_gate_type", "lq_interval", "zero_init_lq", "train_lq_proj_only", "sr_scale",
    "latent_spatial_down_factor", "pit_lq_inject",
})
REQUIRED_ARGS = ("hidden_size", "num_groups", "patch_depth", "pixel_depth", "patch_size", "txt_embed_dim",
                 "txt_max_length", "pixel_hidden_size", "pixel_attn_hidden_size", "pixel_num_groups")
REQUIRED_ADAPTER_ARGS = ("lq_latent_channels", "lq_hidden_dim", "sr_scale", "latent_spatial_down_factor",
                         "lq_gate_type", "lq_conv_padding_mode", "pit_lq_inject", "lq_aux_rgb_head")


def net_config_from_official(cfg: dict[str, Any]) -> dict[str, Any]:
    """Official ``PidNet`` / ``PixDiT_T2I`` constructor arguments → ``pid.nn.pid_net.PiDNet`` config.

    Returns a Hydra-style dict (``_target_`` set; the adapter as a ``_partial_`` LatentAdapter, or None for
    PixelDiT). Raises :class:`PiDConfigError` for official options this project does not implement (the
    LQ image branch, the encoder/decoder path, a non-ControlNet injection, an aux head fed from a ResBlock),
    for an argument the official classes do not have (a misspelt key would silently take a default), and
    for a missing argument that sets the network's shape or semantics.
    """
    unknown = sorted(set(cfg) - BACKBONE_ARGS - ADAPTER_ARGS)
    if unknown:
        raise PiDConfigError(f"not official PidNet / PixDiT_T2I arguments: {unknown} (pass the "
                             "`net_config` of a release's config, e.g. cfg['net_config'] of *.config.json)")
    is_pid = any(k in cfg for k in ADAPTER_ARGS)
    missing = [k for k in REQUIRED_ARGS + (REQUIRED_ADAPTER_ARGS if is_pid else ()) if k not in cfg]
    if missing:
        raise PiDConfigError(f"official net config is missing {missing}")
    if cfg.get("enable_ed"):
        raise PiDConfigError(
            "official net config enables the encoder/decoder path (enable_ed), which pid does not implement"
        )
    out: dict[str, Any] = {"_target_": "pid.nn.pid_net.PiDNet"}
    for key in (
        "in_channels",
        "num_groups",
        "hidden_size",
        "pixel_hidden_size",
        "pixel_attn_hidden_size",
        "pixel_num_groups",
        "patch_depth",
        "pixel_depth",
        "patch_size",
        "txt_embed_dim",
        "txt_max_length",
        "use_text_rope",
        "text_rope_theta",
    ):
        if key in cfg:
            out[key] = cfg[key]
    # constructor defaults of the official classes (v1 releases set no RoPE arguments)
    out["rope_mode"] = cfg.get("rope_mode", "ntk_aware")
    out["rope_ref_h"] = int(cfg.get("rope_ref_h", 1024))
    out["rope_ref_w"] = int(cfg.get("rope_ref_w", 1024))
    if "lq_latent_channels" not in cfg:  # PixDiT_T2I: the pixel prior
        out["adapter"] = None
        return out
    if cfg.get("lq_in_channels", 0):
        raise PiDConfigError(
            "official net config uses the LQ image branch (lq_in_channels > 0), which pid does not implement"
        )
    if cfg.get("lq_inject_mode", "controlnet") != "controlnet":
        raise PiDConfigError(f"official lq_inject_mode {cfg['lq_inject_mode']!r} is not implemented")
    if cfg.get("lq_aux_rgb_head") and cfg.get("lq_aux_rgb_head_latent_block_idx", -1) > 0:
        raise PiDConfigError("official aux RGB head fed from a trunk ResBlock is not implemented")
    gate = cfg.get("lq_gate_type", "sigma_aware_per_token_per_dim")
    if gate not in GATES:
        raise PiDConfigError(f"official gate type {gate!r} is not one of {sorted(GATES)}")
    out.update(
        latent_channels=int(cfg["lq_latent_channels"]),
        latent_down=int(cfg["latent_spatial_down_factor"]),
        sr_scale=int(cfg["sr_scale"]),
        freeze_backbone=bool(cfg.get("train_lq_proj_only", False)),
    )
    out["adapter"] = {
        "_target_": "pid.nn.adapter.LatentAdapter",
        "_partial_": True,
        "width": int(cfg["lq_hidden_dim"]),
        "num_res_blocks": int(cfg.get("lq_num_res_blocks", 4)),
        "interval": int(cfg.get("lq_interval", 2)),
        "gate": GATES[gate],
        "padding_mode": cfg.get("lq_conv_padding_mode", "zeros"),
        "pit_injection": bool(cfg.get("pit_lq_inject", False)),
        "aux_rgb_head": bool(cfg.get("lq_aux_rgb_head", False)),
        "latent_unpatchify": int(cfg.get("lq_latent_unpatchify_factor", 1)),
        "drop_mode": "zero_latent",
    }
    return out
