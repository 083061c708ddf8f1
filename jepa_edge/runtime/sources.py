"""Frame sources: camera, video file, RTSP/HTTP, GStreamer, image folder, ROS bag / MCAP, simulator.

``open_source(spec)`` returns an opened ``Source`` whose ``read()`` gives one
uint8 BGR frame (H, W, 3), ``None`` at the end of a finite stream, raises
``CorruptFrame`` for one undecodable frame and ``SourceDisconnected`` when a
live source stops (the capture thread then reopens it). Resizing to the
model's input happens later, in ``preprocess``.

spec                         kind
"0", "1"                     camera index (live)
"rtsp://…", "http(s)://…"    network stream (live)
"… ! … ! appsink"            GStreamer pipeline, e.g. Jetson CSI ``nvarguscamerasrc`` (live)
"clip.mp4"                   video file
"frames/"                    folder of *.png / *.jpg, sorted by name
"bag:PATH?topic=/cam/image_raw"   one image topic of a rosbag2 folder or .mcap / .db3 file, in stamp
                             order (``PATH`` alone, or ``PATH?topic=…``, works too; ``topic`` may be
                             left out when the bag has one image topic; needs jepa-edge[robot])
"sim:top?size=32&seed=0&fps=30&frames=300"   the built-in 2-D world simulator (jepa_edge.world)
"sim3d:front?size=64&seed=0&fps=30&frames=300"   the built-in 3-D world (robot cameras front, rear, side;
                             fixed overhead, corner); size defaults to 32 (sim) and 64 (sim3d)
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import cv2
import numpy as np

from jepa_edge.config import ConfigError, from_dict
from jepa_edge.runtime.errors import CorruptFrame, SourceDisconnected, SourceOpenError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://")


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 BGR, as read (not yet resized)
    index: int  # position in the stream; frames dropped by the capture leave gaps
    t_wall: float  # time.time() when read (for logs)
    t_mono: float  # time.perf_counter() when read (latency reference)
    pts: float | None = None  # media time in s for files / folders / sim (index / fps), None for live
    info: dict[str, Any] = field(default_factory=dict)  # source extras, e.g. sim ground truth
    read_ms: float = 0.0  # time inside Source.read() for this frame (decode; for a camera, also the wait)


def as_bgr(img: Any, where: str) -> np.ndarray:
    """Validate a decoded frame; grey/BGRA are converted, anything else is a CorruptFrame."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.size == 0:
        raise CorruptFrame(f"{where}: frame could not be decoded")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim != 3 or img.shape[2] != 3:
        raise CorruptFrame(f"{where}: frame has shape {img.shape}, expected (H, W, 3)")
    return img


class Source(ABC):
    """One stream of frames. ``live`` sources are reopened on failure; others end."""

    name: str
    live: bool = False
    fps: float | None = None  # nominal rate (paces file playback with realtime=True)
    last_info: dict[str, Any]  # extras about the frame last read

    def __init__(self) -> None:
        self.last_info = {}

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    def close(self) -> None:
        """Release the device / file (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---- OpenCV VideoCapture sources ----------------------------------------------------------
def gstreamer_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                        flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (``nvarguscamerasrc``) ending in a BGR appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )


def quiet_opencv_logs() -> None:
    """Silence OpenCV's own ``[ WARN ]`` lines (a camera that does not open prints several to stderr):
    our error names the problem and the fix. A user's ``OPENCV_LOG_LEVEL`` is respected."""
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # an OpenCV build without the logging module: nothing to silence
        pass


class TimedReader:
    """``cap.read()`` in one helper thread, so a read blocked in a camera driver or a GStreamer pipeline
    never blocks the caller longer than ``timeout_s``.

    After a timeout the reader is spent: the caller closes it (releasing the device, which unblocks the
    driver) and opens a new one; ``close()`` joins the thread with a timeout and never waits forever.
    """

    def __init__(self, cap: Any, timeout_s: float, name: str) -> None:
        self._cap, self.timeout_s = cap, float(timeout_s)
        self._request, self._done, self._closed = threading.Event(), threading.Event(), False
        self._result: Any = None
        self._thread = threading.Thread(target=self._loop, name=f"read:{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            if self._closed:
                return
            try:
                self._result = self._cap.read()
            except cv2.error as exc:  # handed to the caller, which decides (corrupt frame / disconnect)
                self._result = exc
            self._done.set()

    def read(self) -> tuple[bool, Any]:
        """``(ok, image)`` like ``VideoCapture.read``; ``TimeoutError`` when no answer came in time."""
        self._done.clear()
        self._request.set()
        if not self._done.wait(self.timeout_s):
            raise TimeoutError(f"no frame within {self.timeout_s:g} s")
        if isinstance(self._result, Exception):
            raise self._result
        return self._result

    def close(self, join_s: float = 1.0) -> bool:
        """Stop the thread; release the device if a read is still blocked in it. True when the thread ended."""
        self._closed = True
        self._request.set()
        self._thread.join(join_s)
        if self._thread.is_alive():  # blocked inside read(): releasing the device is what unblocks it
            self._cap.release()
            self._thread.join(join_s)
        if self._thread.is_alive():
            log.warning("%s still blocked in the driver after release(); left as a daemon thread", self._thread.name)
        return not self._thread.is_alive()


class CaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: camera index, file, URL, GStreamer pipeline.

    Camera and GStreamer reads go through a ``TimedReader`` (``timeout_ms``): a frame that does not come
    in time is a ``SourceDisconnected`` (the capture then reopens the source), never a hung thread.
    """

    def __init__(self, spec: str, kind: str, loop: bool = False, timeout_ms: int = 5000,
                 fps: float | None = None, decode_threads: int = 0) -> None:
        super().__init__()
        self.name, self.kind, self.loop, self.timeout_ms = spec, kind, loop, timeout_ms
        self.decode_threads = decode_threads  # FFmpeg decoder threads for files / streams; 0 = FFmpeg's choice
        self.fps_override = fps  # a file's nominal rate replaced (e.g. a badly tagged recording)
        self.live = kind in ("camera", "network", "gstreamer")
        self._cap: Any = None
        self._reader: TimedReader | None = None
        self._index = 0

    def _open_args(self) -> tuple[Any, int, list[int]]:
        if self.kind == "camera":
            return int(self.name), cv2.CAP_ANY, []
        if self.kind == "gstreamer":
            return self.name, cv2.CAP_GSTREAMER, []
        # FFmpeg's default (one decoder thread per core) costs latency on small frames: waking the
        # workers takes longer than decoding a 32 px MJPG frame (measured: README, `--decode-threads 1`)
        threads = [cv2.CAP_PROP_N_THREADS, self.decode_threads] if self.decode_threads else []
        if self.kind == "network":
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
            return self.name, cv2.CAP_FFMPEG, timeouts + threads
        return self.name, cv2.CAP_FFMPEG if threads else cv2.CAP_ANY, threads

    def _hint(self) -> str:
        return {
            "camera": "check the camera is plugged in, /dev/video* exists and is readable by this user, "
            "and no other process holds it",
            "network": "check the URL, credentials and that the stream is up (try `ffprobe URL`)",
            "gstreamer": "test the pipeline with `gst-launch-1.0` (replace appsink by fakesink); for CSI cameras "
            "check `nvargus-daemon` is running",
            "file": "check the file is a video OpenCV's FFmpeg can decode (`ffprobe FILE`)",
        }[self.kind]

    def open(self) -> None:
        self.close()
        if self.kind == "gstreamer":
            if "appsink" not in self.name:
                raise SourceOpenError(
                    f"GStreamer pipeline {self.name!r} has no appsink; end it with "
                    "`! videoconvert ! video/x-raw,format=BGR ! appsink drop=1`"
                )
            if not gstreamer_available():
                raise SourceOpenError(
                    f"cannot open GStreamer pipeline {self.name!r}: this OpenCV ({cv2.__version__}) was built "
                    "without GStreamer (pip's opencv-python wheels are); on a Jetson use JetPack's OpenCV "
                    "(`sudo apt install python3-opencv`, venv created with --system-site-packages and "
                    "opencv-python-headless uninstalled from it)"
                )
        target, api, params = self._open_args()
        quiet_opencv_logs()  # before opening: a missing camera makes OpenCV print [ WARN ] lines otherwise
        cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"cannot open {self.kind} source {self.name!r}: {self._hint()}")
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # best effort: fewer stale frames queued in the driver
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        if self.fps_override and not self.live:
            self.fps = float(self.fps_override)
        self._cap, self._index = cap, 0
        if self.kind in ("camera", "gstreamer"):
            self._reader = TimedReader(cap, self.timeout_ms / 1e3, self.name)

    def _read_frame(self) -> tuple[bool, Any]:
        if self._reader is None:
            return self._cap.read()
        try:
            return self._reader.read()
        except TimeoutError as exc:
            self.close()  # releases the device and joins the reader (bounded): no thread left blocked
            raise SourceDisconnected(f"{self.kind} source {self.name!r}: {exc}; {self._hint()}") from exc

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceDisconnected(f"{self.kind} source {self.name!r} is not open")
        try:
            ok, img = self._read_frame()
        except cv2.error as exc:
            if self.live:
                raise SourceDisconnected(f"{self.kind} source {self.name!r}: OpenCV error {exc}") from exc
            raise CorruptFrame(f"{self.name} frame {self._index}: OpenCV error {exc}") from exc
        if not ok:
            if self.live:
                raise SourceDisconnected(f"{self.kind} source {self.name!r} stopped delivering frames")
            if self.loop and self._index > 0:
                self.open()  # rewinding by reopening works for every container
                return self.read()
            return None  # end of file
        self._index += 1
        return as_bgr(img, f"{self.name} frame {self._index - 1}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close(join_s=min(1.0, self.timeout_ms / 1e3))
            self._reader = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# ---- image folder ---------------------------------------------------------------------------------
class ImageFolderSource(Source):
    def __init__(self, folder: str | Path, fps: float | None = 30.0, loop: bool = False) -> None:
        super().__init__()
        self.folder, self.loop = Path(folder), loop
        self.name, self.fps = str(folder), fps
        self._files: list[Path] = []
        self._i = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceOpenError(f"{self.folder}: no such image folder")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceOpenError(f"{self.folder}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= len(self._files):
            if not self.loop:
                return None
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        self.last_info = {"file": path.name}
        return as_bgr(cv2.imread(str(path), cv2.IMREAD_COLOR), str(path))


# ---- ROS bag / MCAP -------------------------------------------------------------------------------
BAG_PREFIX = "bag:"
BAG_SUFFIXES = (".mcap", ".db3")


def parse_bag_spec(spec: str) -> tuple[str, str | None]:
    """``[bag:]PATH[?topic=/x]`` → (path, topic or None); unknown keys are errors."""
    body = spec.removeprefix(BAG_PREFIX)
    path, _, query = body.partition("?")
    try:
        raw = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as exc:
        raise SourceOpenError(f"bad bag spec {spec!r}: {exc}; e.g. 'bag:run1/?topic=/front/image_raw'") from exc
    unknown = sorted(set(raw) - {"topic"})
    if unknown or not path:
        what = f"unknown key(s) {unknown}" if unknown else "no path"
        raise SourceOpenError(f"bad bag spec {spec!r}: {what}; e.g. 'bag:run1/?topic=/front/image_raw'")
    return path, raw.get("topic") or None


def _is_bag_path(spec: str) -> bool:
    """A bag named by its path alone (``run.mcap``, ``run.db3``, a rosbag2 folder), ``?topic=`` allowed."""
    from jepa_edge.bags.reader import is_bag

    path = spec.partition("?")[0]
    return path.lower().endswith(BAG_SUFFIXES) or is_bag(path)


class BagSource(Source):
    """One image topic of a ROS 2 bag or MCAP file (``jepa_edge.bags``), in stamp order.

    ``fps``: 1 / the median stamp interval (or the override). ``last_info``: ``t_ns`` (the frame's
    time: header stamp, or log time when the topic's stamps are 0) and ``topic``. A frame that
    does not decode is a ``CorruptFrame``; an unsupported encoding is refused at ``open``.
    """

    def __init__(self, path: str | Path, topic: str | None = None, fps: float | None = None,
                 loop: bool = False) -> None:
        super().__init__()
        self.path, self.topic, self.loop, self.fps_override = Path(path), topic, loop, fps
        self.name = f"{BAG_PREFIX}{path}" + (f"?topic={topic}" if topic else "")
        self._bag: Any = None
        self._index: Any = None
        self._frames: Any = None
        self._n = 0

    def open(self) -> None:
        from jepa_edge.bags.reader import BagError, BagReader, decode_image

        self.close()
        if not self.path.exists():
            raise SourceOpenError(f"{self.path}: no such bag (a rosbag2 folder with metadata.yaml, a .mcap or "
                                  "a .db3 file)")
        try:
            bag = BagReader(self.path).open()
        except BagError as exc:
            raise SourceOpenError(str(exc)) from exc
        try:
            topics = bag.image_topics
            if self.topic is None:
                if len(topics) != 1:
                    raise SourceOpenError(
                        f"{self.path} has {len(topics)} image topics {sorted(topics)}; pick one with "
                        f"'{BAG_PREFIX}{self.path}?topic=TOPIC'")
                self.topic = next(iter(topics))
                self.name = f"{BAG_PREFIX}{self.path}?topic={self.topic}"
            self._index = bag.index(self.topic)
            first = bag.raw_frames(self.topic, self._index)
            try:
                _, msgtype, msg = next(first)
            finally:
                first.close()
            decode_image(msg, msgtype, f"topic {self.topic}")  # an unsupported encoding fails here, not per frame
        except BagError as exc:
            bag.close()
            raise SourceOpenError(str(exc)) from exc
        except BaseException:
            bag.close()
            raise
        self._bag = bag
        self.fps = float(self.fps_override) if self.fps_override else self._index.fps
        self._rewind()

    def _rewind(self) -> None:
        self._frames, self._n = self._bag.raw_frames(self.topic, self._index), 0

    def read(self) -> np.ndarray | None:
        from jepa_edge.bags.reader import BagError, decode_image

        if self._bag is None:
            raise SourceDisconnected(f"bag source {self.name!r} is not open")
        try:
            item = next(self._frames, None)
        except BagError as exc:  # the storage failed mid-file: this frame is lost and the stream ends
            raise CorruptFrame(f"{self.name} frame {self._n}: {exc}") from exc
        if item is None:
            if not (self.loop and self._n > 0):
                return None
            self._rewind()
            return self.read()
        t, msgtype, msg = item
        self._n += 1
        self.last_info = {"t_ns": t, "topic": self.topic}
        try:
            return as_bgr(decode_image(msg, msgtype, f"{self.name} frame {self._n - 1}"), self.name)
        except BagError as exc:
            raise CorruptFrame(str(exc)) from exc

    def close(self) -> None:
        if self._bag is not None:
            self._frames = None
            self._bag.close()
            self._bag = None


# ---- in-memory frames -------------------------------------------------------------------------------
class ArraySource(Source):
    """Frames already in memory, (N, H, W, 3) uint8: tests, and benchmarks that exclude decoding."""

    def __init__(self, frames: np.ndarray, fps: float | None = None, loop: bool = False, name: str = "array") -> None:
        super().__init__()
        self.frames, self.fps, self.loop, self.name = frames, fps, loop, name
        self._i = 0

    def open(self) -> None:
        if self.frames.ndim != 4 or self.frames.dtype != np.uint8 or self.frames.shape[-1] != 3:
            raise SourceOpenError(f"ArraySource needs uint8 (N, H, W, 3) frames, got {self.frames.dtype} "
                                  f"{self.frames.shape}")
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= len(self.frames):
            if not self.loop or len(self.frames) == 0:
                return None
            self._i = 0
        self._i += 1
        return self.frames[self._i - 1]


# ---- simulator -------------------------------------------------------------------------------------
SIM_PREFIXES = {"2d": "sim:", "3d": "sim3d:"}  # world kind → source spec prefix


@dataclass
class SimSourceConfig:
    size: int = 0  # rendered frame side in pixels (square frames); 0 = the world's default (32 px 2d, 64 px 3d)
    seed: int = 0  # episode k is simulated and rendered with seed + k
    fps: float = 30.0  # nominal rate, used when paced with realtime=True
    frames: int = 0  # total frames before the stream ends; 0 = endless
    steps: int = 64  # episode length: a new episode (new objects) starts every `steps` frames


class SimSource(Source):
    """Renders episodes of the built-in worlds on demand (``jepa_edge.world.worlds``: the world is the view's);
    ``last_info`` holds the ground truth: ``positions`` (n, 2), and ``robot_pose`` (R, 3) in the 3-D world."""

    def __init__(self, view: str, config: SimSourceConfig | None = None) -> None:
        super().__init__()
        from jepa_edge.world.worlds import DEFAULT_SIZE, world_kind_of_view

        self.cfg = config or SimSourceConfig()
        try:
            self.kind = world_kind_of_view(view)
        except ValueError as exc:
            raise SourceOpenError(f"sim source: {exc}") from exc
        self.size = self.cfg.size or DEFAULT_SIZE[self.kind]
        if self.size < 4 or self.cfg.steps < 1 or self.cfg.frames < 0 or self.cfg.fps <= 0:
            raise SourceOpenError(f"sim source: invalid settings {self.cfg}; size >= 4, steps >= 1, fps > 0")
        self.view = view
        self.name, self.fps = f"{SIM_PREFIXES[self.kind]}{view}", self.cfg.fps
        self._n = 0
        self._chunk: np.ndarray | None = None
        self._truth: dict[str, np.ndarray] = {}

    def open(self) -> None:
        self._n, self._chunk = 0, None

    def _render_episode(self, episode: int) -> None:
        from jepa_edge.world.worlds import episode_frames

        seed = self.cfg.seed + episode
        frames, states = episode_frames(self.view, 1, self.cfg.steps, self.size, seed)
        self._chunk = frames[0]  # (T, S, S, 3)
        self._truth = {"positions": states.positions[0]}  # (T, n, 2)
        if states.kind == "3d":
            self._truth["robot_pose"] = states.robot_pose[0]  # (T, R, 3)

    def read(self) -> np.ndarray | None:
        if self.cfg.frames and self._n >= self.cfg.frames:
            return None
        episode, t = divmod(self._n, self.cfg.steps)
        if t == 0 or self._chunk is None:
            self._render_episode(episode)
        self._n += 1
        self.last_info = {"episode": episode, "step": t, **{k: v[t].tolist() for k, v in self._truth.items()}}
        return self._chunk[t]


def check_sim_view(spec: str, view: str, kind: str | None, query: str = "") -> None:
    """``view`` is a simulator view of the ``kind`` world its spec's prefix names ("2d": ``sim:``, "3d": ``sim3d:``;
    None: either world); a one-line SourceOpenError naming the right prefix otherwise."""
    from jepa_edge.world.worlds import world_kind_of_view

    try:
        other = world_kind_of_view(view)
    except ValueError as exc:
        raise SourceOpenError(f"bad simulator spec {spec!r}: {exc}") from exc
    if kind is not None and other != kind:
        raise SourceOpenError(f"bad simulator spec {spec!r}: {view} is a view of the {other} world; "
                              f"use {SIM_PREFIXES[other]}{view}{'?' + query if query else ''}")


def parse_sim_spec(spec: str) -> tuple[str, SimSourceConfig]:
    """``sim:VIEW?key=value&…`` (2-D world) or ``sim3d:VIEW?…`` (3-D world) → (view, SimSourceConfig);
    unknown keys are errors, and so is a view of the other world (the error names the right prefix)."""
    kind = "3d" if spec.startswith(SIM_PREFIXES["3d"]) else "2d"
    prefix = SIM_PREFIXES[kind]
    example = "'sim3d:front?size=64&seed=0&fps=30'" if kind == "3d" else "'sim:top?size=32&seed=0&fps=30'"
    view, _, query = spec[len(prefix):].partition("?")
    check_sim_view(spec, view, kind, query)
    raw = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    types = {"size": int, "seed": int, "fps": float, "frames": int, "steps": int}
    try:
        values = {k: types[k](v) if k in types else v for k, v in raw.items()}
        return view, from_dict(SimSourceConfig, values)
    except (ConfigError, ValueError) as exc:
        raise SourceOpenError(f"bad simulator spec {spec!r}: {exc}; e.g. {example}") from exc


# ---- dispatch -------------------------------------------------------------------------------
def source_kind(spec: str) -> str:
    if spec.startswith(tuple(SIM_PREFIXES.values())):
        return "sim"
    if spec.startswith(BAG_PREFIX):
        return "bag"
    if "!" in spec:
        return "gstreamer"
    if spec.lower().startswith(NETWORK_SCHEMES):
        return "network"
    if spec.isdigit():
        return "camera"
    if _is_bag_path(spec):
        return "bag"
    if Path(spec).is_dir():
        return "folder"
    return "file"


def open_source(spec: str, *, loop: bool = False, fps: float | None = None, timeout_ms: int = 5000,
                decode_threads: int = 0) -> Source:
    """Open ``spec`` (see the module docstring). ``loop`` rewinds files/folders/bags at their end;
    ``fps`` overrides the nominal rate of a file, folder or bag (for realtime pacing); ``decode_threads``
    sets FFmpeg's decoder threads for files and network streams (0 = FFmpeg's default)."""
    spec = str(spec)
    if decode_threads < 0:
        raise ValueError(f"decode_threads={decode_threads}; use 0 (FFmpeg's default) or a positive count")
    kind = source_kind(spec)
    if kind == "sim":
        view, cfg = parse_sim_spec(spec)
        source: Source = SimSource(view, cfg)
    elif kind == "folder":
        source = ImageFolderSource(spec, fps=fps or 30.0, loop=loop)
    elif kind == "bag":
        path, topic = parse_bag_spec(spec)
        source = BagSource(path, topic, fps=fps, loop=loop)
    else:
        if kind == "file" and not Path(spec).is_file():
            raise SourceOpenError(
                f"{spec!r}: no such video file, folder or device; a source is a camera index ('0'), "
                "a video file, an image folder, an rtsp:// or http:// URL, a GStreamer pipeline with '!', "
                "or 'sim:VIEW' / 'sim3d:VIEW'"
            )
        source = CaptureSource(spec, kind, loop=loop, timeout_ms=timeout_ms, fps=fps, decode_threads=decode_threads)
    source.open()
    return source

