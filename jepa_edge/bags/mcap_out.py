"""Record a run to MCAP: frames, probe outputs and per-stage latency that Foxglove and the `mcap` CLI open.

``McapRecorder`` is a pipeline frame sink (``run(..., sinks=[McapRecorder("out.mcap")])``). Every message
uses the JSON message encoding with a JSON Schema, so no protobuf is needed and any MCAP tool decodes it:

    topic             schema                     one message per frame
    /camera/image     foxglove.CompressedImage   JPEG of the frame as captured (annotated with annotate=True)
    /outputs/<name>   jepa_edge.Output           {timestamp, frame, head_version, kind, labels, values}
                      (a classification output's values are its class probabilities)
    /latency          jepa_edge.Latency          {timestamp, frame, wait_ms, ..., e2e_ms, dropped, corrupt}
    /z                jepa_edge.Latent           {timestamp, frame, values}; only with emit_latent=True

``foxglove.CompressedImage`` is Foxglove's own schema (its required fields timestamp, frame_id, data as
base64, format), so the Image panel shows the camera. The other three are ours: Foxglove's
``KeyValuePair`` holds strings, which its Plot panel cannot draw, so values are numbers instead
(``/outputs/position.values[0]``, ``/latency.infer_ms``). A non-finite value is written as ``null``.
log_time, publish_time and every ``timestamp`` are the frame's capture time (``record["t"]``, unix
seconds rounded to the microsecond) in nanoseconds; ``sequence`` is the frame index.

The file is written to a temporary sibling and renamed over ``path`` by ``close()``, so a reader never
sees half a recording. JPEG encoding and writing run in a thread; ``frame()`` only copies the frame and
queues it (it waits when ``queue_frames`` frames are pending, so nothing is dropped silently).
``mcap`` is optional: ``pip install 'jepa-edge[robot]'``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import struct
import sys
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from jepa_edge import package_version
from jepa_edge.artifacts import ArtifactError, cannot_write, remove_stale_temps, replace_synced, temp_path
from jepa_edge.runtime.outputs import shown

if TYPE_CHECKING:
    from typing_extensions import Self

MCAP_EXTRA = "pip install 'jepa-edge[robot]'"
LATENT_OUTPUTS = ("z",)  # goes to /z (with emit_latent), never to /outputs/<name>

_TIME = {
    "type": "object",
    "title": "time",
    "properties": {"sec": {"type": "integer", "minimum": 0},
                   "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}},
    "description": "Capture time of the frame",
}
_NUMBERS = {"type": "array", "items": {"type": ["number", "null"]}}
# Foxglove's published JSON Schema (foxglove-sdk schemas/jsonschema/CompressedImage.json), required fields only.
COMPRESSED_IMAGE = {
    "title": "foxglove.CompressedImage",
    "description": "A compressed image",
    "type": "object",
    "properties": {
        "timestamp": {**_TIME, "description": "Timestamp of image"},
        "frame_id": {"type": "string", "description": "Frame of reference for the image."},
        "data": {"type": "string", "contentEncoding": "base64", "description": "Compressed image data"},
        "format": {"type": "string", "description": "Image format\n\nSupported values: `jpeg`, `png`, `webp`, `avif`"},
    },
    "required": ["timestamp", "frame_id", "data", "format"],
}
OUTPUT = {
    "title": "jepa_edge.Output",
    "description": "One probe output of one frame (the head's column labels name the values)",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame": {"type": "integer", "description": "Frame index in the run"},
        "head_version": {"type": "integer", "description": "Version of the head that produced the values"},
        "kind": {"type": "string", "description": "regression | classification ('' for a latent)"},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "Column labels"},
        "values": {**_NUMBERS, "description": "Output values, one per label"},
    },
    "required": ["timestamp", "frame", "head_version", "kind", "labels", "values"],
}
LATENCY = {
    "title": "jepa_edge.Latency",
    "description": "Per-stage latency of one frame in milliseconds (<stage>_ms), and the capture's counters",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame": {"type": "integer"},
        **{f"{s}_ms": {"type": ["number", "null"]} for s in ("wait", "read", "preprocess", "infer", "head", "e2e")},
        "dropped": {"type": "integer", "description": "Frames dropped by the capture so far"},
        "corrupt": {"type": "integer", "description": "Corrupt frames skipped by the capture so far"},
    },
    "additionalProperties": {"type": ["number", "null"]},
    "required": ["timestamp", "frame"],
}
LATENT = {
    "title": "jepa_edge.Latent",
    "description": "The encoder latent z of one frame",
    "type": "object",
    "properties": {"timestamp": _TIME, "frame": {"type": "integer"}, "values": _NUMBERS},
    "required": ["timestamp", "frame", "values"],
}


class McapUnavailableError(ImportError):
    """The optional ``mcap`` package is not installed."""


def import_mcap() -> Any:
    """The ``mcap`` package, or a one-line error naming the extra that installs it."""
    try:
        import mcap.exceptions
        import mcap.reader
        import mcap.records
        import mcap.stream_reader
        import mcap.writer
    except ImportError as exc:
        raise McapUnavailableError(f"MCAP recording needs the mcap package: {MCAP_EXTRA}") from exc
    return mcap


def _floats(values: Any) -> list[float | None]:
    """Flat list of Python floats (exact float32 → float64), non-finite values as None (JSON null)."""
    row = np.asarray(values, np.float64).reshape(-1)
    out = row.tolist()
    return out if np.isfinite(row).all() else [v if math.isfinite(v) else None for v in out]


def _time_ns(t: Any) -> int:
    """Unix seconds (rounded to the µs by the pipeline) → integer ns, exact to the microsecond."""
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"record['t'] must be the capture time in unix seconds (>= 0), got {t!r}")
    return round(float(t) * 1e6) * 1000


class McapRecorder:
    """A frame sink writing one run to an MCAP file; see the module docstring for the channels.

    ``meta`` (model, agent, source, ...) is stored as the ``jepa_edge`` metadata record (values that are
    not strings are stored as JSON). The path is checked here, before any frame, so a bad
    ``--record`` fails before the run starts.
    """

    def __init__(self, path: str | Path, *, jpeg_quality: int = 90, annotate: bool = False,
                 emit_latent: bool = False, overwrite: bool = False, annotate_size: int = 384,
                 meta: dict[str, Any] | None = None, queue_frames: int = 8) -> None:
        self._mcap = import_mcap()
        path = Path(path)
        if path.suffix.lower() != ".mcap":
            raise ValueError(f"{path}: an MCAP recording must end in .mcap; rename it (e.g. {path.stem}.mcap)")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"cannot write {path}: folder {path.parent} is not writable; pick another folder")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give a file path ending in .mcap")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={jpeg_quality}; use 1..100 (90 is a good default)")
        if annotate_size < 16 or queue_frames < 1:
            raise ValueError("McapRecorder: need annotate_size >= 16 and queue_frames >= 1")
        self.path, self.jpeg_quality, self.annotate, self.emit_latent = path, jpeg_quality, annotate, emit_latent
        self.annotate_size = annotate_size
        self.meta = dict(meta or {})
        self.frames = 0  # frames handed to the recorder
        self._queue: queue.Queue[tuple | None] = queue.Queue(maxsize=queue_frames)
        self._tmp: Path | None = None
        self._file: Any = None
        self._writer: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._closed = False

    # ---- the sink -------------------------------------------------------------------------
    def frame(self, image: np.ndarray, record: dict[str, Any], outputs: dict[str, np.ndarray],
              labels: dict[str, tuple[str, list[str]]]) -> None:
        """Queue one frame (copied, so the caller may reuse its buffers); raises if writing has failed."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the recorder is closed; create a new McapRecorder")
        self._raise_if_failed()
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"McapRecorder needs uint8 BGR (H, W, 3) frames, got {image.dtype} {image.shape}")
        ns = _time_ns(record.get("t"))
        index, head_version = int(record["frame"]), int(record.get("head_version", 0))
        values = {}  # name → (kind, labels, values); classification as probabilities, as in the JSON lines
        for name, v in outputs.items():
            if name not in LATENT_OUTPUTS:
                kind, cols = labels.get(name, ("", []))
                values[name] = (kind, cols, _floats(shown(np.asarray(v)[0], kind)))
        z = _floats(outputs["z"]) if self.emit_latent and "z" in outputs else None
        stages = record.get("latency_ms") or {}
        latency = {f"{k}_ms": v for k, v in zip(stages, _floats(list(stages.values())))}
        counters = {k: int(record[k]) for k in ("dropped", "corrupt") if k in record}
        caption = f"#{index} head v{head_version} drop {record.get('dropped', 0)}"
        arrays = {k: np.array(v) for k, v in outputs.items()} if self.annotate else None  # copies
        item = (ns, index, head_version, image.copy(), values, z, {**latency, **counters}, arrays, labels, caption)
        self._start()
        self._queue.put(item)  # waits while queue_frames frames are pending: back-pressure, no drops
        self.frames += 1

    def close(self) -> None:
        """Drain the queue, finish the file (summary, indexes, CRCs) and rename it over ``path``."""
        if self._closed:
            return
        self._closed = True
        try:
            self._start()  # a run without frames still gives a valid (empty) recording
            self._queue.put(None)
            self._thread.join()
            self._raise_if_failed()
            self._writer.finish()
            self._file.close()
            replace_synced(self._tmp, self.path)
        except BaseException:
            self._abandon()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing (the worker thread owns the writer between _start and close) --------------
    def _start(self) -> None:
        if self._thread is not None:
            return
        mcap = self._mcap
        remove_stale_temps(self.path)
        self._tmp = temp_path(self.path, keep_suffix=True)
        try:
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by close() or _abandon()
        except OSError as exc:
            self._closed = True  # nothing was started: close() has nothing to finish or remove
            raise cannot_write(self.path, exc, self._tmp) from exc
        w = mcap.writer.Writer(self._file, compression=mcap.writer.CompressionType.ZSTD, enable_data_crcs=True)
        w.start(profile="", library=f"jepa-edge {package_version()}")
        info = {"jepa_edge_version": package_version(), "jpeg_quality": str(self.jpeg_quality),
                "annotate": str(self.annotate).lower(), "emit_latent": str(self.emit_latent).lower()}
        info.update({k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in self.meta.items()})
        w.add_metadata("jepa_edge", info)
        for schema in (COMPRESSED_IMAGE, OUTPUT, LATENCY) + ((LATENT,) if self.emit_latent else ()):
            self._schemas[schema["title"]] = w.register_schema(
                schema["title"], "jsonschema", json.dumps(schema).encode())
        self._writer = w
        self._thread = threading.Thread(target=self._work, name="mcap-recorder", daemon=True)
        self._thread.start()

    def _channel(self, topic: str, schema: str) -> int:
        if topic not in self._channels:
            self._channels[topic] = self._writer.register_channel(topic, "json", self._schemas[schema])
        return self._channels[topic]

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure keep draining, so frame() never blocks on a full queue
                    try:
                        self._write(*item)
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the loop's thread by frame()/close()
                        self._error = exc
            finally:
                self._queue.task_done()  # flush() waits on these

    def flush(self) -> None:
        """Wait until every frame handed to ``frame()`` so far is written (or the writer failed)."""
        self._queue.join()
        self._raise_if_failed()

    def _write(self, ns: int, index: int, head_version: int, image: np.ndarray, values: dict, z: list | None,
               latency: dict, arrays: dict | None, labels: dict, caption: str) -> None:
        stamp = {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}
        if arrays is not None:
            from jepa_edge.runtime.pipeline import annotate  # lazy: the runtime imports only cv2 and numpy

            image = annotate(image, arrays, labels, self.annotate_size, caption)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise OSError(f"OpenCV could not JPEG-encode a {image.shape} frame; check the OpenCV build")
        self._add("/camera/image", "foxglove.CompressedImage", ns, index, {
            "timestamp": stamp, "frame_id": "camera", "data": base64.b64encode(jpeg.tobytes()).decode("ascii"),
            "format": "jpeg"})
        for name, (kind, cols, vals) in values.items():
            self._add(f"/outputs/{name}", "jepa_edge.Output", ns, index, {
                "timestamp": stamp, "frame": index, "head_version": head_version, "kind": kind,
                "labels": list(cols), "values": vals})
        self._add("/latency", "jepa_edge.Latency", ns, index, {"timestamp": stamp, "frame": index, **latency})
        if z is not None:
            self._add("/z", "jepa_edge.Latent", ns, index, {"timestamp": stamp, "frame": index, "values": z})

    def _add(self, topic: str, schema: str, ns: int, index: int, message: dict) -> None:
        data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
        self._writer.add_message(self._channel(topic, schema), log_time=ns, data=data, publish_time=ns,
                                 sequence=index & 0xFFFFFFFF)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            exc = self._error
            raise OSError(f"{self.path}: MCAP recording failed ({type(exc).__name__}: {exc}); "
                          "check free space and the --record path") from exc

    def _abandon(self) -> None:
        """Stop the worker and remove the temporary file (the target path is left as it was)."""
        if self._thread is not None and self._thread.is_alive():
            self._error = self._error or RuntimeError("recording abandoned")
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass  # the worker drains without writing once _error is set, and sees a later None
            self._thread.join()
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


# ---- reading back ------------------------------------------------------------------------------
def read_mcap_summary(path: str | Path, *, validate: bool = True) -> dict[str, Any]:
    """Channels (schema, encoding, message count), schemas, metadata and time range of an MCAP file.

    With ``validate`` the whole file is also streamed through ``mcap``'s reader with its CRC checks (chunks,
    data section), the footer's summary CRC is checked (the Python reader does not), the message counts
    are compared with the summary's statistics, and every JSON message is parsed; any failure raises
    ``ArtifactError`` naming the file.
    """
    mcap = import_mcap()
    path = Path(path)
    fix = "record it again with `jepa-edge run --record out.mcap`"
    if not path.is_file():
        raise ArtifactError(f"{path}: no such MCAP file; {fix}")
    try:
        size = path.stat().st_size  # no record of a file is longer than the file: bounds the reader's reads
        if validate:
            _check_summary_crc(path, fix)  # before the summary is parsed
        with open(path, "rb") as f:
            reader = mcap.reader.SeekingReader(f, validate_crcs=True, record_size_limit=size)
            header, summary = reader.get_header(), reader.get_summary()
            metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        if summary is None or summary.statistics is None:
            raise ArtifactError(f"{path}: MCAP file has no summary (the recorder was not closed); {fix}")
        stats = summary.statistics
        schemas = {s.id: s for s in summary.schemas.values()}
        channels = {}
        for cid, ch in sorted(summary.channels.items()):
            schema = schemas.get(ch.schema_id)
            channels[ch.topic] = {"schema": schema.name if schema else "", "message_encoding": ch.message_encoding,
                                  "schema_encoding": schema.encoding if schema else "",
                                  "messages": stats.channel_message_counts.get(cid, 0)}
        out = {"profile": header.profile, "library": header.library, "messages": stats.message_count,
               "start_ns": stats.message_start_time, "end_ns": stats.message_end_time, "channels": channels,
               "schemas": {s.name: s.encoding for s in schemas.values()}, "metadata": metadata}
        if validate:
            _validate_stream(mcap, path, summary, size, fix)
    except ArtifactError:
        raise
    except _read_errors(mcap) as exc:
        raise ArtifactError(f"{path}: not a readable MCAP file ({type(exc).__name__}: {exc}); {fix}") from exc
    return out


def _read_errors(mcap: Any) -> tuple[type[BaseException], ...]:
    """What a damaged file raises inside ``mcap`` and its decompressors.

    A damaged length field inside a chunk (``mcap`` trusts it) asks for an impossible buffer: OverflowError
    or MemoryError from that one allocation, which leaves the process as it was.
    """
    zstd = getattr(sys.modules.get("zstandard"), "ZstdError", None)
    return (mcap.exceptions.McapError, ValueError, EOFError, OSError, KeyError, struct.error, OverflowError,
            MemoryError, *((zstd,) if zstd else ()))


_FOOTER = struct.Struct("<BQQQI")  # opcode, record length, summary_start, summary_offset_start, summary_crc


def _check_summary_crc(path: Path, fix: str) -> None:
    """CRC32 over the summary section and the footer up to its CRC field (MCAP spec, Footer record)."""
    with open(path, "rb") as f:
        f.seek(-(_FOOTER.size + 8), os.SEEK_END)
        footer = f.read(_FOOTER.size)
        _, _, start, _, crc = _FOOTER.unpack(footer)
        if crc == 0:
            return  # written without CRCs
        f.seek(start)
        size = os.fstat(f.fileno()).st_size - 8 - _FOOTER.size - start
        got = zlib.crc32(footer[:-4], zlib.crc32(f.read(size)))
    if got != crc:
        raise ArtifactError(f"{path}: MCAP summary CRC mismatch (the file is damaged); {fix}")


def _validate_stream(mcap: Any, path: Path, summary: Any, size: int, fix: str) -> None:
    """Stream every record with CRC checks; counts must match the summary and JSON messages must parse."""
    json_channels = {cid for cid, ch in summary.channels.items() if ch.message_encoding == "json"}
    counts: dict[int, int] = {}
    with open(path, "rb") as f:
        for record in mcap.stream_reader.StreamReader(f, validate_crcs=True, record_size_limit=size).records:
            if isinstance(record, mcap.records.Message):
                counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                if record.channel_id in json_channels:
                    json.loads(record.data)
    want = {cid: n for cid, n in summary.statistics.channel_message_counts.items() if n}
    if counts != want:
        raise ArtifactError(f"{path}: message counts {counts} differ from the summary's {want}; {fix}")
