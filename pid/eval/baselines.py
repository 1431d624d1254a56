"""The decode methods `make eval` compares, all behind one signature: ``run(z, sigma, generator) → images``.

``z`` is a batch of normalised latents (possibly noisy at level σ), the output is float [-1, 1] at
sr_scale × the image the latent encodes. Cascades first decode natively (the latent space's own
decoder), then upscale:
- ``native_bicubic`` / ``native_lanczos``: plain interpolation;
- ``sr_cascade``: a pixel-diffusion SR model trained in this framework on the low-res RGB image
  (``latent=rgb``, the same backbone class as PiD; ``make train exp=quickstart_sr``), N steps;
- ``spandrel:<name>``: an external upscaler (Real-ESRGAN, …) loaded by spandrel from local weights.
PiD itself: ``pid_teacher@N`` (Euler, N steps) and ``pid_student@4`` (DMD2 SDE). The early-exit sweep
decodes latents noised to σ with PiD (and, for reference, with native decode + bicubic).

Methods that cannot run (no checkpoint configured, spandrel missing) are returned as ``Skipped`` with
the reason, so the report lists every baseline either with numbers or with why it has none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pid.utils.images import to_uint8, upsample

log = logging.getLogger(__name__)

RunFn = Callable[[torch.Tensor, float, "torch.Generator | None"], torch.Tensor]


@dataclass
class Method:
    name: str
    family: str  # "cascade" | "pid" | "early_exit"
    run: RunFn
    steps: int | None = None
    sigma: float = 0.0
    label: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.label = self.label or self.name


@dataclass
class Skipped:
    name: str
    family: str
    reason: str


def lanczos_upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """PIL Lanczos ↑factor per image (uint8 round trip, as an image editor would)."""
    from PIL import Image

    out = []
    for img in to_uint8(images.cpu()):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(pil)).permute(2, 0, 1))
    return torch.stack(out).float().div(127.5).sub(1).to(images.device)


def native_cascade(latent, sr_scale: int, mode: str) -> RunFn:
    def run(z, sigma=0.0, generator=None):
        low = latent.decode(z).float()
        return lanczos_upsample(low, sr_scale) if mode == "lanczos" else upsample(low, sr_scale, mode)

    return run


def sr_cascade(latent, sr_decoder, num_steps: int) -> RunFn:
    """Native decode → the diffusion SR model conditioned on that RGB image (its identity latent)."""

    def run(z, sigma=0.0, generator=None):
        low = latent.decode(z).float()
        return sr_decoder.decode(sr_decoder.latent.encode(low), 0.0, num_steps=num_steps, generator=generator)

    return run


def spandrel_cascade(latent, sr_scale: int, weights: str, device) -> RunFn:
    """Native decode → an external upscaler from a local file (spandrel), resized to the target if its
    scale differs from sr_scale."""
    import spandrel

    model = spandrel.ModelLoader().load_from_file(str(weights)).to(device).eval()

    @torch.no_grad()
    def run(z, sigma=0.0, generator=None):
        low = latent.decode(z).float()
        out = model((low + 1) / 2).float() * 2 - 1
        h, w = low.shape[-2] * sr_scale, low.shape[-1] * sr_scale
        if out.shape[-2:] != (h, w):
            out = torch.nn.functional.interpolate(out, size=(h, w), mode="bicubic", antialias=True)
        return out.clamp(-1, 1)

    return run


def pid_method(decoder, num_steps: int, sampler: str | None = None) -> RunFn:
    def run(z, sigma=0.0, generator=None):
        return decoder.decode(z, sigma, num_steps=num_steps, sampler=sampler, generator=generator)

    return run


def build_methods(cfg, teacher, student=None, sr_decoder=None,
                  device="cpu") -> tuple[list[Method], list[Skipped]]:
    """The methods of one evaluation, from the ``methods`` section of conf/eval.yaml."""
    m = cfg.methods
    latent, sr = teacher.latent, teacher.sr_scale
    methods: list[Method] = []
    skipped: list[Skipped] = []
    if m.native_bicubic:
        methods.append(Method("native_bicubic", "cascade", native_cascade(latent, sr, "bicubic"),
                              label="native decode + bicubic"))
    if m.native_lanczos:
        methods.append(Method("native_lanczos", "cascade", native_cascade(latent, sr, "lanczos"),
                              label="native decode + Lanczos"))
    if m.sr_cascade.enabled:
        if sr_decoder is None:
            skipped.append(Skipped("sr_cascade", "cascade", "not configured: set sr_cascade_ckpt= "
                                   "(train it with `make train exp=quickstart_sr`)"))
        else:
            steps = m.sr_cascade.num_steps
            if not steps:
                steps = (list(m.teacher_steps or []) or [teacher.sampling.get("num_steps", 25)])[0]
            steps = int(steps)
            methods.append(Method(f"sr_cascade@{steps}", "cascade", sr_cascade(latent, sr_decoder, steps),
                                  steps=steps, label=f"native decode + diffusion SR ({steps} steps)"))
    for up in m.get("upscalers") or []:
        name = f"spandrel:{up['name']}"
        try:
            import spandrel  # noqa: F401
        except ImportError:
            skipped.append(Skipped(name, "cascade", "spandrel is not installed (pip install spandrel)"))
            continue
        if not up.get("weights") or not Path(str(up["weights"])).is_file():
            skipped.append(Skipped(name, "cascade", f"weights not found: {up.get('weights')}"))
            continue
        methods.append(Method(name, "cascade", spandrel_cascade(latent, sr, up["weights"], device),
                              label=f"native decode + {up['name']}"))
    if not (m.get("upscalers") or []):
        skipped.append(Skipped("spandrel", "cascade", "no external upscaler configured (methods.upscalers: "
                               "[{name: RealESRGAN_x4plus, weights: /path/RealESRGAN_x4plus.pth}]; "
                               "needs spandrel" + ("" if _has_spandrel() else ", not installed") + ")"))
    for n in m.teacher_steps or []:
        n = int(n)
        methods.append(Method(f"pid_teacher@{n}", "pid", pid_method(teacher, n, "euler"), steps=n,
                              label=f"PiD teacher ({n} steps)"))
    if m.student.enabled:
        if student is None:
            skipped.append(Skipped(f"pid_student@{_as_list(m.student.num_steps)[0]}", "pid",
                                   "not configured: set student_ckpt= (a DMD2 student, "
                                   "`make train exp=quickstart_dmd2`)"))
        else:
            for n in _as_list(m.student.num_steps):
                methods.append(Method(f"pid_student@{n}", "pid", pid_method(student, n), steps=n,
                                      label=f"PiD student ({n} steps)"))
    ee = m.early_exit
    if ee.enabled:
        dec, who = (student, "student") if (student is not None and ee.use_student) else (teacher, "teacher")
        n = ee.num_steps
        if not n:
            n = _as_list(m.student.num_steps)[0] if who == "student" else (m.teacher_steps or [25])[0]
        n = int(n)
        for s in ee.sigmas:
            s = float(s)
            methods.append(Method(f"early_exit_pid@{s:g}", "early_exit", pid_method(dec, n), steps=n, sigma=s,
                                  label=f"PiD {who} at σ={s:g}"))
            if ee.include_native:
                methods.append(Method(f"early_exit_native@{s:g}", "early_exit",
                                      native_cascade(latent, sr, "bicubic"),
                                      sigma=s, label=f"native + bicubic at σ={s:g}"))
    return methods, skipped


def _has_spandrel() -> bool:
    try:
        import spandrel  # noqa: F401
    except ImportError:
        return False
    return True


def _as_list(value) -> list[int]:
    """``4`` or ``[1, 2, 4]`` → a list of ints."""
    if isinstance(value, (int, float, str)):
        return [int(value)]
    return [int(v) for v in value]


def decode_all(method: Method, z: torch.Tensor, base_sigma: float, xi: torch.Tensor, form: str,
               batch_size: int, device, seed: int) -> torch.Tensor:
    """Decode every latent with ``method``, in batches with per-batch seeded generators.

    Early-exit rows are first noised to method.sigma with the fixed noise ``xi``. Returns float [-1, 1]
    on the CPU.
    """
    from pid.diffusion.noising import noise_latent

    out = []
    sigma = method.sigma if method.family == "early_exit" else base_sigma
    for i in range(0, len(z), batch_size):
        zb = z[i:i + batch_size]
        if method.family == "early_exit" and method.sigma > 0:
            zb = noise_latent(zb, method.sigma, noise=xi[i:i + batch_size], form=form)
        g = torch.Generator().manual_seed(seed + i)
        out.append(method.run(zb.to(device), sigma, g).float().cpu())
    return torch.cat(out)
