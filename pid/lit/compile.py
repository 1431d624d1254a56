"""``compile:`` switch of conf/train.yaml: ``torch.compile`` the network in place.

``nn.Module.compile`` keeps the parameter names (no ``_orig_mod.`` prefix), so checkpoints, EMA and the
exported decoder are the same with and without compilation. Variable aspect-ratio buckets give a few
shapes: ``dynamic: null`` lets torch mark them dynamic after the first recompile.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def compile_net(module: Any, spec: Any) -> bool:
    """Compile ``module.net`` per ``spec`` (false | true | {enabled, backend, mode, fullgraph, dynamic})."""
    if not spec:
        return False
    opts = {} if spec is True else {k: v for k, v in dict(spec).items() if v is not None}
    if not opts.pop("enabled", True):
        return False
    net = getattr(module, "net", None)
    if net is None:
        raise ValueError("compile: the module has no `net` to compile")
    net.compile(**opts)
    log.info("torch.compile: %s (%s)", type(net).__name__, opts or "defaults")
    return True
