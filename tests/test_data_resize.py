"""The crop resampler of the loader: PIL's antialiased bicubic, by torch's uint8 kernel."""

import numpy as np
import pytest
from PIL import Image

from pid.data.transforms import resize_rgb8


@pytest.mark.parametrize("region,size", [((13, 20, 613, 620), (410, 400)), ((0, 0, 900, 700), (300, 233))])
def test_resize_rgb8_matches_pil_bicubic(region, size):
    import skimage.data as sd

    img = Image.fromarray(sd.astronaut()).resize((900, 700), Image.BICUBIC)
    ours = resize_rgb8(img, region, size)
    pil = np.asarray(img.resize(size, Image.BICUBIC, box=region, reducing_gap=None)).astype(int)
    assert ours.shape == (size[1], size[0], 3) and ours.dtype == np.uint8 and ours.flags["C_CONTIGUOUS"]
    diff = np.abs(ours.astype(int) - pil)
    assert diff.max() <= 3 and diff.mean() < 0.05
