"""A running robot on the fleet: publish card, probes and outputs; calibrate W live against a peer; hot-swap.

Key expressions (``jepa/<fleet>/<agent>/<kind>``):

  card      published every ``card_period_s`` (heartbeat) and whenever the output layout changes
  probe     each own probe published when it changes; also a queryable (followers fetch on attach and peer_back)
  postcard  W fitted live against the followed peer, published once fitted
  anchors   queryable: an anchor request (moment ids) is answered with this robot's z for those moments
  outputs   one compact binary message per frame (docs/FORMATS.md)

A node that ``follow``s a peer, on the peer's first card (or its card from a new
session after a restart): fetches its probes, asks for its anchor latents,
pairs them with its own latents of the same moments, fits W (numpy
estimators of ``jepa_edge.calib.fit``), builds the fused head ``probe_peer ∘ W``
and hands it to the running pipeline, which installs it between two frames.
Everything received goes through an ``Inbox`` first.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jepa_edge import package_version
from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.head import FusedHead, build_head
from jepa_edge.calib.postcard import Postcard
from jepa_edge.calib.probes import Probe
from jepa_edge.fleet.inbox import Accepted, Inbox, InboxConfig
from jepa_edge.fleet.messages import (
    AgentCard,
    AnchorRequest,
    Envelope,
    FleetLimits,
    Outputs,
    check_name,
    decode_probe,
    encode_anchor_reply,
    fp8_of,
    key_expr,
    postcard_bytes,
)
from jepa_edge.fleet.moments import AnchorWorld, moment_frames
from jepa_edge.fleet.transport import TransportConfig, import_zenoh, open_session
from jepa_edge.runtime.headswap import RefusesHeads, WatcherStats
from jepa_edge.runtime.model import Model
from jepa_edge.world.worlds import views_of, world_kind_of_view

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


class PeerNotSeenError(ValueError):
    """A run ended (source over, or its frame count reached) without one card from the followed peer."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary  # the run's summary, as run_fleet would have returned it


@dataclass
class FleetConfig:
    fleet: str = "demo"  # fleet name: the <fleet> of every key expression
    agent: str = ""  # this robot's name on the fleet; "" = the model's agent name
    view: str = ""  # simulator view this robot renders anchor moments with; "" = the model's view
    follow: str = ""  # peer whose probes this robot runs through a live-fitted W; "" = none
    anchor_ids: list[int] = field(default_factory=list)  # moments asked for; [] = 0 .. n_anchors-1
    n_anchors: int = 64  # used when anchor_ids is empty
    world: AnchorWorld = field(default_factory=AnchorWorld)  # must be the same on every robot
    fit: FitConfig = field(default_factory=FitConfig)  # W estimator (ridge by default)
    card_period_s: float = 0.25  # heartbeat: a restarted peer is seen again within about this
    peer_timeout_s: float = 1.0  # no card for this long: the peer is reported lost
    query_timeout_s: float = 5.0  # anchor / probe requests
    fps: float = 0.0  # pace the frame loop at this rate (every frame processed); 0 = as fast as the source
    block_on_congestion: bool = False  # outputs: wait for a congested link (none lost) instead of dropping
    transport: TransportConfig = field(default_factory=TransportConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    limits: FleetLimits = field(default_factory=FleetLimits)
    key: str = ""  # this robot's Ed25519 private key (PEM; jepa-edge fleet keygen): every message it sends is signed
    trusted_keys: str = ""  # the fleet's trusted-keys file: every message received must be signed by a key in it

    def validate(self) -> None:
        check_name("fleet", self.fleet)
        for what, name in (("agent", self.agent), ("follow", self.follow)):
            if name:
                check_name(what, name)
        self.world.validate()
        self.fit.validate()
        self.transport.validate()
        self.inbox.validate()
        ids = self.ids()
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= self.world.pool:
            raise ValueError(f"FleetConfig: anchor ids must be distinct, in [0, world.pool={self.world.pool})")
        if len(ids) > self.limits.max_anchor_ids:
            raise ValueError(f"FleetConfig: {len(ids)} anchor ids, over limits.max_anchor_ids")
        if self.card_period_s <= 0 or self.peer_timeout_s <= self.card_period_s or self.query_timeout_s <= 0:
            raise ValueError("FleetConfig: need card_period_s > 0, peer_timeout_s > card_period_s, query_timeout_s > 0")
        if self.fps < 0:
            raise ValueError("FleetConfig.fps must be >= 0")
        if self.trusted_keys and not self.key:
            raise ValueError("FleetConfig: a fleet with trusted_keys requires signed messages; give this robot its "
                             "key (--key, made by jepa-edge fleet keygen)")

    def ids(self) -> list[int]:
        return list(self.anchor_ids) if self.anchor_ids else list(range(self.n_anchors))


class HeadSlot(RefusesHeads):
    """What the pipeline's ``watcher`` needs: ``take()`` the newest head once, ``stats`` and ``refuse()``."""

    def __init__(self, initial: FusedHead | None) -> None:
        self.stats = WatcherStats()
        self._lock = threading.Lock()
        self._pending: tuple[FusedHead, dict[str, Any]] | None = None
        self.current: tuple[FusedHead | None, dict[str, Any]] = (initial, {"reason": "initial"})
        self._before = self.current  # what ran before the last take(): restored if its install fails

    def put(self, head: FusedHead, tag: dict[str, Any]) -> None:
        with self._lock:
            self._pending = (head, tag)
            self.stats.loaded += 1

    def take(self) -> FusedHead | None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._before, self.current = self.current, pending
        return None if pending is None else pending[0]

    def refuse(self, files: list[str], exc: BaseException, what: str) -> None:
        """The pipeline could not install the head last taken: the one before it still runs."""
        with self._lock:
            self.current = self._before
        super().refuse(files, exc, what)


def _layout(outputs: dict[str, np.ndarray], head: FusedHead | None, version: int) -> dict[str, Any]:
    labels = {o.name: list(o.labels) for o in head.outputs} if head is not None else {}
    kinds = {o.name: o.kind for o in head.outputs} if head is not None else {}
    rows, start = [], 0
    for name, v in outputs.items():
        if name == "z":
            continue
        width = int(np.asarray(v).shape[-1])
        rows.append({"name": name, "start": start, "stop": start + width, "kind": kinds.get(name, ""),
                     "labels": labels.get(name, [])})
        start += width
    return {"version": int(version), "outputs": rows}


class FleetNode:
    """One robot: ``start()``, then ``run(source)`` (blocking), then ``close()``; or use it as a context manager."""

    def __init__(self, model: Model, config: FleetConfig, probe_files: Sequence[str | Path] = (),
                 events: Callable[[dict[str, Any]], None] | None = None) -> None:
        config.validate()
        self.model, self.cfg = model, config
        meta = model.meta
        self.name = config.agent or meta.agent_name
        check_name("agent", self.name)
        self.view = config.view or meta.agent_view
        self.agent = replace(meta.agent, name=self.name, view=self.view)
        self.signer, trust = _keys(config, self.name)
        self.own_probes: dict[str, tuple[Probe, bytes]] = {}
        for path in probe_files:
            self.add_probe_file(path)
        self.inbox = Inbox(config.fleet, config.limits, config.inbox, trust=trust)
        self._peer_digests: dict[str, str] = {}  # the followed peer's probes received: task → sha256 of the bytes
        self.slot = HeadSlot(self._own_head())
        self._events = events
        self._seq: dict[str, itertools.count] = {}
        self._pub_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._session: Any = None
        self._decl: list[Any] = []
        self._anchor_z: np.ndarray | None = None
        self.peer_probes: dict[str, Probe] = {}
        self.postcard: Postcard | None = None
        self.peer_alive = False
        self._head_version = -1
        self._next_frame_t = 0.0
        self.epoch = 0
        self.card = AgentCard(self.agent, f"jepa-edge {package_version()}", meta.input_size, config.world.to_dict())
        self._card_probes()

    # ---- setup --------------------------------------------------------------------------------
    def add_probe_file(self, path: str | Path) -> str:
        """One of this robot's own probes, published as the file's bytes (checked against this encoder)."""
        from jepa_edge.artifacts import read_bytes_capped

        data = read_bytes_capped(path, "probe file", "pass a *.probe.safetensors of this agent",
                                 self.cfg.limits.probe_bytes)
        probe = decode_probe(data, str(path), self.agent.fingerprint, self.agent.latent_dim, self.cfg.limits)
        self.own_probes[probe.name] = (probe, data)
        return probe.name

    def _card_probes(self) -> None:
        self.card.tasks = sorted(self.own_probes)
        self.card.probes = {k: hashlib.sha256(self.own_probes[k][1]).hexdigest() for k in self.card.tasks}

    def _own_head(self) -> FusedHead | None:
        if not self.own_probes:
            return None
        return build_head(self.agent.fingerprint, self.agent.latent_dim, None,
                          [p for p, _ in self.own_probes.values()])

    def encode_anchor_pool(self) -> np.ndarray:
        """This robot's z for every anchor moment (pool, D), encoded once before the session opens."""
        from jepa_edge.runtime.pipeline import preprocess

        H, W = self.model.meta.input_size
        ids = list(range(self.cfg.world.pool))
        frames = moment_frames(self.cfg.world, self.view, max(H, W), ids)  # (pool, S, S, 3)
        zs = [self.model.infer(preprocess(frames[i : i + 64], (H, W)))["z"] for i in range(0, len(ids), 64)]
        return np.concatenate(zs, 0).astype(np.float32)  # (pool, D)

    def start(self) -> FleetNode:
        """Encode the anchor pool, open the session, declare everything, publish card and probes."""
        self._anchor_z = self.encode_anchor_pool()
        self._session = open_session(self.cfg.transport)
        self.epoch = time.time_ns()
        s, f = self._session, self.cfg.fleet
        self._decl += [
            s.declare_queryable(key_expr(f, self.name, "anchors"), self._on_anchor_query),
            s.declare_queryable(key_expr(f, self.name, "probe"), self._on_probe_query),
            s.declare_subscriber(f"jepa/{f}/*/card", lambda sample: self._on_sample("card", sample)),
            s.declare_subscriber(f"jepa/{f}/*/postcard", lambda sample: self._on_sample("postcard", sample)),
        ]
        if self.cfg.follow:
            self._decl.append(s.declare_subscriber(key_expr(f, self.cfg.follow, "probe"),
                                                   lambda sample: self._on_sample("probe", sample)))
        zenoh = import_zenoh()
        congestion = zenoh.CongestionControl.BLOCK if self.cfg.block_on_congestion else zenoh.CongestionControl.DROP
        self._outputs_pub = s.declare_publisher(key_expr(f, self.name, "outputs"), express=True,
                                                congestion_control=congestion)
        self.publish_card()  # own probes are not put now: a follower fetches them when it sees this new epoch's card
        for target in (self._heartbeat, self._worker):
            t = threading.Thread(target=target, name=f"fleet-{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        self._event("started", epoch=self.epoch)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- publishing ---------------------------------------------------------------------------
    def _envelope(self, kind: str, payload: bytes) -> Envelope:
        """The next envelope of ``kind`` for ``payload``, signed when this robot has a key (hold _pub_lock)."""
        counter = self._seq.setdefault(kind, itertools.count())
        env = Envelope(self.cfg.fleet, kind, self.name, self.agent.fingerprint, self.epoch, next(counter),
                       time.time())
        return env if self.signer is None else env.signed(payload, self.signer)

    def _put(self, kind: str, payload: bytes) -> float:
        """Publish one enveloped message; returns its send time (the envelope's ``t``)."""
        with self._pub_lock:
            env = self._envelope(kind, payload)
            self._session.put(key_expr(self.cfg.fleet, self.name, kind), payload, attachment=env.encode(),
                              express=True)
        return env.t

    def publish_card(self) -> None:
        self._put("card", self.card.encode())

    def publish_probe(self, path: str | Path) -> float:
        """Add or replace one of this robot's probes, install it in the head and publish it; returns the send time."""
        name = self.add_probe_file(path)
        self._card_probes()
        if self.postcard is not None:
            self._rebuild({"reason": "own probe"})
        else:
            self.slot.put(self._own_head(), {"reason": "own probe", "ready_t": time.time()})
        t = self._put("probe", self.own_probes[name][1])
        self.publish_card()  # its probe digests changed: a follower that missed the probe fetches it again
        return t

    # ---- receiving ----------------------------------------------------------------------------
    def _on_sample(self, kind: str, sample: Any) -> None:
        parts = str(sample.key_expr).split("/")
        agent = parts[2] if len(parts) == 4 else "?"
        if agent == self.name:
            return
        att = sample.attachment
        payload = sample.payload.to_bytes()
        got = self.inbox.accept(kind, agent, payload, None if att is None else att.to_bytes())
        if got is None:
            return
        if kind == "card" and agent == self.cfg.follow:
            self._on_peer_card(got)
        elif kind == "probe":  # installed by the worker thread, which owns peer_probes
            self._peer_digests[got.value.name] = hashlib.sha256(payload).hexdigest()
            self._job(("rebuild", {"reason": "probe", "probe": got.value, "sent_t": got.envelope.t}))
        elif kind == "postcard":
            self._event("postcard", peer=agent, name=got.value.name)

    def _on_peer_card(self, got: Accepted) -> None:
        if got.new_epoch:
            self._job(("attach", {"epoch": got.envelope.epoch, "fingerprint": got.value.fingerprint}))
            self.peer_alive = self.postcard is not None  # a restarted peer: the attach fetches its probes
            return
        if not self.peer_alive and self.postcard is not None:
            self.peer_alive = True
            self._event("peer_back", peer=got.agent)
            self._job(("refetch", {"reason": "peer_back"}))  # probes published while the link was down
        elif got.value.probes != self._peer_digests and self.postcard is not None:
            self._peer_digests = dict(got.value.probes)  # asked once per change, not on every heartbeat
            self._job(("refetch", {"reason": "probes changed"}))

    def _on_anchor_query(self, query: Any) -> None:
        att = query.attachment
        payload = query.payload.to_bytes() if query.payload is not None else b""
        got = self.inbox.accept("anchors_req", "", payload, None if att is None else att.to_bytes())
        if got is None:
            query.reply_err(b"refused: see the answering robot's log")
            return
        req: AnchorRequest = got.value
        if max(req.ids) >= len(self._anchor_z):
            self.inbox.refuse("anchors_req", got.agent, f"moment id {max(req.ids)} outside the pool")
            query.reply_err(b"moment id outside the anchor pool")
            return
        reply = encode_anchor_reply(self._anchor_z[list(req.ids)], req, self.agent)
        with self._pub_lock:
            env = self._envelope("anchors", reply)
        query.reply(key_expr(self.cfg.fleet, self.name, "anchors"), reply, attachment=env.encode())
        self._event("anchors_served", peer=got.agent, n=len(req.ids))

    def _on_probe_query(self, query: Any) -> None:
        for _, data in self.own_probes.values():
            with self._pub_lock:
                env = self._envelope("probe", data)
            query.reply(key_expr(self.cfg.fleet, self.name, "probe"), data, attachment=env.encode())

    def watch_outputs(self, agent: str, callback: Callable[[Accepted], None]) -> None:
        """Receive ``agent``'s outputs stream; ``callback`` sees each message that passes the Inbox."""
        check_name("agent", agent)

        def on_sample(sample: Any) -> None:
            got = self.inbox.accept("outputs", agent, sample.payload.to_bytes())
            if got is not None:
                callback(got)

        self._decl.append(self._session.declare_subscriber(key_expr(self.cfg.fleet, agent, "outputs"), on_sample))

    # ---- background threads -------------------------------------------------------------------
    def _job(self, job: tuple[str, dict[str, Any]]) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            log.warning("fleet %s: job queue full, dropping %s", self.name, job[0])

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.cfg.card_period_s):
            try:
                self.publish_card()
            except Exception as exc:  # noqa: BLE001 - a closed session at shutdown
                log.warning("fleet %s: card not published: %s", self.name, exc)
            peer = self.cfg.follow
            seen = self.inbox.last_card_t.get(peer) if peer else None
            if seen is not None and self.peer_alive and time.time() - seen > self.cfg.peer_timeout_s:
                self.peer_alive = False
                self._event("peer_lost", peer=peer, silent_s=round(time.time() - seen, 3))

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                kind, info = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if kind == "attach":
                    self._attach(info)
                elif kind == "refetch":
                    self._refetch(info)
                else:
                    self._rebuild(info)
            except Exception as exc:  # noqa: BLE001 - keep the current head and keep running
                log.warning("fleet %s: %s failed (keeping the current head): %s", self.name, kind, exc)
                self._event(f"{kind}_failed", error=str(exc)[:300])

    # ---- live calibration -------------------------------------------------------------------
    def _attach(self, info: dict[str, Any]) -> None:
        peer = self.cfg.follow
        card = self.inbox.card(peer)
        if card is None:
            return
        world = self.cfg.world
        if (card.anchor_world["seed"], card.anchor_world["steps"]) != (world.seed, world.steps):
            raise ValueError(f"{peer} encodes anchor world {card.anchor_world}, this robot {world.to_dict()}: "
                             "the moments would differ; give both robots one anchor world (seed, steps)")
        check_same_world(self.view, peer, card.agent.view)
        if max(self.cfg.ids()) >= card.anchor_world["pool"]:
            raise ValueError(f"{peer} encodes only moments 0..{card.anchor_world['pool'] - 1}; ask for fewer anchors")
        self.peer_probes = self._fetch_probes(peer)
        self._peer_digests = dict(card.probes)
        calibrated = False
        if self.postcard is None or self.postcard.target_fingerprint != card.fingerprint:
            self.postcard = self.calibrate(peer, card)
            calibrated = True
        self.peer_alive = True
        self._event("attached", peer=peer, peer_epoch=info["epoch"], calibrated=calibrated,
                    probes=sorted(self.peer_probes))
        self._rebuild({"reason": "attach", "peer_epoch": info["epoch"]})
        if calibrated:
            self.publish_card()  # peers check a postcard against its sender's card
            self._put("postcard", postcard_bytes(self.postcard))

    def _refetch(self, info: dict[str, Any]) -> None:
        """Ask the followed peer for its probes again and rebuild the head if any differs from what runs."""
        peer = self.cfg.follow
        fetched = self._fetch_probes(peer)
        changed = {k for k, p in fetched.items() if k not in self.peer_probes or not (
            np.array_equal(p.weight, self.peer_probes[k].weight) and np.array_equal(p.bias, self.peer_probes[k].bias))}
        self._event("probes_fetched", peer=peer, probes=sorted(fetched), changed=sorted(changed), **info)
        if changed:
            self.peer_probes.update({k: fetched[k] for k in changed})
            self._rebuild({**info, "probes": sorted(changed)})

    def _fetch_probes(self, peer: str) -> dict[str, Probe]:
        probes: dict[str, Probe] = {}
        for reply in self._session.get(key_expr(self.cfg.fleet, peer, "probe"), timeout=self.cfg.query_timeout_s):
            sample = reply.ok
            if sample is None:
                continue
            att = sample.attachment
            got = self.inbox.accept("probe", peer, sample.payload.to_bytes(), None if att is None else att.to_bytes())
            if got is not None:
                probes[got.value.name] = got.value
        return probes

    def fetch_anchors(self, peer: str, card: AgentCard, ids: Sequence[int]) -> np.ndarray:
        """The peer's z (N, D_peer) for moments ``ids``, validated against the request and its card."""
        req = AnchorRequest(tuple(int(i) for i in ids), os.urandom(16).hex())
        self.inbox.expect_anchors(peer, req)
        with self._pub_lock:
            env = self._envelope("anchors_req", req.encode())
        try:
            for reply in self._session.get(key_expr(self.cfg.fleet, peer, "anchors"), payload=req.encode(),
                                           attachment=env.encode(), timeout=self.cfg.query_timeout_s):
                sample = reply.ok
                if sample is None:
                    log.warning("fleet %s: %s refused the anchor request: %s", self.name, peer,
                                reply.err.payload.to_bytes()[:200] if reply.err is not None else "")
                    continue
                att = sample.attachment
                got = self.inbox.accept("anchors", peer, sample.payload.to_bytes(),
                                        None if att is None else att.to_bytes())
                if got is not None:
                    return got.value
        finally:
            self.inbox.forget_anchors(req)
        raise TimeoutError(f"no valid anchor reply from {peer} within {self.cfg.query_timeout_s} s")

    def calibrate(self, peer: str, card: AgentCard) -> Postcard:
        """Fit W (this robot → peer) on anchor latents: the peer's received, this robot's own."""
        ids = self.cfg.ids()
        z_peer = self.fetch_anchors(peer, card, ids)  # (N, D_peer)
        z_own = self._anchor_z[ids]  # (N, D)
        lm = fit_map(z_own, z_peer, self.cfg.fit)
        pc = Postcard.from_map(lm, f"W_{self.name}_{peer}", self.agent, card.agent,
                               {"fitted": "live", "anchor_world": self.cfg.world.to_dict(), "n_anchors": len(ids)})
        self._event("calibrated", peer=peer, n_anchors=len(ids), estimator=self.cfg.fit.estimator)
        return pc

    def _rebuild(self, tag: dict[str, Any]) -> None:
        probe = tag.get("probe")
        if isinstance(probe, Probe):
            self.peer_probes[probe.name] = probe
            tag = {**tag, "probe": probe.name}
        if self.postcard is None:
            return  # probes arrive before the first calibration: the attach builds the head
        probes = [self.peer_probes[k] for k in sorted(self.peer_probes)] + [p for p, _ in self.own_probes.values()]
        head = build_head(self.agent.fingerprint, self.agent.latent_dim, self.postcard, probes)
        self.slot.put(head, {**tag, "ready_t": time.time()})
        self._event("head_ready", outputs=[o.name for o in head.outputs], **tag)

    # ---- the frame loop ------------------------------------------------------------------------
    def on_frame(self, record: dict[str, Any], outputs: dict[str, np.ndarray]) -> None:
        """Publish this frame's outputs (and a new card first when the head changed); pace the loop."""
        version = int(record["head_version"])
        if version != self._head_version:
            head, tag = self.slot.current
            self._head_version = version
            layout = _layout(outputs, head, self.card.layout["version"])
            if layout != self.card.layout:  # new names/widths/labels: a new layout version, announced first
                layout["version"] += 1
                self.card.layout = layout
                self.publish_card()
            self._event("head_applied", head_version=version, frame=record["frame"], **tag)
        names = [o["name"] for o in self.card.layout["outputs"]]
        values = np.concatenate([np.asarray(outputs[n], np.float32).reshape(-1) for n in names]) if names else \
            np.zeros(0, np.float32)  # (K,)
        with self._pub_lock:
            seq = next(self._seq.setdefault("outputs", itertools.count()))
        msg = Outputs(fp8_of(self.agent.fingerprint), self.epoch, seq, int(record["frame"]), float(record["t"]),
                      self.card.layout["version"], values)
        self._outputs_pub.put(msg.encode(self.signer, self.cfg.fleet, self.name))
        if self.cfg.fps > 0:
            now = time.perf_counter()
            self._next_frame_t = max(self._next_frame_t + 1.0 / self.cfg.fps, now)
            time.sleep(max(0.0, self._next_frame_t - now))

    def fleet_info(self) -> dict[str, Any]:
        """What a live page shows of the fleet: this robot, its peers (cards seen), its head and inbox counts."""
        now = time.time()
        peers = [{"name": name, "view": card.agent.view, "tasks": ", ".join(card.tasks),
                  "outputs": ", ".join(o["name"] for o in card.layout["outputs"]),
                  "layout_version": card.layout["version"],  # bumps each time the peer applies a head of new outputs
                  "followed": name == self.cfg.follow, "last_card_s": round(now - seen, 2)}
                 for name, (card, seen) in sorted(self.inbox.known_cards().items())]
        _, tag = self.slot.current
        return {"agent": self.name, "follow": self.cfg.follow, "peer_alive": self.peer_alive,
                "signed": self.signer is not None, "authenticated": self.inbox.trust is not None,
                "head_version": self._head_version, "head_reason": tag.get("reason", ""),
                "outputs": ", ".join(o["name"] for o in self.card.layout["outputs"]), "peers": peers,
                "inbox": {k: sum(v.values()) for k, v in self.inbox.stats.to_dict().items() if k != "recent_refusals"}}

    def run(self, source: Any, pipeline: Any = None, stop: threading.Event | None = None,
            on_frame: Callable[[dict[str, Any], dict[str, np.ndarray]], None] | None = None,
            sinks: Sequence[Any] = ()) -> Any:
        """The runtime pipeline on ``source`` with this node's head slot; blocks until it ends."""
        from jepa_edge.runtime.pipeline import run as run_pipeline

        def frame(record: dict[str, Any], outputs: dict[str, np.ndarray]) -> None:
            self.on_frame(record, outputs)
            if on_frame is not None:
                on_frame(record, outputs)

        head, _ = self.slot.current
        return run_pipeline(self.model, source, pipeline, head=head, watcher=self.slot, out=None, stop=stop,
                            on_frame=frame, sinks=sinks)

    def followed_never_seen(self, summary: Any) -> str:
        """Why a run that ended by itself (source over, frame count reached) is a failure: the followed peer
        never sent a card it accepted; "" when nothing is followed, the peer was seen, or the run was stopped."""
        peer = self.cfg.follow
        if not peer or summary.reason not in ("end_of_stream", "max_frames") or self.inbox.card(peer) is not None:
            return ""
        refused = [reason for _, agent, reason in list(self.inbox.stats.refusals) if agent == peer]
        why = f" (its messages were refused: {refused[-1]})" if refused else ""
        return (f"never saw agent {peer!r} on fleet {self.cfg.fleet!r} in {summary.frames} frames{why}: check "
                "--follow and that it runs with the same --fleet and can reach this robot (--listen / --connect)")

    def _event(self, event: str, **info: Any) -> None:
        record = {"event": event, "agent": self.name, "t": time.time(), **info}
        log.info("fleet %s: %s", self.name, json.dumps(record, default=str))
        if self._events is not None:
            self._events(record)


def check_same_world(view: str, peer: str, peer_view: str) -> None:
    """Refuse a peer whose simulator view belongs to the other world (2-D vs 3-D): the same moment id names
    different states there, so anchor latents would pair unrelated frames and no W could mean anything."""
    own, theirs = world_kind_of_view(view), world_kind_of_view(peer_view)
    if own != theirs:
        raise ValueError(f"{peer} sees the {theirs} world (view {peer_view!r}), this robot the {own} world (view "
                         f"{view!r}): their anchor moments would not match; follow a peer with a view of the {own} "
                         f"world ({', '.join(views_of(own))})")


def _keys(config: FleetConfig, name: str) -> tuple[Any, Any]:
    """(signer or None, trust store or None) from the config's key files; the robot's own key must be the one
    the trusted-keys file lists for it, if it lists it."""
    if not config.key:
        log.warning("fleet %s: messages are neither signed nor authenticated: anyone on the Zenoh network can speak "
                    "for any robot (give each robot --key and --trusted-keys; docs/FLEET.md, Trust)", name)
        return None, None
    from jepa_edge.fleet.keys import FleetKeyError, load_signer, load_trust

    signer = load_signer(config.key)
    trust = load_trust(config.trusted_keys) if config.trusted_keys else None
    if trust is None:
        log.warning("fleet %s: messages sent are signed, messages received are NOT authenticated "
                    "(pass --trusted-keys)", name)
    elif name in trust.agents and trust.agents[name].kid != signer.kid:
        raise FleetKeyError(f"{config.key} is not the key {config.trusted_keys} lists for {name}; "
                            "use this robot's own key or update the trusted-keys file")
    return signer, trust
