"""Plain Python containers from config objects (for files read with ``torch.load(weights_only=True)``)."""

from __future__ import annotations


def plain_container(value):
    """OmegaConf containers → dicts/lists, recursively (other values unchanged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain_container(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_container(v) for v in value)
    return value
