"""Lightning's messages reach the run's handlers (Hydra's console and train.log) once, not twice."""

from __future__ import annotations

import logging

import lightning.pytorch  # noqa: F401  (adds Lightning's own console handlers)

from pid.utils.loggers import route_lightning_logs_to_root


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_lightning_messages_reach_the_root_handlers_once(monkeypatch):
    root = logging.getLogger()
    collect = _Collect()
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    root.addHandler(collect)
    try:
        route_lightning_logs_to_root()
        for n in names:
            assert not any(type(h) is logging.StreamHandler for h in logging.getLogger(n).handlers), n
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("GPU available: False")
        assert collect.messages == ["GPU available: False"]
    finally:
        root.removeHandler(collect)
        for n, (handlers, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.propagate = propagate
