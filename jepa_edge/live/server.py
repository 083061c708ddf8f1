"""A live page for a running robot: MJPEG video, Server-Sent Events and one HTML page (stdlib only).

``LiveServer`` is a pipeline frame sink (``run(..., sinks=[server])``). The loop's thread only
swaps a reference to the latest frame; one encoder thread draws and JPEG-encodes it (at most
``max_fps``, and only while someone watches), and each HTTP connection has its own thread, so
a slow or stalled browser never holds the robot's loop.

    GET /             the page (page.html: plain HTML + JS, nothing fetched from elsewhere)
    GET /stream.mjpg  multipart/x-mixed-replace of JPEG parts: frames annotated like ``--video-out``
    GET /events       text/event-stream, one JSON event per frame (latest-only: a slow reader skips frames)
    GET /state.json   the latest event (503 before the first frame)
    GET /healthz      "ok"

An event is the frame's JSON line plus ``labels`` (output name → {kind, labels}) and, once
``set_fleet(info)`` was called, ``fleet``. Read-only: any method but GET and HEAD gets 405.
Loopback by default: another address needs ``allow_remote=True``; on loopback a request whose
Host header names another machine is refused (a DNS-rebinding web page cannot read the camera).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from jepa_edge.runtime.outputs import shown
from jepa_edge.runtime.pipeline import annotate

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
BOUNDARY = "jepa-edge-frame"  # separates the JPEG parts of /stream.mjpg
KEEPALIVE_S = 15.0  # an idle event stream sends a comment this often, so a closed tab is noticed
SOCKET_TIMEOUT_S = 30.0  # a client that neither sends nor reads for this long is dropped
JOIN_S = 5.0  # close() waits this long per thread after ending its connection (they end at once)
PAGE_CSP = ("default-src 'none'; img-src 'self' data:; connect-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class LiveServerError(RuntimeError):
    """The live page cannot be served as asked (address in use, non-loopback without opting in)."""


def parse_serve(spec: str) -> tuple[str, int]:
    """A ``--serve`` value → (host, port): ``127.0.0.1:8080``, ``[::1]:8080``, or a bare ``8080`` (loopback)."""
    text = spec.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or not port.isdigit() or int(port) > 65535 or (":" in host and not bracketed):
        raise ValueError(f"--serve {spec!r}: expected HOST:PORT such as 127.0.0.1:8080 ([::1]:8080 for IPv6)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain(value: Any) -> Any:
    """JSON ``default``: numpy scalars and arrays as numbers, anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    """NaN / ±Inf → null, recursively (JSON.parse in the browser rejects Python's NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, default=_plain, allow_nan=False).encode()
    except ValueError:  # a non-finite value: rare, so only then walk the object
        return json.dumps(_finite(json.loads(json.dumps(obj, default=_plain))), allow_nan=False).encode()


@dataclass
class _Frame:
    """What ``frame()`` keeps of the latest frame: references only, the JSON is made by the first reader."""

    seq: int
    image: np.ndarray  # uint8 BGR (H, W, 3), as the source handed it out
    record: dict[str, Any]
    outputs: dict[str, np.ndarray]
    labels: dict[str, tuple[str, list[str]]]
    fleet: dict[str, Any] | None
    _event: bytes | None = None

    def event(self) -> bytes:
        if self._event is None:  # two readers racing here compute the same bytes
            labels = {k: {"kind": kind, "labels": list(cols)} for k, (kind, cols) in self.labels.items()}
            extra = {"labels": labels, "outputs": self._grouped(),
                     **({"fleet": self.fleet} if self.fleet is not None else {})}
            self._event = to_json({**self.record, **extra})
        return self._event

    def _grouped(self) -> dict[str, list[float]]:
        """Output name → row 0 as a list (the page groups columns per output); classes as probabilities."""
        grouped = {}
        for name, value in self.outputs.items():
            row = np.asarray(value)[0]  # (K,)
            if name != "z" or "z" in self.record.get("outputs", {}):
                kind = self.labels.get(name, ("", []))[0]
                grouped[name] = shown(row, kind).tolist()
        return grouped


class LiveServer:
    """The live page as a frame sink: ``start()``, hand it to ``run(..., sinks=[...])``, ``close()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, annotate_size: int = 256,
                 jpeg_quality: int = 80, max_fps: float = 15.0, allow_remote: bool = False) -> None:
        if not 0 <= port <= 65535 or annotate_size < 16 or not 1 <= jpeg_quality <= 100 or max_fps <= 0:
            raise ValueError("LiveServer: need 0 <= port <= 65535 (0 = any free port), annotate_size >= 16, "
                             "1 <= jpeg_quality <= 100 and max_fps > 0")
        if not allow_remote and not is_loopback(host):
            raise LiveServerError(f"--serve {host}: not a loopback address, and the page shows the camera to anyone "
                                  "who reaches it; serve on 127.0.0.1 (view through an SSH tunnel) or allow remote "
                                  "viewers explicitly")
        self.host, self.port, self.allow_remote = host, port, allow_remote
        self.annotate_size, self.jpeg_quality, self.max_fps = annotate_size, jpeg_quality, float(max_fps)
        self._cond = threading.Condition()  # guards everything below; notified on each frame, JPEG and close
        self._latest: _Frame | None = None
        self._seq = 0
        self._fleet: dict[str, Any] | None = None
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._viewers = 0  # open /stream.mjpg connections: nothing is encoded while there are none
        self._closed = False
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LiveServer:
        """Bind (port 0 picks a free one, see ``.url``) and serve in daemon threads; returns self."""
        if self._httpd is not None or self._closed:
            raise LiveServerError("LiveServer.start(): already started (or closed); make a new LiveServer")
        self.page = resources.files(__package__).joinpath("page.html").read_bytes()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._httpd = _HTTPServer((self.host, self.port), self, family)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LiveServerError(f"--serve {self.host}:{self.port}: the port is already in use; pick another "
                                      "port (0 picks a free one)") from None
            raise LiveServerError(f"--serve {self.host}:{self.port}: cannot listen there ({exc.strerror or exc}); "
                                  "use an address of this machine such as 127.0.0.1") from None
        self.port = int(self._httpd.server_address[1])
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="live-http", daemon=True),  # 0.1 s:
            threading.Thread(target=self._encode_loop, name="live-jpeg", daemon=True),  # how soon shutdown() returns
        ]
        for t in self._threads:
            t.start()
        log.info("live page on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and end open streams (their clients see the end of the response); idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._httpd is None:
            return
        self._httpd.shutdown()  # serve_forever returns: no new connections after this
        self._httpd.end_connections()
        self._httpd.server_close()
        for t in self._threads:
            t.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the sink (runs in the robot's loop: references only, no copies, no I/O) ----------------
    def frame(self, image: np.ndarray, record: dict[str, Any], outputs: dict[str, np.ndarray],
              labels: dict[str, tuple[str, list[str]]]) -> None:
        with self._cond:
            self._seq += 1
            self._latest = _Frame(self._seq, image, record, dict(outputs), labels, self._fleet)
            self._cond.notify_all()

    def set_fleet(self, info: dict[str, Any]) -> None:
        """Fleet state shown from the next frame on: ``peers`` (a list of dicts: a table) and any counts."""
        snapshot = json.loads(to_json(info))  # a copy the caller cannot change later; fails here if not JSON-able
        with self._cond:
            self._fleet = snapshot

    # ---- readers (HTTP threads and the encoder) --------------------------------------------------
    def latest_event(self) -> bytes | None:
        with self._cond:
            latest = self._latest
        return None if latest is None else latest.event()

    def events(self) -> Iterator[bytes | None]:
        """Each new frame's event once (the newest when several arrived since); None after KEEPALIVE_S idle."""
        sent = 0
        while True:
            with self._cond:
                fresh = self._cond.wait_for(
                    lambda sent=sent: self._closed or (self._latest is not None and self._latest.seq != sent), KEEPALIVE_S)
                if self._closed:
                    return
                latest = self._latest if fresh else None
            if latest is not None:
                sent = latest.seq
            yield None if latest is None else latest.event()

    def jpegs(self) -> Iterator[bytes]:
        """Each new annotated JPEG once, for as long as the caller iterates; counts the caller as a viewer."""
        with self._cond:
            self._viewers += 1
            self._cond.notify_all()
        try:
            sent = 0
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda sent=sent: self._closed or (self._jpeg is not None and self._jpeg_seq != sent))
                    if self._closed:
                        return
                    jpeg, sent = self._jpeg, self._jpeg_seq
                yield jpeg
        finally:
            with self._cond:
                self._viewers -= 1

    def _encode_loop(self) -> None:
        """Annotate + encode the newest frame, at most max_fps, only while /stream.mjpg has viewers."""
        next_t = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (
                    self._viewers > 0 and self._latest is not None and self._latest.seq != self._jpeg_seq))
                if self._closed:
                    return
                delay = next_t - time.monotonic()
                if delay > 0 and self._cond.wait_for(lambda: self._closed, delay):
                    return
                latest = self._latest
            jpeg = self._encode(latest)
            next_t = time.monotonic() + 1.0 / self.max_fps
            with self._cond:
                self._jpeg_seq = latest.seq
                self._jpeg = jpeg if jpeg is not None else self._jpeg
                self._cond.notify_all()

    def _encode(self, f: _Frame) -> bytes | None:
        caption = f"#{f.record.get('frame')} head v{f.record.get('head_version')}"
        try:
            canvas = annotate(f.image, f.outputs, f.labels, self.annotate_size, caption)
            ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        except Exception as exc:  # noqa: BLE001 - one odd frame must not stop the stream for the rest of the run
            log.warning("live page: frame %s not drawn (%s: %s); the stream shows the previous one",
                        f.record.get("frame"), type(exc).__name__, exc)
            return None
        return buf.tobytes() if ok else None


# ---- HTTP ----------------------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection, each connection remembered so close() can end it."""

    daemon_threads = True
    allow_reuse_port = False  # never share a port with another listener

    def __init__(self, address: tuple[str, int], live: LiveServer, family: int) -> None:
        self.address_family = family
        self.live = live
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its getfqdn() is a DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self._serve_one, args=(request, client_address), name="live-conn", daemon=True)
        with self._conns_lock:
            self._conns[t] = request
        t.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(threading.current_thread(), None)

    def end_connections(self) -> None:
        """Shut every open connection (a blocked write to a stalled browser returns at once) and join it."""
        with self._conns_lock:
            conns = list(self._conns.items())
        for _, sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its thread
                pass
        for t, _ in conns:
            t.join(JOIN_S)
            if t.is_alive():
                log.warning("live page: a connection thread did not end within %.0f s after close", JOIN_S)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("live page: connection from %s ended with an error", client_address,
                  exc_info=True)  # noqa: LOG014 - socketserver calls this inside its except block


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection; a stream's body ends when the connection does
    timeout = SOCKET_TIMEOUT_S
    server_version = "jepa-edge-live"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("live page %s: " + format, self.address_string(), *args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any method but GET and HEAD (defined below): the page is read-only
            return self._not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:
        live = self.server.live
        if not live.allow_remote and not self._host_is_loopback():
            self._send(403, "text/plain; charset=utf-8",
                       f"Host {self.headers.get('Host')!r} is not this machine; open {live.url}\n".encode())
            return
        route = {"/": self._page, "/stream.mjpg": self._mjpeg, "/events": self._events,
                 "/state.json": self._state, "/healthz": self._health}.get(urlsplit(self.path).path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found: try / (the page), /stream.mjpg, /events, "
                                                         b"/state.json or /healthz\n")
            return
        route()

    do_HEAD = do_GET

    def _host_is_loopback(self) -> bool:
        host = self.headers.get("Host")
        if host is None:  # an HTTP/1.0 client without Host: nothing a browser sends
            return True
        name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
        return is_loopback(name)

    def _not_allowed(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) <= 1 << 16:
            self.rfile.read(int(length))  # read a small body, so closing does not reset the answer in flight
        self._send(405, "text/plain; charset=utf-8", b"read-only: use GET or HEAD\n", Allow="GET, HEAD")

    def _send(self, status: int, ctype: str, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self._headers(ctype, **{"Content-Length": str(len(body)), **headers})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _headers(self, ctype: str, **headers: str) -> None:
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    # ---- routes --------------------------------------------------------------------------------
    def _page(self) -> None:
        self._send(200, "text/html; charset=utf-8", self.server.live.page, **{"Content-Security-Policy": PAGE_CSP})

    def _health(self) -> None:
        self._send(200, "text/plain; charset=utf-8", b"ok\n")

    def _state(self) -> None:
        event = self.server.live.latest_event()
        if event is None:
            self._send(503, "application/json", b'{"error": "no frame yet; the run has not produced one"}',
                       **{"Retry-After": "1"})
        else:
            self._send(200, "application/json", event)

    def _mjpeg(self) -> None:
        self.send_response(200)
        self._headers(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        if self.command == "HEAD":
            return
        parts = self.server.live.jpegs()
        try:
            for jpeg in parts:
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                self.wfile.write(head + jpeg + b"\r\n")
        except OSError:  # the viewer went away, or close() shut the connection
            pass
        finally:
            parts.close()

    def _events(self) -> None:
        self.send_response(200)
        self._headers("text/event-stream", **{"X-Accel-Buffering": "no"})
        if self.command == "HEAD":
            return
        events = self.server.live.events()
        try:
            self.wfile.write(b"retry: 1000\n\n")  # reconnect within a second when the robot restarts
            for data in events:
                self.wfile.write(b": keep-alive\n\n" if data is None else b"data: " + data + b"\n\n")
        except OSError:
            pass
        finally:
            events.close()
