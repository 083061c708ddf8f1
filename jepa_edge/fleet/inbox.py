"""The receiving side of the fleet: every message is untrusted until ``Inbox.accept`` says otherwise.

``accept(kind, agent, payload, attachment)`` decodes a message (size cap first,
then schema; see ``messages``), then checks it against what is already known:

* with a trust store (a trusted-keys file; ``jepa_edge.fleet.keys``), right after the size cap and before the
  payload is parsed: the message is signed, by a key the file lists for *this* sender, allowed this kind, and
  the signature covers the envelope and the payload's digest (outputs: their bytes, fleet and sender);
* the envelope names this fleet, the key expression's sender and kind;
* the sender has a card for this epoch, and the message's fingerprint is the card's
  (a card from a *newer* epoch replaces the old one: the peer restarted);
* sequence numbers increase per (sender, kind) within an epoch: a replayed,
  duplicated or reordered message is refused, so is one from an older epoch;
* no lock-out by one message: an epoch (session start) more than ``max_future_s`` ahead of our clock is
  refused, and so is a seq higher than the sender could have sent since its epoch began
  (``seq_slack + elapsed_s * max_seq_rate``), so a forged far-future epoch or seq 2^63-1 cannot make the
  genuine messages that follow look old;
* the send time is at most ``max_age_s`` old and not from the future;
* probes read the sender's latents (fingerprint, dim); outputs match the layout
  version and width of the sender's card; anchor replies answer a request this
  node made (nonce, ids) with latents of the card's dim.

A refused message is logged in one line, counted, and returns ``None``: nothing
of it is applied. No exception escapes ``accept``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jepa_edge.fleet.messages import (
    KINDS,
    AgentCard,
    AnchorRequest,
    Envelope,
    FleetLimits,
    FleetMessageError,
    capped,
    decode_anchor_reply,
    decode_anchor_request,
    decode_card,
    decode_envelope,
    decode_outputs,
    decode_postcard,
    decode_probe,
    fp8_of,
    outputs_signing_bytes,
)

if TYPE_CHECKING:
    from jepa_edge.fleet.keys import TrustStore

log = logging.getLogger(__name__)


@dataclass
class InboxConfig:
    max_age_s: float = 30.0  # older messages are stale (robots' clocks are assumed NTP-synced to this)
    max_future_s: float = 5.0  # a message this far ahead of our clock is refused
    expect_fingerprints: dict[str, str] = field(default_factory=dict)  # agent → pinned encoder fingerprint
    keep_refusals: int = 100  # most recent refusals kept for inspection
    max_seq_rate: float = 100_000.0  # messages/s per (sender, kind) a seq may have advanced at since its epoch
    seq_slack: int = 1000  # … plus this many

    def validate(self) -> None:
        if self.max_age_s <= 0 or self.max_future_s < 0 or self.keep_refusals < 0:
            raise ValueError("InboxConfig: need max_age_s > 0, max_future_s >= 0, keep_refusals >= 0")
        if self.max_seq_rate <= 0 or self.seq_slack < 0:
            raise ValueError("InboxConfig: need max_seq_rate > 0 and seq_slack >= 0")


@dataclass(frozen=True)
class Accepted:
    kind: str
    agent: str
    envelope: Envelope | None  # None for outputs (their header carries epoch and seq)
    value: Any  # AgentCard | Probe | Postcard | AnchorRequest | z (N, D) | Outputs
    new_epoch: bool = False  # a card that starts a new session of its sender (first contact or a restart)


@dataclass
class InboxStats:
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    refusals: deque = field(default_factory=lambda: deque(maxlen=100))  # (kind, agent, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": dict(self.accepted), "refused": dict(self.refused),
                "recent_refusals": [list(r) for r in list(self.refusals)[-10:]]}


class Inbox:
    """Validation state for one node: peers' cards, sequence counters, open anchor requests (thread-safe)."""

    def __init__(self, fleet: str, limits: FleetLimits | None = None, config: InboxConfig | None = None,
                 clock: Callable[[], float] = time.time, trust: TrustStore | None = None) -> None:
        """``trust``: the fleet's trusted keys; with it every message must be signed (None: unauthenticated)."""
        self.fleet, self.limits = fleet, limits or FleetLimits()
        self.trust = trust
        self.config = config or InboxConfig()
        self.config.validate()
        self.clock = clock
        self.cards: dict[str, tuple[int, AgentCard]] = {}  # agent → (epoch, card)
        self.last_card_t: dict[str, float] = {}  # agent → our clock when its card last arrived
        self._seq: dict[tuple[str, str], tuple[int, int]] = {}  # (agent, kind) → (epoch, last seq)
        self._pending: dict[str, tuple[str, AnchorRequest]] = {}  # nonce → (agent, request)
        self._lock = threading.Lock()
        self.stats = InboxStats(refusals=deque(maxlen=self.config.keep_refusals))

    # ---- public ---------------------------------------------------------------------------
    def accept(self, kind: str, agent: str, payload: Any, attachment: Any = None) -> Accepted | None:
        """The decoded message if it passes every check, else None (logged once, counted)."""
        try:
            with self._lock:
                got = self._accept(kind, agent, payload, attachment)
        except FleetMessageError as exc:
            self.refuse(kind, agent or _asker(attachment, self.limits), str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not take the robot down; refuse and log it
            self.refuse(kind, agent, f"unexpected {type(exc).__name__}: {str(exc)[:200]}")
            return None
        self.stats.accepted[kind] += 1
        return got

    def card(self, agent: str) -> AgentCard | None:
        with self._lock:
            entry = self.cards.get(agent)
        return None if entry is None else entry[1]

    def known_cards(self) -> dict[str, tuple[AgentCard, float]]:
        """agent → (its current card, our clock when it last arrived): a consistent copy."""
        with self._lock:
            return {agent: (card, self.last_card_t[agent]) for agent, (_, card) in self.cards.items()}

    def expect_anchors(self, agent: str, request: AnchorRequest) -> None:
        """Register a request this node sends: only a reply echoing its nonce and ids is accepted, once."""
        with self._lock:
            self._pending[request.nonce] = (agent, request)
            while len(self._pending) > 64:  # bounded: forget the oldest unanswered requests
                self._pending.pop(next(iter(self._pending)))

    def forget_anchors(self, request: AnchorRequest) -> None:
        with self._lock:
            self._pending.pop(request.nonce, None)

    # ---- checks ------------------------------------------------------------------------------
    def refuse(self, kind: str, agent: str, reason: str) -> None:
        """Count and log (one line) a refused message."""
        kind = kind if kind in KINDS else "card"
        self.stats.refused[kind] += 1
        self.stats.refusals.append((kind, str(agent)[:64], reason))
        log.warning("fleet %s: refused %s from %r: %s", self.fleet, kind, str(agent)[:64], reason)

    def _accept(self, kind: str, agent: str, payload: Any, attachment: Any) -> Accepted:
        if kind not in KINDS:
            raise FleetMessageError(f"unknown message kind {kind!r}")
        if kind == "outputs":
            return self._outputs(agent, payload)
        env = decode_envelope(attachment, self.limits)
        if kind == "anchors_req":  # the key expression names the answering node: the asker is in the envelope
            agent = env.agent
        if env.fleet != self.fleet or env.agent != agent or env.kind != kind:
            raise FleetMessageError(f"envelope says {env.fleet}/{env.agent}/{env.kind}, the key expression "
                                    f"{self.fleet}/{agent}/{kind}")
        if self.trust is not None:  # authenticated before the payload is parsed
            payload = capped(kind, payload, self.limits)
            if not env.kid:
                raise FleetMessageError("unsigned (this fleet requires signed messages)")
            self.trust.verify(env.kid, agent, kind, env.signing_bytes(payload), bytes.fromhex(env.sig))
        self._fresh_time(env.t)
        self._plausible(env.epoch, env.seq)
        if kind == "card":
            return self._card(env, payload)
        if kind == "anchors_req":  # a request from any fleet member; no card needed to ask
            req = decode_anchor_request(payload, self.limits)
            self._bump(agent, kind, env.epoch, env.seq)
            return Accepted(kind, agent, env, req)
        card = self._card_of(agent, env.epoch, env.fp)
        where = f"{kind} from {agent}"
        if kind == "probe":
            value: Any = decode_probe(payload, where, card.fingerprint, card.latent_dim, self.limits)
        elif kind == "postcard":
            value = decode_postcard(payload, where, card.fingerprint, self.limits)
        else:  # anchors: a reply to one of our requests
            value = self._anchor_reply(agent, payload, card, where)
        self._bump(agent, kind, env.epoch, env.seq)
        return Accepted(kind, agent, env, value)

    def _fresh_time(self, t: float) -> None:
        now = self.clock()
        if now - t > self.config.max_age_s:
            raise FleetMessageError(f"stale: sent {now - t:.1f} s ago (max_age_s={self.config.max_age_s})")
        if t - now > self.config.max_future_s:
            raise FleetMessageError(f"sent {t - now:.1f} s in the future; check the robots' clocks")

    def _plausible(self, epoch: int, seq: int) -> None:
        """Refuse a session start from the future and a seq the sender cannot have reached (no lock-out)."""
        now = self.clock()
        started = epoch / 1e9  # epoch: the sender's session start, time_ns
        if started - now > self.config.max_future_s:
            raise FleetMessageError(f"session epoch {started - now:.1f} s in the future; check the robots' clocks")
        most = self.config.seq_slack + max(0.0, now - started) * self.config.max_seq_rate
        if seq > most:
            raise FleetMessageError(f"seq {seq} is more than the sender can have sent in the "
                                    f"{max(0.0, now - started):.1f} s since its session began")

    def _bump(self, agent: str, kind: str, epoch: int, seq: int) -> None:
        """Accept (epoch, seq) only if it is after the last one seen for (agent, kind)."""
        last = self._seq.get((agent, kind))
        if last is not None and (epoch, seq) <= last:
            what = "replayed or duplicated" if epoch == last[0] else "from an older session"
            raise FleetMessageError(f"{what}: epoch {epoch} seq {seq}, already at epoch {last[0]} seq {last[1]}")
        self._seq[(agent, kind)] = (epoch, seq)

    def _card(self, env: Envelope, payload: Any) -> Accepted:
        card = decode_card(payload, self.limits)
        if card.agent.name != env.agent or card.fingerprint != env.fp:
            raise FleetMessageError("card: agent name or fingerprint differ from its envelope")
        pinned = self.config.expect_fingerprints.get(env.agent)
        if pinned is not None and card.fingerprint != pinned:
            raise FleetMessageError(f"card: encoder {card.fingerprint[:12]}… is not the pinned {pinned[:12]}…")
        old = self.cards.get(env.agent)
        if old is not None and old[0] == env.epoch and old[1].agent != card.agent:
            raise FleetMessageError("card: agent (fingerprint, dim or view) changed within one session (epoch)")
        self._bump(env.agent, "card", env.epoch, env.seq)
        self.cards[env.agent] = (env.epoch, card)
        self.last_card_t[env.agent] = self.clock()
        return Accepted("card", env.agent, env, card, new_epoch=old is None or old[0] != env.epoch)

    def _card_of(self, agent: str, epoch: int, fp: str) -> AgentCard:
        entry = self.cards.get(agent)
        if entry is None:
            raise FleetMessageError("no card from this sender yet")
        if entry[0] != epoch:
            raise FleetMessageError(f"epoch {epoch} is not the sender's current session {entry[0]}")
        if entry[1].fingerprint != fp:
            raise FleetMessageError(f"fingerprint {fp[:12]}… is not the sender's encoder {entry[1].fingerprint[:12]}…")
        return entry[1]

    def _anchor_reply(self, agent: str, payload: Any, card: AgentCard, where: str) -> Any:
        import json

        from jepa_edge.artifacts import read_safetensors_header

        data = payload if isinstance(payload, bytes) else bytes(payload) if payload is not None else b""
        if len(data) > self.limits.anchors_bytes:
            raise FleetMessageError(f"anchors: {len(data)} bytes, over the {self.limits.anchors_bytes}-byte cap")
        header = read_safetensors_header(where, data, FleetMessageError)  # the header only: find the nonce
        try:
            nonce = json.loads(header["__metadata__"]["jepa_edge"])["nonce"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FleetMessageError(f"anchors: metadata has no nonce ({type(exc).__name__})") from None
        pending = self._pending.get(nonce) if isinstance(nonce, str) else None
        if pending is None or pending[0] != agent:
            raise FleetMessageError("anchors: not a reply to an open request of this node (nonce unknown)")
        z = decode_anchor_reply(data, where, pending[1], card, self.limits)
        del self._pending[nonce]  # answered: a second copy is a replay
        return z

    def _outputs(self, agent: str, payload: Any) -> Accepted:
        out = decode_outputs(payload, self.limits)
        if self.trust is not None:
            if not out.kid:
                raise FleetMessageError("unsigned outputs (this fleet requires signed messages)")
            self.trust.verify(out.kid, agent, "outputs", outputs_signing_bytes(self.fleet, agent, out.body), out.sig)
        entry = self.cards.get(agent)
        if entry is None:
            raise FleetMessageError("no card from this sender yet")
        epoch, card = entry
        if out.fp8 != fp8_of(card.fingerprint):
            raise FleetMessageError(f"outputs: fingerprint {out.fp8.hex()} is not the sender's {card.fingerprint[:16]}")
        if out.epoch != epoch:
            raise FleetMessageError(f"outputs: epoch {out.epoch} is not the sender's current session {epoch}")
        if out.layout_version != card.layout["version"] or len(out.values) != card.layout_width():
            raise FleetMessageError(f"outputs: layout v{out.layout_version} with {len(out.values)} values, the card "
                                    f"has v{card.layout['version']} with {card.layout_width()}")
        self._fresh_time(out.t)
        self._plausible(out.epoch, out.seq)
        self._bump(agent, "outputs", out.epoch, out.seq)
        return Accepted("outputs", agent, None, out)


def _asker(attachment: Any, limits: FleetLimits) -> str:
    """The sender an anchor request's envelope names (its key expression names the answering node), for the log."""
    try:
        return decode_envelope(attachment, limits).agent
    except Exception:  # noqa: BLE001 - no readable envelope: the log says "?"
        return "?"
