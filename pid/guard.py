"""Guards before long work: the size rule of decode inputs and an estimate of what a decode costs.

Used by ``python -m pid.decode`` (before it encodes or decodes anything) and by ``make eval``'s size setup
(:func:`pid.eval.inputs.load_eval_set`), so both apply one rule and one estimate.

**Size rule** (:func:`plan_input_size`). An input image of H×W pixels becomes a latent of
(H/latent_down)×(W/latent_down) cells and an output of (H·sr_scale)×(W·sr_scale) pixels, whose sides must be
multiples of the network's patch size. Input sides are therefore rounded to the nearest multiple of the
*size unit* u = lcm(latent_down, patch_size / gcd(patch_size, sr_scale)) (:func:`size_unit`) — with or
without ``--size`` — and the rounding is reported. A side that is not a positive whole number, or smaller
than one unit, is an error that says which size works.

**Estimate** (:func:`estimate_decode`). The real decode path (:func:`pid.sampling.decode_latent`: adapter,
guidance branches, sampler, tiling) runs for one and two sampler steps (and one and two tiles) on *meta
tensors* — the network's weights swapped for meta tensors of their shapes: no arithmetic, no memory — at the
planned size, counting FLOPs by ``torch.utils.flop_counter``'s formulas, as its ``FlopCounterMode`` does
(matmuls and convolutions; each ``scaled_dot_product_attention`` counted as a fused kernel, 4·N²·d, with no
N×N matrix, as CPUs and GPUs run it) and the high-water mark of live tensor storage
(:class:`PeakTensorMemory`), in one dispatch mode (:class:`_CountingMemory`: the runs cost its per-operator
Python hooks, whatever the size). These runs split what a decode computes once, per network forward and per
tile, so the FLOPs and the tensor peak of any number of steps and tiles follow (for the quickstart's network
they equal a real decode's: ``tests/test_guard.py``, ``benchmarks/tiled.md``). On a CPU the time is the FLOPs
over FLOP rates measured on this machine: one real step at a small size for everything but attention and one
long attention call for attention (about half a second). Times are estimates: the small step's rate is below a
large decode's (fixed per-operator costs weigh more), so they are on the high side; the memory counts tensors,
not the allocator's overhead (``benchmarks/tiled.md`` shows the RSS beside it) nor the latent encoder of
``--image``; the weights are added from their size.
"""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pid.utils.errors import PiDConfigError

#: Default budget of a decode on a CPU: estimated seconds (``pid.decode --time-budget``).
CPU_TIME_BUDGET_S = 300.0
#: Default share of the available memory (CPU: MemAvailable; CUDA: free device memory) a decode may use.
MEMORY_SHARE = 0.8


class OverBudgetError(PiDConfigError):
    """A decode whose estimate is over the budget; the message names the estimate and the ways on.

    ``estimate``: the :class:`DecodeEstimate`; ``reasons``: the limits it is over."""

    def __init__(self, message: str, estimate: "DecodeEstimate", reasons: list[str]):
        super().__init__(message)
        self.estimate = estimate
        self.reasons = reasons


# ---------------------------------------------------------------------------------------------- sizes


def size_unit(latent_down: int, sr_scale: int, patch_size: int) -> int:
    """Input pixels per side that a decodable image is a whole multiple of.

    lcm(latent_down, patch_size / gcd(patch_size, sr_scale)): the latent grid, and an output side
    (input · sr_scale) on the patch grid. E.g. 8 for a FLUX VAE latent at 4× with 16-px patches.
    """
    for name, v in (("latent_down", latent_down), ("sr_scale", sr_scale), ("patch_size", patch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return math.lcm(latent_down, patch_size // math.gcd(patch_size, sr_scale))


@dataclass(frozen=True)
class SizePlan:
    """What an input of ``source_hw`` pixels is decoded at.

    ``input_hw``: the size the image is resized to before encoding (multiples of ``unit``);
    ``latent_hw``: the latent grid; ``output_hw``: the decoded image in pixels; ``rounded``: whether
    ``input_hw`` differs from the requested size (``--size`` or the image's own).
    """

    source_hw: tuple[int, int]
    requested_hw: tuple[int, int]
    input_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    output_hw: tuple[int, int]
    unit: int
    rounded: bool

    def describe(self, what: str = "input") -> str:
        """One line: the sizes and, when rounded, by which rule."""
        fmt = "{}×{}".format
        src = fmt(*self.source_hw)
        line = f"{what}: {src} px"
        if self.requested_hw != self.source_hw:
            line += f", resized to {fmt(*self.requested_hw)} (--size)"
        if self.rounded:
            line += (f", rounded to {fmt(*self.input_hw)} px (sides to the nearest multiple of {self.unit}: "
                     "the latent grid and the output's patch grid)")
        line += f" → latent {fmt(*self.latent_hw)} → output {fmt(*self.output_hw)} px (H×W)"
        return line


def _round_side(n: int, unit: int) -> int:
    return max(unit, int(math.floor(n / unit + 0.5)) * unit)


def plan_input_size(source_hw: tuple[int, int], *, latent_down: int, sr_scale: int, patch_size: int,
                    size: tuple[int, int] | None = None, what: str = "--image") -> SizePlan:
    """The one size rule of image inputs: resize to ``size`` (H, W) if given, round to the size unit.

    Args:
        source_hw: the image's (H, W) in pixels.
        size: the requested (H, W) (``--size``), or None to keep the image's size.
        what: how the input is named in errors (``--image path``).

    Raises:
        PiDConfigError: a side that is not a positive integer (``--size 0 -8``), or an image side smaller
            than one size unit without ``size`` (a 5×5 image has no latent cell: the message names the
            smallest size and ``--size`` to upscale on purpose).
    """
    unit = size_unit(latent_down, sr_scale, patch_size)
    source_hw = (int(source_hw[0]), int(source_hw[1]))
    if size is not None:
        bad = [v for v in size if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if len(size) != 2 or bad:
            raise PiDConfigError(
                f"--size {' '.join(map(str, size))}: give two positive whole numbers H W in pixels of the "
                f"input image (multiples of {unit}; others are rounded to the nearest multiple), e.g. "
                f"--size {_round_side(source_hw[0], unit)} {_round_side(source_hw[1], unit)}")
        requested = (int(size[0]), int(size[1]))
    else:
        if min(source_hw) < unit:
            raise PiDConfigError(
                f"{what} is {source_hw[0]}×{source_hw[1]} px (H×W): smaller than one latent cell "
                f"({unit} px) per side, so it has no latent to decode. Use an image of at least "
                f"{unit}×{unit} px, or upscale it on purpose with --size H W (e.g. --size "
                f"{_round_side(source_hw[0], unit)} {_round_side(source_hw[1], unit)})")
        requested = source_hw
    input_hw = (_round_side(requested[0], unit), _round_side(requested[1], unit))
    latent_hw = (input_hw[0] // latent_down, input_hw[1] // latent_down)
    output_hw = (input_hw[0] * sr_scale, input_hw[1] * sr_scale)
    return SizePlan(source_hw, requested, input_hw, latent_hw, output_hw, unit, input_hw != requested)


def check_crop_size(crop_size, *, latent_down: int, sr_scale: int, patch_size: int,
                    key: str = "data.crop_size") -> int:
    """An output crop size (``make eval``'s ``data.crop_size``) checked by the same rule as decode inputs.

    The crop is the output; its low-resolution input (crop / sr_scale) must be a positive multiple of the
    size unit. Returns the crop size; raises PiDConfigError naming ``key`` and the nearest sizes that work.
    """
    step = sr_scale * size_unit(latent_down, sr_scale, patch_size)
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1 or crop_size % step:
        lower = max(step, (int(crop_size) // step) * step if isinstance(crop_size, (int, float)) else step)
        raise PiDConfigError(
            f"{key}={crop_size!r} must be a positive multiple of {step} (sr_scale {sr_scale} × the size unit "
            f"{step // sr_scale} of latent down {latent_down} and patch {patch_size}): e.g. {key}={lower} or "
            f"{key}={lower + step}")
    return crop_size


# ---------------------------------------------------------------------------------------------- memory


class PeakTensorMemory(TorchDispatchMode):
    """High-water mark of the tensor storage created while the mode is active, in bytes.

    Counts each new storage an operator returns once (views share it) and subtracts it when the storage is
    freed; tensors that existed before (weights, inputs) are not counted. Works on real tensors on any
    device and on meta or fake tensors, where nothing is allocated. Allocator overhead
    and memory outside tensors (Python objects, libraries) are not included.

        with PeakTensorMemory() as mem:
            y = net(x)
        mem.peak  # bytes
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo by default, which adds a frame to
        # every operator (and imports torch._dynamo, as torch's own Python meta kernels also do); nothing
        # here is compiled
        return False

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, weakref.finalize] = {}

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._tracked:
                continue
            nbytes = storage.nbytes()
            self._tracked[key] = weakref.finalize(storage, self._free, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out

    def __exit__(self, *exc):
        for fin in list(self._tracked.values()):
            fin.detach()
        self._tracked.clear()
        return super().__exit__(*exc)


_NO_DECOMPOSITION: set = set()


class _CountingMemory(PeakTensorMemory):
    """:class:`PeakTensorMemory` that also counts FLOPs as ``torch.utils.flop_counter.FlopCounterMode`` does
    (its formulas; an operator without one is decomposed where it can be, and its parts counted), in one
    dispatch mode: no per-module tracking and one Python hook per operator instead of two — the estimate's
    meta runs are hook-bound. ``flops``: the total. The memory is counted on the operators as called (not on
    the parts of a decomposition), as with the two modes stacked."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.flops = 0
        self._registry = flop_registry
        self._decomposing = 0

    def _count(self, func, args, kwargs):
        if (func not in self._registry and func not in _NO_DECOMPOSITION
                and func is not torch.ops.prim.device.default):
            self._decomposing += 1
            TorchDispatchMode.__enter__(self)  # not ``with self``: its __exit__ would drop the tracking
            try:
                r = func.decompose(*args, **kwargs)
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
                self._decomposing -= 1
            if r is not NotImplemented:
                return r
            _NO_DECOMPOSITION.add(func)  # whether an operator has a decomposition does not change
        out = func(*args, **kwargs)
        formula = self._registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._decomposing:
            return self._count(func, args, kwargs)
        return super().__torch_dispatch__(lambda *a, **k: self._count(func, a, k), types, args, kwargs)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a decode can use on ``device``: free CUDA memory, or the CPU's MemAvailable; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------- estimate


def sampler_forwards(sampler: str, num_steps: int) -> int:
    """Network forwards of a sampler run with ``num_steps`` steps (Heun: two per step but the last)."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


@dataclass
class DecodeEstimate:
    """What one decode is estimated to cost.

    ``output_hw`` pixels (H, W) for each of ``batch`` images; ``forwards`` network forwards (each over the
    guidance branches batched); ``flops``: all forwards; ``peak_bytes``: tensors at a step's peak
    (activations, the sampler's state and what it carries between steps, the adapter's features) and
    ``weight_bytes`` the network's weights; ``attention_flops``: the part in attention; ``seconds``: CPU
    time from the probes' FLOP rates (None where they were not measured); ``probe``: how they were measured.
    """

    output_hw: tuple[int, int]
    batch: int
    forwards: int
    flops: float
    peak_bytes: int
    weight_bytes: int
    device: str
    attention_flops: float = 0.0
    seconds: float | None = None
    flop_rate: float | None = None
    attention_rate: float | None = None
    probe: str = ""
    tile: int | None = None
    #: of ``flops`` and ``attention_flops``, what the decode computes once (not per forward): what a search's
    #: ``exact=False`` estimate counts per forward instead (:func:`fit_scale`)
    once_flops: float = 0.0
    once_attention_flops: float = 0.0

    def timed(self, flop_rate: float, attention_rate: float, probe: str) -> "DecodeEstimate":
        """Set ``seconds`` from FLOP rates (FLOP/s) of the network's other work and of attention."""
        self.flop_rate, self.attention_rate, self.probe = flop_rate, attention_rate, probe
        self.seconds = (self.flops - self.attention_flops) / flop_rate + self.attention_flops / attention_rate
        return self

    @property
    def pixels(self) -> int:
        return self.batch * self.output_hw[0] * self.output_hw[1]

    @property
    def memory_bytes(self) -> int:
        return self.peak_bytes + self.weight_bytes

    def short(self) -> str:
        """"about 4 min, 1.80 GB" (the time where it was estimated)."""
        mem = f"about {_gb(self.memory_bytes)}"
        return mem if self.seconds is None else f"about {_duration(self.seconds)}, {_gb(self.memory_bytes)}"

    def describe(self) -> str:
        h, w = self.output_hw
        parts = [f"{self.batch}× {h}×{w} px ({self.pixels / 1e6:.3g} Mpx), {self.forwards} network forwards, "
                 f"{self.flops / 1e12:.3g} TFLOP, about {_gb(self.memory_bytes)} of memory (weights "
                 f"{_gb(self.weight_bytes)})"]
        if self.tile:
            parts.append(f"tiled at {self.tile} px")
        if self.seconds is not None:
            parts.append(f"about {_duration(self.seconds)} on {self.device} (at {self.flop_rate / 1e9:.1f} "
                         f"GFLOP/s, attention at {self.attention_rate / 1e9:.1f}, measured by {self.probe})")
        return "; ".join(parts)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class _FusedAttention(TorchFunctionMode):
    """Counts ``F.scaled_dot_product_attention`` as a fused (flash) kernel: 4·B·heads·Nq·Nk·d FLOPs and no
    Nq×Nk matrix — what CPU and CUDA run for unmasked attention. On meta tensors the call returns its output
    shape without running (the meta device would take the math path and hold the Nq×Nk matrix); on real
    tensors it runs as usual (``FlopCounterMode`` does not count the CPU flash kernel)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        self.flops += 2 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        if q.device.type == "meta":
            return q.new_empty((*q.shape[:-1], v.shape[-1]))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class _Decode(torch.nn.Module):
    """One or two sampler steps of :func:`pid.sampling.decode_latent` as a module."""

    def __init__(self, net: torch.nn.Module, decode_kw: dict):
        super().__init__()
        self.net, self.decode_kw = net, decode_kw

    def forward(self, z, y, steps: int = 1):
        from pid.sampling import decode_latent

        # times inside (0, 1): multistep solvers take log((1 - t) / t) of each grid time but the last
        grid = [0.98, 0.0] if steps == 1 else [0.98, 0.5, 0.0]
        return decode_latent(self.net, z, 0.0, num_steps=steps, timesteps=grid, text=(y, None),
                             **self.decode_kw)


@contextmanager
def _meta_weights(net: torch.nn.Module):
    """Within the block, every parameter and buffer of ``net`` is a meta tensor of its shape and dtype (the
    real ones are put back after; ``torch.func.functional_call`` does the same but imports torch._dynamo,
    1.5 s)."""
    saved = []
    for mod in net.modules():
        for store in (mod._parameters, mod._buffers):
            for name, t in list(store.items()):
                if t is not None:
                    saved.append((store, name, t))
                    meta = torch.empty_like(t, device="meta")
                    if store is mod._parameters:
                        meta = torch.nn.Parameter(meta, requires_grad=False)
                    store[name] = meta
    try:
        yield
    finally:
        for store, name, t in saved:
            store[name] = t


def _one_step(net, latent_shape, *, device, dtype=torch.float32, shapes_only: bool, steps: int = 1,
              **decode_kw):
    """(FLOPs, of which attention, peak tensor bytes, seconds or None) of a ``steps``-step (1 or 2) run of
    the real decode path.

    ``shapes_only``: the network's weights are swapped for meta tensors (:func:`_meta_weights`)
    and the inputs are meta tensors, so every operator computes shapes only — no arithmetic, no memory, no
    time; the network's own tensors are untouched (its gates' logging state is restored)."""
    text = decode_kw.pop("text_shape", None)
    module = _Decode(net, decode_kw)
    if shapes_only:
        device = torch.device("meta")
        logged = {m: m.last_mean for m in net.modules() if hasattr(m, "last_mean")}
    z = (torch.empty if shapes_only else torch.randn)(latent_shape, device=device, dtype=dtype)
    y = None if text is None else torch.zeros(text, device=device, dtype=dtype)
    try:
        with _meta_weights(net) if shapes_only else nullcontext():  # outside the modes: no Parameter() there
            with torch.no_grad(), _CountingMemory() as mem, _FusedAttention() as attn:
                module(z, y, steps)
    finally:
        if shapes_only:
            for m, value in logged.items():
                m.last_mean = value
    seconds = None
    if not shapes_only:  # timed again without the counting modes (their per-operator cost is Python's)
        with torch.no_grad():
            t0 = time.perf_counter()
            module(z, y, steps)
            seconds = time.perf_counter() - t0
    return mem.flops + attn.flops, attn.flops, mem.peak, seconds


def _attention_rate(net, device) -> float:
    """FLOP/s of ``F.scaled_dot_product_attention`` at the network's heads and width on ``device``, for a
    sequence long enough to be about 1 GFLOP (the rate of long sequences, which dominate large decodes)."""
    heads = int(getattr(net, "num_groups", 8))
    dim = int(getattr(net, "hidden_size", 512)) // heads
    n = int(min(4096, max(256, math.sqrt(1e9 / (4 * heads * dim)))))
    q = torch.randn(1, heads, n, dim, device=device)
    f = torch.nn.functional.scaled_dot_product_attention
    f(q[..., :64, :], q[..., :64, :], q[..., :64, :])  # warm-up
    t0 = time.perf_counter()
    f(q, q, q)
    return 4 * heads * n * n * dim / max(time.perf_counter() - t0, 1e-9)


def estimate_decode(net: torch.nn.Module, latent_shape: tuple[int, int, int, int], *, sr_scale: int,
                    latent_down: int, num_steps: int, sampler: str, text_cfg: float = 1.0,
                    latent_cfg: float = 1.0, text_shape: tuple[int, int, int] | None = None,
                    tile: int | None = None, tile_overlap: int | None = None,
                    probe: bool = True, rates: tuple[float, float, str] | None = None,
                    exact: bool = True) -> DecodeEstimate:
    """Estimate the FLOPs, peak memory and (on a CPU) time of decoding a latent of ``latent_shape``.

    Args:
        net: the decoder's network (on the device it will decode on; its weights are not changed). It may
            be built on the meta device (``with torch.device("meta"): net = ...``) to estimate a network too
            large to hold, e.g. the paper's at 4096² tiled: nothing is allocated and no time is estimated.
        latent_shape: (B, C, h, w) of the latent to decode.
        num_steps, sampler, text_cfg, latent_cfg: as :func:`pid.sampling.decode_latent` will run them.
        text_shape: (B, L, D) of the caption states, or None for a text-free decode.
        tile, tile_overlap: a tiled decode (output pixels), as ``decode(..., tile=...)``.
        probe: on a CPU, time one real step at a small size and one attention call to measure the FLOP
            rates (about a second for the quickstart's network); False leaves ``seconds`` None.
        rates: (FLOP/s, attention FLOP/s, how measured) of an earlier estimate, used instead of a probe.
        exact: False skips the 2-step run (half the time): the once-per-decode work is counted per forward
            and the state steps carry is taken as 3 RGB float32 maps (what Euler holds) — for searches.

    Returns a :class:`DecodeEstimate` (see the module docstring for what it counts and its biases).
    """
    device = next(net.parameters()).device
    b, c, h, w = (int(v) for v in latent_shape)
    kw = dict(sr_scale=sr_scale, latent_down=latent_down, sampler=sampler, text_cfg=text_cfg,
              latent_cfg=latent_cfg, tile=tile, tile_overlap=tile_overlap)
    text = None if text_shape is None else (b, *text_shape[1:])
    out_hw = (h * latent_down * sr_scale, w * latent_down * sr_scale)
    layout = None
    if tile is not None:
        from pid.tiling import first_tiles_only, plan_tiles

        layout = plan_tiles(out_hw, int(net.patch_size), tile, tile_overlap)  # refuses a bad tile here
    tiled = layout is not None and layout.tiled

    def run(n_tiles: int, steps: int):
        with first_tiles_only(n_tiles) if tiled else nullcontext():
            return _one_step(net, (b, c, h, w), device=device, shapes_only=True, text_shape=text, steps=steps,
                             **kw)[:3]

    # the cost of n tiles and s steps from three runs: what a decode computes once (the adapter's trunk or
    # features), per network forward, and per tile of a forward; the peak of a 2-step run holds what one
    # step carries to the next (the tiles run one after another, so two of them show a tiled decode's peak)
    f11, a11, p11 = run(1, 1)
    if num_steps > 1 and not exact:  # one run: the once-per-decode part counted per forward, and 3 maps
        per_fwd, per_fwd_attn, peak = f11, a11, p11 + 3 * b * 3 * out_hw[0] * out_hw[1] * 4  # carried
    elif num_steps > 1:
        extra = sampler_forwards(sampler, 2) - sampler_forwards(sampler, 1)
        f12, a12, peak = run(1, 2)
        per_fwd, per_fwd_attn = (f12 - f11) / extra, (a12 - a11) / extra
    else:  # a single forward: nothing to split off
        per_fwd, per_fwd_attn, peak = f11, a11, p11
    once, once_attn = f11 - per_fwd, a11 - per_fwd_attn
    if tiled:
        f21, a21, p21 = run(2, 1)
        n = len(layout.starts)
        per_fwd += (n - 1) * (f21 - f11)
        per_fwd_attn += (n - 1) * (a21 - a11)
        peak = max(peak, p21)
    forwards = sampler_forwards(sampler, num_steps)
    flops, attn = once + forwards * per_fwd, once_attn + forwards * per_fwd_attn
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    est = DecodeEstimate(out_hw, b, forwards, float(flops), int(peak), int(weights), str(device),
                         attention_flops=float(attn), tile=tile if tiled else None,
                         once_flops=float(once), once_attention_flops=float(once_attn))
    if rates is not None:
        return est.timed(*rates)
    if probe and device.type == "cpu":
        # a small real step: a 16×16-patch output (8×8 for large networks), one image
        patch = int(getattr(net, "patch_size", 16))
        cells = 16 if weights < 2e8 else 8
        unit = size_unit(latent_down, sr_scale, patch)
        side = max(1, round(cells * patch / (sr_scale * unit))) * unit // latent_down
        probe_shape = (1, c, side, side)
        ptext = None if text_shape is None else (1, *text_shape[1:])
        pkw = {**kw, "tile": None, "tile_overlap": None}
        pflops, pattn, _, seconds = _one_step(net, probe_shape, device=device, shapes_only=False,
                                              text_shape=ptext, **pkw)
        px = side * latent_down * sr_scale
        est.timed((pflops - pattn) / max(seconds, 1e-9), _attention_rate(net, device),
                  f"one real step at {px}×{px} px and one attention call on this machine "
                  f"({torch.get_num_threads()} threads)")
    return est


@dataclass
class Budget:
    """Limits a decode is checked against: ``seconds`` (CPU estimate; None: no limit) and ``memory_bytes``
    (None: ``MEMORY_SHARE`` of the device's available memory, :func:`available_memory`)."""

    seconds: float | None = CPU_TIME_BUDGET_S
    memory_bytes: float | None = None


def over_budget(est: DecodeEstimate, budget: Budget) -> list[str]:
    """Why ``est`` is over ``budget`` (one line per limit), or [] when it fits."""
    reasons = []
    if budget.seconds is not None and est.seconds is not None and est.seconds > budget.seconds:
        reasons.append(f"time: about {_duration(est.seconds)} on {est.device}, over the budget of "
                       f"{_duration(budget.seconds)}")
    limit = budget.memory_bytes
    if limit is None:
        avail = available_memory(est.device)
        limit = None if avail is None else MEMORY_SHARE * avail
        where = f"{MEMORY_SHARE:.0%} of the {_gb(avail)} available on {est.device}" if avail else ""
    else:
        where = "the memory budget"
    if limit is not None and est.memory_bytes > limit:
        reasons.append(f"memory: about {_gb(est.memory_bytes)}, over {_gb(limit)} ({where})")
    return reasons


def cost_ratio(est: DecodeEstimate, budget: Budget) -> float:
    """The budget over the estimate for the limit that binds most (< 1 when over), memory without the
    weights (which do not shrink with the image)."""
    ratios = [1.0]
    if budget.seconds is not None and est.seconds:
        ratios.append(budget.seconds / est.seconds)
    limit = budget.memory_bytes
    if limit is None:
        avail = available_memory(est.device)
        limit = None if avail is None else MEMORY_SHARE * avail
    if limit is not None and est.memory_bytes > limit:
        ratios.append(max(limit - est.weight_bytes, 0.0) / max(est.peak_bytes, 1))
    return max(min(ratios), 0.0)


def fit_scale(est: DecodeEstimate, budget: Budget, margin: float = 1.0, inexact: bool = False) -> float:
    """The side scale s (≤ 1) at which ``est``'s decode would be about ``margin`` of ``budget``, from its
    cost curve: time(s) = a·s² + b·s⁴ (a: the seconds of everything but attention, which grows with the
    pixels; b: attention's, which grows with their square), memory(s) = weights + peak·s².

    ``inexact``: the curve of what an ``exact=False`` estimate counts (the once-per-decode work once per
    forward), which is what :func:`guard_decode` checks the answer with. Fixed costs and rounding to whole
    latent cells are not in the curve: callers check the size it gives with an estimate."""
    scales = [1.0]
    if budget.seconds is not None and est.seconds and est.flop_rate:
        extra = est.forwards - 1 if inexact else 0
        dense = est.flops - est.attention_flops + extra * (est.once_flops - est.once_attention_flops)
        attn = est.attention_flops + extra * est.once_attention_flops
        a = max(dense, 0.0) / est.flop_rate
        b = max(attn, 0.0) / est.attention_rate if est.attention_rate else 0.0
        t = margin * budget.seconds
        if b <= 0:
            x = t / a if a > 0 else 1.0
        else:  # the positive root of b·x² + a·x - t, x = s², written to stay exact when b·t ≪ a²
            x = 2 * t / (a + math.sqrt(a * a + 4 * b * t))
        scales.append(math.sqrt(max(x, 0.0)))
    limit = budget.memory_bytes
    if limit is None:
        avail = available_memory(est.device)
        limit = None if avail is None else MEMORY_SHARE * avail
    if limit is not None and est.memory_bytes > margin * limit:
        scales.append(math.sqrt(max(margin * limit - est.weight_bytes, 0.0) / max(est.peak_bytes, 1)))
    return max(min(scales), 0.0)


def estimate_for_decoder(decoder, latent_shape: tuple[int, int, int, int], *, num_steps: int | None = None,
                         sampler: str | None = None, latent_cfg: float | None = None,
                         text_cfg: float | None = None, tile: int | None = None,
                         tile_overlap: int | None = None, probe: bool = True,
                         rates: tuple[float, float, str] | None = None, exact: bool = True) -> DecodeEstimate:
    """:func:`estimate_decode` with a :class:`pid.api.PiDDecoder`'s sampling defaults (None: the decoder's,
    as ``decoder.decode`` takes them) and its caption states' shape."""
    sampling = decoder.sampling
    sampler = sampler or sampling.get("sampler") or "euler"
    num_steps = num_steps or sampling.get("num_steps") or 1
    text = decoder.text
    text_shape = None
    if text.get("uses_text") and text.get("max_length") and text.get("dim"):
        text_shape = (latent_shape[0], int(text["max_length"]), int(text["dim"]))
    return estimate_decode(
        decoder.net, latent_shape, sr_scale=decoder.sr_scale, latent_down=decoder.latent.down_factor,
        num_steps=int(num_steps), sampler=sampler,
        text_cfg=sampling.get("text_cfg", 1.0) if text_cfg is None else text_cfg,
        latent_cfg=sampling.get("latent_cfg", 1.0) if latent_cfg is None else latent_cfg,
        text_shape=text_shape, tile=tile, tile_overlap=tile_overlap, probe=probe, rates=rates, exact=exact)


@dataclass
class GuardResult:
    """A checked decode: its estimate, and when over budget the reasons, a smaller latent grid that fits
    (``fit_latent_hw``, with its estimate) and a tile that bounds the memory (``fit_tile``, pixels, with
    its estimate)."""

    estimate: DecodeEstimate
    reasons: list[str]
    fit_latent_hw: tuple[int, int] | None = None
    fit_estimate: DecodeEstimate | None = None
    fit_tile: int | None = None
    fit_tile_estimate: DecodeEstimate | None = None


def guard_decode(decoder, latent_shape: tuple[int, int, int, int], budget: Budget,
                 **decode_kw) -> GuardResult:
    """Estimate a decode (:func:`estimate_for_decoder`) and check it against ``budget``.

    When it is over: about the largest latent grid of the same aspect that fits — the side scale solved
    from the estimate's cost curve (:func:`fit_scale`: time ∝ a·s² + b·s⁴, the attention part growing with
    the square of the pixels, memory ∝ s²), checked by one estimate from shapes and the probe's rates
    (``exact=False``) and, if that one is over, solved again from it (its own curve, at most two in all) —
    and, when memory is over, a power-of-two tile whose decode fits the memory budget (one tiled estimate,
    halved once if over). Callers phrase the ways on in their own terms (command-line flags, config keys)
    from the :class:`GuardResult`.
    """
    est = estimate_for_decoder(decoder, latent_shape, **decode_kw)
    result = GuardResult(est, over_budget(est, budget))
    if not result.reasons:
        return result
    rates = (est.flop_rate, est.attention_rate, est.probe) if est.flop_rate else None
    b, c, h, w = latent_shape

    def fits(scale):
        hw = (max(1, int(h * scale)), max(1, int(w * scale)))
        cur = estimate_for_decoder(decoder, (b, c, *hw), probe=False, rates=rates, exact=False, **decode_kw)
        return hw, cur, not over_budget(cur, budget)

    scale, base, prev_hw = 1.0, est, None
    for _ in range(2):
        # solved on ``base``'s curve; the second try is solved on the first's, a point next to the answer
        scale *= fit_scale(base, budget, margin=0.98 if base is est else 0.95, inexact=base is est)
        hw, cur, ok = fits(scale)
        if ok:
            result.fit_latent_hw, result.fit_estimate = hw, cur
            break
        if hw == (1, 1) or hw == prev_hw:
            break
        base, prev_hw, scale = cur, hw, math.sqrt(hw[0] * hw[1] / (h * w))  # the scale it was estimated at
    if any(r.startswith("memory") for r in result.reasons) and decode_kw.get("tile") is None:
        # a first guess from the whole decode's bytes per pixel, checked by a tiled estimate (halved once)
        patch = int(getattr(decoder.net, "patch_size", 16))
        limit = budget.memory_bytes or MEMORY_SHARE * (available_memory(est.device) or 0)
        per_pixel = est.peak_bytes / max(est.pixels, 1)
        side = math.sqrt(max(limit - est.weight_bytes, 0) / 2 / per_pixel) if per_pixel else 0
        tile = 2 ** int(math.log2(side)) if side >= patch else 0
        for tile in (tile, tile // 2):
            if tile < patch or tile % patch or tile >= max(est.output_hw):
                continue
            tiled = estimate_for_decoder(decoder, latent_shape, probe=False, rates=rates, exact=False,
                                         **{**decode_kw, "tile": tile, "tile_overlap": None})
            if not any(r.startswith("memory") for r in over_budget(tiled, Budget(None, budget.memory_bytes))):
                result.fit_tile, result.fit_tile_estimate = tile, tiled
                break
    return result


__all__ = ["Budget", "CPU_TIME_BUDGET_S", "DecodeEstimate", "GuardResult", "MEMORY_SHARE", "OverBudgetError",
           "PeakTensorMemory", "SizePlan", "available_memory", "check_crop_size", "estimate_decode",
           "estimate_for_decoder", "cost_ratio", "fit_scale",
           "guard_decode", "over_budget", "plan_input_size",
           "sampler_forwards", "size_unit"]
