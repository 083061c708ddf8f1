"""A fake live camera for source-loss tests (the runtime's reconnect and run-summary paths)."""

from __future__ import annotations

import numpy as np

from jepa_edge.runtime.errors import SourceDisconnected, SourceOpenError
from jepa_edge.runtime.sources import Source


class LostCamera(Source):
    """A live camera that delivers ``frames`` 16x16 frames, then drops out and cannot be reopened."""

    name, live, fps = "cam0", True, 30.0

    def __init__(self, frames: int = 3) -> None:
        super().__init__()
        self.frames, self.n, self.opened = frames, 0, 0

    def open(self) -> None:
        self.opened += 1
        if self.opened > 1:
            raise SourceOpenError("cam0: no such device")

    def read(self) -> np.ndarray:
        self.n += 1
        if self.n > self.frames:
            raise SourceDisconnected("cam0 stopped delivering frames")
        return np.zeros((16, 16, 3), np.uint8)
