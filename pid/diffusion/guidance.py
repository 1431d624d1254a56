r"""Dual classifier-free guidance (text × latent) as a model wrapper.

PiD drops the caption and the latent independently (10 % each) during training, so one network
gives three denoisers: :math:`v(c, z)` (both on), :math:`v(\varnothing, z)` (text off) and
:math:`v(\varnothing, \varnothing)` (both off). We combine them in the nested
(InstructPix2Pix-style) order, latent guidance first, text guidance on top:

.. math::

    \hat v = v(\varnothing, \varnothing)
           + w_z \,[\, v(\varnothing, z) - v(\varnothing, \varnothing) \,]
           + w_c \,[\, v(c, z) - v(\varnothing, z) \,].

Special cases:

* ``w_z = 1`` gives :math:`v(\varnothing, z) + w_c [v(c, z) - v(\varnothing, z)]`, exactly the
  text-only CFG of PiD's released teacher sampler and distillation teacher
  (``pid_model.generate_samples_from_batch``, ``pid_distill_model._teacher_cfg_x0``: the latent
  stays on in both branches, only the caption is nulled) — the both-off branch is not run.
* ``w_c = w_z = 1`` is the plain conditional model; only one branch is run.
* ``w_c = w_z = w`` is ordinary joint CFG :math:`v_\varnothing + w (v(c, z) - v_\varnothing)`.

As coefficients per branch: :math:`v(c,z): w_c`, :math:`v(\varnothing,z): w_z - w_c`,
:math:`v(\varnothing,\varnothing): 1 - w_z`; branches with coefficient 0 are skipped, the rest run
in one batched forward (``batched=True``) or one forward each.

A denoiser may also define ``prepare(x_t, t, text_on, latent_on, **cond) -> cond``: DualCFG calls it
once per batch layout (the first step of a sampler run) and passes what it returns at every step,
so conditioning that does not depend on ``x_t`` and ``t`` (the latent adapter's features) is
computed once per decode.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["DualCFG", "dual_cfg", "guidance_branches"]

# (text_on, latent_on) of the three branches, in the order they are batched.
_BRANCHES = ((True, True), (False, True), (False, False))


def guidance_branches(text_scale: float, latent_scale: float) -> list[tuple[bool, bool, float]]:
    """``[(text_on, latent_on, coefficient), ...]`` for the branches with a nonzero coefficient."""
    coefs = (float(text_scale), float(latent_scale) - float(text_scale), 1.0 - float(latent_scale))
    return [(tx, lt, c) for (tx, lt), c in zip(_BRANCHES, coefs) if c != 0.0]


def _tile(value: Any, k: int, batch: int) -> Any:
    """Repeat per-sample conditioning ``k`` times along the batch axis; pass the rest through."""
    if k == 1:
        return value
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return torch.cat([value] * k, dim=0)
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return type(value)(list(value) * k)
    return value


class DualCFG:
    r"""Turn a switchable conditional denoiser into ``model(x_t, t) -> v`` with dual CFG.

    Args:
        denoiser: ``denoiser(x_t, t, text_on, latent_on, **cond) -> v`` where ``text_on`` and
            ``latent_on`` are bool tensors of shape (N,) (True = condition kept), the same
            per-sample keep masks used for dropout at training time.
        text_scale: :math:`w_c`, caption guidance weight (1 = no text guidance).
        latent_scale: :math:`w_z`, latent guidance weight (1 = no latent guidance).
        cond: keyword conditioning passed to ``denoiser``. Tensors whose first dim is the batch
            size (and lists/tuples of that length) are tiled when branches are batched.
        batched: run all needed branches in one forward of batch ``k·B`` (default); False runs
            one forward per branch (less peak memory).

    The flags and the (tiled) conditioning of each forward are built on the first call and reused
    while the shape and device of x_t stay the same; with a ``denoiser.prepare`` they are what it
    returned for that first call.

    The combination is computed in float32 (or wider) and returned in that dtype.
    """

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        text_scale: float = 1.0,
        latent_scale: float = 1.0,
        cond: dict[str, Any] | None = None,
        batched: bool = True,
    ):
        self.denoiser = denoiser
        self.text_scale = float(text_scale)
        self.latent_scale = float(latent_scale)
        self.cond = dict(cond or {})
        self.batched = batched
        self.branches = guidance_branches(self.text_scale, self.latent_scale)
        self._calls_key: tuple | None = None
        self._calls: list[tuple[Tensor, Tensor, dict[str, Any]]] = []

    def _flags(self, on: bool, n: int, device) -> Tensor:
        return torch.full((n,), on, dtype=torch.bool, device=device)

    def _forwards(self, x_t: Tensor, t: Tensor) -> list[tuple[Tensor, Tensor, dict[str, Any]]]:
        """``[(text_on, latent_on, cond), ...]``, one per denoiser forward of a step, cached by layout."""
        b, dev = x_t.shape[0], x_t.device
        key = (tuple(x_t.shape), dev)
        if key == self._calls_key:
            return self._calls
        if len(self.branches) == 1 or not self.batched:
            layouts = [(self._flags(tx, b, dev), self._flags(lt, b, dev), 1) for tx, lt, _ in self.branches]
        else:
            k = len(self.branches)
            text_on = torch.cat([self._flags(tx, b, dev) for tx, _, _ in self.branches])
            latent_on = torch.cat([self._flags(lt, b, dev) for _, lt, _ in self.branches])
            layouts = [(text_on, latent_on, k)]
        prepare = getattr(self.denoiser, "prepare", None)
        calls = []
        for text_on, latent_on, k in layouts:
            cond = {name: _tile(v, k, b) for name, v in self.cond.items()}
            if prepare is not None:
                cond = prepare(_tile(x_t, k, b), _tile(t, k, b), text_on, latent_on, **cond)
            calls.append((text_on, latent_on, cond))
        self._calls_key, self._calls = key, calls
        return calls

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        b = x_t.shape[0]
        calls = self._forwards(x_t, t)
        # The three coefficients sum to 1, so at least one branch is always selected.
        if len(self.branches) == 1 and self.branches[0][2] == 1.0:
            text_on, latent_on, cond = calls[0]
            return self.denoiser(x_t, t, text_on, latent_on, **cond)

        if len(calls) == 1:
            k = len(self.branches)
            text_on, latent_on, cond = calls[0]
            out = self.denoiser(_tile(x_t, k, b), _tile(t, k, b), text_on, latent_on, **cond)
            outs = out.chunk(k, dim=0)
        else:
            outs = [self.denoiser(x_t, t, text_on, latent_on, **cond) for text_on, latent_on, cond in calls]

        dtype = torch.promote_types(outs[0].dtype, torch.float32)
        v = torch.zeros_like(outs[0], dtype=dtype)
        for (_, _, coef), o in zip(self.branches, outs):
            v = v + coef * o.to(dtype)
        return v

    def __repr__(self) -> str:
        return (
            f"DualCFG(text_scale={self.text_scale}, latent_scale={self.latent_scale}, "
            f"branches={[(tx, lt) for tx, lt, _ in self.branches]}, batched={self.batched})"
        )


def dual_cfg(
    denoiser: Callable[..., Tensor],
    text_scale: float = 1.0,
    latent_scale: float = 1.0,
    batched: bool = True,
    **cond: Any,
) -> DualCFG:
    """Functional spelling of :class:`DualCFG`; extra keyword arguments become ``cond``."""
    return DualCFG(denoiser, text_scale=text_scale, latent_scale=latent_scale, cond=cond, batched=batched)
