"""Evaluation samples that represent the data: seeded draws across groups, and honest counts.

A crop's key is ``<image key>@<y>,<x>`` (:class:`pid.data.image_folder.FixedCropDataset`,
:class:`pid.data.shard_val.FixedCropShardDataset`): crops of one image share the part before ``@``.
Capping an evaluation at N crops by taking the first N lets whichever images come first (e.g. two PDF pages
sorted before three photos) fill the whole sample; :func:`representative_indices` draws across groups
instead, each in proportion to its size.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch

import torch


def image_key(crop_key: str) -> str:
    """The image a crop was cut from (the part of its key before ``@``)."""
    return str(crop_key).split("@")[0]


def group_of(keys: list[str], patterns: dict[str, str] | None = None) -> list[str]:
    """The group of each crop: the first ``fnmatch`` pattern of ``patterns`` its image key matches, else
    "other"; without patterns, the crop's image."""
    images = [image_key(k) for k in keys]
    if not patterns:
        return images
    return [next((str(name) for name, pat in patterns.items() if fnmatch(img, str(pat))), "other")
            for img in images]


def representative_indices(keys: list[str], n: int | None, patterns: dict[str, str] | None = None,
                           seed: int = 0) -> list[int]:
    """Indices (sorted) of at most ``n`` crops drawn across groups (:func:`group_of`) in proportion to their
    sizes (largest remainder, every group at least one crop while ``n`` allows), seeded; within a group,
    spread over its images the same way. ``n`` None or ≥ len(keys): every index.

    Raises ValueError for ``n`` < 1."""
    total = len(keys)
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise ValueError(f"a sample needs at least 1 crop, got {n}")
    groups = group_of(keys, patterns)
    g = torch.Generator().manual_seed(int(seed))
    return sorted(_draw(list(range(total)), groups, n, g, inner=None if not patterns else keys))


def _draw(items: list[int], labels: list[str], n: int, g: torch.Generator, inner) -> list[int]:
    by: dict[str, list[int]] = {}
    for item, label in zip(items, labels):
        by.setdefault(label, []).append(item)
    quota = _allocate({k: len(v) for k, v in by.items()}, n, g)
    out = []
    for label, members in by.items():
        k = quota[label]
        if k == 0:
            continue
        if inner is not None:  # spread a group's share over its images
            out += _draw(members, [image_key(inner[i]) for i in members], k, g, None)
        else:
            pick = torch.randperm(len(members), generator=g)[:k].tolist()
            out += [members[i] for i in pick]
    return out


def _allocate(sizes: dict[str, int], n: int, g: torch.Generator) -> dict[str, int]:
    """Largest-remainder shares of ``n`` in proportion to ``sizes``, at least 1 each while n allows (ties
    and the groups left out when n < groups: seeded)."""
    total = sum(sizes.values())
    names = list(sizes)
    if n < len(names):
        chosen = {names[i] for i in torch.randperm(len(names), generator=g)[:n].tolist()}
        return {k: int(k in chosen) for k in names}
    exact = {k: n * v / total for k, v in sizes.items()}
    share = {k: max(1, min(sizes[k], math.floor(exact[k]))) for k in names}
    while sum(share.values()) > n:  # the floor of one each overshot: take back from the largest
        k = max((k for k in names if share[k] > 1), key=lambda k: share[k] - exact[k])
        share[k] -= 1
    tie = {k: float(torch.rand(1, generator=g)) for k in names}
    order = sorted(names, key=lambda k: (exact[k] - share[k], tie[k]), reverse=True)
    while sum(share.values()) < n:
        k = next(k for k in order if share[k] < sizes[k])
        share[k] += 1
        order.remove(k)
        order.append(k)
    return share


def count_line(keys: list[str], patterns: dict[str, str] | None = None) -> str:
    """"30 crops from 5 images" (and, with ``patterns``, the crops per group: "photos 18, text_pages 12")."""
    images = {image_key(k) for k in keys}
    line = f"{len(keys)} crop{'s' * (len(keys) != 1)} from {len(images)} image{'s' * (len(images) != 1)}"
    if patterns:
        groups = group_of(keys, patterns)
        counts = {name: groups.count(name) for name in dict.fromkeys(groups)}
        line += " (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"
    return line
