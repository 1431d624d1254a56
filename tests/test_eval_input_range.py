"""One input convention for every metric (pid.eval.images): uint8 [0, 255] or floats in [-1, 1].

uint8 is converted; floats outside [-1, 1] are refused with a message that names the range (a [0, 255]
float batch used to be clamped to white and scored as such).
"""

import pytest
import torch

from pid.eval.functional import PSNR_CAP_DB, inception_feature_distance, psnr, ssim
from pid.eval.images import as_metric_images

RANGE = r"\[-1, 1\]"


@pytest.fixture(scope="module")
def u8() -> torch.Tensor:
    """4 random 32×32 pictures."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_inception_feature_distance_refuses_0_255_floats_and_converts_uint8(u8, inception_weights):
    from pid.eval.inception import inception_feature_extractor

    extractor = inception_feature_extractor(inception_weights)
    with pytest.raises(ValueError, match=RANGE) as err:
        inception_feature_distance(u8.float(), u8, extractor)  # was 335.3: floats above 1 clamped to white
    assert "uint8" in str(err.value)
    signed = u8.double() / 127.5 - 1
    assert inception_feature_distance(signed, u8, extractor).item() == pytest.approx(0.0, abs=1e-9)
    assert inception_feature_distance(u8, signed, extractor).item() == pytest.approx(0.0, abs=1e-9)


def test_psnr_ssim_and_clip_score_follow_the_same_convention(u8):
    from pid.eval.clip_score import build_clip_scorer

    signed = u8.double() / 127.5 - 1
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match=RANGE):
            metric(u8.float(), u8)
        with pytest.raises(ValueError, match=RANGE):
            metric(u8, u8.float())
    assert psnr(signed, u8).item() == pytest.approx(PSNR_CAP_DB)  # the same pictures: the 8-bit cap
    assert ssim(signed, u8) == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(0)
    clip = build_clip_scorer(model_cfg={
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}})
    captions = ["a picture"] * len(u8)
    with pytest.raises(ValueError, match=RANGE):
        clip(u8.float(), captions)
    assert clip(u8, captions) == pytest.approx(clip(signed.float(), captions), abs=1e-4)


def test_the_metric_suite_gates_every_registered_metric(u8):
    from pid.eval.metrics import PSNR, SSIM
    from pid.eval.registry import EvalContext, MetricSuite

    ctx = EvalContext(as_metric_images(u8), ["a picture"] * 4)
    suite = MetricSuite({"psnr": PSNR(), "ssim": SSIM()}, ctx)
    with pytest.raises(ValueError, match=RANGE):
        suite(u8.float())
    assert suite(u8)["psnr"] == pytest.approx(PSNR_CAP_DB)
    assert suite(u8)["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_the_converter_itself():
    x = torch.zeros(1, 3, 2, 2)
    assert as_metric_images(x + 1.005).max().item() == 1.0  # rounding slack of one uint8 step: clamped
    with pytest.raises(ValueError, match=RANGE):
        as_metric_images(x - 1.1)
    with pytest.raises(ValueError, match="non-finite"):
        as_metric_images(x.index_fill(3, torch.tensor([0]), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        as_metric_images(x[:, :1])
    with pytest.raises(TypeError, match="uint8"):
        as_metric_images(x.long())
    u = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.equal(as_metric_images(as_metric_images(u), "uint8"), u)
