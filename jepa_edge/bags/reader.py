"""Camera frames out of ROS 2 bags and MCAP files, without a ROS install (``rosbags``).

What counts as a bag (``is_bag``): a rosbag2 folder (it holds ``metadata.yaml``; sqlite3 or
MCAP storage), or one storage file on its own: a ``.mcap`` file (rosbag2's or any ROS 2 MCAP
with ``cdr`` messages) or a ``.db3`` file. ROS 1 ``.bag`` files are not read.

Image topics are ``sensor_msgs/msg/Image`` and ``sensor_msgs/msg/CompressedImage``. Every frame
comes out as uint8 BGR (H, W, 3):

* Image ``bgr8`` as is; ``rgb8`` channels swapped; ``mono8`` grey copied to 3 channels;
  ``rgba8`` / ``bgra8`` alpha dropped; ``mono16`` scaled to 8 bit by keeping the top byte
  (``v >> 8``): a fixed scale, so a pixel value means the same brightness in every frame
  (a per-frame stretch would make brightness flicker). ``step`` (bytes per row, padding
  included) and ``is_bigendian`` (for mono16) are honoured.
* CompressedImage holding JPEG or PNG (known by its leading bytes, else by ``format``):
  ``cv2.imdecode``. ``compressedDepth`` and other formats are refused.

Time of a frame: the message's ``header.stamp`` (when the camera captured it). If any frame of
a topic has a zero stamp (a driver that does not set it), the whole topic uses the bag's log
time (when the recorder received it) instead, so one topic never mixes two clocks;
``TopicIndex.clock`` says which. Frames come out sorted by that time.

View names (``view_names``): by default a topic's first segment (``/front/image_raw`` →
``front``) when no other image topic shares it, else the whole topic with '/' → '_'
(``/front/left/image`` → ``front_left_image``). ``topics={view: topic}`` overrides.

Ground-truth states (optional; what ``probe`` and ``calib`` score against, what ``write_bag`` writes):

* topic ``/jepa_edge/states`` (``STATES_TOPIC``; ``states_topic`` names another), type
  ``std_msgs/msg/Float32MultiArray``, one message per moment;
* time: Float32MultiArray has no header, so a state's time is its message's **log time** in the bag
  (the recorder's receive time). A writer sets it to the moment's camera ``header.stamp``
  (``write_bag`` does), or records the states on the clock the cameras stamp with;
* ``layout.dim`` is read as named **consecutive slices** of ``data``, not as nested dimensions: slice
  ``k`` holds ``dim[k].size`` values and starts at ``layout.data_offset`` plus the sizes of slices
  ``0..k-1``; ``data`` holds exactly ``data_offset`` + the sum of the sizes; ``stride`` is ignored
  (``write_bag`` sets it to the size). Every message has the same labels and sizes. Labels:

  ============  ====  ================================================================================
  ``positions``   2n  x0, y0, x1, y1, ...: the n objects' centres in the simulator's world units, [0, 1],
                      which are the top view's normalised image coordinates (x = column / width,
                      y = row / height, y down). Required.
  ``velocities``  2n  vx0, vy0, ... in world units per step. Optional: zeros when absent.
  ``danger``       1  0 or 1. Optional: 0 when absent.
  ``radius``       n  each object's radius in world units, the same in every message. Optional: zeros.
  ``episode``      1  the episode index, an integer >= 0 (exact in float32 below 2**24). Optional.
  ============  ====  ================================================================================

  Other labels are skipped. A layout without ``positions``, sizes that do not fit (``positions``
  odd, ``velocities`` not 2n, ``radius`` not n, ``danger`` / ``episode`` not 1, a label twice, a
  data length that does not match), a non-finite value, a danger other than 0 / 1, a negative or
  fractional episode, or a radius that changes is one BagError naming the topic.

Pairing with states: the states are one more stream of ``pair_by_time`` after the cameras (the first
camera stays the reference; same tolerance), so a moment is kept only when every camera AND the
states have a partner. With an ``episode`` slice whose kept moments form runs of increasing episode
indices, all of one length T, frames and states are reshaped to (E, T, ...) in episode order;
otherwise (or without the slice) they are one episode (1, K, ...), with a warning when the slice was
there.

``rosbags`` is an optional dependency (``pip install 'jepa-edge[robot]'``), imported only
when a bag is opened; this module itself imports only NumPy and OpenCV.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from jepa_edge.bags.pairing import BagError, pair_by_time

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["STATES_TOPIC", "STATES_TYPE", "BagError", "BagReader", "BagStates", "TopicIndex", "bag_kind",
           "decode_image", "episode_runs", "image_topics", "is_bag", "pair_by_time", "parse_states", "read_frames",
           "resolve_views", "view_names"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
STATES_TOPIC = "/jepa_edge/states"
STATES_TYPE = "std_msgs/msg/Float32MultiArray"
STATE_SLICES = ("positions", "velocities", "danger", "radius", "episode")  # the labels read, in write order
STORAGE_SUFFIXES = (".mcap", ".db3")
# encoding → (channels, bytes per channel, OpenCV conversion to BGR or None)
RAW_ENCODINGS = {
    "rgb8": (3, 1, cv2.COLOR_RGB2BGR),
    "bgr8": (3, 1, None),
    "mono8": (1, 1, cv2.COLOR_GRAY2BGR),
    "rgba8": (4, 1, cv2.COLOR_RGBA2BGR),
    "bgra8": (4, 1, cv2.COLOR_BGRA2BGR),
    "mono16": (1, 2, cv2.COLOR_GRAY2BGR),
}
SUPPORTED = f"{', '.join(RAW_ENCODINGS)} (sensor_msgs/msg/Image) and jpeg, png (sensor_msgs/msg/CompressedImage)"
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_REPAIR = ("if the recording was cut off, repair it (`mcap recover IN.mcap -o OUT.mcap` for MCAP, "
           "`ros2 bag reindex FOLDER` for a rosbag2 folder) or re-record it")


def is_bag(path: str | Path) -> bool:
    """A rosbag2 folder (with metadata.yaml), or an existing ``.mcap`` / ``.db3`` file."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.is_file() and p.suffix.lower() in STORAGE_SUFFIXES


def bag_kind(path: str | Path) -> str:
    """``"mcap"`` for a bare .mcap file, ``"rosbag2"`` for a rosbag2 folder or .db3 file."""
    return "mcap" if Path(path).suffix.lower() == ".mcap" and Path(path).is_file() else "rosbag2"


def _rosbags() -> tuple[Any, Any, tuple[type[BaseException], ...]]:
    """(AnyReader, default typestore, the exceptions rosbags raises for unreadable data), imported lazily."""
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.rosbag2 import ReaderError
        from rosbags.serde import SerdeError
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise BagError(f"reading ROS bags and MCAP files needs the rosbags package ({exc}); install it with "
                       "`pip install 'jepa-edge[robot]'`") from exc
    errors = (AnyReaderError, ReaderError, SerdeError, sqlite3.DatabaseError, EOFError)
    return AnyReader, get_typestore(Stores.ROS2_HUMBLE), errors


# ---- decoding one message -----------------------------------------------------------------------
def _bytes(data: Any) -> np.ndarray:
    """A message's ``data`` (a NumPy array from rosbags, or bytes) → (N,) uint8 without copying."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _decode_raw(msg: Any, where: str) -> np.ndarray:
    enc = str(msg.encoding)
    if enc not in RAW_ENCODINGS:
        raise BagError(f"{where}: encoding {enc!r} is not supported; supported: {SUPPORTED}; republish the "
                       "topic as bgr8 (e.g. image_proc for Bayer) before recording")
    ch, nbytes, code = RAW_ENCODINGS[enc]
    H, W, step = int(msg.height), int(msg.width), int(msg.step)
    row = W * ch * nbytes  # bytes of pixels per row, padding excluded
    data = _bytes(msg.data)
    if H == 0 or W == 0:
        raise BagError(f"{where}: empty {W}x{H} image")
    if step < row:
        raise BagError(f"{where}: step {step} is smaller than width {W} x {ch * nbytes} bytes = {row}; "
                       "the message is malformed")
    if data.size < step * H:
        raise BagError(f"{where}: {data.size} data bytes for {H} rows of step {step} (needs {step * H}); "
                       "the message is truncated")
    rows = data[: step * H].reshape(H, step)[:, :row]  # (H, row) padding cut off
    if nbytes == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        img = (np.ascontiguousarray(rows).view(dtype).reshape(H, W) >> 8).astype(np.uint8)  # (H, W) top byte
    else:
        img = np.ascontiguousarray(rows).reshape(H, W, ch) if ch > 1 else np.ascontiguousarray(rows)
    return img if code is None else cv2.cvtColor(img, code)


def _decode_compressed(msg: Any, where: str) -> np.ndarray:
    fmt = str(msg.format)
    data = _bytes(msg.data)
    kind = next((k for magic, k in _MAGIC.items() if bytes(data[: len(magic)]) == magic), None)
    named = "jpeg" if ("jpeg" in fmt.lower() or "jpg" in fmt.lower()) else "png" if "png" in fmt.lower() else None
    if "compresseddepth" in fmt.lower() or (kind or named) is None:
        raise BagError(f"{where}: CompressedImage format {fmt!r} is not supported; supported: {SUPPORTED}")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR; grey and alpha converted
    if img is None:
        raise BagError(f"{where}: the {kind or named} data ({data.size} bytes) does not decode; the frame is corrupt")
    return img


def decode_image(msg: Any, msgtype: str, where: str = "image") -> np.ndarray:
    """A deserialised Image / CompressedImage → (H, W, 3) uint8 BGR (see the module doc); ``where`` prefixes errors."""
    if msgtype == IMAGE:
        return _decode_raw(msg, where)
    if msgtype == COMPRESSED:
        return _decode_compressed(msg, where)
    raise BagError(f"{where}: type {msgtype} is not an image; image types: {', '.join(IMAGE_TYPES)}")


# ---- topics and view names ----------------------------------------------------------------------------
def view_names(topics: list[str]) -> dict[str, str]:
    """Default view name → topic (see the module doc)."""
    first = {t: t.strip("/").split("/")[0] for t in topics}
    counts: dict[str, int] = {}
    for name in first.values():
        counts[name] = counts.get(name, 0) + 1
    out: dict[str, str] = {}
    for t in topics:
        name = first[t] if counts[first[t]] == 1 else t.strip("/").replace("/", "_")
        if name in out:
            raise BagError(f"topics {out[name]} and {t} both get the view name {name!r}; name the views "
                           "yourself (--topic VIEW=/topic)")
        out[name] = t
    return out


def resolve_views(available: Mapping[str, str], views: list[str] | None = None,
                  topics: Mapping[str, str] | None = None, where: str = "the bag") -> dict[str, str]:
    """Which topic each wanted view reads → {view: topic}.

    ``available``: the bag's image topics → type. ``topics``: {view: topic} from the user (default:
    ``view_names``). ``views`` picks some of them; a view may also be an image topic itself
    (``/front/image_raw``), which then names its own view.
    """
    listing = sorted(available)
    if not listing:
        raise BagError(f"{where} holds no {' or '.join(IMAGE_TYPES)} topics; record the cameras' image topics")
    if topics:
        for view, topic in topics.items():
            if topic not in available:
                raise BagError(f"topic {topic!r} (view {view!r}) is not an image topic of {where}; "
                               f"image topics: {listing}")
        mapping = dict(topics)
    else:
        mapping = view_names(listing)
    if views is None:
        return mapping
    out = {}
    for view in dict.fromkeys(views):
        if view in mapping:
            out[view] = mapping[view]
        elif view in available:
            out[view] = view
        else:
            raise BagError(f"view {view!r} is not in {where}; views: {mapping}; name a camera with "
                           "--topic VIEW=/topic, or pass an image topic as the view")
    return out


# ---- ground-truth states -------------------------------------------------------------------------------------
@dataclass
class BagStates:
    """The states topic's messages in time order (see the module doc), before pairing."""

    topic: str
    t_ns: np.ndarray  # (N,) int64 log time of each message, sorted
    positions: np.ndarray  # (N, n, 2) float32
    velocities: np.ndarray  # (N, n, 2) float32; zeros when the slice is absent
    danger: np.ndarray  # (N,) int64 0/1; zeros when absent
    radius: np.ndarray  # (n,) float32; zeros when absent
    episode: np.ndarray | None  # (N,) int64, or None without an ``episode`` slice
    slices: list[str]  # the labels of the layout, in order (skipped ones included)

    def take(self, rows: np.ndarray) -> BagStates:
        """The messages at ``rows`` (e.g. the paired ones)."""
        ep = None if self.episode is None else self.episode[rows]
        return BagStates(self.topic, self.t_ns[rows], self.positions[rows], self.velocities[rows],
                         self.danger[rows], self.radius, ep, self.slices)


def parse_states(topic: str, t_ns: np.ndarray, values: np.ndarray, dims: list[tuple[str, int]]) -> BagStates:
    """Slice the states topic's data ``values`` (N, L) float32 (data_offset already cut) by ``dims``
    [(label, size)] → BagStates (unsorted rows stay in the given order)."""
    where = f"states topic {topic}"
    labels = [label for label, _ in dims]
    if len(set(labels)) != len(labels):
        raise BagError(f"{where}: layout.dim labels {labels} name a slice twice; label each slice once")
    if "positions" not in labels:
        raise BagError(f"{where}: layout.dim labels {labels} have no 'positions' slice; label the 2n object "
                       "coordinates x0, y0, x1, y1, ... 'positions'")
    start = np.cumsum([0] + [size for _, size in dims])  # (len(dims) + 1,) slice offsets
    cols = {label: (int(start[k]), int(start[k + 1])) for k, (label, _) in enumerate(dims)}
    size = {label: b - a for label, (a, b) in cols.items()}
    if size["positions"] == 0 or size["positions"] % 2:
        raise BagError(f"{where}: slice 'positions' has size {size['positions']}; it needs 2n > 0 values "
                       "(x0, y0, x1, y1, ...)")
    n = size["positions"] // 2
    want = {"velocities": 2 * n, "danger": 1, "radius": n, "episode": 1}
    for label, expected in want.items():
        if label in size and size[label] != expected:
            raise BagError(f"{where}: slice {label!r} has size {size[label]}; expected {expected} for "
                           f"n = {n} objects (positions has 2n = {2 * n})")
    part = {label: values[:, a:b] for label, (a, b) in cols.items() if label in STATE_SLICES}  # (N, size)
    for label, v in part.items():
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BagError(f"{where}: slice {label!r} holds NaN or inf in {int(bad.sum())} message(s), first at "
                           f"t={int(t_ns[i]) / 1e9:.6f} s; write finite values (drop the moment instead)")
    N = len(values)
    danger = np.zeros(N, np.int64)
    if "danger" in part:
        d = part["danger"][:, 0]
        if not np.isin(d, (0.0, 1.0)).all():
            raise BagError(f"{where}: slice 'danger' holds {sorted(set(d[~np.isin(d, (0.0, 1.0))].tolist()))[:3]}; "
                           "it must be 0 or 1")
        danger = d.astype(np.int64)
    radius = np.zeros(n, np.float32)
    if "radius" in part:
        r = part["radius"]
        if (r != r[:1]).any():
            raise BagError(f"{where}: slice 'radius' changes between messages; it is one value per object, "
                           "the same in every message")
        radius = r[0].copy()
    episode = None
    if "episode" in part:
        e = part["episode"][:, 0]
        if (e < 0).any() or (e != np.round(e)).any():
            raise BagError(f"{where}: slice 'episode' holds a negative or fractional value; write the episode "
                           "index 0, 1, 2, ...")
        episode = e.astype(np.int64)
    velocities = part["velocities"] if "velocities" in part else np.zeros((N, 2 * n), np.float32)
    return BagStates(topic, np.asarray(t_ns, np.int64), part["positions"].reshape(N, n, 2).copy(),
                     velocities.reshape(N, n, 2).copy(), danger, radius, episode, labels)


def episode_runs(episode: np.ndarray) -> tuple[int, int] | str:
    """(E, T) when ``episode`` (K,) is E runs of increasing episode indices, all T long; else why not."""
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])  # (E,) first row of each run
    firsts = episode[starts]
    if (np.diff(firsts) <= 0).any():
        return "the episode indices are not in increasing order (an episode comes back, or goes backwards)"
    lengths = np.diff(np.r_[starts, len(episode)])  # (E,)
    if (lengths != lengths[0]).any():
        shown = dict(zip(firsts.tolist()[:6], lengths.tolist()[:6]))
        return f"the episodes have different lengths after pairing (episode: moments {shown}...)"
    return len(starts), int(lengths[0])


# ---- reading ------------------------------------------------------------------------------------------------
@dataclass
class TopicIndex:
    """Where each message of a topic sits in time, from a first pass over the bag."""

    topic: str
    msgtype: str
    t_ns: np.ndarray  # (N,) int64 frame time of each message, in bag order
    clock: str  # "header" (header.stamp) or "log" (some stamps were 0: the bag's log time)
    order: np.ndarray  # (N,) argsort of t_ns (stable): bag positions in time order

    @property
    def sorted_t_ns(self) -> np.ndarray:
        return self.t_ns[self.order]

    @property
    def fps(self) -> float | None:
        """1 / the median interval between consecutive frames; None below 2 frames or for equal stamps."""
        if len(self.t_ns) < 2:
            return None
        dt = float(np.median(np.diff(self.sorted_t_ns)))
        return 1e9 / dt if dt > 0 else None


class BagReader:
    """An open bag: its image topics, and each topic's frames in time order.

    ``with BagReader(path) as bag: for t_ns, image in bag.frames("/front/image_raw"): ...``
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind = bag_kind(self.path)
        self._reader: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    def open(self) -> Self:
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        if not is_bag(self.path):
            raise BagError(f"{self.path} is not a bag: pass a rosbag2 folder (with metadata.yaml), a .mcap "
                           "or a .db3 file")
        any_reader, typestore, self._errors = _rosbags()
        reader = any_reader([self.path], default_typestore=typestore)
        try:
            reader.open()
        except self._errors as exc:
            raise BagError(f"cannot read {self.kind} {self.path}: {exc}; {_REPAIR}") from exc
        self._reader = reader
        return self

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def all_topics(self) -> dict[str, str]:
        """Every topic → its message type."""
        if self._reader is None:
            raise BagError(f"bag {self.path} is not open; use `with BagReader(path) as bag:`")
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def image_topics(self) -> dict[str, str]:
        """Image topics → type (Image or CompressedImage), sorted by topic."""
        return {t: m for t, m in sorted(self.all_topics.items()) if m in IMAGE_TYPES}

    def _connections(self, topic: str) -> list[Any]:
        if topic not in self.image_topics:
            what = f"has type {self.all_topics[topic]}, not an image" if topic in self.all_topics else "is not in"
            raise BagError(f"topic {topic!r} {what} {self.path}; image topics: {sorted(self.image_topics)}")
        return [c for c in self._reader.connections if c.topic == topic]

    def _state_connections(self, topic: str) -> list[Any]:
        found = self.all_topics.get(topic)
        if found != STATES_TYPE:
            what = f"has type {found}, not {STATES_TYPE}" if found else "is not in"
            listing = sorted(t for t, m in self.all_topics.items() if m == STATES_TYPE)
            raise BagError(f"states topic {topic!r} {what} {self.path}; {STATES_TYPE} topics: {listing} "
                           "(name one with --states-topic, or record the states there)")
        return [c for c in self._reader.connections if c.topic == topic]

    def _messages(self, topic: str, connections: list[Any] | None = None) -> Iterator[tuple[int, str, Any]]:
        """(log time ns, msgtype, deserialised message) in bag order; storage errors become BagError."""
        connections = self._connections(topic) if connections is None else connections
        try:
            for con, log_ns, raw in self._reader.messages(connections=connections):
                yield log_ns, con.msgtype, self._reader.deserialize(raw, con.msgtype)
        except self._errors as exc:
            raise BagError(f"cannot read topic {topic} of {self.path}: {exc}; {_REPAIR}") from exc

    def index(self, topic: str) -> TopicIndex:
        """First pass: the time of every message of ``topic`` (messages are views, nothing is decoded)."""
        msgtype, stamps, logs = "", [], []
        for log_ns, msgtype, msg in self._messages(topic):
            stamps.append(_stamp_ns(msg))
            logs.append(log_ns)
        if not stamps:
            raise BagError(f"topic {topic} of {self.path} holds no messages; pick a topic that was recorded")
        header = 0 not in stamps
        t = np.asarray(stamps if header else logs, dtype=np.int64)  # (N,)
        return TopicIndex(topic, msgtype, t, "header" if header else "log", np.argsort(t, kind="stable"))

    def raw_frames(self, topic: str, index: TopicIndex | None = None) -> Iterator[tuple[int, str, Any]]:
        """(t_ns, msgtype, message) of ``topic`` in time order, not yet decoded.

        Bags are stored in log-time order; stamps may be a little out of it. The messages are
        re-sorted through a heap just large enough for the worst displacement seen in ``index``.
        """
        index = index or self.index(topic)
        n = len(index.t_ns)
        rank = np.empty(n, dtype=np.int64)
        rank[index.order] = np.arange(n)  # rank[i]: place in time order of the i-th message in the bag
        lag = int(max(0, np.max(np.arange(n) - rank)))  # how far after its place a message arrives
        heap: list[tuple[int, int, str, Any]] = []
        for i, (_, msgtype, msg) in enumerate(self._messages(topic)):
            if i >= n:
                raise BagError(f"topic {topic} of {self.path} changed while it was read; read it again")
            heapq.heappush(heap, (int(rank[i]), int(index.t_ns[i]), msgtype, msg))
            if len(heap) > lag:
                _, t, mt, m = heapq.heappop(heap)
                yield t, mt, m
        while heap:
            _, t, mt, m = heapq.heappop(heap)
            yield t, mt, m

    def has_states(self, topic: str = STATES_TOPIC) -> bool:
        return topic in self.all_topics

    def states(self, topic: str = STATES_TOPIC) -> BagStates:
        """Every message of the states topic, parsed (module doc) and sorted by log time."""
        times, rows, layout = [], [], None
        for log_ns, _, msg in self._messages(topic, self._state_connections(topic)):
            dims = [(str(d.label), int(d.size)) for d in msg.layout.dim]
            offset = int(msg.layout.data_offset)
            if layout is None:
                layout = (dims, offset)
            elif (dims, offset) != layout:
                raise BagError(f"states topic {topic} of {self.path}: the message at t={log_ns / 1e9:.6f} s has "
                               f"layout {dims} (offset {offset}), the first {layout[0]} (offset {layout[1]}); "
                               "every message needs the same layout.dim")
            data = np.asarray(msg.data, dtype=np.float32).reshape(-1)
            need = offset + sum(size for _, size in dims)
            if data.size != need:
                raise BagError(f"states topic {topic} of {self.path}: a message holds {data.size} values but its "
                               f"layout.dim {dims} with data_offset {offset} needs {need}; fix the sizes")
            times.append(log_ns)
            rows.append(data[offset:])
        if layout is None:
            raise BagError(f"states topic {topic} of {self.path} holds no messages; record the states or drop "
                           "--states-topic")
        t = np.asarray(times, dtype=np.int64)  # (N,)
        order = np.argsort(t, kind="stable")
        values = np.stack(rows)[order]  # (N, L) float32 in time order
        return parse_states(topic, t[order], values, layout[0])

    def frames(self, topic: str, index: TopicIndex | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(t_ns, (H, W, 3) uint8 BGR) of ``topic`` in time order; a frame that does not decode is a BagError."""
        for t, msgtype, msg in self.raw_frames(topic, index):
            yield t, decode_image(msg, msgtype, f"topic {topic} at t={t / 1e9:.6f} s")


def image_topics(path: str | Path) -> dict[str, str]:
    """The bag's image topics → message type (Image or CompressedImage), sorted by topic."""
    with BagReader(path) as bag:
        return bag.image_topics


def read_frames(path: str | Path, topic: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every frame of one topic → ((N,) int64 t_ns in time order, N images (H, W, 3) uint8 BGR)."""
    with BagReader(path) as bag:
        pairs = list(bag.frames(topic))
    return np.array([t for t, _ in pairs], dtype=np.int64), [img for _, img in pairs]
