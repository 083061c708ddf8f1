"""Simulator and view rendering: determinism, physics invariants, geometry."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from jepa_edge.config import ConfigError, from_dict
from jepa_edge.world import VIEWS, WorldConfig, WorldStates, get_view, render, simulate, view_names
from jepa_edge.world.views import homography

# ---------------------------------------------------------------- simulator


def test_same_seed_identical_different_seed_differs():
    cfg = WorldConfig()
    a, b = simulate(cfg, 4, 30, seed=7), simulate(cfg, 4, 30, seed=7)
    for key, arr in a.to_arrays().items():
        assert np.array_equal(arr, b.to_arrays()[key]), key
    c = simulate(cfg, 4, 30, seed=8)
    assert not np.allclose(a.positions, c.positions)
    assert not np.allclose(a.velocities, c.velocities)


def test_shapes_and_dtypes():
    s = simulate(WorldConfig(), 3, 11, seed=0)
    assert s.positions.shape == (3, 11, 3, 2) and s.positions.dtype == np.float32
    assert s.velocities.shape == (3, 11, 3, 2) and s.velocities.dtype == np.float32
    assert s.danger.shape == (3, 11) and s.danger.dtype == np.int64
    assert s.radius.shape == (3,) and s.state_vector().shape == (3, 11, 6)
    assert (s.n_episodes, s.n_steps) == (3, 11)


def test_objects_stay_inside_arena_through_many_bounces():
    cfg = WorldConfig(speed=0.08, max_speed=0.08, dynamics_noise=0.02)  # fast: many wall hits
    s = simulate(cfg, 16, 300, seed=3)
    r = s.radius[None, None, :, None]  # (1, 1, n, 1)
    eps = 1e-6
    assert (s.positions >= r - eps).all() and (s.positions <= 1 - r + eps).all()
    # the walls were actually reached: some centre came within one step of a wall
    gap = np.minimum(s.positions - r, 1 - r - s.positions)
    assert gap.min() < cfg.max_speed


def test_velocities_clipped_to_max_speed():
    cfg = WorldConfig(speed=0.05, max_speed=0.06, dynamics_noise=0.05)  # noise pushes past the cap
    s = simulate(cfg, 8, 100, seed=1)
    norm = np.linalg.norm(s.velocities, axis=-1)
    assert norm.max() <= cfg.max_speed + 1e-6
    assert norm.max() > cfg.max_speed - 1e-4  # the clip was hit, so the check above is not vacuous


def test_danger_label_matches_positions():
    cfg = WorldConfig()
    s = simulate(cfg, 8, 80, seed=2)
    d = np.linalg.norm(s.positions[:, :, 0] - np.asarray(cfg.danger_center), axis=-1)
    assert np.array_equal(s.danger, (d < cfg.danger_radius).astype(np.int64))
    assert 0 < s.danger.mean() < 1  # both classes occur


def test_states_roundtrip_arrays():
    s = simulate(WorldConfig(), 2, 5, seed=0)
    t = WorldStates.from_arrays(s.to_arrays())
    assert all(np.array_equal(a, b) for a, b in zip(s.to_arrays().values(), t.to_arrays().values()))
    with pytest.raises(ValueError, match="lack.*danger"):
        WorldStates.from_arrays({k: v for k, v in s.to_arrays().items() if k != "danger"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_objects": 0}, "n_objects must be >= 1"),
        ({"n_objects": 4}, "one radius per object"),
        ({"radius": (0.11, 0.55, 0.07)}, r"radius .* must lie in \(0, 0.5\)"),
        ({"radius": (0.11, -0.1, 0.07)}, r"must lie in \(0, 0.5\)"),
        ({"max_speed": 0.9}, "overshoots"),
        ({"speed": 0.2}, "speed 0.2 must lie in"),
        ({"dynamics_noise": -0.1}, "dynamics_noise"),
        ({"danger_radius": 0.0}, "danger_radius"),
    ],
)
def test_world_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(WorldConfig(**kwargs), 1, 2, seed=0)


def test_simulate_rejects_empty_rollout_and_unknown_config_keys():
    with pytest.raises(ValueError, match="n_steps >= 1"):
        simulate(WorldConfig(), 2, 0, seed=0)
    with pytest.raises(ConfigError, match="n_object"):
        from_dict(WorldConfig, {"n_object": 2})
    assert from_dict(WorldConfig, {"radius": [0.1, 0.1, 0.1]}).radius == (0.1, 0.1, 0.1)


# ---------------------------------------------------------------- views


@pytest.fixture(scope="module")
def states():
    return simulate(WorldConfig(), 2, 6, seed=0)


@pytest.mark.parametrize("view", view_names())
@pytest.mark.parametrize("size", [32, 64])
def test_render_shape_dtype(states, view, size):
    frames = render(states, view, size=size, seed=0)
    assert frames.shape == (2, 6, size, size, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # not a blank image


def test_render_deterministic_and_noise_seeded(states):
    for view in view_names():
        a, b = render(states, view, seed=3), render(states, view, seed=3)
        assert np.array_equal(a, b), view
        c = render(states, view, seed=4)
        assert not np.array_equal(a, c), view  # sensor noise follows the seed
        assert np.abs(a.astype(int) - c.astype(int)).mean() < 3 * VIEWS[view].noise  # ... and only the noise


def test_every_view_differs_from_every_other(states):
    frames = {v: render(states, v, seed=0).astype(np.int16) for v in view_names()}
    names = view_names()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = np.abs(frames[a] - frames[b]).mean()
            assert diff > 20, f"views {a} and {b} differ by only {diff:.1f} grey levels on average"


def _one_object(x: float, y: float, r: float = 0.05) -> WorldStates:
    pos = np.array([[[[x, y]]]], np.float32)  # (1, 1, 1, 2)
    return WorldStates(pos, np.zeros_like(pos), np.zeros((1, 1), np.int64), np.array([r], np.float32))


def _empty_world() -> WorldStates:
    pos = np.zeros((1, 1, 0, 2), np.float32)
    return WorldStates(pos, pos.copy(), np.zeros((1, 1), np.int64), np.zeros((0,), np.float32))


@pytest.mark.parametrize("view", view_names())
def test_object_drawn_where_the_homography_says(view):
    size, (x, y) = 64, (0.35, 0.6)  # inside even the zoomed "partial" field of view
    spec = dataclasses.replace(get_view(view), noise=0.0)
    blank = render(_empty_world(), spec, size=size)[0, 0].astype(np.int16)
    drawn = render(_one_object(x, y), spec, size=size)[0, 0].astype(np.int16)
    mask = np.abs(drawn - blank).max(-1) > 20  # (S, S) pixels the object changed
    assert mask.sum() > 10
    rows, cols = np.nonzero(mask)
    centroid = np.array([cols.mean(), rows.mean()])  # (x, y) pixels
    p = homography(spec, size) @ np.array([x, y, 1.0])
    expected = p[:2] / p[2]
    assert np.abs(centroid - expected).max() < 1.0, (centroid, expected)
    if view == "top":  # world x → image column, world y → image row
        assert np.abs(centroid - np.array([x, y]) * size).max() < 1.0
    if view == "rotated":  # rotated + mirrored: the axes swap
        assert np.abs(centroid - np.array([y, x]) * size).max() < 1.0


def test_top_view_brightest_change_tracks_a_moving_object():
    spec = dataclasses.replace(get_view("top"), noise=0.0)
    blank = render(_empty_world(), spec, size=32)[0, 0].astype(np.int16)
    for x, y in [(0.2, 0.2), (0.8, 0.3), (0.5, 0.9)]:
        diff = np.abs(render(_one_object(x, y), spec, size=32)[0, 0].astype(np.int16) - blank).sum(-1)
        row, col = np.unravel_index(np.argmax(diff), diff.shape)
        assert abs(col - x * 32) <= 2 and abs(row - y * 32) <= 2


def test_unknown_view_is_a_clear_error(states):
    with pytest.raises(ValueError, match=r"unknown view 'side'.*top.*oblique.*rotated.*partial"):
        render(states, "side")


def test_world_package_does_not_import_torch():
    code = "import sys, jepa_edge.world; assert 'torch' not in sys.modules, 'jepa_edge.world imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heldout_split_holds_out_the_last_whole_episodes_or_the_end_of_one_recording():
    from jepa_edge.world.dataset import heldout_split

    episode = np.repeat(np.arange(10), 4)  # (40,) episode-major
    pool, held = heldout_split(episode, 0.3)
    assert set(episode[held]) == {7, 8, 9} and set(episode[pool]) == set(range(7))
    assert sorted([*pool, *held]) == list(range(40))
    pool, held = heldout_split(np.repeat([5, 2], 3), 0.9)  # never all episodes; the highest id is held out
    assert held.tolist() == [0, 1, 2] and pool.tolist() == [3, 4, 5]
    pool, held = heldout_split(np.zeros(10), 0.3)  # one continuous recording: its last 30% of the time
    assert pool.tolist() == list(range(7)) and held.tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="record longer"):
        heldout_split(np.zeros(1), 0.3)
