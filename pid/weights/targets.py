"""Where an exported model runs, and what each place can run: one contract per export target.

``python -m pid.weights.export`` and ``python -m pid.weights.convert`` write a model for one *target*:

==============  ==========================================================================================
``official``    NVIDIA's own code (nv-tlabs/PiD @ 2c8814c: ``PidNet`` / ``PixDiT_T2I`` built from a config,
                its 4-step student sampler or the teacher's DPM-Solver++ with text CFG). Any network size the
                official constructor takes; ``net.`` + official names, 0-d ``log_alpha``.
``comfyui``     ComfyUI's native PiD nodes (``0f1fa67a``; PRs 14103, 14894). ComfyUI reads only the adapter's
                width, latent channels, gate count and v1/v1.5 flavour from the file and builds NVIDIA's
                full-size backbone otherwise; it samples 4 re-noising steps (``lcm``, shift 1.5, cfg 1).
``invokeai``    InvokeAI's PiD decoder (``8e71a8a5``; PRs 9281/9460/9474): full-size **v1** students only,
                exactly 456 keys, adapter width 512, latent channels 4/16/128; NVIDIA's 4-step SDE.
``pid``         this project: every model it trains, read back by :func:`pid.api.load_decoder`.
==============  ==========================================================================================

All three outside consumers read the network output as the velocity ``v = ε − x₀`` of pixel-space flow
matching and condition on caption states (Gemma-2-2B-it, 2304 × 300 in ComfyUI and InvokeAI). A model
that differs in any of what a target fixes cannot run there correctly: :func:`check` refuses it, naming
the setting and the ways on; where it runs but differently (a teacher in a 4-step template) it warns.

Sources of the facts: ``shared/ecosystem/SPEC.md`` and ``FACTS.md`` (ComfyUI ``comfy/model_detection.py``
507–550, ``comfy/supported_models.py`` 1263–1294; InvokeAI ``backend/pid/decode.py``
``_PID_SR4X_BASE``/``_PER_BACKBONE``, ``configs/pid_decoder.py``) and ``shared/official/keys/``; the tests
compare the key sets built here with those manifests.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from pid.utils.errors import PiDConfigError
from pid.weights import official

#: NVIDIA's distilled students sample on this t-list (x₀ = x − t·v, re-noise to the next t, clamp).
OFFICIAL_T_LIST = (0.999, 0.866, 0.634, 0.342)

#: NVIDIA's full-size backbone (every release; ComfyUI's and InvokeAI's fixed build), official argument names.
FULL_SIZE = {
    "in_channels": 3, "num_groups": 24, "hidden_size": 1536, "pixel_hidden_size": 16,
    "pixel_attn_hidden_size": 1152, "pixel_num_groups": 16, "patch_depth": 14, "pixel_depth": 2,
    "patch_size": 16, "txt_embed_dim": 2304, "txt_max_length": 300, "use_text_rope": True,
    "text_rope_theta": 10000.0, "rope_mode": "ntk_aware", "sr_scale": 4, "lq_num_res_blocks": 4,
    "lq_latent_unpatchify_factor": 1,
}

#: official argument → the training config key that sets it (what an error tells a user to change).
CONFIG_KEYS = {
    "in_channels": "model.net.in_channels", "num_groups": "model.net.num_groups",
    "hidden_size": "model.net.hidden_size", "pixel_hidden_size": "model.net.pixel_hidden_size",
    "pixel_attn_hidden_size": "model.net.pixel_attn_hidden_size",
    "pixel_num_groups": "model.net.pixel_num_groups", "patch_depth": "model.net.patch_depth",
    "pixel_depth": "model.net.pixel_depth", "patch_size": "model.net.patch_size",
    "txt_embed_dim": "model.net.txt_embed_dim (the text encoder's width)",
    "txt_max_length": "model.net.txt_max_length", "use_text_rope": "model.net.use_text_rope",
    "text_rope_theta": "model.net.text_rope_theta", "rope_mode": "model.net.rope_mode",
    "rope_ref_h": "model.net.rope_ref_h", "rope_ref_w": "model.net.rope_ref_w", "sr_scale": "sr_scale",
    "lq_latent_channels": "latent (its channels)", "latent_spatial_down_factor": "latent (its down factor)",
    "lq_hidden_dim": "model.net.adapter.width", "lq_num_res_blocks": "model.net.adapter.num_res_blocks",
    "lq_interval": "model.net.adapter.interval", "lq_gate_type": "model.net.adapter.gate",
    "lq_conv_padding_mode": "model.net.adapter.padding_mode",
    "pit_lq_inject": "model.net.adapter.pit_injection",
    "lq_latent_unpatchify_factor": "model.net.adapter.latent_unpatchify (the latent's packing)",
}
#: settings that decide what a network computes, compared between a model and what a consumer builds
SEMANTIC_ARGS = tuple(k for k in CONFIG_KEYS)


@dataclass(frozen=True)
class Target:
    """What one place that runs PiD models accepts (see the module docstring for the four targets).

    ``predictions``: output parameterisations it runs (None: any); ``text``: "any" (caption states or
    none), "states" (caption states of the network's own width) or "gemma2" (Gemma-2-2B-it, 2304 × 300);
    ``architecture``: "any", "official" (whatever the official constructor takes) or "comfyui" /
    "invokeai" (the consumer's fixed build, :func:`expected_args`); ``sampler``: the consumer's sampler
    in words; ``aux_head``: whether the file keeps the teacher-only aux RGB head; ``suffixes``: files it
    loads; ``latents``: latent spaces its nodes produce (None: any).
    """

    name: str
    consumer: str
    predictions: tuple[str, ...] | None
    text: str
    architecture: str
    sampler: str
    aux_head: bool
    suffixes: tuple[str, ...] = (".pth", ".safetensors")
    latents: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


TARGETS: dict[str, Target] = {
    "official": Target(
        "official", "NVIDIA's PiD code", ("v",), "states", "official",
        "4-step SDE on t = [0.999, 0.866, 0.634, 0.342] (students); DPM-Solver++(2M) with text CFG 5 "
        "(teachers)", aux_head=True),
    "comfyui": Target(
        "comfyui", "ComfyUI", ("v",), "gemma2", "comfyui",
        "4 re-noising steps (sampler lcm, scheduler simple, shift 1.5: σ = 1, 0.818, 0.6, 0.333), cfg 1",
        aux_head=False, latents=("flux1", "flux2", "sd3", "sdxl", "qwenimage")),
    "invokeai": Target(
        "invokeai", "InvokeAI", ("v",), "gemma2", "invokeai",
        "NVIDIA's 4-step SDE (1–4 steps), no guidance", aux_head=False,
        latents=("flux1", "flux2", "sd3", "sdxl", "qwenimage"),
        notes=("InvokeAI feeds its PiD nodes the de-normalised latent (z / scale + shift), where NVIDIA and "
               "ComfyUI feed the normalised one; decode quality there depends on that convention, not on "
               "the file",)),
    "pid": Target("pid", "pid", None, "any", "any", "the model's own sampler and defaults", aux_head=True),
}


class ContractError(PiDConfigError):
    """A model the chosen target cannot run correctly; the message names each setting and the ways on."""


@dataclass
class Verdict:
    """What :func:`check` found: ``errors`` (the target cannot run the model correctly), ``warnings`` (it
    runs, differently from pid) and ``notes`` (said in the log)."""

    target: Target
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ways: list[str] = field(default_factory=list)

    def raise_if_refused(self, target_option: str = "--target") -> None:
        """Raise :class:`ContractError` listing every error and the ways on; ``target_option`` is how the
        caller chooses a target (``--target`` on the command line, ``target=`` in Python)."""
        if not self.errors:
            return
        ways = list(dict.fromkeys(self.ways + [f"export with {_option(target_option, 'pid')} (pid decodes "
                                                "it as trained; the file is for pid only)"]))
        raise ContractError(
            f"{_option(target_option, self.target.name)}: {self.target.consumer} cannot run this model "
            "correctly:\n" + "\n".join(f"  - {e}" for e in self.errors)
            + "\nWays on:\n" + "\n".join(f"  - {w}" for w in ways))


def _option(option: str, name: str) -> str:
    return f"{option}'{name}'" if option.endswith("=") else f"{option} {name}"


def get_target(name: str, option: str = "--target") -> Target:
    """The :class:`Target` called ``name``; an unknown name raises naming ``option`` and the choices."""
    if name not in TARGETS:
        raise PiDConfigError(f"{_option(option, str(name))}: unknown export target; choose one of "
                             f"{', '.join(TARGETS)}")
    return TARGETS[name]


# ------------------------------------------------------------------------------------------ model facts
@dataclass
class ModelFacts:
    """What a target's contract is checked against.

    ``net``: the model's ``model.net`` config (project form; None when only the file's tensors are known,
    e.g. an official file without a preset); ``shapes``: official tensor name (no prefix) → shape of the
    file to be written; ``kind``: "student", "teacher" or "prior"; ``uses_text``: trained with caption
    states; ``text_encoder``: the text config's name or path, when known; ``sampling``; ``latent``: the
    latent config (a conf/latent name or dict); ``source``: where the facts come from (said in messages).
    """

    shapes: dict[str, tuple[int, ...]]
    net: dict[str, Any] | None = None
    kind: str = "student"
    uses_text: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)
    latent: Any = None
    source: str = ""


def _defaults(fn) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def official_args(net: dict[str, Any]) -> dict[str, Any]:
    """A project ``model.net`` config → the official ``PidNet`` / ``PixDiT_T2I`` constructor arguments.

    The inverse of :func:`pid.weights.official.net_config_from_official` on the arguments that decide what
    the network computes (:data:`CONFIG_KEYS`), with the project classes' defaults filled in. Options the
    official classes do not have are returned under ``"_unofficial"`` (name → value) when they differ from
    the official behaviour (an output other than velocity, another MLP ratio or timestep scale).
    """
    from pid.nn.adapter import LatentAdapter
    from pid.nn.pid_net import PiDNet
    from pid.nn.pixel_dit import PixelDiT

    cfg = {**_defaults(PixelDiT.__init__), **_defaults(PiDNet.__init__), **dict(net)}
    out: dict[str, Any] = {k: cfg[k] for k in (
        "in_channels", "num_groups", "hidden_size", "pixel_hidden_size", "patch_depth", "pixel_depth",
        "patch_size", "txt_embed_dim", "txt_max_length", "use_text_rope", "rope_mode")}
    out["text_rope_theta"] = float(cfg["text_rope_theta"])
    out["pixel_attn_hidden_size"] = cfg.get("pixel_attn_hidden_size") or cfg["hidden_size"]
    out["pixel_num_groups"] = cfg.get("pixel_num_groups") or cfg["num_groups"]
    out["rope_ref_h"], out["rope_ref_w"] = int(cfg["rope_ref_h"]), int(cfg["rope_ref_w"])
    unofficial = {}
    for key, want in (("prediction", "v"), ("mlp_ratio", 4.0), ("pixel_mlp_ratio", 4.0),
                      ("timestep_scale", 1000.0)):
        if cfg.get(key, want) != want:
            unofficial[key] = cfg[key]
    adapter = cfg.get("adapter")
    if adapter:
        a = {**_defaults(LatentAdapter.__init__), **dict(adapter)}
        gates = {v: k for k, v in official.GATES.items()}
        out.update(
            sr_scale=int(cfg["sr_scale"]), lq_latent_channels=int(cfg["latent_channels"]),
            latent_spatial_down_factor=int(cfg["latent_down"]), lq_hidden_dim=int(a["width"]),
            lq_num_res_blocks=int(a["num_res_blocks"]), lq_interval=int(a["interval"]),
            lq_gate_type=gates.get(a["gate"], a["gate"]), lq_conv_padding_mode=a["padding_mode"],
            pit_lq_inject=bool(a["pit_injection"]), lq_aux_rgb_head=bool(a["aux_rgb_head"]),
            lq_latent_unpatchify_factor=int(a["latent_unpatchify"]))
    out["_unofficial"] = unofficial
    return out


# -------------------------------------------------------------------------------- what consumers build
def _num_gates(shapes: dict[str, tuple[int, ...]]) -> int:
    return len({k.split(".")[2] for k in shapes if k.startswith("lq_proj.gate_modules.")})


def comfyui_args(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The official-named arguments ComfyUI builds a PiD network with for a file of these tensor shapes.

    ComfyUI's detection (``comfy/model_detection.py`` @0f1fa67a, PiD branch): adapter width and latent
    channels from ``lq_proj.latent_proj.0.weight``, the injection interval from the gate count, v1.5 iff
    ``lq_proj.pit_head.weight`` exists; everything else fixed. Raises :class:`PiDConfigError` for what it
    refuses (no adapter; v1.5 with other than 16 or 32 input channels).
    """
    conv = shapes.get("lq_proj.latent_proj.0.weight")
    if conv is None:
        raise PiDConfigError("ComfyUI detects a PiD file by lq_proj.latent_proj.0.weight, which this model "
                             "lacks (a pixel prior without the latent adapter is not a decoder)")
    width, in_ch = int(conv[0]), int(conv[1])
    n = max(_num_gates(shapes), 1)
    args = {**FULL_SIZE, "lq_hidden_dim": width, "lq_interval": (14 + n - 1) // n}
    if "lq_proj.pit_head.weight" in shapes:
        if in_ch == 16:
            args.update(lq_latent_channels=16, latent_spatial_down_factor=8, lq_latent_unpatchify_factor=1)
        elif in_ch == 32:
            args.update(lq_latent_channels=128, latent_spatial_down_factor=16, lq_latent_unpatchify_factor=2)
        else:
            raise PiDConfigError(f"ComfyUI builds PiD v1.5 only for 16 (FLUX.1, Qwen-Image) or 32 (FLUX.2 "
                                 f"unpacked) adapter input channels; this model has {in_ch}")
        per_token = int(shapes.get("lq_proj.gate_modules.0.content_proj.weight", (0,))[0]) == 1
        args.update(lq_conv_padding_mode="replicate", pit_lq_inject=True, rope_ref_h=2048, rope_ref_w=2048,
                    lq_gate_type="sigma_aware_per_token" if per_token else "sigma_aware_per_token_per_dim")
    else:
        args.update(lq_latent_channels=in_ch, latent_spatial_down_factor=16 if in_ch >= 64 else 8,
                    lq_conv_padding_mode="zeros", pit_lq_inject=False, rope_ref_h=1024, rope_ref_w=1024,
                    lq_gate_type="sigma_aware_per_token_per_dim")
    return args


#: InvokeAI's latent bases by adapter input channels: (latent channels, down factor)
INVOKEAI_BASES = {4: ("SDXL", 8), 16: ("FLUX.1 / SD3 / Qwen-Image", 8), 128: ("FLUX.2", 16)}


def invokeai_args(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The official-named arguments of InvokeAI's vendored v1 ``PidNet`` for a file of these shapes
    (``backend/pid/decode.py`` ``_PID_SR4X_BASE`` + ``_PER_BACKBONE`` @8e71a8a5). Raises
    :class:`PiDConfigError` for what InvokeAI refuses at install (an adapter width other than 512, which
    is every v1.5 file; latent channels it has no base for)."""
    conv = shapes.get("lq_proj.latent_proj.0.weight")
    if conv is None:
        raise PiDConfigError("InvokeAI identifies a PiD decoder by its lq_proj.* keys, which this model "
                             "lacks (a pixel prior without the latent adapter is not a decoder)")
    width, in_ch = int(conv[0]), int(conv[1])
    if width != 512 or "lq_proj.pit_head.weight" in shapes:
        raise PiDConfigError(
            f"InvokeAI runs only PiD v1 students (adapter width 512, per-token-per-channel gates, no PiT "
            f"injection); this model has adapter width {width}"
            + (" and the v1.5 PiT injection" if "lq_proj.pit_head.weight" in shapes else "")
            + " — InvokeAI refuses every v1.5 file at install (\"NVIDIA's v1.5 checkpoints are not yet "
            "supported\")")
    if in_ch not in INVOKEAI_BASES:
        raise PiDConfigError(f"InvokeAI has latent bases for 4 (SDXL), 16 (FLUX.1/SD3/Qwen-Image) and 128 "
                             f"(FLUX.2) latent channels; this model takes {in_ch}")
    return {**FULL_SIZE, "lq_hidden_dim": 512, "lq_interval": 2, "rope_ref_h": 1024, "rope_ref_w": 1024,
            "lq_gate_type": "sigma_aware_per_token_per_dim", "lq_conv_padding_mode": "zeros",
            "pit_lq_inject": False, "lq_latent_channels": in_ch,
            "latent_spatial_down_factor": INVOKEAI_BASES[in_ch][1]}


def expected_shapes(args: dict[str, Any], aux_head: bool = False) -> dict[str, tuple[int, ...]]:
    """Official tensor name → shape of the network the official arguments ``args`` build (meta device)."""
    from hydra.utils import instantiate

    cfg = net_config_from_args(args, aux_head)
    with torch.device("meta"):
        net = instantiate(cfg)
    out = {}
    for name, value in net.state_dict().items():
        shape = tuple(value.shape)
        if name.endswith("log_alpha"):
            shape = ()
        out[official.to_official_name(name)] = shape
    return out


def net_config_from_args(args: dict[str, Any], aux_head: bool = False) -> dict[str, Any]:
    """Official arguments (``args``, as :func:`comfyui_args` returns) → a project ``model.net`` config."""
    cfg = {k: v for k, v in args.items() if not k.startswith("_")}
    cfg.setdefault("lq_aux_rgb_head", aux_head)
    cfg.setdefault("lq_inject_mode", "controlnet")
    cfg.setdefault("lq_num_res_blocks", 4)
    cfg.setdefault("lq_latent_unpatchify_factor", 1)
    cfg["lq_aux_rgb_head"] = aux_head
    return official.net_config_from_official(cfg)


def consumer_args(target: Target, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """What ``target``'s consumer builds for a file of these shapes (None: it builds the model's own)."""
    if target.architecture == "comfyui":
        return comfyui_args(shapes)
    if target.architecture == "invokeai":
        return invokeai_args(shapes)
    return None


# ------------------------------------------------------------------------------------------------ check
_PREDICTION_WORDS = {"edm": "an EDM-preconditioned output", "x0": "an x₀ (image) prediction"}


def _latent_name(latent: Any) -> str | None:
    if isinstance(latent, str):
        return latent
    if isinstance(latent, dict):
        return latent.get("name") or (latent.get("_target_", "").rsplit(".", 1)[-1] or None)
    return None


def check(target: Target | str, facts: ModelFacts) -> Verdict:
    """Check ``facts`` against ``target``'s contract; the :class:`Verdict` lists errors and warnings.

    Errors (the target cannot run the model correctly): an output other than velocity; no caption states
    (or, for ComfyUI/InvokeAI, other than Gemma-2's); an architecture the consumer does not build (each
    differing setting named with both values); a key set other than the consumer's. Warnings: a teacher or
    a student on another t-list where the consumer runs its own 4-step rule; a latent space the consumer's
    nodes do not produce; InvokeAI's latent convention.
    """
    target = get_target(target) if isinstance(target, str) else target
    v = Verdict(target)
    if target.name == "pid":
        return v
    who = target.consumer
    args = official_args(facts.net) if facts.net is not None else None
    # output parameterisation
    if args is not None:
        for key, value in args["_unofficial"].items():
            if key == "prediction":
                v.errors.append(
                    f"output: model.net.prediction={value} ({_PREDICTION_WORDS.get(value, value)}); "
                    f"{who} reads the network's output as the velocity v = ε − x₀, so it would decode "
                    "noise, not the image")
                v.ways.append("retrain (or fine-tune) with model.net.prediction=v")
            else:
                v.errors.append(f"model.net.{key}={value}: {who}'s network has no such option (fixed at the "
                                "official value)")
                v.ways.append(f"retrain with the default model.net.{key}")
    # text conditioning
    if not facts.uses_text:
        v.errors.append(
            f"text: the model was trained without caption states (text=none); {who}'s network always embeds "
            "caption states"
            + (" and raises without them" if target.name == "official" else
               " (Gemma-2-2B-it, 2304 × 300), which this model has never seen"))
        v.ways.append("retrain with caption states (text=gemma2 text.path=/path/to/gemma-2-2b-it)")
    elif target.name == "official" and args is not None and args["txt_embed_dim"] != 2304:
        v.warnings.append(f"text: the network takes {args['txt_embed_dim']}-d caption states; NVIDIA's "
                          "pipelines encode captions with Gemma-2-2B-it (2304-d), so feed the states of the "
                          "model's own text encoder to its PidNet")
    # architecture and key set
    if args is not None and "lq_hidden_dim" not in args and target.architecture in ("comfyui", "invokeai"):
        v.errors.append(f"architecture: a pixel prior without the latent adapter; {who} runs PiD decoders")
    else:
        _check_architecture(target, facts, args, v)
    # sampler
    if target.architecture != "any" and facts.kind in ("teacher", "prior"):
        s = facts.sampling
        msg = (f"sampler: this is a {facts.kind}, sampled in pid with {s.get('sampler', '?')}, "
               f"{s.get('num_steps', '?')} steps, text CFG {s.get('text_cfg', 1.0)}, latent CFG "
               f"{s.get('latent_cfg', 1.0)}; {who} runs {target.sampler}")
        if target.name == "comfyui":
            msg += ": set the workflow's sampler, steps and cfg to the teacher's (its 4-step template " \
                   "gives a worse image)"
        elif target.name == "invokeai":
            msg += ": a teacher needs its multi-step sampler and guidance, which InvokeAI does not run"
        elif s.get("sampler") != "dpmpp_2m" or float(s.get("latent_cfg", 1.0)) != 1.0:
            msg += " (no latent guidance): the same weights give another image there"
        else:
            msg = ""
        if msg:
            v.warnings.append(msg)
    elif target.architecture != "any":
        t_list = tuple(float(t) for t in (facts.sampling.get("t_list") or OFFICIAL_T_LIST))
        if not all(math.isclose(a, b) for a, b in zip(t_list, OFFICIAL_T_LIST)) or len(t_list) != 4:
            v.warnings.append(f"sampler: the student was distilled on t = {list(t_list)}; {who} runs "
                              f"{target.sampler}")
        elif target.name == "comfyui":
            v.notes.append("ComfyUI's 4-step template (shift 1.5) approximates NVIDIA's t-list, as it does "
                           "for NVIDIA's own students")
    # latent space
    name = _latent_name(facts.latent)
    if target.latents is not None and name is not None and name not in target.latents:
        v.warnings.append(f"latent: the model decodes the {name!r} latent space; {who}'s PiD nodes produce "
                          f"only {', '.join(target.latents)} latents, so the latent must come from elsewhere")
    elif target.latents is not None and name is not None:
        v.warnings.extend(_normalisation_differs(name, facts.latent, who))
    v.warnings.extend(target.notes)
    return v


def _normalisation_differs(name: str, latent: Any, who: str) -> list[str]:
    """A warning when a run's latent normalisation (shift, scale) is not NVIDIA's for that latent space
    (``conf/latent/<name>.yaml`` holds NVIDIA's constants): the consumer normalises the VAE's latent its
    own way."""
    if not isinstance(latent, dict):
        return []
    from omegaconf import OmegaConf

    from pid.weights.release import CONF_DIR

    file = CONF_DIR / "latent" / f"{name}.yaml"
    if not file.is_file():
        return []
    ref = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    differ = [f"latent.{k}={latent[k]} (NVIDIA's: {ref[k]})" for k in ("shift", "scale")
              if isinstance(ref.get(k), (int, float)) and k in latent and latent[k] is not None
              and not math.isclose(float(latent[k]), float(ref[k]))]
    if not differ:
        return []
    return [f"latent: {', '.join(differ)}; {who} feeds the latent normalised with NVIDIA's constants, so the "
            "model sees latents scaled otherwise than in training"]


def _check_architecture(target: Target, facts: ModelFacts, args: dict | None, v: Verdict) -> None:
    who = target.consumer
    try:
        want = consumer_args(target, facts.shapes)
    except PiDConfigError as err:
        v.errors.append(f"architecture: {err}")
        v.ways.append(f"build the model as NVIDIA's full-size {'v1 ' if target.name == 'invokeai' else ''}"
                      f"release (release=<preset> model.init_from=<its weights>) and train that")
        return
    if want is None:
        return
    if args is not None:
        differ = [f"{CONFIG_KEYS[k]} is {args.get(k)!r}, {who} builds {want[k]!r}"
                  for k in SEMANTIC_ARGS if k in want and args.get(k) != want[k]]
        if differ:
            v.errors.append(f"architecture: {who} builds NVIDIA's full-size network and reads only the "
                            "adapter width and latent channels from the file; this model differs in "
                            + "; ".join(differ))
            v.ways.append("train from a full-size release of the kind the target runs (release=<preset>, "
                          "e.g. flux_2k for v1, flux_2kto4k_v1pt5 for v1.5)")
            return
    expected = expected_shapes(want)
    got = {k: v_ for k, v_ in facts.shapes.items() if not k.startswith("lq_proj.lq_aux_rgb_head.")}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shaped = sorted(k for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
    if missing or extra or shaped:
        v.errors.append(
            f"key set: {who} needs exactly {len(expected)} tensors; the file would have {len(missing)} "
            f"missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}) and {len(shaped)} "
            f"shaped otherwise (e.g. {[(k, tuple(got[k]), tuple(expected[k])) for k in shaped[:2]]})")
        v.ways.append("train from a full-size release of the kind the target runs (release=<preset>)")
    if args is None:
        v.notes.append(f"{facts.source or 'the file'} has no preset: its tensors were checked against "
                       f"{who}'s build; its output parameterisation and text conditioning are taken to be "
                       "NVIDIA's (v prediction, Gemma-2 captions)")
