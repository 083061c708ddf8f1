"""Real ROS 2 bags and MCAP files for the tests, written with the packages robots' tools interoperate with.

``write_bag(path, messages, storage)`` writes ``messages`` as
* ``"sqlite3"`` / ``"mcap"``: a rosbag2 folder (metadata.yaml + storage file) by ``rosbags``' writer, through
  the library's ``jepa_edge.bags.writer.BagWriter`` (which ``write_bag`` of the library uses too);
* ``"bare-mcap"``: one ``.mcap`` file by ``mcap_ros2``'s writer (what Foxglove and ``mcap`` tools write;
  deliberately not the library's own bare-MCAP writer, so the reader is tested on a file it did not write).

Frames are the built-in simulator's views (``jepa_edge.world``), so they have structure a decoder can
get wrong (colour order, rows, padding). ``two_cameras`` builds a scene with a known pairing answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jepa_edge.bags.writer import BagWriter, header_fields, typestore
from jepa_edge.world import WorldConfig, render, simulate

IMAGE, COMPRESSED, STRING = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/String"
FRONT, SIDE, CHATTER = "/front/image_raw", "/side/camera/image_raw", "/chatter"
T0 = 1_700_000_000 * 10**9  # a plausible epoch time in ns
PERIOD = 33_333_333  # 30 fps


@dataclass
class Msg:
    topic: str
    msgtype: str
    log_ns: int  # the recorder's receive time
    fields: dict  # the message as a nested dict (header, height, ..., data as bytes)


def sim_frames(n: int, size: int = 24, view: str = "top", seed: int = 0) -> np.ndarray:
    return render(simulate(WorldConfig(), 1, n, seed), view, size, seed)[0]  # (n, S, S, 3) uint8 BGR


def header(stamp_ns: int) -> dict:
    return header_fields(stamp_ns, "camera")


def raw_pixels(frame: np.ndarray, encoding: str, low_byte_seed: int = 0) -> np.ndarray:
    """A BGR frame in ``encoding``'s pixel layout: (H, W, C) uint8, or (H, W) uint16 for mono16
    (the grey value in the top byte, random noise in the low byte: a decoder must keep the top byte)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if encoding == "mono16":
        low = np.random.default_rng(low_byte_seed).integers(0, 256, grey.shape, dtype=np.uint16)
        return (grey.astype(np.uint16) << 8) | low
    return {
        "bgr8": frame,
        "rgb8": cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
        "mono8": grey,
        "bgra8": cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA),
        "rgba8": cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA),
        "bayer_rggb8": grey,
    }[encoding]


def expected_bgr(frame: np.ndarray, encoding: str) -> np.ndarray:
    """What a correct decoder returns for ``frame`` sent as ``encoding`` (grey encodings lose colour; jpeg
    what OpenCV decodes from the bytes ``compressed_fields`` writes: deterministic, the same library)."""
    if encoding == "jpeg":
        return cv2.imdecode(np.frombuffer(compressed_fields(frame, 0)["data"], np.uint8), cv2.IMREAD_COLOR)
    if encoding in ("mono8", "mono16"):
        return cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return frame


def image_fields(frame: np.ndarray, encoding: str, stamp_ns: int, pad: int = 0, big_endian: bool = False) -> dict:
    """sensor_msgs/msg/Image fields; ``pad`` bytes of 0xAB end every row (step = width * bytes + pad)."""
    px = raw_pixels(frame, encoding)
    if px.dtype == np.uint16:
        px = px.astype(">u2" if big_endian else "<u2")
    H, W = frame.shape[:2]
    rows = px.reshape(H, -1).view(np.uint8)  # (H, W * bytes per pixel)
    rows = np.concatenate([rows, np.full((H, pad), 0xAB, np.uint8)], axis=1)  # (H, step)
    return {"header": header(stamp_ns), "height": H, "width": W, "encoding": encoding,
            "is_bigendian": int(big_endian), "step": rows.shape[1], "data": rows.tobytes()}


def compressed_fields(frame: np.ndarray, stamp_ns: int, fmt: str = "jpeg", data: bytes | None = None) -> dict:
    """sensor_msgs/msg/CompressedImage fields (image_transport writes format 'bgr8; jpeg compressed bgr8')."""
    if data is None:
        ok, buf = cv2.imencode(".png" if "png" in fmt else ".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        data = buf.tobytes()
    return {"header": header(stamp_ns), "format": fmt, "data": data}


def camera_msgs(topic: str, frames: np.ndarray, stamps: np.ndarray, encoding: str, pad: int = 0,
                latency_ns: int = 1_000_000, big_endian: bool = False) -> list[Msg]:
    """One camera's messages; ``encoding`` 'jpeg' / 'png' makes CompressedImage messages."""
    out = []
    for frame, t in zip(frames, stamps):
        t = int(t)
        if encoding in ("jpeg", "png"):
            fields, msgtype = compressed_fields(frame, t, f"bgr8; {encoding} compressed bgr8"), COMPRESSED
        else:
            fields, msgtype = image_fields(frame, encoding, t, pad, big_endian), IMAGE
        out.append(Msg(topic, msgtype, t + latency_ns, fields))
    return out


def jittered(n: int, start_ns: int, seed: int, jitter_ns: int = 2_000_000) -> np.ndarray:
    """``n`` stamps PERIOD apart from ``start_ns``, each moved by up to ±``jitter_ns`` (sorted: jitter < PERIOD/2)."""
    rng = np.random.default_rng(seed)
    return start_ns + np.arange(n, dtype=np.int64) * PERIOD + rng.integers(-jitter_ns, jitter_ns + 1, n)


@dataclass
class TwoCameras:
    """Front (reference) and side cameras; side starts 2 periods + 7 ms late, so side frame k pairs with
    front frame k + 2: front frames 0, 1 have no partner, side frames n-2, n-1 come after the front's end."""

    front: np.ndarray  # (n, S, S, 3) BGR as rendered
    side: np.ndarray
    t_front: np.ndarray  # (n,) stamps ns
    t_side: np.ndarray
    messages: list[Msg]

    @property
    def kept(self) -> int:
        return len(self.front) - 2


def two_cameras(n: int = 10, size: int = 24, encodings: tuple[str, str] = ("rgb8", "bgr8"), pad: int = 0,
                side_shift_ns: int = 0) -> TwoCameras:
    front, side = sim_frames(n, size, "top", 1), sim_frames(n, size, "oblique", 1)
    t_front = jittered(n, T0, seed=1)
    t_side = jittered(n, T0 + 2 * PERIOD + 7_000_000 + side_shift_ns, seed=2)
    msgs = camera_msgs(FRONT, front, t_front, encodings[0], pad) + camera_msgs(SIDE, side, t_side, encodings[1])
    msgs.append(Msg(CHATTER, STRING, T0, {"data": "not a camera"}))
    return TwoCameras(front, side, t_front, t_side, msgs)


# ---- writers -------------------------------------------------------------------------------------------
def write_bag(path: Path, messages: list[Msg], storage: str = "sqlite3") -> Path:
    """Write ``messages`` (in list order: that is the bag's order) → the bag's path (folder or .mcap file)."""
    if storage == "bare-mcap":
        from mcap_ros2.writer import Writer

        ts = typestore()
        path = path.with_suffix(".mcap")
        with open(path, "wb") as fh:
            writer, schemas = Writer(fh), {}
            for m in messages:
                if m.msgtype not in schemas:
                    schemas[m.msgtype] = writer.register_msgdef(m.msgtype, ts.generate_msgdef(m.msgtype, 2)[0])
                writer.write_message(m.topic, schemas[m.msgtype], m.fields, log_time=m.log_ns)
            writer.finish()
        return path
    with BagWriter(path, "rosbag2", storage=storage) as writer:
        for m in messages:
            writer.write(m.topic, m.msgtype, m.log_ns, m.fields)
    return path


def storage_file(bag: Path) -> Path:
    """The file holding the messages (the bag itself for a bare .mcap)."""
    return bag if bag.is_file() else next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
