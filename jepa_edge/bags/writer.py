"""Write a recording as a ROS 2 bag: its cameras as image topics, its ground truth as the states topic.

``write_bag(path, recording, fmt, encoding, fps)`` writes every view of ``recording.frames``
({view: (E, T, H, W, 3) uint8 BGR}) and, when ``recording.states`` is not None, the states:

    topic                          type                               one message per moment
    /<view>/image_raw              sensor_msgs/msg/Image              encoding rgb8 | bgr8 | mono8
    /<view>/image_raw/compressed   sensor_msgs/msg/CompressedImage    encoding jpeg (format
                                                                      "bgr8; jpeg compressed bgr8")
    /jepa_edge/states              std_msgs/msg/Float32MultiArray     slices positions, velocities, danger,
                                                                      radius, episode (``reader`` module doc)

Time: moment ``k`` (episodes back to back, ``k = e * T + t``) is ``start_ns + round(k * 1e9 / fps)``:
every camera's ``header.stamp`` (``frame_id`` = the view), and the log and publish time of every
message of that moment, states included (their time is the log time). Messages are written moment
by moment, so the bag's order is time order. ``load_recording`` reads it back as (E, T, ...).

Formats: ``"mcap"`` is one bare ``.mcap`` file (ROS 2 profile: ``cdr`` messages, ``ros2msg``
schemas, zstd chunks; written with ``mcap``), what ``ros2 bag``, Foxglove and ``rosbags`` read;
``"rosbag2"`` is a rosbag2 folder (``metadata.yaml``, version 9, + MCAP storage; written with
``rosbags``). Messages are serialised by ``rosbags``' typestore (ROS 2 Humble definitions).

Atomic: a bare file is written to a temporary sibling and renamed over ``path``; a folder is written
inside a temporary sibling folder, and renamed into place (an existing bag being overwritten is moved
aside first, then deleted). An existing ``path`` is refused unless ``overwrite``; a path that is not a
bag is never overwritten. Needs ``pip install 'jepa-edge[robot]'`` (imported when a bag is opened).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from jepa_edge.artifacts import cannot_write, remove_stale_temps, replace_folder_synced, replace_synced, temp_path
from jepa_edge.bags.pairing import BagError
from jepa_edge.bags.reader import COMPRESSED, IMAGE, STATES_TOPIC, STATES_TYPE, is_bag

if TYPE_CHECKING:
    from typing_extensions import Self

    from jepa_edge.world.sim import WorldStates

__all__ = ["ENCODINGS", "FORMATS", "START_NS", "BagWriter", "header_fields", "image_fields", "states_rows",
           "to_message", "typestore", "write_bag"]

FORMATS = ("mcap", "rosbag2")
ENCODINGS = ("rgb8", "bgr8", "mono8", "jpeg")
STORAGES = ("mcap", "sqlite3")  # rosbag2 storage plugins rosbags writes (mcap is write_bag's)
START_NS = 1_700_000_000 * 10**9  # default time of moment 0 (2023-11-14 UTC); never 0, which means "no stamp"
JPEG_FORMAT = "bgr8; jpeg compressed bgr8"  # image_transport's format string for a JPEG of a bgr8 image
ROBOT_EXTRA = "pip install 'jepa-edge[robot]'"
_ROS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # one segment of a ROS 2 topic name
_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
          "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


class Recorded(Protocol):
    """What ``write_bag`` writes: a ``Recording`` or anything with these two attributes."""

    frames: Mapping[str, np.ndarray]  # view → (E, T, H, W, 3) uint8 BGR
    states: WorldStates | None  # (E, T, ...) ground truth, or None


def typestore() -> Any:
    """rosbags' ROS 2 Humble typestore, imported lazily."""
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise BagError(f"writing ROS bags needs the rosbags package ({exc}); install it with `{ROBOT_EXTRA}`") from exc
    return get_typestore(Stores.ROS2_HUMBLE)


def to_message(ts: Any, msgtype: str, fields: Mapping[str, Any]) -> Any:
    """A message as a nested dict of its fields → the typestore's message object.

    Nested messages are dicts (or message objects); numeric sequences are bytes, lists or arrays.
    """
    if msgtype not in ts.fielddefs:
        raise BagError(f"message type {msgtype} is not in the ROS 2 Humble typestore; use a standard type")
    args = []
    for name, (node, detail) in ts.fielddefs[msgtype][1]:
        if name not in fields:
            raise BagError(f"a {msgtype} message needs the field {name!r}; given {sorted(fields)}")
        args.append(_field(ts, int(node), detail, fields[name]))
    return ts.types[msgtype](*args)


def _field(ts: Any, node: int, detail: Any, value: Any) -> Any:
    """One field: node 1 a base value, 2 a nested message, 3 / 4 an array / sequence of either."""
    if node == 1:
        return value
    if node == 2:
        return to_message(ts, detail, value) if isinstance(value, Mapping) else value
    (sub, sub_detail), _ = detail
    if sub == 1 and sub_detail[0] in _NUMPY:
        dtype = _NUMPY[sub_detail[0]]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return np.frombuffer(value, dtype=dtype)
        return np.ascontiguousarray(value, dtype=dtype).reshape(-1)
    return [_field(ts, int(sub), sub_detail, v) for v in value]


def header_fields(stamp_ns: int, frame_id: str) -> dict:
    return {"stamp": {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9}, "frame_id": frame_id}


def image_fields(frame: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                 jpeg_quality: int = 95) -> tuple[str, dict]:
    """One (H, W, 3) uint8 BGR frame → (msgtype, fields) of an Image (rgb8 / bgr8 / mono8) or a
    CompressedImage (jpeg)."""
    head = header_fields(stamp_ns, frame_id)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise OSError(f"OpenCV could not JPEG-encode a {frame.shape} frame; check the OpenCV build")
        return COMPRESSED, {"header": head, "format": JPEG_FORMAT, "data": buf.tobytes()}
    px = {"bgr8": lambda f: f, "rgb8": lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2RGB),
          "mono8": lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)}[encoding](frame)
    H, W = frame.shape[:2]
    step = px.size // H  # bytes per row, no padding
    return IMAGE, {"header": head, "height": H, "width": W, "encoding": encoding, "is_bigendian": 0,
                   "step": step, "data": np.ascontiguousarray(px).tobytes()}


def states_rows(states: WorldStates) -> tuple[list[dict], np.ndarray]:
    """Ground truth (E, T, ...) → (layout.dim of the states topic, (E*T, L) float32 data, one row per moment)."""
    E, T, n, _ = states.positions.shape
    parts = {
        "positions": np.asarray(states.positions, np.float32).reshape(E * T, 2 * n),
        "velocities": np.asarray(states.velocities, np.float32).reshape(E * T, 2 * n),
        "danger": np.asarray(states.danger, np.float32).reshape(E * T, 1),
        "radius": np.broadcast_to(np.asarray(states.radius, np.float32).reshape(1, n), (E * T, n)),
        "episode": np.repeat(np.arange(E, dtype=np.float32), T).reshape(E * T, 1),
    }
    dims = [{"label": k, "size": v.shape[1], "stride": v.shape[1]} for k, v in parts.items()]
    return dims, np.concatenate(list(parts.values()), axis=1)  # (E*T, 6n + 2)


class BagWriter:
    """Messages into a new bag, atomically (module doc): ``with BagWriter(path) as w: w.write(...)``.

    ``fmt="mcap"`` a bare .mcap file; ``"rosbag2"`` a folder with ``storage`` ``"mcap"`` (default) or
    ``"sqlite3"``. Nothing is on disk at ``path`` until the ``with`` block ends without an error.
    """

    def __init__(self, path: str | Path, fmt: str = "mcap", *, storage: str = "mcap", overwrite: bool = False) -> None:
        path = Path(path)
        if fmt not in FORMATS:
            raise BagError(f"bag format {fmt!r} is not known; use one of {list(FORMATS)}")
        if storage not in STORAGES:
            raise BagError(f"rosbag2 storage {storage!r} is not known; use one of {list(STORAGES)}")
        if fmt == "mcap" and path.suffix.lower() != ".mcap":
            raise BagError(f"{path}: a bare MCAP bag must end in .mcap; rename it (e.g. {path.stem}.mcap) or "
                           "write a rosbag2 folder (--format rosbag2)")
        if fmt == "rosbag2" and path.suffix.lower() in (".mcap", ".db3"):
            raise BagError(f"{path}: a rosbag2 bag is a folder; drop the {path.suffix} suffix or use --format mcap")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
            if not is_bag(path) or (fmt == "mcap") != path.is_file():
                what = "a folder" if path.is_dir() else "a file"
                raise FileExistsError(f"{path} is {what} but not a {fmt} bag; --overwrite replaces only a bag of "
                                      "the same format; remove it yourself or pick another path")
        self.path, self.fmt, self.storage = path, fmt, storage
        self.ts = typestore()
        self._tmp: Path | None = None  # the temporary file, or the temporary parent folder
        self._writer: Any = None
        self._file: Any = None
        self._channels: dict[str, Any] = {}
        self._schemas: dict[str, int] = {}

    def open(self) -> Self:
        try:
            if self.fmt == "mcap":
                self._open_mcap()
            else:
                self._open_rosbag2()
        except BaseException:
            self.abandon()
            raise
        return self

    def _open_mcap(self) -> None:
        from jepa_edge import package_version
        from jepa_edge.bags.mcap_out import import_mcap

        mcap = import_mcap()
        remove_stale_temps(self.path)
        self._tmp = temp_path(self.path, keep_suffix=True)
        try:
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by close() or abandon()
        except OSError as exc:
            raise cannot_write(self.path, exc, self._tmp) from exc
        w = mcap.writer.Writer(self._file, compression=mcap.writer.CompressionType.ZSTD, enable_data_crcs=True)
        w.start(profile="ros2", library=f"jepa-edge {package_version()}")
        self._writer = w

    def _open_rosbag2(self) -> None:
        try:
            from rosbags.rosbag2 import StoragePlugin, Writer
        except ImportError as exc:
            raise BagError(f"writing ROS bags needs the rosbags package ({exc}); install it with "
                           f"`{ROBOT_EXTRA}`") from exc
        remove_stale_temps(self.path)
        self._tmp = temp_path(self.path, folder=True)
        try:
            self._tmp.mkdir()
        except OSError as exc:
            raise cannot_write(self.path, exc, self._tmp) from exc
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[self.storage]
        self._writer = Writer(self._tmp / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()

    def write(self, topic: str, msgtype: str, log_ns: int, fields: Mapping[str, Any] | Any) -> None:
        """One message (a dict of fields, or a typestore message), logged (and published) at ``log_ns``."""
        msg = to_message(self.ts, msgtype, fields) if isinstance(fields, Mapping) else fields
        data = self.ts.serialize_cdr(msg, msgtype)
        if self.fmt == "mcap":
            self._writer.add_message(channel_id=self._channel(topic, msgtype), log_time=int(log_ns),
                                     publish_time=int(log_ns), data=bytes(data))
        else:
            self._writer.write(self._channel(topic, msgtype), int(log_ns), data)

    def _channel(self, topic: str, msgtype: str) -> Any:
        if topic in self._channels:
            return self._channels[topic]
        if self.fmt == "rosbag2":
            self._channels[topic] = self._writer.add_connection(topic, msgtype, typestore=self.ts)
            return self._channels[topic]
        if msgtype not in self._schemas:
            msgdef = self.ts.generate_msgdef(msgtype, ros_version=2)[0]
            self._schemas[msgtype] = self._writer.register_schema(msgtype, "ros2msg", msgdef.encode())
        self._channels[topic] = self._writer.register_channel(topic, "cdr", self._schemas[msgtype])
        return self._channels[topic]

    def close(self) -> None:
        """Finish the bag and move it to ``path``."""
        try:
            if self.fmt == "mcap":
                self._writer.finish()
                self._file.close()
                replace_synced(self._tmp, self.path)
            else:
                self._writer.close()
                replace_folder_synced(self._tmp / self.path.name, self.path, self._tmp)
        except BaseException:
            self.abandon()
            raise
        self._tmp = None

    def abandon(self) -> None:
        """Drop what was written; ``path`` stays as it was."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.fmt == "rosbag2" and self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001,S110 - the bag is being thrown away; the first error is re-raised
                pass
        self._writer = None
        if self._tmp is not None and self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tmp = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def write_bag(path: str | Path, recording: Recorded, fmt: str = "mcap", encoding: str = "rgb8", fps: float = 30.0,
              *, overwrite: bool = False, jpeg_quality: int = 95, start_ns: int = START_NS) -> Path:
    """Write ``recording``'s views (and states, when it has them) as a bag at ``path`` (module doc) → ``path``."""
    path = Path(path)
    frames = dict(recording.frames)
    states = recording.states
    if encoding not in ENCODINGS:
        raise BagError(f"image encoding {encoding!r} is not written; use one of {list(ENCODINGS)}")
    if not (np.isfinite(fps) and fps > 0):
        raise BagError(f"fps must be a positive number of frames per second, got {fps!r}")
    if not 1 <= jpeg_quality <= 100:
        raise BagError(f"jpeg_quality={jpeg_quality}; use 1..100 (95 is a good default)")
    if not isinstance(start_ns, int) or start_ns <= 0:
        raise BagError(f"start_ns must be a positive int (ns since the epoch; 0 means 'no stamp'), got {start_ns!r}")
    if not frames:
        raise BagError("the recording has no views to write")
    shapes = {v: f.shape for v, f in frames.items()}
    first = next(iter(frames.values()))
    for view, f in frames.items():
        if not _ROS_NAME.fullmatch(view):
            raise BagError(f"view name {view!r} cannot be a ROS topic segment; use letters, digits and _ "
                           "(starting with a letter)")
        if f.dtype != np.uint8 or f.ndim != 5 or f.shape[-1] != 3 or f.shape[:2] != first.shape[:2]:
            raise BagError(f"views must be (E, T, H, W, 3) uint8 BGR with one (E, T); got {shapes}")
    E, T = first.shape[:2]
    if states is not None and states.positions.shape[:2] != (E, T):
        raise BagError(f"states cover {states.positions.shape[:2]} (E, T) but the frames {(E, T)}; "
                       "they do not belong together")
    suffix = "/compressed" if encoding == "jpeg" else ""
    topics = {v: f"/{v}/image_raw{suffix}" for v in frames}
    stamps = start_ns + np.round(np.arange(E * T) * (1e9 / fps)).astype(np.int64)  # (E*T,) moment k's time
    flat = {v: f.reshape(E * T, *f.shape[2:]) for v, f in frames.items()}  # (E*T, H, W, 3)
    dims, rows = states_rows(states) if states is not None else (None, None)
    with BagWriter(path, fmt, overwrite=overwrite) as bag:
        for k, t in enumerate(stamps.tolist()):
            for view, topic in topics.items():
                msgtype, fields = image_fields(flat[view][k], encoding, t, view, jpeg_quality)
                bag.write(topic, msgtype, t, fields)
            if rows is not None:
                bag.write(STATES_TOPIC, STATES_TYPE, t, {"layout": {"dim": dims, "data_offset": 0}, "data": rows[k]})
    return path
