"""Fleet wire formats (docs/FORMATS.md, "Fleet messages"): encoders, and stateless decoders for untrusted bytes.

Every message but ``outputs`` is a payload plus an *envelope* (the Zenoh
attachment, a small JSON object naming fleet, kind, sender, its encoder
fingerprint, session epoch, sequence number and send time). Payloads:

  card         JSON: who the sender is (agent, software, input size, anchor world, output layout)
  probe        the bytes of a ``*.probe.safetensors`` file, unchanged
  postcard     the bytes of a ``*.postcard.safetensors`` file, unchanged
  anchors_req  JSON: moment ids whose latents are asked for, and a nonce
  anchors      safetensors: ``z float32 (N, D)``; metadata holds ids, nonce, agent
  outputs      binary, self-contained (no envelope): fixed header + float32 values

Decoders check the size *before* parsing, then schema, version, names, dims and
finiteness, and raise ``FleetMessageError`` (one line: what and why). Nothing
here unpickles anything. Cross-message checks (fingerprint binding to the
sender's card, replayed or stale sequence numbers, nonces) live in
``jepa_edge.fleet.inbox``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from jepa_edge.artifacts import AgentRef, ArtifactError, artifact_bytes, jsonable, parse_artifact
from jepa_edge.calib.postcard import Postcard
from jepa_edge.calib.probes import Probe

FLEET_VERSION = 2  # 2: envelopes and outputs may be signed; cards carry probe digests
KINDS = ("card", "probe", "postcard", "anchors_req", "anchors", "outputs")
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fleet and agent names: safe inside a Zenoh key expression
FP_RE = re.compile(r"[0-9a-f]{64}")  # sha256 hex of an encoder (jepa_edge.calib.fingerprint)
MAX_INT = 2**63 - 1


class FleetMessageError(ArtifactError):
    """A received fleet message that is refused (never applied)."""


@dataclass(frozen=True)
class FleetLimits:
    """Size caps checked before any parsing, and bounds on what a message may ask for."""

    envelope_bytes: int = 4096
    card_bytes: int = 64 * 1024
    probe_bytes: int = 16 * 1024 * 1024
    postcard_bytes: int = 64 * 1024 * 1024
    anchors_req_bytes: int = 256 * 1024
    anchors_bytes: int = 64 * 1024 * 1024
    outputs_bytes: int = 256 * 1024
    max_anchor_ids: int = 4096  # ids in one anchor request
    max_latent_dim: int = 16384

    def cap(self, kind: str) -> int:
        return int(getattr(self, f"{kind}_bytes"))


def key_expr(fleet: str, agent: str, kind: str) -> str:
    """``jepa/<fleet>/<agent>/<kind>``; the anchor request and its reply share ``anchors``."""
    return f"jepa/{fleet}/{agent}/{'anchors' if kind == 'anchors_req' else kind}"


def check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FleetMessageError(f"{what} {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return name


def _int(what: str, v: Any, lo: int = 0, hi: int = MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise FleetMessageError(f"{what}={v!r} must be an integer in [{lo}, {hi}]")
    return v


def _float(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise FleetMessageError(f"{what}={v!r} must be a finite number")
    return float(v)


def capped(kind: str, data: Any, limits: FleetLimits) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FleetMessageError(f"{kind}: payload is {type(data).__name__}, expected bytes")
    n, cap = len(data), limits.cap(kind)
    if n > cap:
        raise FleetMessageError(f"{kind}: {n} bytes, over the {cap}-byte cap")
    return bytes(data)


def _json_object(kind: str, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FleetMessageError(f"{kind}: not UTF-8 JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise FleetMessageError(f"{kind}: JSON {type(obj).__name__}, expected an object")
    return obj


def _no_constant(name: str) -> None:
    raise FleetMessageError(f"JSON constant {name} (NaN/Infinity) is not allowed")


def _dumps(obj: Any) -> bytes:
    return json.dumps(jsonable(obj), allow_nan=False, separators=(",", ":")).encode("utf-8")


def _exact_keys(kind: str, obj: dict[str, Any], keys: set[str]) -> None:
    if set(obj) != keys:
        raise FleetMessageError(f"{kind}: keys {sorted(obj)}, expected exactly {sorted(keys)}")


def _version(kind: str, obj: dict[str, Any]) -> None:
    if obj.get("kind") != kind:
        raise FleetMessageError(f"{kind}: says it is a {obj.get('kind')!r}")
    if obj.get("version") != FLEET_VERSION:
        raise FleetMessageError(f"{kind}: version {obj.get('version')!r}, this jepa-edge reads {FLEET_VERSION}")


# ---------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    fleet: str
    kind: str
    agent: str  # sender's name (the <agent> of its key expressions)
    fp: str  # sender's encoder fingerprint
    epoch: int  # sender's session start (time_ns); a restart starts a new, larger epoch
    seq: int  # per (sender, kind), increasing within an epoch
    t: float  # send time, unix seconds
    kid: str = ""  # signing key's id (jepa_edge.fleet.keys); "" = unsigned
    sig: str = ""  # hex Ed25519 signature of signing_bytes(payload); "" = unsigned

    def canonical(self) -> bytes:
        """Sorted-key compact JSON of every field but ``sig``: what is signed (the receiver rebuilds it)."""
        fields = {"v": FLEET_VERSION, **asdict(self)}
        fields.pop("sig")
        if not self.kid:
            fields.pop("kid")
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def signing_bytes(self, payload: bytes) -> bytes:
        return ENVELOPE_DOMAIN + self.canonical() + b"\0" + hashlib.sha256(payload).digest()

    def signed(self, payload: bytes, signer: Any) -> Envelope:
        """This envelope with ``signer``'s key id and its signature over the envelope and ``payload``."""
        env = replace(self, kid=signer.kid, sig="")
        return replace(env, sig=signer.sign(env.signing_bytes(payload)).hex())

    def encode(self) -> bytes:
        obj = {"v": FLEET_VERSION, **asdict(self)}
        if not self.kid:
            obj.pop("kid"), obj.pop("sig")
        return _dumps(obj)


ENVELOPE_DOMAIN = b"jepa-edge/fleet/v2/envelope\0"
OUTPUTS_DOMAIN = b"jepa-edge/fleet/v2/outputs\0"
_ENV_KEYS = {"v", "fleet", "kind", "agent", "fp", "epoch", "seq", "t"}
KID_RE = re.compile(r"[0-9a-f]{16}")
SIG_RE = re.compile(r"[0-9a-f]{128}")


def decode_envelope(data: Any, limits: FleetLimits) -> Envelope:
    if data is None:
        raise FleetMessageError("no envelope (attachment) on the message")
    data = capped("envelope", data, limits)
    obj = _json_object("envelope", data)
    if set(obj) != _ENV_KEYS and set(obj) != _ENV_KEYS | {"kid", "sig"}:
        raise FleetMessageError(f"envelope: keys {sorted(obj)}, expected {sorted(_ENV_KEYS)} (+ kid, sig if signed)")
    if obj["v"] != FLEET_VERSION:
        raise FleetMessageError(f"envelope: version {obj['v']!r}, this jepa-edge reads {FLEET_VERSION}")
    if obj["kind"] not in KINDS or obj["kind"] == "outputs":
        raise FleetMessageError(f"envelope: kind {obj['kind']!r} is not an enveloped fleet message")
    if not isinstance(obj["fp"], str) or not FP_RE.fullmatch(obj["fp"]):
        raise FleetMessageError("envelope: fp must be a 64-character lowercase sha256 hex")
    kid, sig = obj.get("kid", ""), obj.get("sig", "")
    if "kid" in obj and not (isinstance(kid, str) and KID_RE.fullmatch(kid) and isinstance(sig, str)
                             and SIG_RE.fullmatch(sig)):
        raise FleetMessageError("envelope: kid must be 16 and sig 128 lowercase hex characters")
    return Envelope(check_name("envelope fleet", obj["fleet"]), obj["kind"], check_name("envelope agent", obj["agent"]),
                    obj["fp"], _int("envelope epoch", obj["epoch"]), _int("envelope seq", obj["seq"]),
                    _float("envelope t", obj["t"]), kid, sig)


# ---------------------------------------------------------------- agent card


@dataclass
class AgentCard:
    agent: AgentRef  # as in postcards and probes
    software: str  # "jepa-edge 0.1.0"
    input_size: tuple[int, int]  # (H, W) frames the model takes
    anchor_world: dict[str, int]  # {seed, steps, pool}: the moments this robot can encode on request
    tasks: list[str] = field(default_factory=list)  # names of the probes it publishes
    layout: dict[str, Any] = field(default_factory=lambda: {"version": 0, "outputs": []})  # of its outputs stream
    probes: dict[str, str] = field(default_factory=dict)  # task → sha256 of the probe file it publishes

    def __post_init__(self) -> None:
        self.agent = AgentRef.checked(self.agent, "card", "agent", FleetMessageError)

    @property
    def fingerprint(self) -> str:
        return self.agent.fingerprint

    @property
    def latent_dim(self) -> int:
        return self.agent.latent_dim

    def encode(self) -> bytes:
        return _dumps({"kind": "card", "version": FLEET_VERSION, "agent": self.agent.to_dict(),
                       "software": self.software,
                       "input_size": list(self.input_size), "anchor_world": self.anchor_world,
                       "tasks": self.tasks, "layout": self.layout, "probes": self.probes})

    def layout_width(self) -> int:
        return int(self.layout["outputs"][-1]["stop"]) if self.layout["outputs"] else 0


def _check_layout(layout: Any) -> dict[str, Any]:
    if not isinstance(layout, dict) or set(layout) != {"version", "outputs"} or not isinstance(layout["outputs"], list):
        raise FleetMessageError("card: layout must be {version, outputs: [...]}")
    _int("card layout.version", layout["version"], 0, 2**32 - 1)
    stop = 0
    for o in layout["outputs"]:
        if not isinstance(o, dict) or set(o) != {"name", "start", "stop", "kind", "labels"}:
            raise FleetMessageError("card: each layout output is {name, start, stop, kind, labels}")
        check_name("card layout output", o["name"])
        if o["start"] != stop or _int("card layout stop", o["stop"], stop + 1, 1 << 20) <= o["start"]:
            raise FleetMessageError(f"card: layout output {o['name']!r} slices [{o['start']}, {o['stop']}) "
                                    f"do not tile the values from {stop}")
        if not isinstance(o["labels"], list) or not all(isinstance(x, str) for x in o["labels"]):
            raise FleetMessageError(f"card: layout output {o['name']!r} labels must be a list of strings")
        stop = o["stop"]
    return layout


def decode_card(data: Any, limits: FleetLimits) -> AgentCard:
    obj = _json_object("card", capped("card", data, limits))
    _exact_keys("card", obj, {"kind", "version", "agent", "software", "input_size", "anchor_world", "tasks", "layout",
                              "probes"})
    _version("card", obj)
    agent = AgentRef.from_dict(obj["agent"], "card", "agent", FleetMessageError)
    check_name("card agent.name", agent.name)
    if not FP_RE.fullmatch(agent.fingerprint):
        raise FleetMessageError("card: agent.fingerprint must be a 64-character lowercase sha256 hex")
    _int("card agent.latent_dim", agent.latent_dim, 1, limits.max_latent_dim)
    size = obj["input_size"]
    if not isinstance(size, list) or len(size) != 2:
        raise FleetMessageError("card: input_size must be [H, W]")
    world = obj["anchor_world"]
    if not isinstance(world, dict) or set(world) != {"seed", "steps", "pool"}:
        raise FleetMessageError("card: anchor_world must be {seed, steps, pool}")
    for k in ("seed", "steps", "pool"):
        _int(f"card anchor_world.{k}", world[k], 1 if k != "seed" else 0)
    tasks = obj["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or len(tasks) > 256:
        raise FleetMessageError("card: tasks must be a list of at most 256 names")
    probes = obj["probes"]
    if not isinstance(probes, dict) or set(probes) != set(tasks) or not all(
            isinstance(d, str) and FP_RE.fullmatch(d) for d in probes.values()):
        raise FleetMessageError("card: probes must map each task to the sha256 hex of its probe file")
    if not isinstance(obj["software"], str) or len(obj["software"]) > 128:
        raise FleetMessageError("card: software must be a short string")
    return AgentCard(agent, obj["software"], (_int("card input H", size[0], 1, 1 << 16),
                                              _int("card input W", size[1], 1, 1 << 16)),
                     dict(world), list(tasks), _check_layout(obj["layout"]), dict(probes))


# ---------------------------------------------------------------- probes and postcards (file bytes)


def postcard_bytes(pc: Postcard) -> bytes:
    """The bytes of the postcard's file (``save_postcard`` writes the same)."""
    pc.validate()
    return artifact_bytes(pc.tensors(), pc.metadata())


def probe_bytes(probe: Probe) -> bytes:
    """The bytes of the probe's file (``save_probe`` writes the same)."""
    probe.validate()
    return artifact_bytes(probe.tensors(), probe.metadata())


def decode_probe(data: Any, where: str, agent_fp: str, latent_dim: int, limits: FleetLimits) -> Probe:
    """A probe that must read the sender's own latents (fingerprint and dim of its card)."""
    from jepa_edge.calib.probes import probe_from_bytes

    data = capped("probe", data, limits)
    try:
        probe = probe_from_bytes(data, where, expect_agent_fingerprint=agent_fp)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise FleetMessageError(f"probe: {str(exc)[:300]}") from None
    if probe.agent.latent_dim != latent_dim:
        raise FleetMessageError(f"probe: latent dim {probe.agent.latent_dim}, the sender's card says {latent_dim}")
    check_name("probe name", probe.name)
    return probe


def decode_postcard(data: Any, where: str, sender_fp: str, limits: FleetLimits) -> Postcard:
    """A postcard one of whose ends is the sender's encoder."""
    from jepa_edge.calib.postcard import postcard_from_bytes

    data = capped("postcard", data, limits)
    try:
        pc = postcard_from_bytes(data, where)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise FleetMessageError(f"postcard: {str(exc)[:300]}") from None
    if sender_fp not in (pc.source_fingerprint, pc.target_fingerprint):
        raise FleetMessageError(f"postcard: maps {pc.source_fingerprint[:12]}… → {pc.target_fingerprint[:12]}…, "
                                f"neither is the sender's encoder {sender_fp[:12]}…")
    return pc


# ---------------------------------------------------------------- anchors


@dataclass(frozen=True)
class AnchorRequest:
    ids: tuple[int, ...]  # moment ids (shared world moments) whose latents are asked for
    nonce: str  # 32 hex characters; the reply must echo it

    def encode(self) -> bytes:
        return _dumps({"kind": "anchors_req", "version": FLEET_VERSION, "ids": list(self.ids), "nonce": self.nonce})


def decode_anchor_request(data: Any, limits: FleetLimits) -> AnchorRequest:
    obj = _json_object("anchors_req", capped("anchors_req", data, limits))
    _exact_keys("anchors_req", obj, {"kind", "version", "ids", "nonce"})
    _version("anchors_req", obj)
    ids = obj["ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= limits.max_anchor_ids:
        raise FleetMessageError(f"anchors_req: ids must be a list of 1..{limits.max_anchor_ids} moment ids")
    ids = tuple(_int("anchors_req id", i) for i in ids)
    if len(set(ids)) != len(ids):
        raise FleetMessageError("anchors_req: repeated moment ids")
    if not isinstance(obj["nonce"], str) or not re.fullmatch(r"[0-9a-f]{32}", obj["nonce"]):
        raise FleetMessageError("anchors_req: nonce must be 32 lowercase hex characters")
    return AnchorRequest(ids, obj["nonce"])


def encode_anchor_reply(z: np.ndarray, request: AnchorRequest, agent: AgentRef) -> bytes:
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or len(z) != len(request.ids):
        raise ValueError(f"anchor latents {z.shape} do not match {len(request.ids)} requested ids")
    meta = {"kind": "anchors", "version": FLEET_VERSION, "ids": list(request.ids), "nonce": request.nonce,
            "agent": agent.to_dict()}
    return artifact_bytes({"z": z}, meta)


def decode_anchor_reply(data: Any, where: str, request: AnchorRequest, card: AgentCard,
                        limits: FleetLimits) -> np.ndarray:
    """``z (N, D)`` for exactly the requested ids, from the agent of ``card``."""
    data = capped("anchors", data, limits)
    try:
        tensors, meta = parse_artifact(data, where, "anchors", FLEET_VERSION, FleetMessageError)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise FleetMessageError(f"anchors: {str(exc)[:300]}") from None
    if set(tensors) != {"z"}:
        raise FleetMessageError(f"anchors: tensors {sorted(tensors)}, expected exactly ['z']")
    if meta.get("nonce") != request.nonce or meta.get("ids") != list(request.ids):
        raise FleetMessageError("anchors: nonce or ids do not match the request (replayed or foreign reply)")
    agent = meta.get("agent")
    if not isinstance(agent, dict) or agent.get("fingerprint") != card.fingerprint:
        raise FleetMessageError("anchors: latents are not from the encoder of the sender's card")
    z = tensors["z"]
    if z.shape != (len(request.ids), card.latent_dim):
        raise FleetMessageError(f"anchors: z is {z.shape}, expected ({len(request.ids)}, {card.latent_dim})")
    return z


# ---------------------------------------------------------------- outputs (compact binary)

OUT_MAGIC = b"JEO1"  # unsigned
OUT_MAGIC_SIGNED = b"JEO2"  # followed, after the values, by the key id (8 bytes) and an Ed25519 signature (64)
# magic, first 8 bytes of the fingerprint, epoch, seq, frame index, time, layout version, value count
OUT_HEADER = struct.Struct("<4s8sQQQdIH")  # 50 bytes, little-endian, no padding
OUT_TRAILER = 8 + 64  # signed: key id + signature over OUTPUTS_DOMAIN, fleet, agent and the bytes before it


@dataclass(frozen=True)
class Outputs:
    fp8: bytes  # bytes.fromhex(fingerprint[:16]): binds the stream to the sender's encoder
    epoch: int
    seq: int
    frame: int
    t: float  # capture time of the frame, unix seconds
    layout_version: int  # which card layout names the values
    values: np.ndarray  # (K,) float32, the head outputs (z excluded) in layout order
    kid: str = ""  # signed: the key id (16 hex); "" = unsigned
    sig: bytes = b""  # signed: 64 bytes
    body: bytes = b""  # decoded: the bytes the signature covers (header + values)

    def encode(self, signer: Any = None, fleet: str = "", agent: str = "") -> bytes:
        """The wire bytes; with ``signer``, signed for ``fleet``/``agent`` (both bound into the signature)."""
        v = np.ascontiguousarray(self.values, "<f4").reshape(-1)  # (K,)
        magic = OUT_MAGIC if signer is None else OUT_MAGIC_SIGNED
        body = OUT_HEADER.pack(magic, self.fp8, self.epoch, self.seq, self.frame, self.t,
                               self.layout_version, len(v)) + v.tobytes()
        if signer is None:
            return body
        return body + signer.kid8 + signer.sign(outputs_signing_bytes(fleet, agent, body))


def outputs_signing_bytes(fleet: str, agent: str, body: bytes) -> bytes:
    return OUTPUTS_DOMAIN + fleet.encode() + b"\0" + agent.encode() + b"\0" + body


def decode_outputs(data: Any, limits: FleetLimits) -> Outputs:
    data = capped("outputs", data, limits)
    if len(data) < OUT_HEADER.size:
        raise FleetMessageError(f"outputs: {len(data)} bytes, shorter than the {OUT_HEADER.size}-byte header")
    magic, fp8, epoch, seq, frame, t, layout_version, n = OUT_HEADER.unpack_from(data)
    if magic not in (OUT_MAGIC, OUT_MAGIC_SIGNED):
        raise FleetMessageError(f"outputs: magic {magic!r}, expected {OUT_MAGIC!r} or {OUT_MAGIC_SIGNED!r}")
    size = OUT_HEADER.size + 4 * n
    signed = magic == OUT_MAGIC_SIGNED
    if len(data) != size + (OUT_TRAILER if signed else 0):
        raise FleetMessageError(f"outputs: {len(data)} bytes for {n} values "
                                f"(expected {size + (OUT_TRAILER if signed else 0)})")
    values = np.frombuffer(data, "<f4", count=n, offset=OUT_HEADER.size).astype(np.float32)  # (n,)
    if not math.isfinite(t) or not np.all(np.isfinite(values)):
        raise FleetMessageError("outputs: time or values contain NaN or Inf")
    if max(epoch, seq, frame) > MAX_INT:
        raise FleetMessageError("outputs: epoch/seq/frame out of range")
    kid, sig = (data[size : size + 8].hex(), data[size + 8 :]) if signed else ("", b"")
    return Outputs(fp8, epoch, seq, frame, t, layout_version, values, kid, sig, data[:size])


def fp8_of(fingerprint: str) -> bytes:
    return bytes.fromhex(fingerprint[:16])
