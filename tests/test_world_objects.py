"""The object-count control world: same physics and sizes, a different number of objects."""

import numpy as np
import pytest

from jepa_edge.world.sim import WorldConfig, simulate, with_object_count
from jepa_edge.world.views import render


def test_more_objects_keep_the_first_radii_and_simulate_and_render():
    base = WorldConfig()
    cfg = with_object_count(base, 5)
    assert cfg.n_objects == 5 and cfg.radius[:3] == base.radius[:3]
    assert cfg.radius[3] == pytest.approx(0.85 * base.radius[0]) and cfg.speed == base.speed
    states = simulate(cfg, 2, 6, seed=0)
    assert states.positions.shape == (2, 6, 5, 2)
    frames = render(states, "top", 32, 0)
    fewer = render(simulate(with_object_count(base, 3), 2, 6, seed=0), "top", 32, 0)
    assert frames.shape == fewer.shape and not np.array_equal(frames, fewer)  # the extra objects are drawn
    assert with_object_count(base, 1).radius == (base.radius[0],)


def test_bad_object_count_refused():
    with pytest.raises(ValueError, match="n_objects"):
        with_object_count(WorldConfig(), 0)
