"""Import NVIDIA's own network files (a checkout of nv-tlabs/PiD) beside this project, for parity checks.

The official files import framework pieces (context parallelism, logging) that are not needed to run the
networks; :func:`official_networks` puts small stand-ins for them in ``sys.modules`` while the modules are
in use and removes everything it added afterwards. Nothing of the official code is part of this project.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

# framework modules the official network files import, and the attributes they use
STUBS: dict[str, dict] = {
    "pid._src": {},
    "pid._src.utils": {},
    "pid._src.utils.context_parallel": {"cat_outputs_cp_with_grad": None, "split_inputs_cp": None},
    "pid._ext": {},
    "pid._ext.imaginaire": {},
    "pid._ext.imaginaire.utils": {"log": types.SimpleNamespace(info=lambda *a, **k: None)},
    "pid._src.networks": {},
}
MODULES = ("pixeldit_official", "lq_projection_2d", "pid_net")


@contextlib.contextmanager
def official_networks(directory: str | Path) -> Iterator[dict[str, types.ModuleType]]:
    """``{"pixeldit_official", "lq_projection_2d", "pid_net"}`` → module, from ``pid/_src/networks``.

    The official PidNet imports lazily, so keep the context open while its networks run.
    """
    directory = Path(directory)
    added: list[str] = []
    try:
        for name, attrs in STUBS.items():
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
            for key, value in attrs.items():
                setattr(sys.modules[name], key, value)
        mods = {}
        for name in MODULES:
            full = f"pid._src.networks.{name}"
            spec = importlib.util.spec_from_file_location(full, directory / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            added.append(full)
            spec.loader.exec_module(mod)
            mods[name] = mod
        yield mods
    finally:
        for name in added:
            sys.modules.pop(name, None)
