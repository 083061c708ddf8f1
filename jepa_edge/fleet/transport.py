"""Zenoh sessions for the fleet (``pip install 'jepa-edge[fleet]'``), imported lazily.

Peer mode with explicit endpoints (``tcp/127.0.0.1:7447``): no router and no
multicast needed on one machine or a flat network; ``mode="client"`` with a
router's endpoint in ``connect`` is the option for larger fleets. Connections
to peers that are down are retried every ``retry_max_ms`` at most, so a
restarted peer is reached again quickly.

Security is Zenoh's own, configured here and handed to Zenoh unchanged:

- ``tls`` (``TlsConfig``) → Zenoh's ``transport.link.tls``, used by ``tls/host:port``
  endpoints. With ``enable_mtls`` both ends show a certificate signed by
  ``root_ca_certificate``; a listener refuses a peer that shows none or one from
  another CA (Zenoh logs the refusal and the dialler keeps retrying; in peer mode
  the session still opens, it just never reaches that peer).
- ``access_control`` → Zenoh's ``access_control`` section as is (``enabled``,
  ``default_permission``, ``rules``, ``subjects``, ``policies``; see Zenoh's
  DEFAULT_CONFIG.json5). Zenoh checks its schema when the session's config is built.
- ``user_config``: a Zenoh JSON5 file of the user's own (auth, QoS, lease, ...).
  It is loaded first and every setting of this dataclass is then written over it
  leaf by leaf, so ours win where both set a key and theirs fill the rest.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jepa_edge.artifacts import process_gone

MODES = ("peer", "client")


class FleetTransportError(RuntimeError):
    """Zenoh missing or a session that cannot be opened."""


@dataclass
class TlsConfig:
    """Zenoh's ``transport.link.tls`` for ``tls/`` endpoints: paths to PEM files, ``""`` = not set."""

    root_ca_certificate: str = ""  # CA that signed the other side's certificate; "" = system roots when dialling
    listen_certificate: str = ""  # shown to whoever dials our `tls/` listen endpoints (SAN must hold the address)
    listen_private_key: str = ""  # … and its private key
    connect_certificate: str = ""  # shown to the node we dial; mTLS only
    connect_private_key: str = ""  # … and its private key
    enable_mtls: bool = False  # both ends show a certificate signed by root_ca_certificate, or no session
    verify_name_on_connect: bool = True  # the dialled host/IP must be in the listener certificate's SAN

    def is_set(self) -> bool:
        return self != TlsConfig()

    def validate(self, listen_tls: list[str], connect_tls: list[str]) -> None:
        for f in fields(self):
            path = getattr(self, f.name)
            if isinstance(path, str) and path and not Path(path).is_file():
                raise ValueError(f"TransportConfig.tls.{f.name}: no file at {path!r}; give the path of a PEM file")
        for side in ("listen", "connect"):
            cert, key = getattr(self, f"{side}_certificate"), getattr(self, f"{side}_private_key")
            if bool(cert) != bool(key):
                raise ValueError(f"TransportConfig.tls: {side}_certificate and {side}_private_key go together; "
                                 "set both or neither")
        if listen_tls and not self.listen_certificate:
            raise ValueError(f"TransportConfig: listening on {listen_tls[0]} needs tls.listen_certificate and "
                             "tls.listen_private_key")
        if self.enable_mtls and not self.root_ca_certificate:
            raise ValueError("TransportConfig.tls.enable_mtls needs tls.root_ca_certificate (the CA that signed "
                             "the other side's certificate)")
        if self.enable_mtls and connect_tls and not self.connect_certificate:
            raise ValueError(f"TransportConfig.tls.enable_mtls: dialling {connect_tls[0]} needs "
                             "tls.connect_certificate and tls.connect_private_key")

    def to_zenoh(self) -> dict[str, Any]:
        """The keys of Zenoh's ``transport.link.tls`` that are set (empty paths left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != ""}


@dataclass
class TransportConfig:
    mode: str = "peer"  # "peer" (explicit endpoints) | "client" (through the router(s) in `connect`)
    listen: list[str] = field(default_factory=list)  # e.g. ["tcp/127.0.0.1:7447"]; [] = no listener
    connect: list[str] = field(default_factory=list)  # peers' (or a router's) endpoints
    multicast_scouting: bool = False  # off: only the endpoints above are used
    retry_init_ms: int = 100  # first wait before re-dialling a peer that is down …
    retry_max_ms: int = 300  # … growing to at most this (bounds how fast a restarted peer is found again)
    max_message_bytes: int = 64 * 1024 * 1024 + 65536  # Zenoh refuses larger messages before they reach us
    tls: TlsConfig = field(default_factory=TlsConfig)  # certificates for `tls/` endpoints (Zenoh transport.link.tls)
    access_control: dict[str, Any] = field(default_factory=dict)  # Zenoh's access_control section as is; {} = off
    user_config: str = ""  # a Zenoh JSON5 file loaded first; the settings above are written over it
    router_timeout_s: float = 10.0  # client mode: wait this long for a router at start, then fail; 0 = forever

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TransportConfig.mode={self.mode!r}; use one of {MODES}")
        if self.mode == "client" and not self.connect:
            raise ValueError("TransportConfig: client mode needs a router endpoint in `connect`")
        for side, endpoints in (("listen", self.listen), ("connect", self.connect)):
            for ep in endpoints:
                check_endpoint(ep, side)
        if self.max_message_bytes < 65536:
            raise ValueError("TransportConfig.max_message_bytes must be >= 65536")
        if not 0 < self.retry_init_ms <= self.retry_max_ms:
            raise ValueError("TransportConfig: need 0 < retry_init_ms <= retry_max_ms")
        if not self.router_timeout_s >= 0:
            raise ValueError("TransportConfig.router_timeout_s must be >= 0 (0 = wait for a router forever)")
        self.tls.validate([e for e in self.listen if e.startswith("tls/")],
                          [e for e in self.connect if e.startswith("tls/")])
        acl = self.access_control
        if not isinstance(acl, dict) or (acl and not isinstance(acl.get("enabled"), bool)):
            raise ValueError("TransportConfig.access_control must be Zenoh's access_control object with "
                             "`enabled: true|false` (plus default_permission, rules, subjects, policies), or {}")
        if self.user_config and not Path(self.user_config).is_file():
            raise ValueError(f"TransportConfig.user_config: no file at {self.user_config!r}; give the path of a "
                             "Zenoh JSON5 config or leave it empty")

    def to_dict(self) -> dict[str, Any]:
        """The Zenoh config this dataclass sets (without ``user_config``, which is a file under it)."""
        retry = {"period_init_ms": self.retry_init_ms, "period_max_ms": self.retry_max_ms,
                 "period_increase_factor": 2}
        link: dict[str, Any] = {"rx": {"max_message_size": self.max_message_bytes}}
        if self.tls.is_set():
            link["tls"] = self.tls.to_zenoh()
        out: dict[str, Any] = {
            "mode": self.mode,
            "listen": {"endpoints": list(self.listen)},
            "connect": {"endpoints": list(self.connect), "exit_on_failure": False, "timeout_ms": self._connect_timeout_ms(),
                        "retry": retry},
            "scouting": {"multicast": {"enabled": self.multicast_scouting}},
            "transport": {"link": link},
        }
        if self.access_control:
            out["access_control"] = dict(self.access_control)
        return out

    def _connect_timeout_ms(self) -> int:
        """Peers never wait at start (-1: dial in the background); a client waits for its router, boundedly."""
        if self.mode != "client" or self.router_timeout_s == 0:
            return -1
        return max(1, round(self.router_timeout_s * 1000))

    def to_json5(self) -> str:
        return json.dumps(self.to_dict())


IP_PROTOCOLS = ("tcp", "udp", "tls", "quic", "ws")  # Zenoh links whose address is HOST:PORT
_PROTOCOL = re.compile(r"[a-z][a-z0-9-]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_endpoint(endpoint: Any, side: str = "listen") -> None:
    """Refuse a Zenoh endpoint that cannot work, in one line naming it and the form it needs.

    ``PROTOCOL/ADDRESS[?metadata][#config]``; for tcp, udp, tls, quic and ws the address is ``HOST:PORT``:
    an IPv4 address, a host name or ``[IPv6]``, and a port 1..65535 (0 = any free port, listening only).
    """
    form = "use PROTOCOL/HOST:PORT, e.g. tcp/127.0.0.1:7447"

    def bad(problem: str) -> ValueError:
        return ValueError(f"--{side} {endpoint!r}: {problem}; {form}")

    if not isinstance(endpoint, str):
        raise bad("not a string")
    protocol, sep, rest = endpoint.partition("/")
    address = re.split(r"[?#]", rest, maxsplit=1)[0]
    if not sep or not protocol or not address:
        raise bad("not PROTOCOL/ADDRESS")
    if not _PROTOCOL.fullmatch(protocol):
        raise bad(f"{protocol!r} is not a Zenoh protocol (tcp, udp, tls, quic, ws, unixsock-stream, …)")
    if protocol not in IP_PROTOCOLS:
        return  # unixsock-stream/PATH, serial/…: Zenoh checks its own address forms
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise bad("no HOST:PORT after the protocol")
    if not port.isdigit() or not (0 if side == "listen" else 1) <= int(port) <= 65535:
        raise bad(f"port {port!r} is not in {'0' if side == 'listen' else '1'}..65535")
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1].split("%")[0])
        except ValueError:
            raise bad(f"{host} is not a bracketed IPv6 address such as [::1]") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"{host} is not an IPv4 address") from None
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.rstrip(".").split(".")):
        raise bad(f"{host!r} is not a host name (an IPv6 address goes in brackets: tcp/[::1]:7447)")


def import_zenoh() -> Any:
    try:
        import zenoh
    except ImportError as exc:
        raise FleetTransportError(
            "the fleet needs Eclipse Zenoh: pip install 'jepa-edge[fleet]' (eclipse-zenoh>=1.10,<2)"
        ) from exc
    return zenoh


def _reason(exc: BaseException) -> str:
    """A Zenoh error on one line, without the Rust source locations (`` at /…/x.rs:61.``) it carries."""
    text = " ".join(str(exc).split())
    return re.sub(r" at \S+\.rs:\d+\.?", "", text).strip()


def _write_over(zcfg: Any, tree: dict[str, Any], prefix: str = "") -> None:
    """Write ``tree`` into ``zcfg`` key by key: Zenoh resets a whole section given as one object.

    A section that is still null in ``zcfg`` (e.g. ``connect/retry``) is written whole; ``access_control``
    always is (our ACL replaces theirs).
    """
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "access_control" and zcfg.get_json(path) != "null":
            _write_over(zcfg, value, f"{path}/")
        else:
            zcfg.insert_json5(path, json.dumps(value))


def zenoh_config(config: TransportConfig) -> Any:
    """The ``zenoh.Config`` for ``config``: ``user_config`` loaded first, our settings written over it."""
    config.validate()
    zenoh = import_zenoh()
    if not config.user_config:
        try:
            return zenoh.Config.from_json5(config.to_json5())
        except zenoh.ZError as exc:
            raise FleetTransportError(f"Zenoh refused the transport settings: {_reason(exc)}; "
                                      "fix that key in TransportConfig") from exc
    try:
        zcfg = zenoh.Config.from_file(config.user_config)
    except zenoh.ZError as exc:
        raise FleetTransportError(f"TransportConfig.user_config {config.user_config!r}: {_reason(exc)}; "
                                  "fix that file (a .json5/.json/.yaml Zenoh config) or leave user_config empty"
                                  ) from exc
    try:
        _write_over(zcfg, config.to_dict())
    except zenoh.ZError as exc:
        raise FleetTransportError(f"Zenoh refused our settings over {config.user_config!r}: {_reason(exc)}; "
                                  "fix the key it names in TransportConfig") from exc
    return zcfg


def open_session(config: TransportConfig) -> Any:
    """An open ``zenoh.Session``; close it with ``session.close()``."""
    zcfg = zenoh_config(config)
    zenoh = import_zenoh()
    try:
        return zenoh.open(zcfg)
    except zenoh.ZError as exc:
        if config.mode == "client":
            raise FleetTransportError(f"no Zenoh router answered at {list(config.connect)} within "
                                      f"{config.router_timeout_s:g} s ({_reason(exc)}); start the router first, "
                                      "check the endpoint, or raise transport.router_timeout_s") from exc
        where = f"listening on {', '.join(config.listen)}" if config.listen else "with no listen endpoint"
        raise FleetTransportError(f"cannot open a Zenoh session {where}: {_reason(exc)}; check the --listen "
                                  "endpoints (a port already taken?) and the TLS files") from exc


# ---------------------------------------------------------------------------------------------------------------
# Loopback ports for local fleets and tests: reserved across processes so parallel workers never share one.

PORTS_DIR = "jepa-edge-ports"  # under tempfile.gettempdir(): one file per handed-out port, holding the owner's pid
RESERVATION_MAX_AGE_S = 600.0  # a reservation older than this is reclaimed even if its process still runs
_mine: set[Path] = set()  # this process's reservations, removed at exit


def _stale(path: Path) -> bool:
    """A reservation whose process is gone, that is too old, or that holds no pid."""
    try:
        age = time.time() - path.stat().st_mtime
        pid = int(path.read_text())
    except FileNotFoundError:
        return False  # released meanwhile: the next link() will tell
    except (OSError, ValueError):
        return True
    return age > RESERVATION_MAX_AGE_S or pid <= 0 or process_gone(pid)


def _reserve_port(port: int, folder: Path) -> bool:
    """Claim ``folder/<port>`` for this process; False if a live reservation holds it.

    The file is written under a private name first and linked into place, so a
    reservation is never seen half-written and only one process wins the link.
    """
    target = folder / str(port)
    tmp = folder / f".{port}.{os.getpid()}.{time.monotonic_ns()}"
    tmp.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(tmp, target)
            except FileExistsError:
                if not _stale(target):
                    return False
                try:
                    target.unlink(missing_ok=True)
                except PermissionError:  # another user's stale reservation in the sticky folder: leave it
                    return False
                continue
            _mine.add(target)
            return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


@atexit.register
def _release_mine() -> None:
    for path in list(_mine):
        try:
            if path.read_text() == str(os.getpid()):  # not a forked child's copy of the set
                path.unlink()
        except (OSError, ValueError):
            pass
    _mine.clear()


def free_loopback_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 now, each reserved for this process (local fleets, tests, the bench).

    The OS picks each port (bind to 0); a lock file ``<tmp>/jepa-edge-ports/<port>``
    holding our pid keeps every other process calling this function (pytest-xdist
    workers, benches) from being handed the same port until we exit or
    ``RESERVATION_MAX_AGE_S`` passes. A process that does not use this function
    can still take a port between our return and the caller's bind.
    """
    folder = Path(tempfile.gettempdir()) / PORTS_DIR
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        try:
            folder.chmod(0o1777)  # shared by every user's processes, like /tmp itself
        except PermissionError:  # made by another user a moment ago
            pass
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            if len(socks) >= 20 * n + 100:
                raise OSError(f"no free loopback port left to reserve in {folder} after {len(socks)} tries; "
                              "remove stale files there")
            s = socket.socket()
            socks.append(s)  # kept bound until we return: the OS does not hand it out twice in this call
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if _reserve_port(port, folder):
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()
