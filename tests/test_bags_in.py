"""Robot data in: ROS 2 bags (sqlite3 / MCAP storage) and bare MCAP files, written here by rosbags and mcap_ros2.

Decoding (every encoding, row padding, byte order), timestamp pairing on cases with a known answer,
``load_recording`` / ``ViewData`` / the training data path on a bag, the runtime's ``bag:`` source,
and one clear error for each bad input.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mcap_ros2")

from bag_fixtures import (
    CHATTER,
    FRONT,
    PERIOD,
    SIDE,
    T0,
    Msg,
    camera_msgs,
    compressed_fields,
    expected_bgr,
    header,
    image_fields,
    jittered,
    sim_frames,
    storage_file,
    two_cameras,
    write_bag,
)

from jepa_edge.bags import BagError, BagReader, decode_image, image_topics, is_bag, pair_by_time
from jepa_edge.bags.reader import view_names
from jepa_edge.runtime.errors import CorruptFrame, SourceOpenError
from jepa_edge.runtime.sources import BagSource, open_source, source_kind
from jepa_edge.world.dataset import ViewData, load_recording, make_view_dataset

MS = 1_000_000
JPEG_TOL = 12.0  # mean |diff| per pixel of a quality-95 JPEG of a 24 px simulator frame (measured 2-8)


def as_msg(fields: dict) -> SimpleNamespace:
    """A deserialised-message stand-in: attribute access like rosbags' message classes."""
    return SimpleNamespace(**{k: as_msg(v) if isinstance(v, dict) else v for k, v in fields.items()})


def read_all(source) -> list[np.ndarray]:
    out = []
    while (img := source.read()) is not None:
        out.append(img)
    return out


# ---- decoding one message ---------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "mono8", "bgra8", "rgba8", "mono16"])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("big_endian", [False, True])
def test_decode_every_raw_encoding_with_padding_and_byte_order(encoding, pad, big_endian):
    frame = sim_frames(1, 20, "oblique")[0][:, :17]  # 17 px wide: odd row lengths
    fields = image_fields(np.ascontiguousarray(frame), encoding, T0, pad=pad, big_endian=big_endian)
    got = decode_image(as_msg(fields), "sensor_msgs/msg/Image")
    assert got.dtype == np.uint8 and got.shape == (20, 17, 3)
    assert np.array_equal(got, expected_bgr(frame, encoding))  # mono16: the top byte, the noisy low byte dropped


def test_decode_compressed_jpeg_and_png_by_content():
    frame = sim_frames(1, 24, "top")[0]
    jpeg = decode_image(as_msg(compressed_fields(frame, T0, "jpeg")), "sensor_msgs/msg/CompressedImage")
    assert jpeg.shape == frame.shape and np.abs(jpeg.astype(int) - frame).mean() < JPEG_TOL
    png = compressed_fields(frame, T0, "png")
    assert np.array_equal(decode_image(as_msg(png), "sensor_msgs/msg/CompressedImage"), frame)  # lossless
    png["format"] = ""  # some drivers leave format empty: the leading bytes say PNG
    assert np.array_equal(decode_image(as_msg(png), "sensor_msgs/msg/CompressedImage"), frame)


@pytest.mark.parametrize("mutate, msgtype, match", [
    (lambda f: f.update(encoding="bayer_rggb8"), "sensor_msgs/msg/Image",
     r"^topic /x: encoding 'bayer_rggb8' is not supported; supported: rgb8, bgr8, mono8, rgba8, bgra8, mono16"),
    (lambda f: f.update(step=10), "sensor_msgs/msg/Image", "step 10 is smaller than width 8 x 3 bytes = 24"),
    (lambda f: f.update(data=f["data"][:50]), "sensor_msgs/msg/Image", "50 data bytes for 8 rows of step 24"),
    (lambda f: f.update(format="16UC1; compressedDepth"), "sensor_msgs/msg/CompressedImage",
     "CompressedImage format '16UC1; compressedDepth' is not supported"),
    (lambda f: f.update(data=b"\xff\xd8\xff" + b"\0" * 40), "sensor_msgs/msg/CompressedImage",
     "the jpeg data .* does not decode"),
])
def test_decode_errors_are_one_line(mutate, msgtype, match):
    frame = sim_frames(1, 8)[0]
    fields = compressed_fields(frame, T0) if msgtype.endswith("CompressedImage") else image_fields(frame, "bgr8", T0)
    mutate(fields)
    with pytest.raises(BagError, match=match) as err:
        decode_image(as_msg(fields), msgtype, "topic /x")
    assert "\n" not in str(err.value)


# ---- pairing ------------------------------------------------------------------------------------------
def ms(*values: float) -> np.ndarray:
    return (np.asarray(values) * MS).astype(np.int64)


def test_pairing_known_answer():
    idx, rep = pair_by_time({"a": ms(0, 100, 200, 300, 400), "b": ms(10, 95, 260, 390, 1000)}, tolerance_s=0.03)
    # 200 and 300 have no b within 30 ms (nearest 260: 60 and 40 ms); 1000 is past a's end
    assert idx["a"].tolist() == [0, 1, 4] and idx["b"].tolist() == [0, 1, 3]
    assert rep["kept"] == 3 and rep["dropped"] == {"b": 2} and rep["unused"] == {"a": 2, "b": 2}
    assert rep["median_offset_s"]["b"] == pytest.approx(-0.005)  # offsets +10, -5, -10 ms
    assert rep["tolerance_s"] == 0.03 and rep["tolerance_from"] == "given" and rep["reference"] == "a"
    idx, _ = pair_by_time({"a": ms(10), "b": ms(0, 20)}, tolerance_s=0.02)
    assert idx["b"].tolist() == [0]  # a tie goes to the earlier frame


def test_pairing_never_reuses_a_frame_and_keeps_the_closest_claim():
    idx, rep = pair_by_time({"a": ms(0, 10, 20), "b": ms(12)}, tolerance_s=0.015)
    assert idx["a"].tolist() == [1] and idx["b"].tolist() == [0]  # 10 ms is 2 ms from 12: it wins over 0 and 20
    assert rep["dropped"] == {"b": 2}


def test_pairing_three_cameras_keeps_moments_matched_in_all():
    idx, rep = pair_by_time({"a": ms(0, 100, 200), "b": ms(5, 105, 205), "c": ms(3, 400, 198)[[0, 2, 1]]})
    assert rep["tolerance_s"] == pytest.approx(0.05) and rep["tolerance_from"].startswith("half")
    assert idx["a"].tolist() == [0, 2] and idx["b"].tolist() == [0, 2] and idx["c"].tolist() == [0, 1]
    assert rep["dropped"] == {"b": 0, "c": 1} and rep["kept"] == 2


def test_pairing_random_streams_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = np.sort(rng.integers(0, 2000, rng.integers(2, 40))) * MS
        b = np.sort(rng.integers(0, 2000, rng.integers(2, 40))) * MS
        tol = float(rng.uniform(0.005, 0.05))
        try:
            idx, _ = pair_by_time({"a": a, "b": b}, tolerance_s=tol)
        except BagError:
            assert min(abs(x - y) for x in a for y in b) > tol * 1e9  # raised only when nothing is within tol
            continue
        ia, ib = idx["a"], idx["b"]
        assert np.all(np.diff(ia) > 0) and np.all(np.diff(ib) > 0)  # time order, no frame used twice
        assert np.all(np.abs(a[ia] - b[ib]) <= tol * 1e9)
        for i, j in zip(ia, ib):  # each partner is the nearest frame (ties: the earlier one)
            assert abs(a[i] - b[j]) == np.abs(a[i] - b).min()


def test_pairing_errors():
    with pytest.raises(BagError, match=r"cameras a and b share no time within 0.05 s: a spans 0.000–0.100 s, "
                                       r"b spans 5.000–5.100 s .*nearest frames 4.900 s apart"):
        pair_by_time({"a": ms(0, 100), "b": ms(5000, 5100)})
    with pytest.raises(BagError, match="camera b are not in time order"):
        pair_by_time({"a": ms(0, 100), "b": ms(100, 0)})
    with pytest.raises(BagError, match="fewer than 2 frames.*--tolerance"):
        pair_by_time({"a": ms(0), "b": ms(0)})
    with pytest.raises(BagError, match="positive number of seconds"):
        pair_by_time({"a": ms(0, 1)}, tolerance_s=0)


# ---- bags: round trips -------------------------------------------------------------------------------
ROUND_TRIPS = [("sqlite3", ("rgb8", "bgr8"), 3), ("mcap", ("mono8", "jpeg"), 0), ("bare-mcap", ("bgr8", "rgb8"), 0),
               ("bare-mcap", ("jpeg", "mono8"), 0)]


@pytest.mark.parametrize("storage, encodings, pad", ROUND_TRIPS)
def test_load_recording_round_trip(tmp_path, storage, encodings, pad):
    cams = two_cameras(encodings=encodings, pad=pad)
    bag = write_bag(tmp_path / "run", cams.messages, storage)
    assert is_bag(bag)
    assert image_topics(bag) == {FRONT: "sensor_msgs/msg/Image" if encodings[0] != "jpeg" else
                                 "sensor_msgs/msg/CompressedImage",
                                 SIDE: "sensor_msgs/msg/Image" if encodings[1] != "jpeg" else
                                 "sensor_msgs/msg/CompressedImage"}  # /chatter is not an image topic
    rec = load_recording(bag)
    K = cams.kept
    assert rec.views == ["front", "side"] and rec.states is None and (rec.n_episodes, rec.n_steps) == (1, K)
    assert rec.source == ("mcap" if storage == "bare-mcap" else "rosbag2")
    assert rec.meta["topics"] == {"front": FRONT, "side": SIDE} and rec.meta["clock"] == {"front": "header",
                                                                                          "side": "header"}
    rep = rec.meta["pairing"]
    assert rep["kept"] == K and rep["dropped"] == {"side": 2} and rep["unused"] == {"front": 2, "side": 2}
    assert rep["median_offset_s"]["side"] == pytest.approx(0.007, abs=0.003)
    assert rec.meta["t_ns"]["front"] == cams.t_front[2:].tolist()  # the header stamps, to the ns
    assert rec.meta["t_ns"]["side"] == cams.t_side[:K].tolist()
    for view, frames, enc in (("front", cams.front[2:], encodings[0]), ("side", cams.side[:K], encodings[1])):
        got = rec.frames[view]
        assert got.shape == (1, K, 24, 24, 3) and got.dtype == np.uint8
        if enc == "jpeg":  # lossy: near what was rendered, and exactly what OpenCV decodes from those bytes
            assert np.abs(got[0].astype(int) - frames).mean() < JPEG_TOL, view
        assert np.array_equal(got[0], np.stack([expected_bgr(f, enc) for f in frames])), view


def test_views_topics_resize_and_view_data(tmp_path):
    cams = two_cameras()
    bag = write_bag(tmp_path / "run", cams.messages, "mcap")
    rec = load_recording(bag, views=["side"], resize=12)
    assert rec.views == ["side"] and rec.frames["side"].shape == (1, 10, 12, 12, 3)  # one camera: nothing dropped
    want = cv2.resize(cams.side[3], (12, 12), interpolation=cv2.INTER_AREA)
    assert np.array_equal(rec.frames["side"][0, 3], want)
    named = load_recording(bag, topics={"left": SIDE, "right": FRONT})  # the first named camera is the reference
    assert named.views == ["left", "right"] and named.meta["pairing"]["reference"] == "left"
    assert np.array_equal(named.frames["left"][0], cams.side[:8]) and np.array_equal(named.frames["right"][0],
                                                                                      cams.front[2:])
    by_topic = load_recording(bag, views=[SIDE])  # a topic works as a view name
    assert by_topic.views == [SIDE] and np.array_equal(by_topic.frames[SIDE][0], cams.side)
    vd = ViewData.from_recording(bag, "front", size=16)
    assert vd.frames.shape == (1, 10, 16, 16, 3) and vd.states is None and FRONT in vd.source
    vd = make_view_dataset("cam", 16, recording=bag, topics={"cam": FRONT})
    assert vd.view == "cam" and vd.frames.shape == (1, 10, 16, 16, 3)
    assert view_names(["/a/image", "/a/depth", "/b/image"]) == {"a_image": "/a/image", "a_depth": "/a/depth",
                                                              "b": "/b/image"}


def test_out_of_order_stamps_and_zero_stamps(tmp_path):
    frames = sim_frames(8, 16)
    stamps = jittered(8, T0, seed=3)
    msgs = camera_msgs(FRONT, frames, stamps, "bgr8")
    msgs[2].log_ns, msgs[5].log_ns = msgs[5].log_ns, msgs[2].log_ns  # received out of order: the bag (sorted
    # by log time) holds frame 5 before frames 3, 4 and frame 2 after them
    zero = camera_msgs(SIDE, frames, stamps + 5 * MS, "mono8")
    for m in zero:
        m.fields["header"] = header(0)  # a driver that never sets the stamp: the log time (stamp + 1 ms) is used
    bag = write_bag(tmp_path / "run", msgs + zero, "sqlite3")
    rec = load_recording(bag)
    assert np.array_equal(rec.frames["front"][0], frames)  # sorted back by stamp
    assert rec.meta["clock"] == {"front": "header", "side": "log"}
    assert rec.meta["t_ns"]["side"] == (stamps + 6 * MS).tolist()
    with BagReader(bag) as reader:  # the streaming reader re-sorts through a heap as well
        assert [t for t, _ in reader.frames(FRONT)] == stamps.tolist()


def test_train_and_calib_read_a_bag(tmp_path):
    """`jepa-edge train --recording BAG --view front` trains (4 steps, tiny agent); calib's loader reads the
    bag's paired cameras without states, and the probes' loader stops at the missing ground truth."""
    import json

    from jepa_edge.agents.calibrate import MomentsConfig, load_moments
    from jepa_edge.config import from_dict
    from jepa_edge.train.config import RunConfig
    from jepa_edge.train.loop import load_view_data, train

    bag = write_bag(tmp_path / "run", two_cameras(n=24, size=16).messages, "bare-mcap")
    cfg = from_dict(RunConfig, {
        "name": "bag", "data": {"view": "side", "recording": str(bag), "img_size": 16},
        "train": {"steps": 4, "batch_size": 8, "warmup": 2, "eval_every": 4, "ckpt_every": 4, "log_every": 1,
                  "device": "cpu", "threads": 1},
        "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
                             "latent_dim": 16}}})
    frames, held_out = load_view_data(cfg)
    assert frames.frames.shape == (1, 24, 16, 16, 3) and held_out is None and SIDE in frames.source
    result = train(cfg, tmp_path / "agent", progress=False)
    assert result.step == 4 and json.loads((tmp_path / "agent/meta.json").read_text())["view"] == "side"
    moments = load_moments(["front", "side"], 16, MomentsConfig(recording=str(bag)))
    assert moments.states is None and moments.frames["front"].shape == (1, 22, 16, 16, 3)  # 2 front frames unpaired
    with pytest.raises(ValueError, match="no ground-truth states"):
        load_moments(["side"], 16, MomentsConfig(recording=str(bag)), need_states=True)


# ---- runtime source -----------------------------------------------------------------------------------
def test_bag_source_reads_frames_in_order(tmp_path):
    cams = two_cameras(encodings=("rgb8", "jpeg"))
    bag = write_bag(tmp_path / "run", cams.messages, "mcap")
    assert source_kind(f"bag:{bag}?topic={FRONT}") == "bag" and source_kind(str(bag)) == "bag"
    src = open_source(f"bag:{bag}?topic={FRONT}")
    assert isinstance(src, BagSource) and not src.live
    assert src.fps == pytest.approx(30.0, rel=0.15)  # median stamp interval, with ±2 ms jitter
    got, times = [], []
    while (img := src.read()) is not None:
        got.append(img)
        times.append(src.last_info["t_ns"])
    assert np.array_equal(np.stack(got), cams.front) and times == cams.t_front.tolist()
    src.close()
    side = read_all(open_source(f"{bag}?topic={SIDE}"))  # a plain path with ?topic= works too
    assert np.array_equal(np.stack(side), np.stack([expected_bgr(f, "jpeg") for f in cams.side]))


def test_bag_source_loops_one_topic_mcap_and_fps_override(tmp_path):
    frames = sim_frames(4, 16)
    bag = write_bag(tmp_path / "one", camera_msgs(FRONT, frames, jittered(4, T0, 0), "mono8"), "bare-mcap")
    src = open_source(str(bag), loop=True, fps=50.0)  # one image topic: no ?topic= needed
    assert src.fps == 50.0 and src.name == f"bag:{bag}?topic={FRONT}"
    got = [src.read() for _ in range(10)]
    assert all(np.array_equal(g, expected_bgr(frames[i % 4], "mono8")) for i, g in enumerate(got))  # rewound
    src.close()


def test_bag_source_corrupt_frame_then_next(tmp_path):
    frames = sim_frames(3, 16)
    msgs = camera_msgs(FRONT, frames, jittered(3, T0, 0), "jpeg")
    msgs[1].fields["data"] = b"\xff\xd8\xff" + b"\0" * 64  # a JPEG that does not decode
    src = open_source(str(write_bag(tmp_path / "run", msgs, "sqlite3")))
    assert src.read() is not None
    with pytest.raises(CorruptFrame, match="frame 1: .*does not decode"):
        src.read()
    assert np.array_equal(src.read(), expected_bgr(frames[2], "jpeg"))
    assert src.read() is None


# ---- errors --------------------------------------------------------------------------------------------
@pytest.fixture
def bag(tmp_path):
    return write_bag(tmp_path / "run", two_cameras().messages, "bare-mcap")


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_corrupt_files_are_one_line(tmp_path, bag):
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(bag.read_bytes()[: bag.stat().st_size // 2])  # a recorder killed mid-write
    with pytest.raises(BagError, match=r"cannot read mcap .*cut.mcap: .*mcap recover") as err:
        load_recording(cut)
    one_line(err)
    (tmp_path / "junk.mcap").write_bytes(b"this is not an mcap file" * 10)
    with pytest.raises(BagError, match="cannot read mcap .*junk.mcap"):
        load_recording(tmp_path / "junk.mcap")
    folder = write_bag(tmp_path / "sql", two_cameras().messages, "sqlite3")
    storage_file(folder).write_bytes(b"garbage" * 100)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(BagError, match=r"cannot read rosbag2 .*sql.*not a database.*ros2 bag reindex"):
        load_recording(folder)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written (no journal, no output)
    with pytest.raises(SourceOpenError, match="junk.mcap"):
        open_source(str(tmp_path / "junk.mcap"))
    with pytest.raises(SourceOpenError, match="no such bag"):
        open_source(f"bag:{tmp_path / 'nope.mcap'}")


def test_missing_topic_or_view(tmp_path, bag):
    chatter = write_bag(tmp_path / "chatter", [Msg(CHATTER, "std_msgs/msg/String", T0, {"data": "hi"})], "mcap")
    with pytest.raises(BagError, match="holds no sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage topics"):
        load_recording(chatter)
    with pytest.raises(BagError, match=rf"topic '/nope' \(view 'x'\) is not an image topic of .*; image topics: "
                                       rf"\['{FRONT}', '{SIDE}'\]"):
        load_recording(bag, topics={"x": "/nope"})
    with pytest.raises(BagError, match=rf"topic '{CHATTER}' \(view 'c'\) is not an image topic"):
        load_recording(bag, topics={"c": CHATTER})
    with pytest.raises(BagError, match=r"view 'top' is not in .*views: \{'front': .*--topic VIEW=/topic"):
        load_recording(bag, views=["top"])
    with pytest.raises(SourceOpenError, match=rf"topic '/nope' is not in .*image topics: \['{FRONT}', '{SIDE}'\]"):
        open_source(f"bag:{bag}?topic=/nope")
    with pytest.raises(SourceOpenError, match=r"has 2 image topics .*pick one with 'bag:.*\?topic=TOPIC'"):
        open_source(str(bag))
    with pytest.raises(SourceOpenError, match=r"unknown key\(s\) \['fps'\]"):
        open_source(f"bag:{bag}?fps=3")


def test_unsupported_encoding_and_no_overlap(tmp_path):
    frames = sim_frames(3, 16)
    bayer = write_bag(tmp_path / "bayer", camera_msgs(FRONT, frames, jittered(3, T0, 0), "bayer_rggb8"), "mcap")
    with pytest.raises(BagError, match=rf"^topic {FRONT} at t=.*: encoding 'bayer_rggb8' is not supported; "
                                       "supported: rgb8, bgr8") as err:
        load_recording(bayer)
    one_line(err)
    with pytest.raises(SourceOpenError, match="encoding 'bayer_rggb8' is not supported"):  # at open, not per frame
        open_source(str(bayer))
    apart = write_bag(tmp_path / "apart", two_cameras(side_shift_ns=10**10).messages, "sqlite3")  # side 10 s late
    with pytest.raises(BagError, match=rf"cameras front \({FRONT}\) and side \({SIDE}\) share no time within "
                                       r"0.01\d+ s") as err:
        load_recording(apart)
    one_line(err)


def test_non_bag_inputs_and_missing_extra(tmp_path, monkeypatch, bag):
    folder = tmp_path / "videos"
    folder.mkdir()
    with pytest.raises(ValueError, match="topics, tolerance and states topic apply to bags only"):
        load_recording(folder, topics={"a": "/a"})
    with pytest.raises(ValueError, match="apply to bags only"):
        load_recording(folder, states_topic="/gt")
    assert not is_bag(folder) and not is_bag(tmp_path / "x.mcap")  # no metadata.yaml; no such file
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)  # as if the robot extra were not installed
    with pytest.raises(BagError, match=r"needs the rosbags package .*pip install 'jepa-edge\[robot\]'"):
        load_recording(bag)


def test_messages_in_the_bag_are_what_was_written(tmp_path):
    """Guard on the fixtures themselves: the writer kept every message of every topic."""
    cams = two_cameras()
    bag = write_bag(tmp_path / "run", cams.messages + [Msg(CHATTER, "std_msgs/msg/String", T0 + 1, {"data": "x"})],
                    "sqlite3")
    with BagReader(bag) as reader:
        assert reader.all_topics[CHATTER] == "std_msgs/msg/String"
        assert reader.index(SIDE).t_ns.tolist() == cams.t_side.tolist() and reader.index(FRONT).fps == pytest.approx(
            1e9 / PERIOD, rel=0.15)
