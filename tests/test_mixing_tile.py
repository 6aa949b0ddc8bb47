"""Tile mixup: every image gets three distinct partners, none itself, for any batch size."""
import numpy as np
import pytest

from gluon_tricks.recipe import MixupSpec
from gluon_tricks.tricks import mixing


@pytest.mark.parametrize("partner", ["reversed", "random"])
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8, 10, 12, 30, 64])
def test_tile_sources_are_four_distinct_images(n, partner):
    mixer = mixing.Mixer(MixupSpec(kind="tile", partner=partner), epochs=10)
    for seed in range(5):
        plan = mixer.plan(n, 8, 8, 0, np.random.default_rng(seed))
        index = plan.orders[:4]
        assert index.shape == (4, n)
        assert (index[0] == np.arange(n)).all()
        for i in range(n):  # the image itself and three others, all different
            assert len(set(index[:, i])) == 4, (n, i, index[:, i])
        for row in index:  # each cell draws every image once: no image is over-represented
            assert sorted(row) == list(range(n))


def test_reversed_partners_of_a_multiple_of_four_are_unchanged():
    # n % 4 == 0 was already right: keep the reversed batch and its half-rolls there.
    n = 8
    plan = mixing.Mixer(MixupSpec(kind="tile"), epochs=10).plan(n, 8, 8, 0, np.random.default_rng(0))
    half = np.roll(np.arange(n), n // 2)
    assert (plan.orders[1] == np.arange(n)[::-1]).all()
    assert (plan.orders[2] == half).all() and (plan.orders[3] == half[::-1]).all()
