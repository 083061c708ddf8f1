"""The one video writer (OpenCV; torch-free): recordings (``world.record``) and ``run``'s annotated video.

A codec is a FourCC plus the container the FFmpeg backend picks from the file's suffix; ``CODECS``
lists the pairs jepa-edge tests, ``SUFFIX_CODECS`` the codec a bare suffix gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa_edge.artifacts import ArtifactError


class VideoError(ArtifactError):
    """A video writer that cannot be opened as asked (codec, container, frame size)."""


@dataclass(frozen=True)
class Codec:
    fourcc: str  # four-character code passed to cv2.VideoWriter_fourcc
    extension: str  # container the FFmpeg backend picks from the file name
    lossless: bool  # True: decoded frames equal the written ones bit for bit


CODECS: dict[str, Codec] = {
    "MJPG": Codec("MJPG", ".avi", False),  # default: readable everywhere, cheap to decode
    "mp4v": Codec("mp4v", ".mp4", False),  # smaller files, inter-frame compression
    "FFV1": Codec("FFV1", ".mkv", True),  # lossless; larger files
}
SUFFIX_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}  # codec of a path given without one


def open_video_writer(path: str | Path, fps: float, size: tuple[int, int], codec: str | None = None,
                      shown: str | Path | None = None) -> Any:
    """An opened ``cv2.VideoWriter`` for BGR frames of ``size = (width, height)`` at ``path``.

    ``codec`` is any FourCC the local OpenCV/FFmpeg build can encode into the container named by the
    suffix of ``path``; ``None`` picks it from the suffix (``SUFFIX_CODECS``). Odd sizes are refused:
    OpenCV's FFmpeg writer silently crops them to even. Errors name ``shown`` (default ``path``: a writer
    of a temporary file names the file it becomes).
    """
    import cv2

    path = Path(path)
    shown = path if shown is None else Path(shown)
    if codec is None:
        codec = SUFFIX_CODECS.get(path.suffix.lower())
        if codec is None:
            raise VideoError(f"{shown}: a video must be one of {sorted(SUFFIX_CODECS)} (by file suffix)")
    if len(codec) != 4:
        raise VideoError(f"codec {codec!r} is not a four-character FourCC such as {sorted(CODECS)}")
    w, h = size
    if h % 2 or w % 2:
        raise VideoError(
            f"frame size {w}x{h} is odd: OpenCV's FFmpeg writer silently crops odd sizes to even; use an even size"
        )
    if not fps > 0:
        raise VideoError(f"fps must be > 0, got {fps}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (w, h), True)
    if not writer.isOpened():
        raise VideoError(
            f"OpenCV could not open a video writer for codec {codec!r} in a {path.suffix!r} file "
            f"({shown}); this OpenCV build lacks that encoder/container pair. "
            f"Tested pairs: {', '.join(f'{c.fourcc}{c.extension}' for c in CODECS.values())}"
        )
    return writer
