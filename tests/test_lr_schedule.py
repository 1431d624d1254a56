"""Learning-rate factor: warm-up, constant, cosine to a floor; bad settings are refused."""

import math
import pickle

import pytest

from pid.lit.lr_schedule import LRFactor


def test_warmup_then_constant():
    f = LRFactor(warmup=4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert LRFactor()(0) == 1.0


def test_cosine_reaches_the_floor_at_the_last_step():
    f = LRFactor(warmup=10, decay="cosine", total=110, min_ratio=0.1)
    assert f(9) == 1.0 and f(10) == 1.0
    assert math.isclose(f(60), 0.1 + 0.9 * 0.5, rel_tol=1e-12)  # half-way: the mean of 1 and the floor
    assert math.isclose(f(110), 0.1) and math.isclose(f(500), 0.1)  # past the end it stays at the floor
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert pickle.loads(pickle.dumps(f))(60) == f(60)  # checkpoints pickle the scheduler's lambda


@pytest.mark.parametrize("kw,match", [
    (dict(decay="linear"), "decay"),
    (dict(decay="cosine", warmup=10, total=10), "total steps"),
    (dict(min_ratio=1.5), "min_ratio"),
])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        LRFactor(**kw)
