"""Zenoh sessions for the fleet (``pip install 'jepa-edge[fleet]'``), imported lazily.

Peer mode with explicit endpoints (``tcp/127.0.0.1:7447``): no router and no
multicast needed on one machine or a flat network; ``mode="client"`` with a
router's endpoint in ``connect`` is the option for larger fleets. Connections
to peers that are down are retried every ``retry_max_ms`` at most, so a
restarted peer is reached again quickly.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

MODES = ("peer", "client")


class FleetTransportError(RuntimeError):
    """Zenoh missing or a session that cannot be opened."""


@dataclass
class TransportConfig:
    mode: str = "peer"  # "peer" (explicit endpoints) | "client" (through the router(s) in `connect`)
    listen: list[str] = field(default_factory=list)  # e.g. ["tcp/127.0.0.1:7447"]; [] = no listener
    connect: list[str] = field(default_factory=list)  # peers' (or a router's) endpoints
    multicast_scouting: bool = False  # off: only the endpoints above are used
    retry_init_ms: int = 100  # first wait before re-dialling a peer that is down …
    retry_max_ms: int = 300  # … growing to at most this (bounds how fast a restarted peer is found again)
    max_message_bytes: int = 64 * 1024 * 1024 + 65536  # Zenoh refuses larger messages before they reach us

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TransportConfig.mode={self.mode!r}; use one of {MODES}")
        if self.mode == "client" and not self.connect:
            raise ValueError("TransportConfig: client mode needs a router endpoint in `connect`")
        for ep in [*self.listen, *self.connect]:
            if not isinstance(ep, str) or "/" not in ep:
                raise ValueError(f"endpoint {ep!r} must look like 'tcp/127.0.0.1:7447'")
        if self.max_message_bytes < 65536:
            raise ValueError("TransportConfig.max_message_bytes must be >= 65536")
        if not 0 < self.retry_init_ms <= self.retry_max_ms:
            raise ValueError("TransportConfig: need 0 < retry_init_ms <= retry_max_ms")

    def to_json5(self) -> str:
        retry = {"period_init_ms": self.retry_init_ms, "period_max_ms": self.retry_max_ms,
                 "period_increase_factor": 2}
        return json.dumps({
            "mode": self.mode,
            "listen": {"endpoints": list(self.listen)},
            "connect": {"endpoints": list(self.connect), "exit_on_failure": False, "timeout_ms": -1, "retry": retry},
            "scouting": {"multicast": {"enabled": self.multicast_scouting}},
            "transport": {"link": {"rx": {"max_message_size": self.max_message_bytes}}},
        })


def import_zenoh() -> Any:
    try:
        import zenoh
    except ImportError as exc:
        raise FleetTransportError(
            "the fleet needs Eclipse Zenoh: pip install 'jepa-edge[fleet]' (eclipse-zenoh>=1.10,<2)"
        ) from exc
    return zenoh


def open_session(config: TransportConfig) -> Any:
    """An open ``zenoh.Session``; close it with ``session.close()``."""
    config.validate()
    zenoh = import_zenoh()
    try:
        return zenoh.open(zenoh.Config.from_json5(config.to_json5()))
    except zenoh.ZError as exc:
        raise FleetTransportError(f"cannot open a Zenoh session with {config.to_json5()}: {exc}") from exc


def free_loopback_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 now (for local fleets, tests and the bench; another process may take one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
