"""Fleet over Zenoh on loopback: publish → head-applied latency, and the outputs stream rate.

    python benchmarks/fleet_bench.py --out benchmarks/results/fleet_bench.json

Two processes, peer mode, tcp/127.0.0.1: this script is robot A (a tiny
fixture agent, ``tests/onnx_fixtures.py``, 16 px, D=8, head_inputs ONNX) and
starts robot B (``jepa-edge fleet run --follow agentA``, another view) as a
subprocess. B calibrates W from A's anchor latents, then runs its frame loop
unpaced (as fast as the tiny model goes), publishing one outputs message per
frame. A then

* republishes its position probe every ``--probe-period`` s: B receives it,
  rebuilds the fused head and installs it at its next frame; B's event log
  gives ``head_applied.t - probe sent_t`` (same machine clock): the latency;
* receives B's outputs through its Inbox (every check applied) and counts
  them: rate over the measured window, and messages lost (gaps in B's
  sequence numbers) or refused.

``--signing off on`` runs each congestion mode unsigned and signed (A and B
each with its own Ed25519 key, one trusted-keys file listing both: every
message either receives must be signed). ``sign_cost`` is a separate
in-process micro-measurement of the per-message crypto: Ed25519 sign/verify
of a bench-sized outputs message and of a card envelope and a 16 KB probe
envelope (sha256 of the payload included), and ``Inbox.accept("outputs")``
unsigned vs signed.

Not a timed test: numbers depend on the machine's load (say so when quoting).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from jepa_edge.fleet.transport import free_loopback_ports
from jepa_edge.machine import dist_version, load_average, machine_info

ROOT = Path(__file__).resolve().parents[1]


def make_agents(d: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_fixtures import make_encoder, make_model

    from jepa_edge.calib.probes import ProbeConfig, fit_probe, save_probe
    from jepa_edge.fleet.moments import AnchorWorld, moment_frames, moment_positions

    a = make_encoder(16, 16, 8, seed=11, name="agentA", view="top")
    b = make_encoder(16, 16, 8, seed=12, name="agentB", view="oblique")
    world = AnchorWorld(seed=7, steps=64, pool=256)
    z = a.z(moment_frames(world, "top", 16, range(256)))
    probe = fit_probe(z, moment_positions(world, range(256)), "regression", "position", a.agent,
                      ProbeConfig(alphas=(1.0,)))
    save_probe(d / "position.probe.safetensors", probe)
    return {"A": make_model(d / "agentA.onnx", a, "head_inputs"), "B": make_model(d / "agentB.onnx", b, "head_inputs"),
            "probe": d / "position.probe.safetensors"}


def pct(x: list[float], q: float) -> float | None:
    return float(np.percentile(x, q)) if x else None


def make_keys(d: Path) -> dict[str, Path]:
    """A's and B's private keys (0600) and one trusted-keys file listing both."""
    from jepa_edge.fleet.keys import Signer, add_trusted, write_private_key

    paths = {"trust": d / "trusted_keys.json"}
    for agent in ("agentA", "agentB"):
        signer = Signer.generate()
        paths[agent] = d / f"{agent}.key"
        write_private_key(paths[agent], signer, overwrite=True)
        add_trusted(paths["trust"], agent, signer)
    return paths


def run_once(args: argparse.Namespace, paths: dict[str, Path], d: Path, block: bool,
             keys: dict[str, Path] | None = None) -> dict:
    """One A/B session: B's outputs either drop (default) or block on a congested link; signed when ``keys``."""
    from jepa_edge.fleet.moments import AnchorWorld
    from jepa_edge.fleet.node import FleetConfig, FleetNode
    from jepa_edge.fleet.transport import TransportConfig
    from jepa_edge.runtime import load_model
    from jepa_edge.runtime.sources import ArraySource, open_source

    pA, pB = free_loopback_ports(2)
    mode = "block" if block else "drop"
    tag = f"{mode}_{'signed' if keys else 'unsigned'}"
    config = d / f"fleet_{tag}.json"
    config.write_text(json.dumps({"fleet": "bench", "n_anchors": 48, "fps": args.b_fps, "block_on_congestion": block,
                                  "world": {"seed": 1000, "steps": 64, "pool": 64}}))
    events_b = d / f"agentB_{tag}.events.jsonl"
    cmd = [sys.executable, "-m", "jepa_edge.cli", "fleet", "run", str(paths["B"]), "--backend", "ort-cpu",
           "--source", "sim:oblique?size=16&seed=5", "--config", str(config), "--follow", "agentA",
           "--events", str(events_b), "--listen", f"tcp/127.0.0.1:{pB}", "--connect", f"tcp/127.0.0.1:{pA}"]
    if keys:
        cmd += ["--key", str(keys["agentB"]), "--trusted-keys", str(keys["trust"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}  # prepended: zenoh may live on PYTHONPATH outside site-packages
    log_b = open(d / f"agentB_{tag}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log_b, stderr=log_b, env=env)
    received: list[tuple[float, int]] = []  # (arrival time, B's seq)
    cfg = FleetConfig(fleet="bench", n_anchors=48, fps=30.0, world=AnchorWorld(1000, 64, 64),
                      transport=TransportConfig(listen=[f"tcp/127.0.0.1:{pA}"]),
                      key=str(keys["agentA"]) if keys else "", trusted_keys=str(keys["trust"]) if keys else "")
    model = load_model(str(paths["A"]), "ort-cpu")
    src = open_source("sim:top?size=16&seed=5&frames=64")
    frames = np.stack([src.read() for _ in range(64)])  # (64, 16, 16, 3)
    stop = threading.Event()
    sent: list[float] = []
    try:
        with FleetNode(model, cfg, [paths["probe"]]) as node:
            node.watch_outputs("agentB", lambda got: received.append((time.perf_counter(), got.value.seq)))
            loop = threading.Thread(target=node.run, args=(ArraySource(frames, loop=True),), kwargs={"stop": stop},
                                    daemon=True)
            loop.start()
            deadline = time.time() + 60
            while time.time() < deadline and not (events_b.exists() and '"attached"' in events_b.read_text()):
                time.sleep(0.1)
            if not events_b.exists() or '"attached"' not in events_b.read_text():
                raise RuntimeError(f"B did not attach within 60 s; see {d / f'agentB_{tag}.log'}")
            time.sleep(1.0)  # let B's loop settle on the calibrated head
            n0, t0, r0 = len(received), time.perf_counter(), node.inbox.stats.refused["outputs"]
            while time.perf_counter() - t0 < args.seconds:
                sent.append(node.publish_probe(paths["probe"]))
                time.sleep(args.probe_period)
            n1, t1, r1 = len(received), time.perf_counter(), node.inbox.stats.refused["outputs"]
            time.sleep(0.5)
            stop.set()
            loop.join(5)
            refusals = [r for r in node.inbox.stats.refusals if r[0] == "outputs"]
    finally:
        proc.terminate()
        proc.wait(10)
        log_b.close()
        model.close()
    events = [json.loads(x) for x in events_b.read_text().splitlines() if x.strip()]
    applied = {e["sent_t"]: e["t"] for e in events if e["event"] == "head_applied" and e.get("reason") == "probe"}
    latency_ms = [1e3 * (applied[t] - t) for t in sent if t in applied]
    seqs = [s for _, s in received[n0:n1]]
    return {
        "signing": "on" if keys else "off",
        "outputs_on_congestion": mode,
        "publish_to_applied_ms": {"n": len(latency_ms), "sent": len(sent), "p50": pct(latency_ms, 50),
                                  "p99": pct(latency_ms, 99), "max": max(latency_ms) if latency_ms else None},
        "outputs": {"received_in_window": len(seqs), "window_s": round(t1 - t0, 3),
                    "rate_per_s": len(seqs) / (t1 - t0),
                    "lost_in_window": int(seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else None,
                    "refused_in_window": r1 - r0,
                    "refused_by_inbox_total": len(refusals),  # whole session, B's start included
                    "refusal_reasons": sorted({r[2][:100] for r in refusals})},
    }


def _us(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, np.float64) / 1e3  # (n,) µs
    return {"median_us": round(float(np.median(a)), 2), "p99_us": round(float(np.percentile(a, 99)), 2)}


WARMUP = 100


def _timed(fn, n: int) -> dict[str, float]:
    """Median and p99 µs of ``fn(i)`` over ``n`` calls, each timed alone, after ``WARMUP`` untimed calls
    (``i`` runs over 0 .. WARMUP + n - 1 once: a call may consume its own i-th message)."""
    for i in range(WARMUP):
        fn(i)
    ns = []
    clock = time.perf_counter_ns
    for i in range(WARMUP, WARMUP + n):
        t0 = clock()
        fn(i)
        ns.append(clock() - t0)
    return _us(ns)


OUTPUT_VALUES = 14  # float32 values per outputs message of this bench's B (its card layout)


def sign_cost(d: Path, n: int = 5000, k: int = OUTPUT_VALUES) -> dict:
    """Per-message crypto cost, in process, one thread: Ed25519 sign/verify and Inbox.accept("outputs")."""
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_fixtures import make_encoder

    from jepa_edge.fleet import AgentCard, Envelope, Inbox, InboxConfig, Outputs
    from jepa_edge.fleet.keys import Signer, add_trusted, load_trust
    from jepa_edge.fleet.messages import fp8_of, outputs_signing_bytes

    signer = Signer.generate()
    add_trusted(d / "sign_cost_trusted_keys.json", "agentB", signer)
    trust = load_trust(d / "sign_cost_trusted_keys.json")
    agent = make_encoder(16, 16, 8, seed=12, name="agentB", view="oblique").agent
    fleet, now = "bench", 1_700_000_000.0
    epoch = int((now - 60) * 1e9)
    layout = {"version": 1, "outputs": [{"name": "position", "start": 0, "stop": k, "kind": "regression",
                                         "labels": [f"v{i}" for i in range(k)]}]}
    card = AgentCard(agent, "jepa-edge bench", (16, 16), {"seed": 1000, "steps": 64, "pool": 64}, [], layout)
    values = np.linspace(-1, 1, k, dtype=np.float32)  # (k,)

    def outputs(seq: int) -> Outputs:
        return Outputs(fp8_of(agent.fingerprint), epoch, seq, seq, now - 0.01, 1, values)

    body = outputs(1).encode()  # header + 6 float32: what the signature covers
    msg_out = outputs_signing_bytes(fleet, "agentB", body)
    sig_out = signer.sign(msg_out)
    card_payload = card.encode()
    probe_payload = np.random.default_rng(0).bytes(16 * 1024)
    env = Envelope(fleet, "card", "agentB", agent.fingerprint, epoch, 1, now - 0.01)
    env_probe = Envelope(fleet, "probe", "agentB", agent.fingerprint, epoch, 1, now - 0.01)
    card_env = env.signed(card_payload, signer)
    probe_env = env_probe.signed(probe_payload, signer)
    card_sig, probe_sig = bytes.fromhex(card_env.sig), bytes.fromhex(probe_env.sig)

    out: dict = {
        "iterations": n, "output_values": k,
        "sizes_bytes": {"outputs_body": len(body), "outputs_signed_message": len(outputs(1).encode(signer, fleet,
                                                                                                   "agentB")),
                        "outputs_signing_bytes": len(msg_out), "card_payload": len(card_payload),
                        "card_envelope_signed": len(card_env.encode()), "probe_payload": len(probe_payload)},
        "outputs": {
            "sign": _timed(lambda i: signer.sign(msg_out), n),
            "verify": _timed(lambda i: trust.verify(signer.kid, "agentB", "outputs", msg_out, sig_out), n),
            "encode_unsigned": _timed(lambda i: outputs(i).encode(), n),
            "encode_signed": _timed(lambda i: outputs(i).encode(signer, fleet, "agentB"), n),
        },
        "card_envelope": {  # signing_bytes (canonical JSON + sha256 of the card payload) included
            "sign": _timed(lambda i: env.signed(card_payload, signer), n),
            "verify": _timed(lambda i: trust.verify(signer.kid, "agentB", "card", card_env.signing_bytes(card_payload),
                                                    card_sig), n),
        },
        "probe_envelope_16k": {  # sha256 of the 16 KB payload included
            "sha256_only": _timed(lambda i: hashlib.sha256(probe_payload).digest(), n),
            "sign": _timed(lambda i: env_probe.signed(probe_payload, signer), n),
            "verify": _timed(lambda i: trust.verify(signer.kid, "agentB", "probe",
                                                    probe_env.signing_bytes(probe_payload), probe_sig), n),
        },
    }
    accept: dict = {}
    for name, st, sgn in (("unsigned", None, None), ("signed", trust, signer)):
        box = Inbox(fleet, config=InboxConfig(keep_refusals=10), clock=lambda: now, trust=st)
        card_att = (env.signed(card_payload, sgn) if sgn else env).encode()
        assert box.accept("card", "agentB", card_payload, card_att) is not None
        msgs = [outputs(i + 1).encode(sgn, fleet, "agentB") for i in range(WARMUP + n)]  # increasing seqs
        accept[name] = _timed(lambda i, msgs=msgs, box=box: box.accept("outputs", "agentB", msgs[i]), n)
        if box.stats.refused["outputs"]:
            raise RuntimeError(f"sign_cost: {name} outputs refused: {list(box.stats.refusals)[:2]}")
    accept["signed_minus_unsigned_us"] = round(accept["signed"]["median_us"] - accept["unsigned"]["median_us"], 2)
    out["inbox_accept_outputs"] = accept
    out["outputs_verify_per_s_one_core"] = round(1e6 / out["outputs"]["verify"]["median_us"])
    out["outputs_signed_accept_per_s_one_core"] = round(1e6 / accept["signed"]["median_us"])
    return out


def machine() -> dict:
    """The machine (jepa_edge.machine: its load_avg is the one at the start) and the fleet's library versions."""
    return {**machine_info(), **{dist: dist_version(dist) for dist in ("eclipse-zenoh", "cryptography")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window after B attached")
    ap.add_argument("--probe-period", type=float, default=0.2, help="A republishes its probe this often")
    ap.add_argument("--b-fps", type=float, default=0.0, help="B's frame rate (0 = unpaced, as fast as it goes)")
    ap.add_argument("--modes", nargs="+", default=["drop", "block"], choices=["drop", "block"],
                    help="B's outputs on a congested link: drop (default config) and/or block")
    ap.add_argument("--signing", nargs="+", default=["off", "on"], choices=["off", "on"],
                    help="run each mode unsigned (off) and/or signed (on: Ed25519 keys, trusted-keys file)")
    ap.add_argument("--sign-iterations", type=int, default=5000, help="iterations of each sign_cost measurement")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    info = machine()
    d = Path(tempfile.mkdtemp(prefix="fleet_bench_"))
    paths = make_agents(d)
    keys = make_keys(d) if "on" in args.signing else None
    cost = sign_cost(d, args.sign_iterations)
    runs = [run_once(args, paths, d, mode == "block", keys if signing == "on" else None)
            for mode in args.modes for signing in args.signing]
    info.update(load_avg_end=load_average(),
                note="shared machine (other jobs may be running): see load_avg; numbers are indicative only")
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "sign_cost": cost,
        "runs": runs,
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
