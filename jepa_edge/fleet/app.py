"""``jepa-edge fleet``: one robot on the fleet, from a model file, a source and a config (what the CLI calls)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jepa_edge.fleet.node import FleetConfig, FleetNode, PeerNotSeenError


class _Lines:
    """JSON lines to a file, flushed per line (another process may follow it); thread-safe."""

    def __init__(self, path: str | Path | None, append: bool = False) -> None:
        self._path, self._f = path, None  # opened at the first record: a run that fails to start leaves no file
        self._mode = "a" if append else "w"  # append: the same robot's log across restarts
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        if not self._path:
            return
        with self._lock:
            if self._f is None:
                self._f = open(self._path, self._mode, encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._f.write(json.dumps(record, default=str) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def run_fleet(model_path: str | Path, source: str, config: FleetConfig, probe_files: Sequence[str | Path] = (),
              backend: str = "auto", max_frames: int = 0, jsonl: str | Path | None = None,
              events: str | Path | None = None, record: str | Path | None = None, serve: str | None = None,
              overwrite: bool = False, on_url: Callable[[str], None] | None = None,
              append: bool = False) -> dict[str, Any]:
    """Run one robot until the source ends, ``max_frames``, Ctrl-C or SIGTERM; returns the run summary.

    Raises ``PeerNotSeenError`` (the summary attached) when the run ran to its end without ever hearing from
    the followed peer.

    ``record``: also write an MCAP file; ``serve``: HOST:PORT of a live page that shows the fleet too.
    """
    from jepa_edge.runtime import PipelineConfig, open_source
    from jepa_edge.runtime.backends import load_model_for_run
    from jepa_edge.runtime.sinks import frame_sinks

    config.validate()
    model = load_model_for_run(str(model_path), backend)  # first: a bad model leaves no output file behind
    frames_out, events_out = _Lines(jsonl, append), _Lines(events, append)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is \
        threading.main_thread() else None
    sinks: list[Any] = []
    try:
        with FleetNode(model, config, probe_files, events=events_out) as node:
            src = open_source(source)
            pcfg = PipelineConfig(max_frames=max_frames)
            sinks = frame_sinks(record, serve, overwrite=overwrite, annotate_size=pcfg.annotate_size, on_url=on_url,
                                meta={"model": str(model_path), "agent": node.name, "fleet": config.fleet})
            page = next((s for s in sinks if hasattr(s, "set_fleet")), None)
            shown = [0.0]

            def on_frame(record_: dict[str, Any], _: Any) -> None:
                frames_out(record_)
                if page is not None and time.monotonic() - shown[0] > 0.5:  # the fleet table, twice a second
                    shown[0] = time.monotonic()
                    page.set_fleet(node.fleet_info())

            summary = node.run(src, pcfg, stop=stop, on_frame=on_frame, sinks=sinks)
            result = {**summary.to_dict(), "inbox": node.inbox.stats.to_dict()}
            unseen = node.followed_never_seen(summary)
    finally:
        for sink in sinks:
            sink.close()
        model.close()
        frames_out.close()
        events_out.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if unseen:
        raise PeerNotSeenError(unseen, result)
    return result
