"""A live page for a running robot (``jepa-edge run --serve``): MJPEG video, Server-Sent Events, stdlib HTTP only.

    server = LiveServer("127.0.0.1", 8080).start()
    run(model, source, sinks=[server])  # the pipeline closes its sinks when it ends
"""

from jepa_edge.live.server import LiveServer, LiveServerError, parse_serve

__all__ = ["LiveServer", "LiveServerError", "parse_serve"]
