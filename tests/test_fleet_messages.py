"""Fleet wire formats and the Inbox: round trips, each refusal, and a 10,000-message fuzz run (in process)."""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import replace

import numpy as np
import pytest
from onnx_fixtures import make_encoder, make_postcard, make_probe

from jepa_edge.artifacts import AgentRef
from jepa_edge.fleet import (
    AgentCard,
    AnchorRequest,
    Envelope,
    FleetLimits,
    FleetMessageError,
    Inbox,
    InboxConfig,
    Outputs,
    key_expr,
)
from jepa_edge.fleet.messages import (
    OUT_HEADER,
    artifact_bytes,
    decode_anchor_request,
    decode_card,
    decode_envelope,
    decode_outputs,
    encode_anchor_reply,
    fp8_of,
    postcard_bytes,
    probe_bytes,
)

FLEET, NOW = "f1", 1_000_000.0
LIMITS = FleetLimits(card_bytes=8192, probe_bytes=64 * 1024, postcard_bytes=64 * 1024, anchors_bytes=64 * 1024,
                     outputs_bytes=4096, max_anchor_ids=256)
WORLD = {"seed": 1000, "steps": 64, "pool": 256}


class Sender:
    """Builds one agent's messages with increasing sequence numbers, as a FleetNode would."""

    def __init__(self, name: str, seed: int, dim: int = 8, epoch: int = 5) -> None:
        enc = make_encoder(8, 8, dim, seed=seed, name=name)
        self.agent, self.epoch, self.name = enc.agent, epoch, name
        self.seq = {k: itertools.count(1) for k in ("card", "probe", "postcard", "anchors_req", "anchors")}
        self.out_seq = itertools.count(1)
        self.card = AgentCard(self.agent, "jepa-edge test", (8, 8), dict(WORLD), ["position"],
                              {"version": 1, "outputs": [{"name": "position", "start": 0, "stop": 6,
                                                          "kind": "regression", "labels": list("abcdef")}]},
                              {"position": "0" * 64})

    def env(self, kind: str, **over) -> bytes:
        fields = {"fleet": FLEET, "kind": kind, "agent": self.name, "fp": self.agent.fingerprint,
                  "epoch": self.epoch, "seq": next(self.seq[kind]), "t": NOW - 1.0, **over}
        return Envelope(**fields).encode()

    def outputs(self, values=None, **over) -> bytes:
        fields = {"fp8": fp8_of(self.agent.fingerprint), "epoch": self.epoch, "seq": next(self.out_seq),
                  "frame": 7, "t": NOW - 0.5, "layout_version": 1,
                  "values": np.arange(6, dtype=np.float32) if values is None else values, **over}
        return Outputs(**fields).encode()


@pytest.fixture()
def a():
    return Sender("agentA", seed=1)


@pytest.fixture()
def inbox(a):
    box = Inbox(FLEET, LIMITS, InboxConfig(max_age_s=30), clock=lambda: NOW)
    assert box.accept("card", a.name, a.card.encode(), a.env("card")) is not None
    return box


def test_key_expressions_and_round_trips(a):
    assert key_expr("f", "agentA", "outputs") == "jepa/f/agentA/outputs"
    assert key_expr("f", "agentA", "anchors_req") == "jepa/f/agentA/anchors"
    card = decode_card(a.card.encode(), LIMITS)
    assert card.agent == a.agent and card.layout == a.card.layout and card.input_size == (8, 8)
    env = decode_envelope(a.env("probe"), LIMITS)
    assert (env.agent, env.kind, env.epoch) == (a.name, "probe", 5)
    out = decode_outputs(a.outputs(), LIMITS)
    assert out.frame == 7 and out.values.tolist() == list(range(6)) and len(a.outputs()) == OUT_HEADER.size + 24
    req = AnchorRequest((3, 1, 2), "0" * 32)
    assert decode_anchor_request(req.encode(), LIMITS) == req


def test_inbox_accepts_probe_postcard_outputs_anchors(a, inbox):
    probe = make_probe(a.agent, "position", 6)
    got = inbox.accept("probe", a.name, probe_bytes(probe), a.env("probe"))
    assert got is not None and np.array_equal(got.value.weight, probe.weight)
    b = make_encoder(8, 8, 8, seed=9, name="agentB").agent
    got = inbox.accept("postcard", a.name, postcard_bytes(make_postcard(b, a.agent)), a.env("postcard"))
    assert got is not None and got.value.target_fingerprint == a.agent.fingerprint
    assert inbox.accept("outputs", a.name, a.outputs()).value.values.shape == (6,)
    req = AnchorRequest((4, 5, 6), os.urandom(16).hex())
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    reply = encode_anchor_reply(z, req, a.agent)
    assert inbox.accept("anchors", a.name, reply, a.env("anchors")) is None  # not asked for: refused
    inbox.expect_anchors(a.name, req)
    got = inbox.accept("anchors", a.name, reply, a.env("anchors"))
    assert got is not None and np.array_equal(got.value, z)
    assert inbox.accept("anchors", a.name, reply, a.env("anchors")) is None  # the same reply again: replay


def test_each_kind_of_bad_message_is_refused_with_one_log_line(a, inbox, caplog):
    probe = make_probe(a.agent, "position", 6)
    other = make_encoder(8, 8, 8, seed=2, name="agentX").agent
    good_env = a.env("probe")
    bad = {
        "truncated": ("probe", probe_bytes(probe)[:-9], a.env("probe")),
        "oversize": ("probe", probe_bytes(probe) + b"\0" * LIMITS.probe_bytes, a.env("probe")),
        "probe of another encoder": ("probe", probe_bytes(make_probe(other, "position", 6)), a.env("probe")),
        "envelope fingerprint": ("probe", probe_bytes(probe), a.env("probe", fp=other.fingerprint)),
        "wrong fleet": ("probe", probe_bytes(probe), a.env("probe", fleet="other")),
        "sender mismatch": ("probe", probe_bytes(probe), a.env("probe", agent="agentX")),
        "stale": ("probe", probe_bytes(probe), a.env("probe", t=NOW - 100)),
        "future": ("probe", probe_bytes(probe), a.env("probe", t=NOW + 100)),
        "older epoch": ("probe", probe_bytes(probe), a.env("probe", epoch=4)),
        "no envelope": ("probe", probe_bytes(probe), None),
        "garbage envelope": ("probe", probe_bytes(probe), b"\xff\x00garbage"),
        "NaN outputs": ("outputs", a.outputs(values=np.array([0, 1, np.nan, 3, 4, 5], np.float32)), None),
        "wrong dims outputs": ("outputs", a.outputs(values=np.zeros(5, np.float32)), None),
        "outputs fingerprint": ("outputs", a.outputs(fp8=fp8_of(other.fingerprint)), None),
        "outputs layout": ("outputs", a.outputs(layout_version=2), None),
        "NaN card": ("card", a.card.encode().replace(b'"jepa-edge test"', b"NaN"), a.env("card")),
        "garbage": ("postcard", os.urandom(300), a.env("postcard")),
        "unknown kind": ("video", b"frames", a.env("probe")),
    }
    probe_nan = make_probe(a.agent, "position", 6)
    probe_nan.weight[0, 0] = np.nan
    nan_bytes = artifact_bytes({"weight": probe_nan.weight, "bias": probe_nan.bias}, probe_nan.metadata())
    bad["NaN probe"] = ("probe", nan_bytes, a.env("probe"))
    wrong_dim = make_probe(replace(a.agent, latent_dim=9), "position", 6)
    bad["wrong dims probe"] = ("probe", probe_bytes(wrong_dim), a.env("probe"))
    caplog.set_level(logging.WARNING, logger="jepa_edge.fleet.inbox")
    for what, (kind, payload, env) in bad.items():
        n = len(caplog.records)
        assert inbox.accept(kind, a.name, payload, env) is None, what
        assert len(caplog.records) == n + 1, what
    later = a.env("probe")
    assert inbox.accept("probe", a.name, probe_bytes(probe), later) is not None
    assert inbox.accept("probe", a.name, probe_bytes(probe), later) is None  # replayed
    assert inbox.accept("probe", a.name, probe_bytes(probe), good_env) is None  # an older seq arriving late
    assert sum(inbox.stats.refused.values()) == len(bad) + 2


def test_restarted_sender_starts_a_new_epoch_and_old_session_is_stale(a, inbox):
    restarted = Sender("agentA", seed=1, epoch=6)
    got = inbox.accept("card", a.name, restarted.card.encode(), restarted.env("card"))
    assert got is not None and got.new_epoch
    assert inbox.accept("outputs", a.name, a.outputs()) is None  # the old session's stream
    assert inbox.accept("outputs", a.name, restarted.outputs()) is not None
    assert inbox.accept("card", a.name, a.card.encode(), a.env("card")) is None  # the old session's card


def test_pinned_fingerprint_and_card_checks(a):
    box = Inbox(FLEET, LIMITS, InboxConfig(expect_fingerprints={"agentA": "0" * 64}), clock=lambda: NOW)
    assert box.accept("card", a.name, a.card.encode(), a.env("card")) is None
    bad_layout = json.loads(a.card.encode())
    bad_layout["layout"]["outputs"][0]["start"] = 1
    with pytest.raises(FleetMessageError, match="tile"):
        decode_card(json.dumps(bad_layout).encode(), LIMITS)
    with pytest.raises(FleetMessageError, match="cap"):
        decode_card(b" " * (LIMITS.card_bytes + 1), LIMITS)


# ---------------------------------------------------------------- fuzz


def _wrong_dims(a: Sender, kind: str, postcard) -> tuple[bytes, bytes]:
    """A message of ``kind`` whose latent dims disagree with the sender's card or with themselves."""
    if kind == "probe":
        return probe_bytes(make_probe(replace(a.agent, latent_dim=7), "position", 6)), a.env(kind)
    if kind == "postcard":
        meta = postcard.metadata()
        meta["target"] = {**meta["target"], "latent_dim": 9}
        tensors = {"W": postcard.weight, "bias": postcard.bias, "source_mean": postcard.source_mean,
                   "source_scale": postcard.source_scale, "target_mean": postcard.target_mean,
                   "target_scale": postcard.target_scale}
        return artifact_bytes(tensors, meta), a.env(kind)
    card = AgentCard(replace(a.agent, latent_dim=9), a.card.software, a.card.input_size, a.card.anchor_world,
                     a.card.tasks, a.card.layout)
    return card.encode(), a.env(kind)


def _corrupt(rng: np.random.Generator, a: Sender, other: AgentRef, kind: str, payload: bytes, env: bytes | None,
             postcard) -> tuple[bytes, bytes | None]:
    """One malformed variant of a message (a good envelope seq is consumed, as a real sender would)."""
    how = rng.integers(8)
    outputs = kind == "outputs"
    if how == 0:  # truncated
        return payload[: int(rng.integers(0, len(payload)))], env
    if how == 1:  # oversize
        return payload + bytes(LIMITS.cap(kind) + 1 - len(payload) + int(rng.integers(0, 100))), env
    if how == 2:  # garbage
        return rng.bytes(int(rng.integers(1, 400))), env
    if how == 3:  # wrong fingerprint
        if outputs:
            return a.outputs(fp8=fp8_of(other.fingerprint)), None
        return payload, a.env(kind, fp=other.fingerprint)
    if how == 4:  # NaN
        if outputs:
            return a.outputs(values=np.full(6, np.nan, np.float32)), None
        return payload, env.replace(b'"t":', b'"t":NaN,"x":')
    if how == 5:  # wrong dims
        if outputs:
            return a.outputs(values=np.zeros(int(rng.integers(0, 5)), np.float32)), None
        return _wrong_dims(a, kind, postcard)
    if how == 6:  # stale
        return (a.outputs(t=NOW - 100), None) if outputs else (payload, a.env(kind, t=NOW - 100))
    if outputs:  # a header that claims more values than it carries
        return payload[:OUT_HEADER.size], None
    return payload, env[: len(env) // 2]  # truncated envelope


def test_fuzz_10000_messages_none_bad_applied_all_good_accepted(a, inbox, caplog):
    from jepa_edge.runtime.stats import rss_kb

    caplog.set_level(logging.ERROR, logger="jepa_edge.fleet.inbox")  # ~500 refusal lines: counted, not printed
    rng = np.random.default_rng(0)
    other = make_encoder(8, 8, 8, seed=3, name="agentX").agent
    probe = probe_bytes(make_probe(a.agent, "position", 6))
    b = make_encoder(8, 8, 8, seed=9, name="agentB").agent
    pc = make_postcard(b, a.agent)
    postcard = postcard_bytes(pc)
    n, n_bad, accepted_good, rss = 10_000, 0, 0, []
    replayable: list[tuple[str, bytes, bytes | None]] = []
    for i in range(n):
        if i == n // 2:
            rss.append(rss_kb())
        r = rng.random()
        kind = "outputs" if r < 0.8 else "probe" if r < 0.9 else "postcard" if r < 0.97 else "card"
        if kind == "outputs":
            payload, env = a.outputs(values=rng.standard_normal(6).astype(np.float32)), None
        else:
            payload = {"probe": probe, "postcard": postcard, "card": a.card.encode()}[kind]
            env = a.env(kind)
        bad = rng.random() < 0.05
        if bad and replayable and rng.random() < 0.15:  # replay of an earlier, once-accepted message
            kind, payload, env = replayable[int(rng.integers(len(replayable)))]
        elif bad:
            payload, env = _corrupt(rng, a, other, kind, payload, env, pc)
        got = inbox.accept(kind, a.name, payload, env)
        if bad:
            n_bad += 1
            assert got is None, f"malformed message {i} ({kind}) was accepted"
        else:
            assert got is not None, f"good message {i} ({kind}) refused: {inbox.stats.refusals[-1]}"
            accepted_good += 1
            if len(replayable) < 50:
                replayable.append((kind, payload, env))
    rss.append(rss_kb())
    assert n_bad >= n // 100 and accepted_good == n - n_bad
    assert sum(inbox.stats.refused.values()) == n_bad
    assert sum(inbox.stats.accepted.values()) == accepted_good + 1  # + the fixture's card
    if None not in rss:
        assert rss[1] - rss[0] < 20_000, f"RSS grew {rss[1] - rss[0]} KiB over the second 5,000 messages"


# ---------------------------------------------------------------- packaging


def test_fleet_is_torch_free_and_zenoh_is_lazy():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        sys.modules["zenoh"] = None  # as if eclipse-zenoh were not installed
        import jepa_edge.fleet, jepa_edge.fleet.node, jepa_edge.fleet.app
        from jepa_edge.fleet import TransportConfig, open_session, FleetTransportError
        try:
            open_session(TransportConfig())
        except FleetTransportError as exc:
            print("ERR", exc)
        print("HEAVY", sorted(m for m in ("torch", "tensorrt") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "jepa-edge[fleet]" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout


def test_transport_config_validation_and_json5():
    from jepa_edge.fleet.transport import TransportConfig

    cfg = TransportConfig(listen=["tcp/127.0.0.1:7447"], connect=["tcp/127.0.0.1:7448"])
    j = json.loads(cfg.to_json5())
    assert j["mode"] == "peer" and j["scouting"]["multicast"]["enabled"] is False
    assert j["connect"]["retry"]["period_max_ms"] == 300 and j["listen"]["endpoints"] == ["tcp/127.0.0.1:7447"]
    for bad in (TransportConfig(mode="router"), TransportConfig(mode="client"), TransportConfig(listen=["nope"])):
        with pytest.raises(ValueError):
            bad.validate()
