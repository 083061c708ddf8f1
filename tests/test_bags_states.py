"""Ground-truth states in bags: the simulator writes a bag (``write_bag`` / ``simulate_recording(fmt=...)``),
``load_recording`` reads frames and states back (pairing, episodes), bad state layouts fail in one line,
and ``probe`` fits its probes on a bag exactly as on the same recording written as a folder.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mcap")

from jepa_edge.bags import BagError
from jepa_edge.bags.reader import STATES_TOPIC, STATES_TYPE
from jepa_edge.bags.writer import BagWriter, image_fields, states_rows, write_bag
from jepa_edge.world import WorldConfig, load_recording, render, simulate, simulate_recording

E, T, S, VIEWS = 3, 12, 32, ("top", "oblique")
JPEG_TOL = 12.0  # mean |diff| per pixel of a quality-95 JPEG of a 32 px simulator frame (measured 4.6-6.0)


@pytest.fixture(scope="module")
def truth():
    """The world simulate_recording(seed=0) records, and its frames as rendered."""
    states = simulate(WorldConfig(), E, T, 0)
    return SimpleNamespace(states=states, frames={v: render(states, v, S, seed=0) for v in VIEWS})


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def assert_states_equal(got, want) -> None:
    for key in ("positions", "velocities", "danger", "radius"):
        a, b = getattr(got, key), getattr(want, key)
        assert a.dtype == b.dtype and np.array_equal(a, b), key  # float32 exact, danger int64


# ---- the simulator writes a bag, load_recording reads it back -------------------------------------------
@pytest.mark.parametrize("fmt", ["mcap", "rosbag2"])
@pytest.mark.parametrize("encoding", ["rgb8", "jpeg"])
def test_simulated_bag_round_trip(tmp_path, truth, fmt, encoding):
    out = tmp_path / ("sim.mcap" if fmt == "mcap" else "sim")
    path = simulate_recording(out, n_episodes=E, n_steps=T, views=VIEWS, size=S, fmt=fmt, encoding=encoding)
    assert path == out and (out.is_file() if fmt == "mcap" else (out / "metadata.yaml").is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary sibling left
    rec = load_recording(out)
    assert rec.source == fmt and rec.meta["n_episodes"] == E and rec.meta["n_steps"] == T
    assert rec.meta["states"] == STATES_TOPIC and "episode" in rec.meta["state_slices"]
    assert rec.meta["pairing"]["kept"] == E * T
    topic = "/top/image_raw" + ("/compressed" if encoding == "jpeg" else "")
    assert rec.meta["topics"]["top"] == topic
    for view in VIEWS:
        got, want = rec.frames[view], truth.frames[view]
        assert got.shape == (E, T, S, S, 3)  # (E, T) from the episode slice
        if encoding == "rgb8":
            assert np.array_equal(got, want)
        else:
            assert np.abs(got.astype(int) - want).mean() < JPEG_TOL
    assert_states_equal(rec.states, truth.states)


@pytest.mark.parametrize("encoding", ["bgr8", "mono8"])
def test_other_raw_encodings(tmp_path, truth, encoding):
    bag = write_bag(tmp_path / "run.mcap", truth, encoding=encoding)
    rec = load_recording(bag, views=["oblique"])
    want = truth.frames["oblique"]
    if encoding == "mono8":
        want = cv2.cvtColor(cv2.cvtColor(want.reshape(-1, S, 3), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert np.array_equal(rec.frames["oblique"], want.reshape(E, T, S, S, 3))


def test_bare_mcap_is_plain_ros2_for_other_readers(tmp_path, truth):
    """mcap_ros2's decoder (not rosbags) reads our bare MCAP: profile, topics, stamps, the states layout."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    bag = write_bag(tmp_path / "run.mcap", truth, fps=10.0, start_ns=5 * 10**9)
    stamps = 5 * 10**9 + np.arange(E * T) * 100_000_000
    seen: dict[str, list] = {}
    with open(bag, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            seen.setdefault(channel.topic, []).append((schema.name, message.log_time, decoded))
    assert set(seen) == {"/top/image_raw", "/oblique/image_raw", STATES_TOPIC}
    top = seen["/top/image_raw"]
    assert [m[0] for m in top] == ["sensor_msgs/msg/Image"] * (E * T)
    assert [m[2].header.stamp.sec * 10**9 + m[2].header.stamp.nanosec for m in top] == stamps.tolist()
    states = seen[STATES_TOPIC]
    assert [m[1] for m in states] == stamps.tolist()  # log time = the moment's stamp
    dims = [(d.label, d.size) for d in states[0][2].layout.dim]
    assert dims == [("positions", 6), ("velocities", 6), ("danger", 1), ("radius", 3), ("episode", 1)]
    k = 2 * T + 5  # episode 2, step 5
    row = np.asarray(states[k][2].data, np.float32)
    assert np.array_equal(row[:6], truth.states.positions[2, 5].reshape(-1)) and row[-1] == 2.0


# ---- pairing: a moment needs every camera and the state ------------------------------------------------------
def hand_bag(path, states, dims=None, rows=None, skip=(), topic=STATES_TOPIC, offset=0):
    """Two cameras and a states topic from ``states`` (E, T); ``skip``: (stream, moment) pairs left out;
    ``dims`` / ``rows`` override the states layout and data (rows[k] None: no message)."""
    E_, T_ = states.positions.shape[:2]
    frames = {v: render(states, v, 16, seed=0).reshape(E_ * T_, 16, 16, 3) for v in VIEWS}
    base_dims, base_rows = states_rows(states)
    dims = base_dims if dims is None else [{"label": a, "size": b, "stride": b} for a, b in dims]
    rows = list(base_rows) if rows is None else rows
    with BagWriter(path, "mcap") as w:
        for k in range(E_ * T_):
            t = 10**18 + k * 33_333_333
            for v in VIEWS:
                if (v, k) not in skip:
                    w.write(f"/{v}/image_raw", "sensor_msgs/msg/Image", t, image_fields(frames[v][k], "bgr8", t, v)[1])
            if ("states", k) not in skip and rows[k] is not None:
                data = np.r_[np.zeros(offset, np.float32), rows[k]]
                w.write(topic, STATES_TYPE, t, {"layout": {"dim": dims, "data_offset": offset}, "data": data})
    return path, frames


@pytest.mark.parametrize(("skip", "shape"), [
    ((("oblique", 2), ("states", 8)), (2, 5)),  # one moment lost in each episode: still 2 x 5
    ((("top", 2), ("states", 3)), (1, 10)),  # both in episode 0: 4 + 6 moments, loaded as one episode
])
def test_pairing_drops_moments_without_a_camera_or_the_state(tmp_path, skip, shape):
    states = simulate(WorldConfig(), 2, 6, 3)
    bag, frames = hand_bag(tmp_path / "run.mcap", states, skip=skip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = load_recording(bag)
    assert (len(caught) == 1 and "different lengths" in str(caught[0].message)) == (shape[0] == 1)
    kept = [k for k in range(12) if k not in {m for _, m in skip}]
    assert rec.meta["pairing"]["kept"] == 10 and rec.meta["pairing"]["dropped"][STATES_TOPIC] == 1
    assert rec.states.positions.shape[:2] == shape and rec.frames["top"].shape[:2] == shape
    flat = states.positions.reshape(12, -1, 2)[kept]  # (10, n, 2): the kept moments, in order
    assert np.array_equal(rec.states.positions.reshape(10, -1, 2), flat)
    for v in VIEWS:  # frames and states stay moment-aligned
        assert np.array_equal(rec.frames[v].reshape(10, 16, 16, 3), frames[v][kept])


def test_episode_slice_out_of_order_is_one_episode(tmp_path):
    states = simulate(WorldConfig(), 2, 4, 0)
    _, rows = states_rows(states)
    rows[:, -1] = [0, 0, 1, 1, 0, 0, 1, 1]  # episode 0 comes back
    bag, _ = hand_bag(tmp_path / "run.mcap", states, rows=list(rows))
    with pytest.warns(UserWarning, match="not in increasing order"):
        rec = load_recording(bag)
    assert rec.states.positions.shape[:2] == (1, 8) and rec.meta["n_episodes"] == 1


# ---- optional slices, other topics, no states ---------------------------------------------------------
def test_optional_slices_default_and_unknown_labels_are_skipped(tmp_path):
    states = simulate(WorldConfig(), 1, 5, 0)
    pos = states.positions.reshape(5, 6)
    rows = [np.r_[np.float32(7.0), p] for p in pos]  # an unknown slice first, then positions only
    bag, _ = hand_bag(tmp_path / "run.mcap", states, dims=[("battery", 1), ("positions", 6)], rows=rows, offset=2)
    rec = load_recording(bag)
    assert np.array_equal(rec.states.positions, states.positions)
    assert not rec.states.velocities.any() and not rec.states.danger.any() and not rec.states.radius.any()
    assert rec.meta["state_slices"] == ["battery", "positions"] and rec.states.positions.shape[:2] == (1, 5)


def test_no_states_and_a_named_states_topic(tmp_path, truth):
    bag = write_bag(tmp_path / "plain.mcap", SimpleNamespace(frames=truth.frames, states=None))
    rec = load_recording(bag)
    assert rec.states is None and rec.meta["states"] is None and rec.frames["top"].shape == (1, E * T, S, S, 3)
    with pytest.raises(BagError, match=r"states topic '/gt' is not in .*std_msgs/msg/Float32MultiArray topics: \[\]"):
        load_recording(bag, states_topic="/gt")
    states = simulate(WorldConfig(), 2, 3, 0)
    other, _ = hand_bag(tmp_path / "gt.mcap", states, topic="/gt")
    assert load_recording(other).states is None  # not the default topic: no states unless named
    assert_states_equal(load_recording(other, states_topic="/gt").states, states)
    with pytest.raises(BagError, match=r"'/top/image_raw' has type sensor_msgs/msg/Image.*topics: \['/gt'\]"):
        load_recording(other, states_topic="/top/image_raw")


# ---- bad layouts: one line naming the topic ------------------------------------------------------------
def _bad(case: str, states):
    """(dims, rows) of a broken states topic."""
    _, rows = states_rows(states)  # (N, 17): positions 6, velocities 6, danger, radius 3, episode
    good = [("positions", 6), ("velocities", 6), ("danger", 1), ("radius", 3), ("episode", 1)]
    if case == "no positions":
        return [("pos", 6), *good[1:]], list(rows)
    if case == "odd positions":
        return [("positions", 5)], [r[:5] for r in rows]
    if case == "radius size":
        return [("positions", 6), ("radius", 2)], [r[:8] for r in rows]
    if case == "twice":
        return [("positions", 6), ("positions", 6)], [r[:12] for r in rows]
    if case == "length":
        return good, [r[:16] for r in rows]
    rows = rows.copy()
    if case == "nan":
        rows[3, 1] = np.nan
    elif case == "danger":
        rows[2, 12] = 0.5
    elif case == "episode":
        rows[1, 16] = 0.5
    elif case == "radius changes":
        rows[4, 13] += 0.01
    return good, list(rows)


@pytest.mark.parametrize(("case", "message"), [
    ("no positions", "have no 'positions' slice"),
    ("odd positions", "'positions' has size 5; it needs 2n"),
    ("radius size", "slice 'radius' has size 2; expected 3"),
    ("twice", "name a slice twice"),
    ("length", "holds 16 values but its layout.dim"),
    ("nan", "'positions' holds NaN or inf in 1 message"),
    ("danger", "'danger' holds \\[0.5\\]; it must be 0 or 1"),
    ("episode", "'episode' holds a negative or fractional value"),
    ("radius changes", "'radius' changes between messages"),
])
def test_bad_state_layouts_are_one_line_naming_the_topic(tmp_path, case, message):
    states = simulate(WorldConfig(), 2, 4, 0)
    dims, rows = _bad(case, states)
    bag, _ = hand_bag(tmp_path / "bad.mcap", states, dims=dims, rows=rows)
    with pytest.raises(BagError, match=message) as err:
        load_recording(bag)
    assert f"states topic {STATES_TOPIC}" in one_line(err)


def test_a_layout_that_changes_between_messages(tmp_path):
    states = simulate(WorldConfig(), 1, 4, 0)
    _, rows = states_rows(states)
    bag = tmp_path / "bad.mcap"
    with BagWriter(bag, "mcap") as w:
        for k, row in enumerate(rows):
            dims = [("positions", 6), ("velocities", 6)] if k < 2 else [("positions", 6)]
            data = row[: sum(s for _, s in dims)]
            w.write(STATES_TOPIC, STATES_TYPE, 10**18 + k, {
                "layout": {"dim": [{"label": a, "size": s, "stride": s} for a, s in dims], "data_offset": 0},
                "data": data})
            image = image_fields(np.zeros((8, 8, 3), np.uint8), "bgr8", 10**18 + k, "top")[1]
            w.write("/top/image_raw", "sensor_msgs/msg/Image", 10**18 + k, image)
    with pytest.raises(BagError, match="every message needs the same layout.dim") as err:
        load_recording(bag)
    assert STATES_TOPIC in one_line(err)


# ---- writing: refuse, overwrite, atomic ----------------------------------------------------------------
def test_write_bag_refuses_overwrites_and_leaves_nothing_half_written(tmp_path, truth, monkeypatch):
    from jepa_edge.bags import writer

    bag = write_bag(tmp_path / "run", truth, fmt="rosbag2")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_bag(bag, truth, fmt="rosbag2")
    half = SimpleNamespace(frames={v: f[:2] for v, f in truth.frames.items()}, states=None)
    write_bag(bag, half, fmt="rosbag2", overwrite=True)
    assert load_recording(bag).frames["top"].shape == (1, 2 * T, S, S, 3) and load_recording(bag).states is None
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileExistsError, match="not a rosbag2 bag"):
        write_bag(tmp_path / "notes", truth, fmt="rosbag2", overwrite=True)  # never deletes a non-bag
    with pytest.raises(BagError, match=r"must end in \.mcap"):
        write_bag(tmp_path / "run2", truth, fmt="mcap")
    with pytest.raises(BagError, match="a rosbag2 bag is a folder"):
        write_bag(tmp_path / "run2.mcap", truth, fmt="rosbag2")

    calls = []

    def failing(*args, **kwargs):  # the 5th image fails to encode: mid-write
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return image_fields(*args, **kwargs)

    monkeypatch.setattr(writer, "image_fields", failing)
    before = sorted(p.name for p in tmp_path.iterdir())
    for fmt, path in (("mcap", tmp_path / "new.mcap"), ("rosbag2", bag)):
        calls.clear()
        with pytest.raises(OSError, match="disk full"):
            write_bag(path, truth, fmt=fmt, overwrite=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp left, the old bag kept
    assert load_recording(bag).frames["top"].shape == (1, 2 * T, S, S, 3)


def test_simulate_recording_format_options(tmp_path):
    with pytest.raises(ValueError, match="must end in .mcap"):
        simulate_recording(tmp_path / "x", fmt="mcap")
    with pytest.raises(ValueError, match="--codec applies to folder recordings"):
        simulate_recording(tmp_path / "x.mcap", fmt="mcap", codec="MJPG")
    with pytest.raises(ValueError, match="--encoding applies to bags"):
        simulate_recording(tmp_path / "x", encoding="jpeg")
    with pytest.raises(ValueError, match="format 'zip' is not known"):
        simulate_recording(tmp_path / "x", fmt="zip")
    assert list(tmp_path.iterdir()) == []


# ---- probe on a bag -------------------------------------------------------------------------------------
def test_probes_fit_on_a_bag_as_on_the_same_folder_recording(tmp_path):
    """A tiny agent (4 steps); `probe` on the bag and on the same world written as a lossless folder give the
    same probes: the bag's frames, states and (E, T) split are the folder's."""
    pytest.importorskip("torch")
    from jepa_edge.agents.calibrate import MomentsConfig, ProbeRunConfig, train_probes
    from jepa_edge.config import from_dict
    from jepa_edge.train.config import RunConfig
    from jepa_edge.train.loop import train

    cfg = from_dict(RunConfig, {
        "name": "tiny", "data": {"view": "top", "img_size": 16, "n_episodes": 4, "episode_len": 8,
                                 "eval_episodes": 4},
        "train": {"steps": 2, "batch_size": 8, "warmup": 1, "eval_every": 2, "ckpt_every": 2, "log_every": 1,
                  "device": "cpu", "threads": 1},
        "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
                             "latent_dim": 16}}})
    train(cfg, tmp_path / "agent", progress=False)
    bag = simulate_recording(tmp_path / "sim.mcap", n_episodes=E, n_steps=T, views=["top"], size=16, fmt="mcap")
    folder = simulate_recording(tmp_path / "sim", n_episodes=E, n_steps=T, views=["top"], size=16, codec="FFV1")
    reports = {}
    for name, rec in (("bag", bag), ("folder", folder)):
        paths, reports[name] = train_probes(tmp_path / "agent", tmp_path / name, ProbeRunConfig(),
                                            MomentsConfig(recording=str(rec)))
        assert [p.name for p in paths] == ["tiny.position.probe.safetensors", "tiny.danger.probe.safetensors"]
    assert reports["bag"] == reports["folder"] and set(reports["bag"]) == {"position", "danger"}
    assert all(np.isfinite(v) for task in reports["bag"].values() for v in task.values())
