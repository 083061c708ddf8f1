"""The frame sinks ``run`` and ``fleet run`` can add to the deploy loop: an MCAP recording and a live page.

Both are optional extras, imported only when asked for; each is checked (path, port) before any frame is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def frame_sinks(record: str | Path | None = None, serve: str | None = None, *, overwrite: bool = False,
                emit_latent: bool = False, annotate_size: int = 384, meta: dict[str, Any] | None = None,
                on_url: Any = None) -> list[Any]:
    """``[McapRecorder?, LiveServer?]`` for ``--record`` / ``--serve``; ``on_url(url)`` hears where the page is."""
    sinks: list[Any] = []
    try:
        if record is not None:
            from jepa_edge.bags.mcap_out import McapRecorder

            sinks.append(McapRecorder(record, overwrite=overwrite, emit_latent=emit_latent,
                                      annotate_size=annotate_size, meta=meta))
        if serve is not None:
            from jepa_edge.live.server import LiveServer, parse_serve

            host, port = parse_serve(serve)
            server = LiveServer(host, port).start()
            sinks.append(server)
            if on_url is not None:
                on_url(server.url)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
