"""Signed fleet messages (Ed25519, trusted-keys file) and the bounds that stop a single message locking a peer out.

In process, on the Inbox: every forgery the unauthenticated fleet applied is
refused with exactly one log line, and the genuine messages that follow are
still accepted. The live versions (three Zenoh sessions) are in
tests/test_fleet_live.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat

import numpy as np
import pytest
from onnx_fixtures import make_encoder, make_probe
from typer.testing import CliRunner

pytest.importorskip("cryptography")

from jepa_edge.cli import app
from jepa_edge.fleet import AgentCard, AnchorRequest, Envelope, FleetLimits, Inbox, InboxConfig, Outputs
from jepa_edge.fleet.keys import FleetKeyError, Signer, TrustStore, add_trusted, load_signer, load_trust
from jepa_edge.fleet.messages import KINDS, fp8_of, probe_bytes

FLEET, NOW = "f1", 1_000_000.0
EPOCH = int((NOW - 60) * 1e9)  # the senders' sessions began a minute ago
LIMITS = FleetLimits(card_bytes=8192, probe_bytes=64 * 1024, outputs_bytes=4096)
WORLD = {"seed": 1000, "steps": 64, "pool": 256}


class Robot:
    """One agent's signed messages, as a FleetNode builds them."""

    def __init__(self, name: str, seed: int, signer: Signer | None, epoch: int = EPOCH) -> None:
        self.name, self.signer, self.epoch = name, signer, epoch
        self.agent = make_encoder(8, 8, 8, seed=seed, name=name).agent
        self.seq = {k: itertools.count(1) for k in KINDS}
        self.card = AgentCard(self.agent, "jepa-edge test", (8, 8), dict(WORLD), [],
                              {"version": 1, "outputs": [{"name": "position", "start": 0, "stop": 6,
                                                          "kind": "regression", "labels": list("abcdef")}]})

    def msg(self, kind: str, payload: bytes, signer: Signer | None = None, **over) -> tuple[bytes, bytes]:
        fields = {"fleet": FLEET, "kind": kind, "agent": self.name, "fp": self.agent.fingerprint,
                  "epoch": self.epoch, "seq": next(self.seq[kind]), "t": NOW - 1.0, **over}
        env = Envelope(**fields)
        signer = signer or self.signer
        return payload, (env if signer is None else env.signed(payload, signer)).encode()

    def outputs(self, value: float = 1.0, signer: Signer | None = None, **over) -> bytes:
        fields = {"fp8": fp8_of(self.agent.fingerprint), "epoch": self.epoch, "seq": next(self.seq["outputs"]),
                  "frame": 3, "t": NOW - 0.5, "layout_version": 1, "values": np.full(6, value, np.float32), **over}
        return Outputs(**fields).encode(signer or self.signer, FLEET, self.name)


@pytest.fixture(scope="module")
def keys():
    return {"agentA": Signer.generate(), "agentB": Signer.generate(), "rogue": Signer.generate()}


@pytest.fixture()
def trust(keys, tmp_path) -> TrustStore:
    path = tmp_path / "trust.json"
    add_trusted(path, "agentA", keys["agentA"])
    add_trusted(path, "agentB", keys["agentB"], ["card", "anchors_req"])  # B may not publish probes
    return load_trust(path)


def test_signed_messages_are_accepted_and_every_forgery_refused_in_one_line(keys, trust, caplog):
    a = Robot("agentA", 1, keys["agentA"])
    box = Inbox(FLEET, LIMITS, InboxConfig(), clock=lambda: NOW, trust=trust)
    assert box.accept("card", "agentA", *a.msg("card", a.card.encode())) is not None
    probe = probe_bytes(make_probe(a.agent, "position", 6))
    good = a.msg("probe", probe)
    assert box.accept("probe", "agentA", *good) is not None
    assert box.accept("outputs", "agentA", a.outputs()) is not None

    unsigned = Robot("agentA", 1, None)
    payload, env = a.msg("probe", probe)
    env_flipped = bytearray(env)
    env_flipped[env.index(b'"seq"') + 6] ^= 1  # one flipped byte of the envelope (a digit of seq)
    payload_flipped = bytearray(probe)
    payload_flipped[-3] ^= 1  # one flipped byte of the payload (a weight)
    out = bytearray(a.outputs())
    out[60] ^= 1  # one flipped byte of a value
    b = Robot("agentB", 2, keys["agentB"])
    forged = {
        "unsigned": ("probe", *unsigned.msg("probe", probe)),
        "unknown key": ("probe", *a.msg("probe", probe, signer=keys["rogue"])),
        "another agent's key": ("probe", *a.msg("probe", probe, signer=keys["agentB"])),
        "tampered envelope": ("probe", payload, bytes(env_flipped)),
        "tampered payload": ("probe", bytes(payload_flipped), a.msg("probe", probe)[1]),
        "replayed": ("probe", *good),
        "kind not allowed": ("probe", *b.msg("probe", probe_bytes(make_probe(b.agent, "position", 6)))),
        "unsigned outputs": ("outputs", unsigned.outputs(), None),
        "outputs by another key": ("outputs", a.outputs(signer=keys["rogue"]), None),
        "tampered outputs": ("outputs", bytes(out), None),
    }
    caplog.set_level(logging.WARNING, logger="jepa_edge.fleet.inbox")
    reasons = {}
    for what, (kind, p, e) in forged.items():
        n = len(caplog.records)
        sender = "agentB" if what == "kind not allowed" else "agentA"
        assert box.accept(kind, sender, p, e) is None, what
        assert len(caplog.records) == n + 1, what
        reasons[what] = box.stats.refusals[-1][2]
    assert "unsigned" in reasons["unsigned"] and "unknown key" in reasons["unknown key"]
    assert "agentB's key" in reasons["another agent's key"] and "may not send probe" in reasons["kind not allowed"]
    assert "bad signature" in reasons["tampered envelope"] and "bad signature" in reasons["tampered payload"]
    assert "replayed" in reasons["replayed"] and "bad signature" in reasons["tampered outputs"]
    assert box.accept("probe", "agentA", *a.msg("probe", probe)) is not None  # the genuine sender goes on
    assert box.accept("outputs", "agentA", a.outputs()) is not None


def test_signature_is_checked_before_the_payload_is_parsed(keys, trust):
    a = Robot("agentA", 1, keys["agentA"])
    box = Inbox(FLEET, LIMITS, InboxConfig(), clock=lambda: NOW, trust=trust)
    box.accept("card", "agentA", *a.msg("card", a.card.encode()))
    deep = b"[" * 8000  # would be a RecursionError / JSON error if it were parsed first
    assert box.accept("card", "agentA", deep, a.msg("card", deep, signer=keys["rogue"])[1]) is None
    assert "unknown key" in box.stats.refusals[-1][2]


@pytest.mark.parametrize("signed", [False, True])
def test_one_forged_message_cannot_lock_a_peer_out(keys, trust, signed):
    """Far-future epoch, seq 2^63-1 and a request under B's name: refused; A's genuine messages still apply."""
    a = Robot("agentA", 1, keys["agentA"] if signed else None)
    b = Robot("agentB", 2, keys["agentB"] if signed else None)
    box = Inbox(FLEET, LIMITS, InboxConfig(), clock=lambda: NOW, trust=trust if signed else None)
    assert box.accept("card", "agentA", *a.msg("card", a.card.encode())) is not None
    rogue = keys["rogue"] if signed else None
    attacks = [
        ("card", *a.msg("card", a.card.encode(), signer=rogue, epoch=2**63 - 1)),
        ("card", *a.msg("card", a.card.encode(), signer=rogue, seq=2**63 - 1)),
        ("probe", *a.msg("probe", probe_bytes(make_probe(a.agent, "position", 6)), signer=rogue, seq=2**63 - 1)),
        ("outputs", a.outputs(signer=rogue, seq=2**63 - 1), None),
        ("outputs", a.outputs(signer=rogue, epoch=2**63 - 1), None),
        ("anchors_req", *b.msg("anchors_req", AnchorRequest((1, 2), os.urandom(16).hex()).encode(), signer=rogue,
                               seq=2**63 - 1)),
    ]
    for kind, payload, env in attacks:
        assert box.accept(kind, "agentA" if kind != "anchors_req" else "", payload, env) is None, kind
    assert box.card("agentA") is not None and box.cards["agentA"][0] == EPOCH  # still A's real session
    assert box.accept("card", "agentA", *a.msg("card", a.card.encode())) is not None
    assert box.accept("probe", "agentA", *a.msg("probe", probe_bytes(make_probe(a.agent, "position", 6))))
    assert box.accept("outputs", "agentA", a.outputs()) is not None
    req = AnchorRequest((1, 2), os.urandom(16).hex())
    assert box.accept("anchors_req", "", *b.msg("anchors_req", req.encode())) is not None  # B's real request


def test_a_seq_the_sender_could_have_reached_is_accepted():
    """The bound is elapsed session time x max_seq_rate (+ slack), not a jump from the last seen seq."""
    a = Robot("agentA", 1, None)
    cfg = InboxConfig(max_seq_rate=1000.0, seq_slack=10)
    box = Inbox(FLEET, LIMITS, cfg, clock=lambda: NOW)
    box.accept("card", "agentA", *a.msg("card", a.card.encode()))
    assert box.accept("outputs", "agentA", a.outputs(seq=60 * 1000)) is not None  # 60 s at 1000/s: possible
    assert box.accept("outputs", "agentA", a.outputs(seq=60 * 1000 + 11)) is None  # beyond the slack
    assert "since its session began" in box.stats.refusals[-1][2]


def test_key_files_and_trusted_keys_file(keys, tmp_path):
    path = tmp_path / "a.key"
    result = CliRunner().invoke(app, ["fleet", "keygen", "agentA", "--out", str(path),
                                      "--trusted-keys", str(tmp_path / "trust.json")])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signer = load_signer(path)
    trust = load_trust(tmp_path / "trust.json")
    assert trust.agents["agentA"].kid == signer.kid and trust.agents["agentA"].kinds == frozenset(KINDS)
    again = CliRunner().invoke(app, ["fleet", "keygen", "agentA", "--out", str(path)])
    assert again.exit_code == 2 and "--overwrite" in again.output and load_signer(path).kid == signer.kid
    printed = CliRunner().invoke(app, ["fleet", "keygen", "agentB", "--out", str(tmp_path / "b.key"),
                                       "--kind", "card", "--kind", "outputs"])
    entry = json.loads(printed.output.splitlines()[-1])["agentB"]
    assert entry["kinds"] == ["card", "outputs"] and len(bytes.fromhex(entry["public_key"])) == 32
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"version": 1, "agents": {
        "agentA": {"public_key": signer.public_raw.hex()}, "agentB": {"public_key": signer.public_raw.hex()}}}))
    with pytest.raises(FleetKeyError, match="share one public key"):
        load_trust(shared)
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "agents": {"agentA": {"public_key": "00"}}}))
    with pytest.raises(FleetKeyError, match="64 hex"):
        load_trust(tmp_path / "bad.json")
