"""Fleet: robots exchange cards, probes, postcards, anchor latents and outputs over Eclipse Zenoh (no torch).

``messages`` (wire formats, stateless decoders) and ``inbox`` (validation
state) need only numpy and safetensors; ``transport`` and ``node`` import
Zenoh lazily (``pip install 'jepa-edge[fleet]'``).
"""

from jepa_edge.fleet.inbox import Accepted, Inbox, InboxConfig, InboxStats
from jepa_edge.fleet.messages import (
    FLEET_VERSION,
    KINDS,
    AgentCard,
    AnchorRequest,
    Envelope,
    FleetLimits,
    FleetMessageError,
    Outputs,
    key_expr,
)
from jepa_edge.fleet.moments import AnchorWorld, moment_frames, moment_positions
from jepa_edge.fleet.transport import FleetTransportError, TransportConfig, import_zenoh, open_session

__all__ = [
    "FLEET_VERSION", "KINDS", "Accepted", "AgentCard", "AnchorRequest", "AnchorWorld", "Envelope", "FleetLimits",
    "FleetMessageError", "FleetTransportError", "Inbox", "InboxConfig", "InboxStats", "Outputs", "TransportConfig",
    "import_zenoh", "key_expr", "moment_frames", "moment_positions", "open_session",
]
