"""The 3-D world: determinism, pinhole geometry, occlusion, robot-mounted cameras, ground truth, dispatch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from jepa_edge.world.render3d import id_buffers, render3d, visibility
from jepa_edge.world.sim3d import ROBOT_POSE_LABELS, World3DConfig, World3DStates, simulate3d
from jepa_edge.world.views3d import VIEWS3D, camera_poses, get_view3d, intrinsics, project
from jepa_edge.world.worlds import episode_frames, render_view, world_kind_of_view

SIZE = 48


def scene(objects: list[tuple[float, float]], robots: list[tuple[float, float, float]],
          world: World3DConfig | None = None) -> World3DStates:
    """One moment with objects and robots where the test puts them."""
    world = world or World3DConfig()
    n, R = len(objects), len(robots)
    pos = np.asarray(objects, np.float32).reshape(1, 1, n, 2)  # (E, T, n, 2)
    return World3DStates(pos, np.zeros_like(pos), np.zeros((1, 1), np.int64),
                         np.asarray(world.sizes[:n], np.float32), np.asarray(robots, np.float32).reshape(1, 1, R, 3))


def test_same_seed_same_frames_and_states():
    cfg = World3DConfig()
    a, b = simulate3d(cfg, 2, 12, seed=5), simulate3d(cfg, 2, 12, seed=5)
    for key, arr in a.to_arrays().items():
        np.testing.assert_array_equal(arr, b.to_arrays()[key])
    np.testing.assert_array_equal(render3d(a, "front", SIZE, seed=5), render3d(b, "front", SIZE, seed=5))
    c = simulate3d(cfg, 2, 12, seed=6)
    assert not np.array_equal(a.positions, c.positions)


def test_states_shapes_and_physics_stay_in_the_arena():
    cfg = World3DConfig()
    s = simulate3d(cfg, 3, 200, seed=0)
    E, T, n = 3, 200, cfg.n_objects
    assert s.positions.shape == (E, T, n, 2) and s.robot_pose.shape == (E, T, cfg.n_robots, 3)
    assert s.danger.shape == (E, T) and set(np.unique(s.danger)) == {0, 1}
    r = s.radius[None, None, :, None]
    assert (s.positions >= r - 1e-5).all() and (s.positions <= cfg.arena - r + 1e-5).all()
    xy = s.robot_pose[..., :2]
    assert (xy >= cfg.robot_radius - 1e-5).all() and (xy <= cfg.arena - cfg.robot_radius + 1e-5).all()
    step = np.linalg.norm(np.diff(s.robot_pose[..., :2], axis=1), axis=-1)  # robots drive smoothly
    assert step.max() <= cfg.robot_speed + 1e-5 and step.mean() > 0.5 * cfg.robot_speed
    assert s.robot_pose_vector().shape == (E, T, 4) and len(ROBOT_POSE_LABELS) == 4
    np.testing.assert_allclose(np.linalg.norm(s.heading_vector(), axis=-1), 1.0, atol=1e-6)


def test_obstacle_label_is_something_close_ahead_of_robot0():
    cfg = World3DConfig(n_objects=1)
    robot = (2.0, 2.0, 0.0)  # facing +x
    ahead, behind, far = (2.8, 2.1), (1.2, 2.0), (3.6, 2.0)
    for obj, label in ((ahead, 1), (behind, 0), (far, 0)):
        pos = np.asarray(obj, np.float64).reshape(1, 1, 2)
        robots = np.asarray([robot, (0.6, 0.6, 0.0)], np.float64)[None]
        from jepa_edge.world.sim3d import _obstacle

        assert _obstacle(pos, robots, cfg)[0] == label, obj


def test_a_world_point_projects_where_the_pinhole_model_says():
    cam = get_view3d("overhead")
    K = intrinsics(cam.fov_deg, SIZE)
    R, C = camera_poses(scene([(1.0, 1.0)], [(2.0, 2.0, 0.0)]), cam, 4.0)
    h = cam.position[2]
    f = 0.5 * SIZE / np.tan(np.deg2rad(cam.fov_deg) / 2)
    pts = np.array([[2.0, 2.0, 0.0], [2.5, 2.0, 0.0], [2.0, 2.5, 0.0]])
    uv, z = project(pts, R[0, 0], C[0, 0], K)
    np.testing.assert_allclose(z, h)
    np.testing.assert_allclose(uv[0], [SIZE / 2, SIZE / 2], atol=1e-9)  # below the camera: the image centre
    # yaw 90°: the image's up is +y (north), so east (+x) is to the right and north is up
    np.testing.assert_allclose(uv[1], [SIZE / 2 + f * 0.5 / h, SIZE / 2], atol=1e-9)
    np.testing.assert_allclose(uv[2], [SIZE / 2, SIZE / 2 - f * 0.5 / h], atol=1e-9)


def test_robot_cameras_move_and_turn_with_their_robot():
    cam = VIEWS3D["front"]
    a = scene([(1.0, 1.0)], [(2.0, 2.0, 0.0), (0.6, 0.6, 0.0)])
    b = scene([(1.0, 1.0)], [(2.5, 1.0, np.pi / 2), (0.6, 0.6, 0.0)])
    (Ra, Ca), (Rb, Cb) = camera_poses(a, cam, 4.0), camera_poses(b, cam, 4.0)
    np.testing.assert_allclose(Ca[0, 0], [2.0 + cam.position[0], 2.0, cam.position[2]], atol=1e-6)
    np.testing.assert_allclose(Cb[0, 0], [2.5, 1.0 + cam.position[0], cam.position[2]], atol=1e-6)
    # the optical axis (third column) points along the robot's heading, tilted down by the pitch
    pitch = np.deg2rad(cam.pitch_deg)
    np.testing.assert_allclose(Ra[0, 0, :, 2], [np.cos(pitch), 0, np.sin(pitch)], atol=1e-6)
    np.testing.assert_allclose(Rb[0, 0, :, 2], [0, np.cos(pitch), np.sin(pitch)], atol=1e-6)
    # a fixed camera does not move
    np.testing.assert_array_equal(camera_poses(a, VIEWS3D["corner"], 4.0)[1], camera_poses(b, VIEWS3D["corner"], 4.0)[1])
    # what the front camera sees changes when only the robot moves; the corner camera sees the robot move
    fa, fb = render3d(a, "front", SIZE), render3d(b, "front", SIZE)
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() > 10


def test_an_object_in_front_of_the_robot_is_seen_by_front_not_rear():
    objects = [(3.0, 2.0), (1.0, 2.0)]  # ahead of and behind robot 0 (at 2, 2 facing +x)
    s = scene(objects, [(2.0, 2.0, 0.0), (0.6, 3.4, 0.0)])
    front, rear = visibility(s, "front", SIZE)[0, 0], visibility(s, "rear", SIZE)[0, 0]
    assert front.tolist() == [True, False] and rear.tolist() == [False, True]


def test_front_and_rear_cameras_on_one_robot_see_disjoint_objects():
    s = simulate3d(World3DConfig(), 4, 60, seed=3)
    front, rear = visibility(s, "front", SIZE), visibility(s, "rear", SIZE)
    assert front.any() and rear.any()
    assert not (front & rear).any()  # no object is in both at any moment


def test_a_sphere_behind_another_is_hidden():
    cfg = World3DConfig(n_objects=2, shapes=("sphere", "sphere"), sizes=(0.22, 0.14))
    robot = (1.0, 2.0, 0.0)
    near_big, far_small = (2.0, 2.0), (3.0, 2.0)  # on the optical axis, the small one behind the big one
    ids = id_buffers(scene([near_big, far_small], [robot, (0.6, 3.4, 0.0)], cfg), "front", SIZE, cfg)[0, 0]
    assert (ids == 1).any() and not (ids == 2).any()
    # swap depths: now the small one is in front and both show (the big one's rim around it)
    ids = id_buffers(scene([(3.0, 2.0), (2.0, 2.0)], [robot, (0.6, 3.4, 0.0)], cfg), "front", SIZE, cfg)[0, 0]
    assert (ids == 1).any() and (ids == 2).any()
    # moved aside, the far sphere reappears
    ids = id_buffers(scene([near_big, (3.0, 2.8)], [robot, (0.6, 3.4, 0.0)], cfg), "front", SIZE, cfg)[0, 0]
    assert (ids == 2).any()


def test_painter_order_draws_the_nearer_object_on_top():
    cfg = World3DConfig(n_objects=2, shapes=("box", "sphere"), sizes=(0.2, 0.2))
    s = scene([(2.0, 2.0), (3.0, 2.0)], [(1.0, 2.0, 0.0), (0.6, 3.4, 0.0)], cfg)
    cam = replace(VIEWS3D["front"], noise=0.0)
    frame = render3d(s, cam, SIZE, world=cfg)[0, 0]
    R, C = camera_poses(s, cam, cfg.arena)
    uv, _ = project(np.array([[3.0, 2.0, 0.2]]), R[0, 0], C[0, 0], intrinsics(cam.fov_deg, SIZE))
    u, v = np.round(uv[0]).astype(int)  # where the far sphere's centre projects: the nearer box covers it
    box_bgr, sphere_bgr = np.array(cfg.colors[0]), np.array(cfg.colors[1])
    assert np.argmax(frame[v, u]) == np.argmax(box_bgr) != np.argmax(sphere_bgr)


def test_frames_are_uint8_bgr_and_the_thermal_camera_is_grey():
    s = simulate3d(World3DConfig(), 1, 3, seed=0)
    for view in VIEWS3D:
        f = render3d(s, view, SIZE)
        assert f.shape == (1, 3, SIZE, SIZE, 3) and f.dtype == np.uint8
    noiseless = render3d(s, replace(VIEWS3D["corner"], noise=0.0), SIZE)
    assert (noiseless[..., 0] == noiseless[..., 1]).all() and (noiseless[..., 1] == noiseless[..., 2]).all()
    colour = render3d(s, replace(VIEWS3D["front"], noise=0.0), SIZE)
    assert (colour[..., 0] != colour[..., 2]).any()


def test_dispatch_by_view_name():
    assert world_kind_of_view("top") == "2d" and world_kind_of_view("front") == "3d"
    with pytest.raises(ValueError, match="3-D world's are overhead"):
        world_kind_of_view("nope")
    frames, states = episode_frames("rear", 1, 4, SIZE, seed=1)
    assert frames.shape == (1, 4, SIZE, SIZE, 3) and states.kind == "3d"
    with pytest.raises(ValueError, match="belongs to the 2d world"):
        render_view(states, "top", SIZE, 0)
    with pytest.raises(ValueError, match="World3DConfig"):
        from jepa_edge.world.sim import WorldConfig

        episode_frames("front", 1, 4, SIZE, 0, WorldConfig())


def test_world3d_config_rejects_bad_values():
    with pytest.raises(ValueError, match="one shape, size and colour"):
        World3DConfig(n_objects=9).validate()
    with pytest.raises(ValueError, match="unknown"):
        World3DConfig(shapes=("cone",) * 6).validate()
    with pytest.raises(ValueError, match="posts"):
        World3DConfig(posts=((0.1, 0.1),)).validate()


def test_states_round_trip_through_arrays():
    s = simulate3d(World3DConfig(), 2, 5, seed=0)
    back = World3DStates.from_arrays(s.to_arrays())
    assert back.kind == "3d"
    np.testing.assert_array_equal(back.robot_pose, s.robot_pose)
    with pytest.raises(ValueError, match="robot_pose"):
        World3DStates.from_arrays({k: v for k, v in s.to_arrays().items() if k != "robot_pose"})


def test_ego_positions_are_in_robot0s_frame():
    s = scene([(1.0, 2.0), (0.0, 1.0), (1.0, 0.5)], [(1.0, 1.0, np.pi / 2), (2.5, 2.5, 0.0)])  # robot 0 faces +y
    np.testing.assert_allclose(s.ego_positions()[0, 0], [[1.0, 0.0], [0.0, 1.0], [-0.5, 0.0]], atol=1e-6)
