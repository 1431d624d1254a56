"""Errors that tell the user what is wrong and which setting fixes it."""

from __future__ import annotations


class PiDConfigError(ValueError):
    """A configuration that cannot work; the message names the key to change."""


class MissingWeightsError(FileNotFoundError):
    """Weights a run needs are not on disk.

    The message names the config key to set, the files expected there and where
    the weights come from, so that the fix is one override away.
    """

    def __init__(self, what: str, config_key: str, expected: str, source: str | None = None, path=None):
        self.config_key = config_key
        lines = [f"{what}: weights not found" + (f" at '{path}'" if path else "") + "."]
        lines.append(f"Set `{config_key}=/path/to/weights` (expected: {expected}).")
        if source:
            lines.append(f"Get them from {source}.")
        super().__init__(" ".join(lines))

    @classmethod
    def with_message(cls, message: str, config_key: str) -> "MissingWeightsError":
        err = cls.__new__(cls)
        FileNotFoundError.__init__(err, message)
        err.config_key = config_key
        return err
