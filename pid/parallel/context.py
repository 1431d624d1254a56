"""Context parallelism (CP): one sample's token sequence split across the ranks of a CP group.

Data parallelism (DP) gives each rank its own samples; context parallelism gives each rank of a CP group
a slice of the *same* sample, so an image whose activations do not fit one device is spread over several.
The ranks form a 2-D :class:`~torch.distributed.device_mesh.DeviceMesh` of shape (DP, CP), dims named
``("dp", "cp")``: ranks ``d·CP … d·CP + CP − 1`` (consecutive, so a CP group sits on one node) make up CP
group ``d``; data is sharded over the ``dp`` dim only.

How a PiD network runs under CP (``net(x, t, ..., context=cp)``, :mod:`pid.nn.pixel_dit`):

* every rank gets the whole input (image x_t, t, σ, latent, text) — the same on all ranks of the group;
* the patch grid (Hp, Wp) is split by rows: rank r keeps patch rows ``[r·Hp/CP, (r+1)·Hp/CP)``, i.e. its
  slice of the row-major patch-token sequence and the pixel tokens of those patches (image rows
  ``[r·H/CP, (r+1)·H/CP)``);
* text tokens and the latent adapter are computed whole on every rank (replicated, they are small); the
  adapter's per-token features are sliced to the rank's tokens;
* RoPE tables are built for the global grid and sliced, the pixel tokens' sin/cos positions are offset
  by the rank's first image row, so every token sees its global position;
* attention: queries stay local; image keys and values are all-gathered over the group (as NVIDIA's PiD
  does) with an autograd-aware collective (``torch.distributed._functional_collectives.all_gather_single``,
  whose backward is a summing reduce-scatter), text keys/values are replicated;
* the output (velocity, discriminator features) is all-gathered the same way, so losses and samplers see
  whole tensors and are unchanged: the loss is normalised over the whole sample by construction.

Gradients: every rank computes the loss of its whole sample, and the gather's backward sums the ranks'
gradients, so the gradients of a CP group *summed* over its ranks are CP × the sample's gradient; DDP and
FSDP *average* gradients over all DP × CP ranks, which gives exactly the data-parallel gradient of the DP
groups' samples. No extra scaling is needed.

Randomness: the batch and the random state of every draw of a step (t, σ, dropout masks, noise) are
broadcast from the group's first rank (:meth:`ContextParallel.broadcast_batch`,
:meth:`ContextParallel.sync_rng`), so a DP 1 × CP N run draws what a single process draws.

Sources: the sequence split and K/V all-gather follow NVIDIA's PiD / imaginaire context parallelism
(nv-tlabs/PiD, ``pid/_src/utils/context_parallel.py``, configs with ``context_parallel_size``), built here
on PyTorch's DeviceMesh and functional collectives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.distributed as dist

MESH_DIMS = ("dp", "cp")
#: The config key that sets the CP size of a training run.
CONFIG_KEY = "trainer.context_parallel"

_ACTIVE: "ContextParallel | None" = None


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` (n ≥ 1), ascending."""
    return [d for d in range(1, int(n) + 1) if n % d == 0]


def split_problem(grid_rows: int, size: int, *, patch_size: int | None = None) -> str | None:
    """Why ``grid_rows`` patch rows cannot be split evenly over ``size`` ranks, or None when they can.

    The message names the CP sizes that divide the grid and, with ``patch_size``, the image heights that
    work with ``size``.
    """
    if size < 1:
        return f"a context-parallel size must be >= 1, got {size}"
    if grid_rows % size == 0:
        return None
    what = f"{grid_rows} patch rows" + (f" ({grid_rows * patch_size} px)" if patch_size else "")
    works = ", ".join(str(d) for d in divisors(grid_rows))
    msg = f"{what} do not split evenly over {size} context-parallel ranks; sizes that work: {works}"
    if patch_size:
        step = size * patch_size
        lo = max(step, grid_rows * patch_size // step * step)
        msg += f"; or image heights that are multiples of {step} px (e.g. {lo} or {lo + step})"
    return msg


@dataclass(frozen=True)
class ContextParallel:
    """This rank's place in a CP group and the collectives a CP forward needs.

    Args:
        group: the CP process group (``mesh.get_group("cp")``).
        size: ranks in the group (≥ 1).
        rank: this rank's index in the group (0 … size − 1).
        mesh: the (dp, cp) DeviceMesh it came from, or None.
        dp_rank, dp_size: this rank's DP group index and the number of DP groups.
    """

    group: Any
    size: int
    rank: int
    mesh: Any = None
    dp_rank: int = 0
    dp_size: int = 1
    _leader: int = field(default=0, repr=False)  # global rank of the group's first rank

    # ------------------------------------------------------------------ sequence split
    def rows(self, grid_rows: int, patch_size: int | None = None) -> tuple[int, int]:
        """[start, stop) of this rank's patch rows out of ``grid_rows``.

        Raises:
            ValueError: when ``grid_rows`` is not a multiple of ``size`` (naming the sizes that work).
        """
        problem = split_problem(grid_rows, self.size, patch_size=patch_size)
        if problem:
            raise ValueError(problem)
        n = grid_rows // self.size
        return self.rank * n, (self.rank + 1) * n

    def token_range(self, grid: tuple[int, int]) -> tuple[int, int]:
        """[start, stop) of this rank's tokens in the row-major sequence of a (Hp, Wp) patch grid."""
        r0, r1 = self.rows(grid[0])
        return r0 * grid[1], r1 * grid[1]

    def shard_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, Hp·Wp, ...) → (B, Hp·Wp / size, ...): this rank's slice of a whole sequence (dim 1)."""
        a, b = self.token_range(grid)
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"expected {grid[0] * grid[1]} tokens for grid {grid}, "
                             f"got {tuple(tokens.shape)}")
        return tokens[:, a:b]

    def shard_freqs(self, freqs: tuple[torch.Tensor, torch.Tensor],
                    grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) tables of the global grid, (Hp·Wp, d) each → this rank's rows."""
        a, b = self.token_range(grid)
        return freqs[0][a:b], freqs[1][a:b]

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Concatenate the group's equal-sized slices of ``x`` along ``dim``, in rank order.

        Autograd-aware: the backward sums every rank's gradient of the whole tensor and hands each rank
        its slice (a reduce-scatter), which is what makes the CP gradients add up.
        """
        if self.size == 1:
            return x
        from torch.distributed._functional_collectives import all_gather_single, wait_tensor

        moved = x.movedim(dim, 0).contiguous()
        return wait_tensor(all_gather_single(moved, 0, self.group)).movedim(0, dim)

    def gather_kv(self, k: torch.Tensor, v: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention hook: this rank's keys and values (sequence along ``dim``) → the whole sequence's.

        One collective for both: they are stacked before the gather.
        """
        if self.size == 1:
            return k, v
        kv = self.gather(torch.stack([k, v]), dim + 1)
        return kv[0], kv[1]

    # ------------------------------------------------------------------ same inputs on every rank
    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the group's first rank holds it (same shape and dtype on every rank), in place."""
        if self.size > 1:
            dist.broadcast(tensor, src=self._leader, group=self.group)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """A picklable object as the group's first rank holds it."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=self._leader, group=self.group)
        return box[0]

    def broadcast_batch(self, batch: dict) -> dict:
        """The group's first rank's batch on every rank: tensors broadcast (shapes first), the rest pickled.

        Batches with ragged sizes across ranks are fine: each tensor is resized to the leader's shape.
        """
        if self.size == 1:
            return batch
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        meta = self.broadcast_object({"shapes": {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()},
                                      "rest": {k: v for k, v in batch.items() if k not in tensors}})
        out = dict(meta["rest"])
        for k, (shape, dtype) in meta["shapes"].items():
            mine = tensors.get(k)
            device = mine.device if mine is not None else torch.device("cpu")
            same = mine is not None and tuple(mine.shape) == shape and mine.dtype == dtype
            buf = mine.contiguous() if same else torch.empty(shape, dtype=dtype, device=device)
            out[k] = self.broadcast(buf)
        return out

    def sync_rng(self, device: torch.device | str | None = None,
                 generators: Sequence[torch.Generator] = ()) -> None:
        """Give every rank the random state of the group's first rank: the global CPU generator, the
        current CUDA device's when ``device`` is CUDA, and ``generators``; every later draw then agrees."""
        if self.size == 1:
            return
        states = [torch.get_rng_state()] + [g.get_state() for g in generators]
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            states.append(torch.cuda.get_rng_state())
        states = self.broadcast_object(states)
        torch.set_rng_state(states[0])
        for g, s in zip(generators, states[1:1 + len(generators)]):
            g.set_state(s)
        if cuda:
            torch.cuda.set_rng_state(states[-1])

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) value over the group, e.g. a logged loss."""
        if self.size == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, group=self.group)
        return out / self.size


# ---------------------------------------------------------------------- building the mesh
def init_context_parallel(size: int, device_type: str | None = None) -> ContextParallel:
    """Build the (dp, cp) DeviceMesh over the default process group and return this rank's CP view.

    Args:
        size: CP ranks per group; must divide the world size.
        device_type: "cuda" or "cpu" (default: "cuda" when available and the backend is NCCL, else "cpu").

    Raises:
        RuntimeError: no process group is initialised (run under torchrun or a Lightning strategy).
        ValueError: ``size`` does not divide the world size (naming the sizes that do).
    """
    global _ACTIVE
    size = int(size)
    if not (dist.is_available() and dist.is_initialized()):
        if size == 1:
            _ACTIVE = ContextParallel(group=None, size=1, rank=0)
            return _ACTIVE
        raise RuntimeError(f"context parallelism over {size} ranks needs an initialised process group: run "
                           "under torchrun (or a DDP/FSDP trainer)")
    world = dist.get_world_size()
    if size < 1 or world % size:
        raise ValueError(f"{CONFIG_KEY}={size} must divide the world size {world}; sizes that work: "
                         f"{', '.join(str(d) for d in divisors(world))}")
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (world // size, size), mesh_dim_names=MESH_DIMS)
    group = mesh.get_group("cp")
    ranks = dist.get_process_group_ranks(group)
    _ACTIVE = ContextParallel(group=group, size=size, rank=mesh.get_local_rank("cp"), mesh=mesh,
                              dp_rank=mesh.get_local_rank("dp"), dp_size=world // size, _leader=min(ranks))
    return _ACTIVE


def init_from_environment(size: int, device: torch.device | str = "cpu") -> ContextParallel:
    """The process group of ``torchrun`` (its RANK / WORLD_SIZE / MASTER_* variables: NCCL on CUDA, gloo on
    the CPU) and the CP layout over all of its ranks (one group: DP 1 × CP ``size``), for decoding.

    Raises:
        ValueError: the world size is not ``size`` (naming how to start it).
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != int(size):
        raise ValueError(f"--context-parallel {size} splits each image over {size} processes, but "
                         f"{world} were started: run `torchrun --nproc_per_node {size} -m pid.decode ...`")
    device = torch.device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return init_context_parallel(int(size), device.type)


def active() -> ContextParallel | None:
    """The CP layout built last in this process (:func:`init_context_parallel`), or None."""
    return _ACTIVE


def reset() -> None:
    """Forget the active layout (after the process group is destroyed)."""
    global _ACTIVE
    _ACTIVE = None


def data_parallel_rank_world() -> tuple[int, int]:
    """(rank, world) to shard data over: the DP coordinates under CP, else the process group's."""
    if _ACTIVE is not None and _ACTIVE.size > 1:
        return _ACTIVE.dp_rank, _ACTIVE.dp_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------- config time
def check_config(cfg) -> None:
    """``trainer.context_parallel`` against the rest of a training config, before anything is built.

    Checks: a whole number ≥ 1; > 1 only under a multi-process strategy (trainer=ddp / fsdp /
    ddp_multinode); the world size (``trainer.devices`` × ``trainer.num_nodes``, when both are numbers) a
    multiple of it; the training crop's patch rows (``data.crop_size`` / patch size) and, with aspect-ratio
    buckets, every bucket side (multiples of ``data.buckets.multiple``) splitting evenly.

    Raises:
        PiDConfigError: naming the key, its value and the values that work.
    """
    from omegaconf import OmegaConf

    from pid.utils.errors import PiDConfigError

    size = OmegaConf.select(cfg, CONFIG_KEY, default=1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise PiDConfigError(f"{CONFIG_KEY}={size!r} must be a whole number >= 1 (1: no context parallelism)")
    if size == 1:
        return
    strategy = OmegaConf.select(cfg, "trainer.strategy", default=None)
    name = strategy if isinstance(strategy, str) else (OmegaConf.select(cfg, "trainer.strategy._target_",
                                                                        default="") or "")
    if not ("ddp" in str(name) or "fsdp" in str(name)):
        raise PiDConfigError(f"{CONFIG_KEY}={size} splits each sample over {size} processes: use "
                             "trainer=ddp, trainer=fsdp or trainer=ddp_multinode (this trainer runs one)")
    devices = OmegaConf.select(cfg, "trainer.devices", default=None)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) and nodes > 0:
        world = devices * nodes
        if world % size:
            works = ", ".join(str(d) for d in divisors(world))
            raise PiDConfigError(f"{CONFIG_KEY}={size} must divide the world size trainer.devices × "
                                 f"trainer.num_nodes = {devices} × {nodes} = {world}; "
                                 f"sizes that work: {works}")
    patch = OmegaConf.select(cfg, "model.net.patch_size", default=None)
    if not isinstance(patch, int):
        return
    crop = OmegaConf.select(cfg, "data.crop_size", default=None)
    if isinstance(crop, int) and crop % patch == 0:
        problem = split_problem(crop // patch, size, patch_size=patch)
        if problem:
            raise PiDConfigError(f"data.crop_size={crop} with {CONFIG_KEY}={size}: {problem}")
    buckets = OmegaConf.select(cfg, "data.buckets", default=None) or {}
    multiple = buckets.get("multiple")
    if buckets.get("kind", "single") != "single" and isinstance(multiple, int) and multiple % (patch * size):
        raise PiDConfigError(
            f"data.buckets.multiple={multiple} with {CONFIG_KEY}={size}: bucket heights are multiples of "
            f"{multiple} px, which does not always split into {size} equal rows of {patch}-px patches; set "
            f"data.buckets.multiple to a multiple of {patch * size}")


# ---------------------------------------------------------------------- Lightning strategies
class _ContextParallelStrategy:
    """Mixed into a Lightning DDP/FSDP strategy: builds the mesh once the process group exists and
    shards data over the ``dp`` mesh dim only. ``context_parallel`` is the rank's :class:`ContextParallel`."""

    context_parallel_size: int = 1
    context_parallel: ContextParallel | None = None

    def setup_environment(self) -> None:
        super().setup_environment()
        self.context_parallel = init_context_parallel(self.context_parallel_size, self.root_device.type)

    @property
    def distributed_sampler_kwargs(self) -> dict:
        kwargs = dict(super().distributed_sampler_kwargs)
        cp = self.context_parallel
        if cp is not None and cp.size > 1:
            kwargs.update(num_replicas=cp.dp_size, rank=cp.dp_rank)
        return kwargs


_CP_CLASSES: dict[type, type] = {}


def context_parallel_strategy(strategy, size: int):
    """A Lightning DDP or FSDP strategy (an object or a registered name such as
    ``"ddp_find_unused_parameters_true"``) made context-parallel over ``size`` ranks: an object of a subclass
    (:class:`_ContextParallelStrategy` mixed in) with the same settings, for ``Trainer(strategy=...)``.

    Raises:
        PiDConfigError: the strategy is neither DDP nor FSDP (naming the trainer configs that are).
    """
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry

    from pid.utils.errors import PiDConfigError

    if isinstance(strategy, str):
        if strategy not in StrategyRegistry:
            raise PiDConfigError(f"{CONFIG_KEY}={size} needs trainer=ddp or trainer=fsdp, not strategy "
                                 f"{strategy!r}")
        strategy = StrategyRegistry.get(strategy)
    if not isinstance(strategy, (DDPStrategy, FSDPStrategy)):
        raise PiDConfigError(f"{CONFIG_KEY}={size} needs trainer=ddp or trainer=fsdp, not "
                             f"{type(strategy).__name__}")
    cls = type(strategy)
    if not issubclass(cls, _ContextParallelStrategy):
        if cls not in _CP_CLASSES:
            _CP_CLASSES[cls] = type(f"ContextParallel{cls.__name__}", (_ContextParallelStrategy, cls), {})
        cp_cls = _CP_CLASSES[cls]
        obj = cp_cls.__new__(cp_cls)
        obj.__dict__.update(vars(strategy))  # the same settings (plain attributes of the strategy object)
        strategy = obj
    strategy.context_parallel_size = int(size)
    return strategy


def of_trainer(trainer) -> ContextParallel | None:
    """The CP view of a trainer whose strategy is context-parallel over > 1 ranks, else None."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    cp = getattr(strategy, "context_parallel", None)
    return cp if cp is not None and cp.size > 1 else None
