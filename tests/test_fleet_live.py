"""Robots on a Zenoh fleet over loopback: live calibration from anchor latents, hot swap, outputs, restarts.

Agents are the tiny ONNX encoders of ``onnx_fixtures`` exported in ``head_inputs``
mode (16 px, D=8), one per simulator view. Agent A's position probe is a real
ridge probe fitted on A's latents. The offline reference is the library path of
``jepa-edge probe --transfer``: ``fit_map`` on the same anchor latents →
``Postcard.from_map`` → ``transfer_probe`` → ``Probe.apply`` on B's latents.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx_fixtures import grouped, make_encoder, make_model

pytest.importorskip("zenoh")

from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.postcard import Postcard
from jepa_edge.calib.probes import fit_probe, save_probe, transfer_probe
from jepa_edge.fleet.moments import AnchorWorld, moment_frames, moment_positions
from jepa_edge.fleet.node import FleetConfig, FleetNode
from jepa_edge.fleet.transport import TransportConfig, free_loopback_ports
from jepa_edge.runtime import PipelineConfig, load_model, open_source, preprocess
from jepa_edge.runtime.sources import ArraySource

# Live head (ONNX Runtime Gemm, float32) vs offline transfer_probe (numpy float32), same z and anchors: the same
# weights, so only float32 summation order differs. Its bound scales with the magnitude of the terms
# (|w_i z_i| is large where an untrained encoder has a near-constant latent dim, e.g. agentC's).
ATOL, RTOL_TERMS = 1e-5, 1e-6


def assert_transfer_close(live: np.ndarray, moved, z: np.ndarray) -> None:
    """|live - offline| <= ATOL + RTOL_TERMS * sum_i |w_i z_i| + |b| (a float32 dot-product rounding bound)."""
    want = moved.apply(z)
    bound = ATOL + RTOL_TERMS * (np.abs(z) @ np.abs(moved.weight).T + np.abs(moved.bias))  # (N, k)
    err = np.abs(live - want)
    assert np.all(err <= bound), f"max error {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"
WORLD = AnchorWorld(seed=1000, steps=64, pool=128)
VIEWS = {"agentA": "top", "agentB": "oblique", "agentC": "rotated"}
ROOT = Path(__file__).resolve().parents[1]


def anchor_z(model, view: str, ids) -> np.ndarray:
    """What a FleetNode encodes for its anchor pool: batches of 64 through the ONNX model."""
    frames = moment_frames(WORLD, view, 16, range(WORLD.pool))
    z = np.concatenate([model.infer(preprocess(frames[i : i + 64], (16, 16)))["z"] for i in range(0, WORLD.pool, 64)])
    return z[list(ids)]


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    out = {}
    for seed, (name, view) in enumerate(VIEWS.items()):
        enc = make_encoder(16, 16, 8, seed=seed + 11, name=name, view=view)
        out[name] = {"enc": enc, "view": view, "onnx": make_model(d / f"{name}.onnx", enc, "head_inputs")}
    # A's position probe: ridge on A's latents of 256 moments of another world seed
    train_world = AnchorWorld(seed=7, steps=64, pool=256)
    ids = range(256)
    a = out["agentA"]
    z = a["enc"].z(moment_frames(train_world, "top", 16, ids))
    probe = fit_probe(z, moment_positions(train_world, ids), "regression", "position", a["enc"].agent,
                      labels=[f"obj{i // 2}_{'xy'[i % 2]}" for i in range(6)])
    save_probe(d / "position.probe.safetensors", probe)
    out["probe"], out["probe_path"], out["dir"] = probe, d / "position.probe.safetensors", d
    return out


def offline_transfer(agents, name: str, ids):
    """probe_A ∘ W_{name,A} as `jepa-edge probe --transfer` computes it, from the same anchor latents."""
    mA, mX = load_model(str(agents["agentA"]["onnx"]), "ort-cpu"), load_model(str(agents[name]["onnx"]), "ort-cpu")
    lm = fit_map(anchor_z(mX, agents[name]["view"], ids), anchor_z(mA, "top", ids), FitConfig())
    pc = Postcard.from_map(lm, f"W_{name}_A", agents[name]["enc"].agent, agents["agentA"]["enc"].agent)
    return transfer_probe(agents["probe"], pc), mX


def sim_frames(view: str, n: int) -> np.ndarray:
    src = open_source(f"sim:{view}?size=16&seed=5&frames={n}")
    return np.stack([src.read() for _ in range(n)])  # (n, 16, 16, 3)


def cfg(port: int, peers: list[int], **kw) -> FleetConfig:
    tr = TransportConfig(listen=[f"tcp/127.0.0.1:{port}"], connect=[f"tcp/127.0.0.1:{p}" for p in peers])
    return FleetConfig(fleet="t", world=WORLD, n_anchors=48, transport=tr, **kw)


# ---------------------------------------------------------------- two nodes in one process


def wait_until(what: str, cond, timeout: float = 30.0) -> None:
    """Poll ``cond`` until true; the timeout is a hang guard, never a correctness bound."""
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def applied(events: list[dict], agent: str) -> list[dict]:
    return [e for e in list(events) if e["event"] == "head_applied" and e["agent"] == agent]


def test_two_nodes_calibrate_live_swap_without_dropping_a_frame(agents):
    """B runs N frames alone, then A joins: the swap to a calibrated head is at frame >= N by construction."""
    N = 20
    pA, pB = free_loopback_ports(2)
    events: list[dict] = []
    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    nodeA = FleetNode(modelA, cfg(pA, [pB], fps=60), [agents["probe_path"]], events=events.append)
    nodeB = FleetNode(modelB, cfg(pB, [pA], follow="agentA", fps=60), events=events.append)
    stopA, stopB, ran_n = threading.Event(), threading.Event(), threading.Event()
    records: list[tuple[dict, dict]] = []
    framesB = sim_frames("oblique", 64)
    sent: dict[str, float] = {}

    def on_frame_b(record, outputs):
        records.append((record, {k: np.array(v) for k, v in outputs.items()}))
        if len(records) >= N:
            ran_n.set()
        if "t" in sent and any(e.get("sent_t") == sent["t"] for e in applied(events, "agentB")):
            stopB.set()  # the republished probe is in: done

    with nodeB:
        tb = threading.Thread(target=nodeB.run, args=(ArraySource(framesB, loop=True),),
                              kwargs={"stop": stopB, "on_frame": on_frame_b, "pipeline": PipelineConfig()},
                              daemon=True)
        ta = threading.Thread(target=nodeA.run, args=(ArraySource(sim_frames("top", 64), loop=True),),
                              kwargs={"stop": stopA}, daemon=True)
        try:
            tb.start()
            assert ran_n.wait(30), "B did not run its first frames"
            with nodeA:  # A joins only now: B's first N frames run on its initial (empty) head
                ta.start()
                wait_until("B to apply a calibrated head", lambda: any(
                    e["head_version"] >= 1 for e in applied(events, "agentB")))
                sent["t"] = nodeA.publish_probe(agents["probe_path"])  # the same probe again: B swaps again
                wait_until("B to apply A's republished probe", stopB.is_set)
                stopA.set()
                ta.join(10)
            tb.join(10)
        finally:  # the loops end even when an assertion above fails
            stopA.set()
            stopB.set()

    kinds = [e["event"] for e in events if e["agent"] == "agentB"]
    assert "calibrated" in kinds and "attached" in kinds, kinds
    frames = [r["frame"] for r, _ in records]
    assert frames == list(range(len(frames))) and records[-1][0]["dropped"] == 0  # every frame, in order
    versions = [r["head_version"] for r, _ in records]
    assert versions == sorted(versions)  # never back to an older head
    swap = versions.index(next(v for v in versions if v >= 1))  # first frame on a calibrated head
    assert swap >= N  # A was not there before frame N
    assert all(("position" in o) == (i >= swap) for i, (_, o) in enumerate(records))  # exactly from the swap on
    moved, mB = offline_transfer(agents, "agentB", range(48))
    zB = np.concatenate([mB.infer(framesB[i % 64 : i % 64 + 1])["z"] for i in range(swap, len(records))])
    live = np.concatenate([o["position"] for _, o in records[swap:]])
    assert_transfer_close(live, moved, zB)
    late = [e for e in applied(events, "agentB") if e.get("sent_t") == sent["t"]]
    assert late and late[0]["t"] > sent["t"] and late[0]["head_version"] > versions[swap]
    assert sum(nodeB.inbox.stats.refused.values()) == 0, nodeB.inbox.stats.to_dict()


# ---------------------------------------------------------------- three processes


class Robot:
    """One `jepa-edge fleet` subprocess; its frames and events are JSON-lines files."""

    def __init__(self, agents, d: Path, name: str, ports: dict[str, int], follow: str = "") -> None:
        self.name, self.d, self.view = name, d, agents[name]["view"]
        self.frames, self.events, self.log = d / f"{name}.frames.jsonl", d / f"{name}.events.jsonl", d / f"{name}.log"
        config = d / "fleet.json"
        config.write_text(json.dumps({"fleet": "t3", "n_anchors": 48, "fps": 30.0,
                                      "world": {"seed": WORLD.seed, "steps": WORLD.steps, "pool": WORLD.pool}}))
        self.cmd = [sys.executable, "-m", "jepa_edge.cli", "fleet", "run", str(agents[name]["onnx"]), "--backend", "ort-cpu",
                    "--source", f"sim:{self.view}?size=16&seed=5", "--config", str(config), "--frames", "3000",
                    "--jsonl", str(self.frames), "--events", str(self.events), "--append",  # logs kept across restarts
                    "--listen", f"tcp/127.0.0.1:{ports[name]}"]
        self.cmd += [a for peer, p in ports.items() if peer != name for a in ("--connect", f"tcp/127.0.0.1:{p}")]
        self.cmd += ["--follow", follow] if follow else ["--probe", str(agents["probe_path"])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Robot:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, env=env, cwd=self.d)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @staticmethod
    def _read(path: Path) -> list[dict]:
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(x) for x in lines[:-1]] + ([json.loads(lines[-1])] if lines and lines[-1].endswith("}")
                                                        else [])

    def records(self) -> list[dict]:
        return self._read(self.frames)

    def event_list(self, event: str) -> list[dict]:
        return [e for e in self._read(self.events) if e["event"] == event]


def wait_for(what: str, cond, timeout: float, robots) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {r.name}\n" + r.log.read_text()[-1500:] for r in robots if r.log.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def calibrated_records(robot: Robot) -> list[dict]:
    """Frames run on a head built from A's probe and the live W (head v1 and later: one W, one probe)."""
    return [r for r in robot.records() if r["head_version"] >= 1]


def check_zero_shot(agents, robot: Robot) -> int:
    """The robot's position outputs on calibrated heads equal the offline transfer on its own frames."""
    recs = calibrated_records(robot)
    assert recs, f"{robot.name} wrote no frame with a calibrated head"
    moved, m = offline_transfer(agents, robot.name, range(48))
    frames = sim_frames(robot.view, recs[-1]["frame"] + 1)
    z = np.concatenate([m.infer(frames[r["frame"] : r["frame"] + 1])["z"] for r in recs])
    live = np.array([grouped(r["outputs"])["position"] for r in recs], np.float32)
    assert_transfer_close(live, moved, z)
    return len(recs)


@pytest.mark.slow
def test_three_processes_calibrate_from_anchors_and_reattach_after_a_restart(agents, tmp_path):
    ports = dict(zip(VIEWS, free_loopback_ports(3)))
    a = Robot(agents, tmp_path, "agentA", ports)
    b = Robot(agents, tmp_path, "agentB", ports, follow="agentA")
    c = Robot(agents, tmp_path, "agentC", ports, follow="agentA")
    robots = [a, b, c]
    try:
        for r in robots:
            r.start()
        wait_for("B and C to apply A's probes through a live W",
                 lambda: all(any(e["head_version"] >= 1 for e in r.event_list("head_applied")) for r in (b, c)),
                 45, robots)
        wait_for("10 frames on the calibrated heads", lambda: all(len(calibrated_records(r)) >= 10 for r in (b, c)),
                 20, robots)
        for r in (b, c):
            assert r.event_list("calibrated") and check_zero_shot(agents, r) >= 10

        # kill A mid-stream: B and C keep running on their current head, then re-attach to the restarted A
        a.kill()
        n_before = {r.name: len(r.records()) for r in (b, c)}
        wait_for("B and C to report A lost", lambda: all(r.event_list("peer_lost") for r in (b, c)), 30, robots)
        wait_for("B and C to keep running while A is down",
                 lambda: all(len(r.records()) > n_before[r.name] + 10 for r in (b, c)), 30, robots)
        a.start()
        wait_for("A to restart", lambda: len(a.event_list("started")) == 2, 30, robots)
        epoch = a.event_list("started")[-1]["epoch"]
        wait_for("B and C to re-attach", lambda: all(
            any(e["peer_epoch"] == epoch for e in r.event_list("attached")) for r in (b, c)), 30, robots)
        n_attached = {r.name: len(r.records()) for r in (b, c)}
        for r in (b, c):
            assert r.proc.poll() is None
        wait_for("frames after the re-attach", lambda: all(len(r.records()) > n_attached[r.name] + 10
                                                           for r in (b, c)), 30, robots)
        for r in (b, c):  # every frame processed, none dropped, through the swap, the loss and the re-attach
            recs = r.records()
            assert [x["frame"] for x in recs] == list(range(len(recs))) and recs[-1]["dropped"] == 0
            check_zero_shot(agents, r)
    finally:
        for r in robots:
            r.kill(signal.SIGTERM)


@pytest.mark.slow
def test_peer_with_another_anchor_world_is_not_calibrated_against(agents):
    pA, pB = free_loopback_ports(2)
    events: list[dict] = []
    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    other = FleetConfig(fleet="t", world=AnchorWorld(seed=5, steps=64, pool=128), n_anchors=48, fps=60,
                        transport=TransportConfig(listen=[f"tcp/127.0.0.1:{pA}"], connect=[f"tcp/127.0.0.1:{pB}"]))
    records: list[dict] = []
    failed_at: list[int] = []  # frames B had run when the attach failed

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "attach_failed" and not failed_at:
            failed_at.append(len(records))

    nodeA = FleetNode(modelA, other, [agents["probe_path"]], events=events.append)
    nodeB = FleetNode(modelB, cfg(pB, [pA], follow="agentA", fps=60), events=on_event)
    stopA, stopB = threading.Event(), threading.Event()

    def on_frame(record: dict, _) -> None:  # B runs on until 30 frames after the refusal (or 40 s)
        records.append(record)
        if (failed_at and len(records) >= failed_at[0] + 30) or len(records) >= 2400:
            stopB.set()

    ta = threading.Thread(target=nodeA.run, args=(ArraySource(sim_frames("top", 64), loop=True),),
                          kwargs={"stop": stopA}, daemon=True)
    with nodeA, nodeB:
        try:
            ta.start()
            nodeB.run(ArraySource(sim_frames("oblique", 64), loop=True), on_frame=on_frame, stop=stopB)
        finally:
            stopA.set()
            ta.join(5)
    failed = [e for e in events if e["event"] == "attach_failed"]
    assert failed and "anchor world" in failed[0]["error"]
    assert len(records) >= failed_at[0] + 30  # kept running after the refusal ...
    assert all(r["head_version"] == 0 for r in records)  # ... with its head unchanged
    assert not any(e["event"] in ("calibrated", "anchors_served") for e in events)


def test_garbage_over_the_wire_is_refused_and_nodes_keep_working(agents):
    from jepa_edge.fleet.transport import open_session

    pA, pB, pX = free_loopback_ports(3)
    events: list[dict] = []
    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    nodeA = FleetNode(modelA, cfg(pA, [pB]), [agents["probe_path"]], events=events.append)
    nodeB = FleetNode(modelB, cfg(pB, [pA], follow="agentA"), events=events.append)
    rng = np.random.default_rng(0)
    with nodeA, nodeB:
        deadline = time.time() + 20
        while time.time() < deadline and not any(e["event"] == "head_ready" for e in events):
            time.sleep(0.05)
        outputs_seen: list = []
        nodeB.watch_outputs("agentA", outputs_seen.append)
        loaded = nodeB.slot.stats.loaded
        refused0 = sum(nodeB.inbox.stats.refused.values())
        rogue = open_session(TransportConfig(listen=[f"tcp/127.0.0.1:{pX}"], connect=[f"tcp/127.0.0.1:{pB}"]))
        try:
            wait_until("the rogue session to reach B", lambda: len(list(rogue.info.peers_zid())) > 0)
            kinds = ("card", "probe", "outputs")
            import zenoh

            block = zenoh.CongestionControl.BLOCK  # the test is about the inbox: the transport must not drop any
            for i in range(600):  # pretends to be agentA: garbage, truncated and oversized payloads
                payload = rng.bytes(int(rng.integers(0, 2000)))
                att = None if i % 3 else rng.bytes(int(rng.integers(0, 300)))
                rogue.put(f"jepa/t/agentA/{kinds[i % 3]}", payload, attachment=att, congestion_control=block)
            rogue.put("jepa/t/agentA/probe", bytes(70 * 1024 * 1024))  # over Zenoh's message cap: dropped there
            replies = list(rogue.get("jepa/t/agentA/anchors", payload=b"\x00garbage", timeout=5))
            deadline = time.time() + 20
            while time.time() < deadline and sum(nodeB.inbox.stats.refused.values()) < refused0 + 600:
                time.sleep(0.05)
        finally:
            rogue.close()
        assert sum(nodeB.inbox.stats.refused.values()) == refused0 + 600  # every one refused, none applied
        assert nodeB.slot.stats.loaded == loaded and nodeB.inbox.card("agentA") is not None and not outputs_seen
        assert replies and all(r.ok is None for r in replies)  # A answered the garbage request with an error
        card = nodeB.inbox.card("agentA")
        z = nodeB.fetch_anchors("agentA", card, [0, 1, 2])  # the real peer still answers
        assert z.shape == (3, 8) and np.all(np.isfinite(z))


# ---------------------------------------------------------------- signed fleet: forgeries replayed live


@pytest.fixture(scope="module")
def fleet_keys(agents):
    from jepa_edge.fleet.keys import Signer, add_trusted, write_private_key

    d = agents["dir"] / "keys"
    d.mkdir(exist_ok=True)
    for name in ("agentA", "agentB"):
        signer = Signer.generate()
        write_private_key(d / f"{name}.key", signer, overwrite=True)
        add_trusted(d / "trust.json", name, signer)
    return d


def test_signed_fleet_refuses_the_three_forgeries_live_and_keeps_applying_genuine_messages(agents, fleet_keys):
    """A third Zenoh peer replays what broke the unauthenticated fleet: forged probe (weights 0, bias 1000,
    seq 2^63-1) on A's copied envelope, a card with epoch 2^63-1, an anchor request under B's name, and a
    replayed genuine probe. B's outputs stay those of the genuine head; A's later messages are applied."""
    import zenoh

    from jepa_edge.calib.probes import Probe
    from jepa_edge.fleet.messages import Envelope, decode_envelope, probe_bytes
    from jepa_edge.fleet.transport import open_session

    pA, pB, pX = free_loopback_ports(3)
    events: list[dict] = []
    keys = {"trusted_keys": str(fleet_keys / "trust.json")}
    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    nodeA = FleetNode(modelA, cfg(pA, [pB], key=str(fleet_keys / "agentA.key"), **keys), [agents["probe_path"]],
                      events=events.append)
    nodeB = FleetNode(modelB, cfg(pB, [pA], follow="agentA", key=str(fleet_keys / "agentB.key"), **keys),
                      events=events.append)
    framesB = sim_frames("oblique", 8)
    with nodeA, nodeB:
        wait_until("B to build the calibrated head", lambda: nodeB.postcard is not None and any(
            e["event"] == "head_ready" and e["agent"] == "agentB" for e in list(events)))
        rogue = open_session(TransportConfig(listen=[f"tcp/127.0.0.1:{pX}"],
                                             connect=[f"tcp/127.0.0.1:{pA}", f"tcp/127.0.0.1:{pB}"]))
        captured: list[tuple[str, bytes, bytes]] = []

        def grab(sample) -> None:
            att = sample.attachment
            if att is not None:
                captured.append((str(sample.key_expr), sample.payload.to_bytes(), att.to_bytes()))

        sub = rogue.declare_subscriber("jepa/t/agentA/*", grab)
        try:
            wait_until("the rogue session to reach A and B", lambda: len(list(rogue.info.peers_zid())) >= 2)
            wait_until("a card of A to copy", lambda: any(k.endswith("/card") for k, _, _ in captured))
            sent_t = nodeA.publish_probe(agents["probe_path"])  # a genuine probe for the rogue to replay
            wait_until("a card and a probe of A to copy", lambda: {k.rsplit("/", 1)[1] for k, _, _ in captured}
                       >= {"card", "probe"})
            wait_until("B to rebuild its head on it", lambda: any(
                e["event"] == "head_ready" and e.get("sent_t") == sent_t for e in list(events)))
            nodeB.slot.take()  # install it, as the frame loop would between frames
            head_before, loaded_before = nodeB.slot.current[0], nodeB.slot.stats.loaded
            out_before = head_before.apply(modelB.infer(framesB)["z"])
            card_env = decode_envelope(next(a for k, _, a in captured if k.endswith("/card")), nodeB.cfg.limits)
            _, probe_payload, probe_att = next(c for c in captured if c[0].endswith("/probe"))
            genuine = agents["probe"]
            evil = Probe(np.zeros_like(genuine.weight), np.full_like(genuine.bias, 1000.0), genuine.name,
                         genuine.task, genuine.labels, genuine.agent)
            refused0 = sum(nodeB.inbox.stats.refused.values())
            block = zenoh.CongestionControl.BLOCK
            forged_probe = Envelope(**{**card_env.__dict__, "kind": "probe", "seq": 2**63 - 1})  # A's kid + sig
            forged_card = Envelope(**{**card_env.__dict__, "epoch": 2**63 - 1})
            rogue.put("jepa/t/agentA/probe", probe_bytes(evil), attachment=forged_probe.encode(),
                      congestion_control=block)
            rogue.put("jepa/t/agentA/card", nodeA.card.encode(), attachment=forged_card.encode(),
                      congestion_control=block)
            rogue.put("jepa/t/agentA/probe", probe_payload, attachment=probe_att, congestion_control=block)  # replay
            wait_until("B to refuse the three messages", lambda: sum(nodeB.inbox.stats.refused.values())
                       >= refused0 + 3)
            as_b = Envelope("t", "anchors_req", "agentB", nodeB.agent.fingerprint, time.time_ns(), 2**63 - 1,
                            time.time())
            req = b'{"kind":"anchors_req","version":2,"ids":[1,2],"nonce":"' + b"0" * 32 + b'"}'
            replies = list(rogue.get("jepa/t/agentA/anchors", payload=req, attachment=as_b.encode(), timeout=5))
        finally:
            sub.undeclare()
            rogue.close()
        assert replies and all(r.ok is None for r in replies)  # A refused the request under B's name
        reasons = [r[2] for r in nodeB.inbox.stats.refusals]
        assert any("bad signature" in r for r in reasons) and any("replayed" in r for r in reasons), reasons
        assert any("unsigned" in r[2] and r[0] == "anchors_req" for r in nodeA.inbox.stats.refusals)
        assert nodeB.slot.take() is None and nodeB.slot.stats.loaded == loaded_before  # no new head
        assert nodeB.slot.current[0] is head_before and nodeB.inbox.cards["agentA"][0] == nodeA.epoch
        np.testing.assert_array_equal(nodeB.slot.current[0].apply(modelB.infer(framesB)["z"]),
                                      out_before)  # B's outputs are unchanged
        # A's later genuine messages: a card (B still follows A's real session), a probe, B's anchor request
        sent_t = nodeA.publish_probe(agents["probe_path"])
        wait_until("B to rebuild its head on A's genuine probe", lambda: any(
            e["event"] == "head_ready" and e.get("sent_t") == sent_t for e in list(events)))
        z = nodeB.fetch_anchors("agentA", nodeB.inbox.card("agentA"), [0, 1, 2])
        assert z.shape == (3, 8)
        assert nodeB.inbox.stats.accepted["card"] >= 2 and nodeB.inbox.cards["agentA"][0] == nodeA.epoch


def test_probes_published_while_the_link_is_down_are_applied_when_it_returns(agents, tmp_path):
    """B reaches A only through a loopback TCP proxy. Cut it, A publishes a new probe, restore: B fetches it
    on peer_back. Then a probe change B never received a message for is fetched from A's card digests."""
    from dataclasses import replace

    from tcp_proxy import TcpProxy

    pA, pB = free_loopback_ports(2)
    events: list[dict] = []
    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    genuine = agents["probe"]
    half, third = tmp_path / "half.probe.safetensors", tmp_path / "third.probe.safetensors"
    save_probe(half, replace(genuine, weight=genuine.weight * 0.5))
    save_probe(third, replace(genuine, weight=genuine.weight / 3))

    def b_runs(weight) -> bool:
        p = nodeB.peer_probes.get("position")
        return p is not None and np.array_equal(p.weight, weight) and nodeB.slot.current[1].get("reason") in (
            "peer_back", "probes changed")

    with TcpProxy(pA) as proxy:
        nodeA = FleetNode(modelA, cfg(pA, []), [agents["probe_path"]], events=events.append)
        nodeB = FleetNode(modelB, cfg(pB, [proxy.port], follow="agentA"), events=events.append)
        with nodeA, nodeB:
            def take_heads() -> None:  # what the frame loop does between frames
                nodeB.slot.take()

            wait_until("B to calibrate through the proxy", lambda: nodeB.postcard is not None)
            proxy.cut()
            wait_until("B to report A lost", lambda: any(e["event"] == "peer_lost" for e in list(events)))
            nodeA.publish_probe(half)  # B cannot receive this
            assert not np.array_equal(nodeB.peer_probes["position"].weight, genuine.weight * 0.5)
            proxy.restore()
            wait_until("B to fetch the missed probe on peer_back", lambda: (take_heads(), b_runs(
                genuine.weight * 0.5))[1])
            assert any(e["event"] == "peer_back" for e in events)
            # a probe change whose message never arrived: only A's card (its digests) says so
            nodeA.add_probe_file(third)
            nodeA._card_probes()
            wait_until("B to fetch the probe its card announces", lambda: (take_heads(), b_runs(
                genuine.weight / 3))[1])
    fetched = [e for e in events if e["event"] == "probes_fetched"]
    assert [e["reason"] for e in fetched][-2:] == ["peer_back", "probes changed"], fetched


def test_a_failed_head_install_keeps_the_old_head_and_the_robot_running(agents, monkeypatch):
    """An upload error while installing a new head (as ort-cuda can raise): counted, old head kept, loop goes on."""
    (pA,) = free_loopback_ports(1)
    events: list[dict] = []
    modelA = load_model(str(agents["agentA"]["onnx"]), "ort-cpu")
    node = FleetNode(modelA, cfg(pA, [], fps=200), [agents["probe_path"]], events=events.append)
    records: list[dict] = []
    stop = threading.Event()
    real_set_head, failures = type(modelA)._set_head, []

    def flaky_set_head(self, head):
        if not failures:
            failures.append(1)
            raise RuntimeError("cudaMemcpy failed: an illegal memory access was encountered")
        return real_set_head(self, head)

    with node:
        t = threading.Thread(target=node.run, args=(ArraySource(sim_frames("top", 64), loop=True),),
                             kwargs={"stop": stop, "on_frame": lambda r, _: records.append(r)}, daemon=True)
        t.start()
        try:
            wait_until("frames on the initial head", lambda: len(records) >= 5)
            version0 = records[-1]["head_version"]
            monkeypatch.setattr(type(modelA), "_set_head", flaky_set_head)
            node.publish_probe(agents["probe_path"])
            wait_until("the failed install to be counted", lambda: node.slot.stats.refused == 1)
            n_failed = len(records)
            wait_until("frames after the failure", lambda: len(records) >= n_failed + 5)
            assert records[-1]["head_version"] == version0 and node.slot.current[1]["reason"] == "initial"
            node.publish_probe(agents["probe_path"])  # the next head installs
            wait_until("the next head to install", lambda: records[-1]["head_version"] > version0)
        finally:
            stop.set()
            t.join(10)
    assert [r["frame"] for r in records] == list(range(len(records)))  # the loop never stopped
    assert "cudaMemcpy failed" in node.slot.stats.refusals[-1].reason and failures == [1]


def test_two_signed_nodes_calibrate_over_mtls(agents, fleet_keys, tmp_path):
    """The whole stack: tls/127.0.0.1 with mTLS (a throwaway CA made here) and signed messages."""
    from tls_certs import make_ca

    from jepa_edge.fleet.transport import TlsConfig

    ca = make_ca(tmp_path, "fleet")
    pA, pB = free_loopback_ports(2)
    events: list[dict] = []

    def tls_cfg(name: str, port: int, peer: int, **kw) -> FleetConfig:
        cert, key = ca.issue(name)
        tls = TlsConfig(root_ca_certificate=str(ca.path), listen_certificate=str(cert), listen_private_key=str(key),
                        connect_certificate=str(cert), connect_private_key=str(key), enable_mtls=True)
        tr = TransportConfig(listen=[f"tls/127.0.0.1:{port}"], connect=[f"tls/127.0.0.1:{peer}"], tls=tls)
        return FleetConfig(fleet="t", world=WORLD, n_anchors=48, transport=tr, key=str(fleet_keys / f"{name}.key"),
                           trusted_keys=str(fleet_keys / "trust.json"), **kw)

    modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
    with FleetNode(modelA, tls_cfg("agentA", pA, pB), [agents["probe_path"]], events=events.append), \
            FleetNode(modelB, tls_cfg("agentB", pB, pA, follow="agentA"), events=events.append) as nodeB:
        wait_until("B to calibrate over mTLS", lambda: any(e["event"] == "head_ready" and e["agent"] == "agentB"
                                                           for e in list(events)))
        assert nodeB.postcard is not None and sum(nodeB.inbox.stats.refused.values()) == 0
        assert "position" in nodeB.peer_probes


def test_two_client_nodes_calibrate_through_a_router(agents):
    """Client mode: neither robot listens; both reach each other only through a Zenoh router."""
    import json as json_

    import zenoh

    (pR,) = free_loopback_ports(1)
    router = zenoh.open(zenoh.Config.from_json5(json_.dumps({
        "mode": "router", "listen": {"endpoints": [f"tcp/127.0.0.1:{pR}"]},
        "scouting": {"multicast": {"enabled": False}}})))
    events: list[dict] = []
    try:
        def client(**kw) -> FleetConfig:
            tr = TransportConfig(mode="client", connect=[f"tcp/127.0.0.1:{pR}"])
            return FleetConfig(fleet="t", world=WORLD, n_anchors=48, transport=tr, **kw)

        modelA, modelB = (load_model(str(agents[n]["onnx"]), "ort-cpu") for n in ("agentA", "agentB"))
        with FleetNode(modelA, client(), [agents["probe_path"]], events=events.append), \
                FleetNode(modelB, client(follow="agentA"), events=events.append) as nodeB:
            wait_until("B to calibrate through the router", lambda: any(
                e["event"] == "head_ready" and e["agent"] == "agentB" for e in list(events)))
            assert [str(z) for z in nodeB._session.info.routers_zid()] == [str(router.info.zid())]
            assert list(nodeB._session.info.peers_zid()) == []  # no direct link: everything went through the router
            assert "position" in nodeB.peer_probes and sum(nodeB.inbox.stats.refused.values()) == 0
    finally:
        router.close()


def test_a_client_with_no_router_fails_in_one_line_instead_of_hanging():
    from jepa_edge.fleet.transport import FleetTransportError, open_session

    (p,) = free_loopback_ports(1)
    t0 = time.time()
    with pytest.raises(FleetTransportError, match=r"no Zenoh router answered .* within 1 s.*start the router first"):
        open_session(TransportConfig(mode="client", connect=[f"tcp/127.0.0.1:{p}"], router_timeout_s=1.0))
    assert time.time() - t0 < 30  # a hang guard, not a timing claim


@pytest.mark.slow
def test_fleet_run_serves_a_live_page_with_the_fleet(agents, tmp_path):
    """`fleet run --serve`: the page's state carries the frame's outputs and the fleet (peers, head, inbox)."""
    import urllib.error
    import urllib.request

    from jepa_edge.fleet.app import run_fleet

    pA, pB = free_loopback_ports(2)
    modelA = load_model(str(agents["agentA"]["onnx"]), "ort-cpu")
    urls: list[str] = []
    result: dict = {}
    nodeA = FleetNode(modelA, cfg(pA, [pB]), [agents["probe_path"]])
    with nodeA:
        t = threading.Thread(target=lambda: result.update(run_fleet(
            agents["agentB"]["onnx"], "sim:oblique?size=16&seed=5", cfg(pB, [pA], follow="agentA", fps=60),
            backend="ort-cpu", max_frames=600, serve="127.0.0.1:0", on_url=urls.append)), daemon=True)
        t.start()
        state: dict = {}

        def page_shows_the_fleet() -> bool:
            if not urls:
                return False
            try:
                with urllib.request.urlopen(urls[0].rstrip("/") + "/state.json", timeout=5) as r:
                    state.update(json.loads(r.read()))
            except urllib.error.HTTPError as exc:  # 503 until the first frame
                assert exc.code == 503, exc
                return False
            fleet = state.get("fleet") or {}
            return "position" in state.get("outputs", {}) and any(p["name"] == "agentA" for p in fleet.get("peers", []))

        try:
            wait_until("the page to show A's probe running on B and A among the peers", page_shows_the_fleet)
        finally:
            t.join(60)
    assert state["fleet"]["agent"] == "agentB" and state["fleet"]["follow"] == "agentA"
    assert state["fleet"]["head_version"] >= 1 and result["frames"] == 600
    (peer,) = [p for p in state["fleet"]["peers"] if p["name"] == "agentA"]
    assert peer["tasks"] == "position" and peer["followed"] and peer["layout_version"] == 0  # A runs no frames here
