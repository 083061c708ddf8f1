"""Frame sources: files and folders written by the tests, the simulator, and clear errors for the rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import CorruptFrame, SourceDisconnected, SourceOpenError
from jepa_edge.runtime.pipeline import preprocess
from jepa_edge.runtime.sources import (
    ArraySource,
    CaptureSource,
    ImageFolderSource,
    SimSource,
    Source,
    jetson_csi_pipeline,
    open_source,
    source_kind,
)
from jepa_edge.world import WorldConfig, record, render, simulate


def sim_frames(n: int = 12, size: int = 32, view: str = "top", seed: int = 0) -> np.ndarray:
    return render(simulate(WorldConfig(), 1, n, seed), view, size, seed)[0]  # (n, S, S, 3)


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    return record.write_video(path, frames, fps=fps)


def read_all(source) -> list[np.ndarray]:
    out = []
    while (img := source.read()) is not None:
        out.append(img)
    return out


def test_video_file_written_by_opencv(tmp_path):
    frames = sim_frames(12)
    src = open_source(str(write_video(tmp_path / "clip.avi", frames)))
    assert isinstance(src, CaptureSource) and not src.live
    assert src.fps == pytest.approx(10.0)
    got = read_all(src)
    assert len(got) == 12
    assert all(g.shape == (32, 32, 3) and g.dtype == np.uint8 for g in got)
    err = np.abs(np.stack(got).astype(int) - frames.astype(int)).mean()
    assert err < 12  # MJPG is lossy, but it is the same video
    src.close()


def test_video_file_loops_and_fps_override(tmp_path):
    path = write_video(tmp_path / "clip.avi", sim_frames(5))
    src = open_source(str(path), loop=True, fps=50.0)
    got = [src.read() for _ in range(12)]
    assert all(g is not None for g in got)  # rewound at the end instead of stopping
    assert src.fps == 50.0
    src.close()


def test_image_folder_sorted_with_a_corrupt_file(tmp_path):
    frames = sim_frames(4, size=24)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), f)
    (tmp_path / "001b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageFolderSource) and src.fps == 30.0
    assert np.array_equal(src.read(), frames[0])
    assert np.array_equal(src.read(), frames[1])
    with pytest.raises(CorruptFrame, match="001b.jpg"):
        src.read()
    assert np.array_equal(src.read(), frames[2])
    # through the capture thread the bad file is skipped and counted
    with Capture(open_source(str(tmp_path))) as cap:
        got = list(iter(lambda: cap.get(timeout=2), None))
    assert [np.array_equal(g.image, f) for g, f in zip(got, frames)] == [True] * 4
    assert cap.stats.corrupt == 1 and len(got) == 4


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(SourceOpenError, match="no .*images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceOpenError, match="no such image folder"):
        ImageFolderSource(tmp_path / "nope").open()


def test_simulator_source_matches_world_render():
    src = open_source("sim:oblique?size=24&seed=3&frames=10&steps=6&fps=15")
    assert isinstance(src, SimSource) and src.fps == 15.0
    got = read_all(src)
    assert len(got) == 10
    first = render(simulate(WorldConfig(), 1, 6, 3), "oblique", 24, 3)[0]
    second = render(simulate(WorldConfig(), 1, 6, 4), "oblique", 24, 4)[0]  # episode 1 uses seed + 1
    assert np.array_equal(np.stack(got[:6]), first)
    assert np.array_equal(np.stack(got[6:]), second[:4])
    assert src.last_info["episode"] == 1 and len(src.last_info["positions"]) == WorldConfig().n_objects


@pytest.mark.parametrize(
    "spec, match",
    [
        ("sim:top?size=8&bogus=1", "unknown key"),
        ("sim:top?size=abc", "bad simulator spec"),
        ("sim:nowhere", "unknown view"),
        ("97", "cannot open camera source '97'.*/dev/video"),
        ("rtsp://127.0.0.1:9/stream", "cannot open network source.*ffprobe"),
        ("http://127.0.0.1:9/cam.mjpg", "cannot open network source"),
        ("videotestsrc ! fakesink", "no appsink"),
        ("/definitely/not/here.mp4", "no such video file"),
    ],
)
def test_clear_errors_on_open_failure(spec, match):
    with pytest.raises(SourceOpenError, match=match):
        open_source(spec)


def test_gstreamer_pipeline_error_names_the_fix():
    spec = jetson_csi_pipeline(sensor_id=0, width=640, height=480, fps=30)
    assert source_kind(spec) == "gstreamer" and "nvarguscamerasrc" in spec and spec.endswith("max-buffers=1")
    with pytest.raises(SourceOpenError, match="GStreamer"):  # pip OpenCV has no GStreamer; a Jetson's may
        open_source(spec)


def test_source_kinds():
    assert source_kind("0") == "camera"
    assert source_kind("rtsp://cam/1") == "network"
    assert source_kind("sim:top") == "sim"
    assert source_kind("a ! appsink") == "gstreamer"
    assert source_kind("clip.mp4") == "file"


def test_array_source_and_preprocess_resize_with_inter_area():
    frames = sim_frames(3, size=48)
    src = ArraySource(frames)
    src.open()
    got = read_all(src)
    batch = preprocess(got, (16, 16))
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.uint8
    want = cv2.resize(frames[1], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(batch[1], want)
    assert np.array_equal(preprocess(frames[:1], (48, 48))[0], frames[0])  # right size: untouched
    with pytest.raises(SourceOpenError):
        ArraySource(frames[..., 0]).open()


# ---- camera / GStreamer reads with a timeout ------------------------------------------------
class FakeVideoCapture:
    """Stands in for cv2.VideoCapture: numbered frames, or a read that blocks until release()."""

    def __init__(self, *args, block_after: int | None = None) -> None:
        self.n, self.block_after, self.released = 0, block_after, threading.Event()
        self.reading = threading.Event()

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def set(self, *args) -> bool:
        return True

    def get(self, prop) -> float:
        return 30.0

    def read(self):
        if self.block_after is not None and self.n >= self.block_after:
            self.reading.set()
            self.released.wait()  # a driver stuck until the device is released
            return False, None
        self.n += 1
        return True, np.full((4, 4, 3), self.n, np.uint8)

    def release(self) -> None:
        self.released.set()


def _reader_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"read:{name}" and t.is_alive()]


@pytest.mark.parametrize("block_after", [None, 2])
def test_camera_reads_go_through_a_reader_thread_with_a_timeout(monkeypatch, block_after):
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: FakeVideoCapture(*a, block_after=block_after))
    cam = CaptureSource("0", "camera", timeout_ms=200)
    cam.open()
    assert len(_reader_threads("0")) == 1
    assert [int(cam.read()[0, 0, 0]) for _ in range(2)] == [1, 2]  # same frames as a direct read, in order
    if block_after is not None:
        t0 = time.perf_counter()
        with pytest.raises(SourceDisconnected, match="no frame within 0.2 s"):
            cam.read()
        assert time.perf_counter() - t0 < 2.0
        assert not _reader_threads("0")  # the blocked read was released and its thread joined
        with pytest.raises(SourceDisconnected, match="not open"):
            cam.read()
    cam.close()
    assert not _reader_threads("0")


def test_files_are_read_directly_without_a_reader_thread(tmp_path):
    src = open_source(str(write_video(tmp_path / "v.avi", sim_frames(3))))
    assert src._reader is None and len(read_all(src)) == 3


class BlockingSource(Source):
    """A live source whose read blocks (a hung driver) until close() is called."""

    name, live = "stuck", True

    def __init__(self) -> None:
        super().__init__()
        self.closed, self.reading = threading.Event(), threading.Event()

    def open(self) -> None:
        pass

    def read(self):
        self.reading.set()
        self.closed.wait()
        raise SourceDisconnected("closed")

    def close(self) -> None:
        self.closed.set()


def test_capture_close_never_leaves_a_thread_blocked_in_read():
    src = BlockingSource()
    cap = Capture(src, CaptureConfig(join_timeout_s=0.2, max_retries=0)).start()
    assert src.reading.wait(5)
    t0 = time.perf_counter()
    cap.close()
    assert time.perf_counter() - t0 < 2.0
    assert not cap._thread.is_alive()


def test_opencv_warnings_silenced_before_a_camera_opens(monkeypatch):
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    before = cv2.utils.logging.getLogLevel()
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
        with pytest.raises(SourceOpenError, match="cannot open camera source '63'"):
            open_source("63")
        assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_ERROR
    finally:
        cv2.utils.logging.setLogLevel(before)
