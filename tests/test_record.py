"""Recordings on disk: real OpenCV video files written and read back."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import jepa_edge.world.dataset as dataset_mod
from jepa_edge.world import (
    CODECS,
    RecordingError,
    ViewData,
    WorldConfig,
    load_recording,
    make_view_dataset,
    read_video,
    render,
    simulate,
    simulate_recording,
    write_recording,
    write_video,
)

E, T, SIZE, SEED = 3, 8, 32, 5
VIEWS = ["top", "rotated"]
# mean |decoded - rendered| in grey levels; measured ~4-7 for the lossy codecs at 32 px
TOLERANCE = {"MJPG": 9.0, "mp4v": 9.0, "FFV1": 0.0}


@pytest.fixture(scope="module")
def states():
    return simulate(WorldConfig(), E, T, seed=SEED)


@pytest.fixture(scope="module")
def mjpg_rec(tmp_path_factory, states):
    out = tmp_path_factory.mktemp("rec") / "sim"
    write_recording(out, states, VIEWS, size=SIZE, seed=SEED, codec="MJPG", world_config=WorldConfig())
    return out


def _copy(rec: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in rec.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_roundtrip(tmp_path, states, codec):
    out = write_recording(tmp_path / "r", states, VIEWS, size=SIZE, seed=SEED, codec=codec, world_config=WorldConfig())
    ext = CODECS[codec].extension
    assert sorted(p.name for p in out.iterdir()) == sorted(["recording.json", "states.npz"] + [v + ext for v in VIEWS])
    rec = load_recording(out)
    assert rec.views == VIEWS and (rec.n_episodes, rec.n_steps) == (E, T)
    for key, arr in states.to_arrays().items():  # ground truth survives bit for bit
        assert np.array_equal(getattr(rec.states, key), arr) and getattr(rec.states, key).dtype == arr.dtype, key
    for view in VIEWS:
        got = rec.frames[view]
        assert got.shape == (E, T, SIZE, SIZE, 3) and got.dtype == np.uint8
        want = render(states, view, size=SIZE, seed=SEED).astype(np.int16)
        err = np.abs(got.astype(np.int16) - want).mean()
        assert err <= TOLERANCE[codec], f"{codec} {view}: mean abs diff {err:.2f}"
        # episode/step order: each decoded frame is nearest to its own rendered frame
        flat_got = got.reshape(E * T, -1).astype(np.float32)
        flat_want = want.reshape(E * T, -1).astype(np.float32)
        dist = np.abs(flat_got[:, None] - flat_want[None]).mean(-1)  # (E*T, E*T)
        assert np.array_equal(dist.argmin(1), np.arange(E * T)), f"{codec} {view}: frames out of order"
    meta = rec.meta
    assert meta["format"] == "jepa-edge/recording" and meta["version"] == 1
    assert (meta["codec"], meta["size"], meta["fps"], meta["seed"]) == (codec, SIZE, 30.0, SEED)
    assert (meta["n_episodes"], meta["n_steps"]) == (E, T)
    assert rec.world_config() == WorldConfig()


def test_simulate_recording_matches_view_data_from_simulator(tmp_path):
    cfg = WorldConfig(n_objects=2)
    out = simulate_recording(tmp_path / "r", cfg, 2, 5, ["oblique", "partial"], size=16, seed=9, codec="FFV1")
    for view in ["oblique", "partial"]:
        sim = ViewData.from_simulator(cfg, view, 2, 5, size=16, seed=9)
        rec = ViewData.from_recording(out, view)
        assert np.array_equal(sim.frames, rec.frames), view  # lossless: same pixels
        assert np.array_equal(sim.states.positions, rec.states.positions)
        assert rec.view == view and str(out) in rec.source and (rec.n_episodes, rec.n_steps, rec.size) == (2, 5, 16)
    assert load_recording(out).world_config() == cfg


def test_resize_on_load(mjpg_rec):
    full = load_recording(mjpg_rec, views=["top"])
    small = load_recording(mjpg_rec, views=["top"], resize=16)
    assert small.views == ["top"] and small.frames["top"].shape == (E, T, 16, 16, 3)
    want = cv2.resize(full.frames["top"][1, 3], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small.frames["top"][1, 3], want)
    assert np.array_equal(small.states.positions, full.states.positions)


def test_overwrite_refused_and_no_temp_files_left(tmp_path, states):
    out = write_recording(tmp_path / "r", states, ["top"], size=SIZE, codec="MJPG")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_recording(out, states, ["top"], size=SIZE)
    write_recording(out, states, ["oblique"], size=SIZE, overwrite=True)
    assert load_recording(out).views == ["oblique"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # temp names were all replaced
    assert json.loads((out / "recording.json").read_text())["world"] is None


def test_write_errors(tmp_path, states):
    with pytest.raises(RecordingError, match=r"unknown codec 'H264'.*FFV1.*MJPG.*mp4v"):
        write_recording(tmp_path / "a", states, ["top"], codec="H264")
    with pytest.raises(RecordingError, match="even"):
        write_recording(tmp_path / "b", states, ["top"], size=33)
    with pytest.raises(ValueError, match="unknown view 'sideways'"):
        write_recording(tmp_path / "c", states, ["sideways"])
    with pytest.raises(RecordingError, match=r"\['side'\] belong to the 3d world"):  # a view of the 3-D world
        write_recording(tmp_path / "c", states, ["side"])
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(RecordingError, match=r"codec 'ZZZZ'"):  # the writer did not open: name the codec
        write_video(tmp_path / "x.avi", frames, codec="ZZZZ")
    assert not list(tmp_path.glob("*x*"))
    with pytest.raises(RecordingError, match="odd"):
        write_video(tmp_path / "y.avi", np.zeros((3, 15, 16, 3), np.uint8))


def _ramp_video(path: Path, n: int, hw: tuple[int, int], codec: str) -> np.ndarray:
    """Frame k is flat grey 20 + 10k: its index is readable after lossy coding."""
    frames = np.stack([np.full((*hw, 3), 20 + 10 * k, np.uint8) for k in range(n)])
    write_video(path, frames, fps=15.0, codec=codec)
    return frames


def test_real_robot_folder_truncates_to_shortest_camera(tmp_path):
    folder = tmp_path / "robot"
    folder.mkdir()
    _ramp_video(folder / "front.mp4", 12, (32, 48), "mp4v")
    _ramp_video(folder / "side.avi", 9, (32, 32), "MJPG")
    _ramp_video(folder / "wrist.mkv", 10, (24, 24), "FFV1")
    (folder / "notes.txt").write_text("not a video")
    with pytest.warns(UserWarning, match=r"truncating all to the shortest \(9 frames"):
        rec = load_recording(folder)
    assert rec.views == ["front", "side", "wrist"] and rec.states is None
    assert (rec.n_episodes, rec.n_steps) == (1, 9) and rec.source == "video-folder"
    assert rec.frames["front"].shape == (1, 9, 32, 48, 3)
    assert rec.frames["side"].shape == (1, 9, 32, 32, 3)
    assert rec.frames["wrist"].shape == (1, 9, 24, 24, 3)
    for view in rec.views:  # the first frames are kept, in order
        means = rec.frames[view][0].reshape(9, -1).mean(-1)
        assert np.abs(means - (20 + 10 * np.arange(9))).max() < 5, view  # < half the 10-level step
    assert rec.meta["frame_counts"] == {"front": 12, "side": 9, "wrist": 10}
    assert rec.meta["fps"]["side"] == pytest.approx(15.0)

    with pytest.raises(ValueError, match=r"\(E, T, S, S, 3\).*size=S"):  # 48x32 is not square
        ViewData.from_recording(folder, "front")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one camera alone has nothing to truncate against...
        vd = make_view_dataset("front", 16, recording=folder)
    assert vd.frames.shape == (1, 12, 16, 16, 3) and vd.states is None  # ...so it keeps all 12 frames


def test_equal_length_cameras_load_without_warning(tmp_path):
    folder = tmp_path / "robot"
    folder.mkdir()
    _ramp_video(folder / "a.avi", 6, (16, 16), "MJPG")
    _ramp_video(folder / "b.AVI", 6, (16, 16), "MJPG")  # extension case does not matter
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = load_recording(folder, resize=8)
    assert rec.views == ["a", "b"] and rec.frames["b"].shape == (1, 6, 8, 8, 3)


def test_corrupt_video_is_a_clear_error(tmp_path, mjpg_rec):
    folder = tmp_path / "robot"
    folder.mkdir()
    _ramp_video(folder / "good.avi", 4, (16, 16), "MJPG")
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RecordingError, match=r"broken\.mp4.*corrupt"):
        load_recording(folder)
    (folder / "broken.mp4").write_bytes(b"")
    with pytest.raises(RecordingError, match=r"broken\.mp4"):
        load_recording(folder)
    assert load_recording(folder, views=["good"]).n_steps == 4  # the good camera alone still loads

    rec = _copy(mjpg_rec, tmp_path / "sim")
    avi = (rec / "top.avi").read_bytes()
    (rec / "top.avi").write_bytes(avi[: len(avi) // 2])  # truncated file: fewer frames than declared
    with pytest.raises(RecordingError, match=r"top\.avi"):
        load_recording(rec)


def test_missing_view_lists_available(mjpg_rec, tmp_path):
    with pytest.raises(RecordingError, match=r"\['oblique'\] not in recording.*\['top', 'rotated'\]"):
        load_recording(mjpg_rec, views=["oblique"])
    with pytest.raises(RecordingError, match="available views"):
        ViewData.from_recording(mjpg_rec, "oblique")
    folder = tmp_path / "robot"
    folder.mkdir()
    _ramp_video(folder / "cam0.avi", 3, (16, 16), "MJPG")
    with pytest.raises(RecordingError, match=r"\['cam1'\].*\['cam0'\]"):
        load_recording(folder, views=["cam1"])


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recording(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(RecordingError, match=r"no video files.*readme\.md"):
        load_recording(tmp_path / "empty")


def _edit_meta(rec: Path, **changes) -> None:
    meta = json.loads((rec / "recording.json").read_text())
    meta.update(changes)
    (rec / "recording.json").write_text(json.dumps(meta))


def test_metadata_mismatches(mjpg_rec, tmp_path):
    rec = _copy(mjpg_rec, tmp_path / "size")
    _edit_meta(rec, size=64)
    with pytest.raises(RecordingError, match=r"32x32 frames but recording.json says size 64"):
        load_recording(rec)
    rec = _copy(mjpg_rec, tmp_path / "steps")
    _edit_meta(rec, n_steps=T + 1)
    with pytest.raises(RecordingError, match=rf"holds {E * T} frames.*{E * (T + 1)}"):
        load_recording(rec)
    rec = _copy(mjpg_rec, tmp_path / "version")
    _edit_meta(rec, version=99)
    with pytest.raises(RecordingError, match="upgrade jepa-edge"):
        load_recording(rec)
    rec = _copy(mjpg_rec, tmp_path / "escape")
    _edit_meta(rec, files={"top": "../top.avi", "rotated": "rotated.avi"})
    with pytest.raises(RecordingError, match="plain file name"):
        load_recording(rec)


def _rewrite_states(rec: Path, **changes) -> None:
    with np.load(rec / "states.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez(rec / "states.npz", **arrays)


def test_states_wrong_length(mjpg_rec, tmp_path):
    rec = _copy(mjpg_rec, tmp_path / "short")
    with np.load(rec / "states.npz") as npz:
        positions = npz["positions"]
    _rewrite_states(rec, positions=positions[:-1])
    with pytest.raises(RecordingError, match=r"positions has shape \(23, 3, 2\), expected \(24, 3, 2\)"):
        load_recording(rec)
    rec = _copy(mjpg_rec, tmp_path / "order")
    _rewrite_states(rec, episode_index=np.tile(np.arange(E), T))  # interleaved, not back-to-back
    with pytest.raises(RecordingError, match="back-to-back"):
        load_recording(rec)
    rec = _copy(mjpg_rec, tmp_path / "missing")
    (rec / "states.npz").unlink()
    with pytest.raises(FileNotFoundError, match="states.npz"):
        load_recording(rec)


def test_pickled_states_are_refused(mjpg_rec, tmp_path, monkeypatch):
    rec = _copy(mjpg_rec, tmp_path / "pickle")
    _rewrite_states(rec, positions=np.array([{"evil": 1}] * (E * T), dtype=object))
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(dataset_mod.np, "load", spy)
    with pytest.raises(RecordingError, match="refusing to unpickle"):
        load_recording(rec)
    assert calls == [False]
    (rec / "states.npz").write_bytes(b"garbage, not an archive")
    with pytest.raises(RecordingError, match="states.npz"):
        load_recording(rec)


def test_make_view_dataset_dispatch(mjpg_rec):
    sim = make_view_dataset("top", 16, n_episodes=2, n_steps=3, seed=1)
    assert sim.frames.shape == (2, 3, 16, 16, 3) and sim.states is not None and "simulator" in sim.source
    rec = make_view_dataset("rotated", None, recording=mjpg_rec)
    assert rec.frames.shape == (E, T, SIZE, SIZE, 3) and rec.states.n_steps == T
    with pytest.raises(ValueError, match=r"\['n_episodes'\].*recording fixes them"):
        make_view_dataset("top", 32, recording=mjpg_rec, n_episodes=4)


def test_read_video_roundtrip_lossless(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mkv", frames, codec="FFV1")
    assert np.array_equal(read_video(tmp_path / "v.mkv"), frames)
    assert os.path.getsize(tmp_path / "v.mkv") > 0
