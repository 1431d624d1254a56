"""Deterministic, atomic tar shards: same samples in → byte-identical tar out.

Members are written in the given order with fixed metadata (mtime 0, uid/gid 0, mode 0444,
no user names), USTAR/GNU as tarfile chooses for the name length; the tar goes to
``<name>.tmp``, is fsynced and then renamed, so a reader never sees a half-written shard.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
    return ti


def write_tar_atomic(
    path: str | os.PathLike,
    members: Iterable[tuple[str, bytes]],
    on_member: Callable[[int], None] | None = None,
) -> int:
    """Write ``(name, data)`` members to ``path`` atomically; returns the tar's size in bytes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for i, (name, data) in enumerate(members):
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
                if on_member is not None:
                    f.flush()
                    on_member(i)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size
