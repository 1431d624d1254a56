"""On-device batch augmentation: rotations by k·90° and channel permutations, shape-preserving."""

import torch

from pid.data.augment import augment_batch


def _variants(img: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(img, k, dims=(-2, -1))[list(p)] for k in range(4)
            for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]]


def test_off_is_the_identity_and_on_gives_rotated_permuted_copies():
    x = torch.rand(16, 3, 8, 8)
    assert augment_batch(x) is x
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, rot90=True, channel_permute=True, generator=g)
    assert y.shape == x.shape
    for xi, yi in zip(x, y, strict=True):
        assert any(torch.equal(yi, v) for v in _variants(xi))
    assert not torch.equal(x, y)  # 16 samples: some were rotated or permuted
    seen = {next(i for i, v in enumerate(_variants(xi)) if torch.equal(yi, v))
            for xi, yi in zip(x, y, strict=True)}
    assert len(seen) > 3


def test_non_square_batches_keep_their_shape():
    x = torch.rand(12, 3, 8, 16)
    y = augment_batch(x, rot90=True, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    for xi, yi in zip(x, y, strict=True):
        assert torch.equal(yi, xi) or torch.equal(yi, torch.rot90(xi, 2, dims=(-2, -1)))
