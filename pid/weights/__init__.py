"""Weights in and out: one strict loader for every file the framework reads, release presets, export.

    from pid.weights import load_weights, read_weights, load_release, export_release
"""

from pid.weights.formats import EXPORT_FORMAT, WeightsFile, read_weights
from pid.weights.load import LoadReport, load_weights, part_of
from pid.weights.official import convert_official_state_dict, net_config_from_official

__all__ = [
    "EXPORT_FORMAT",
    "LoadReport",
    "WeightsFile",
    "convert_official_state_dict",
    "load_weights",
    "net_config_from_official",
    "part_of",
    "read_weights",
]
