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

Not a timed test: numbers depend on the machine's load (say so when quoting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from jepa_edge.fleet.transport import free_loopback_ports

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


def run_once(args: argparse.Namespace, paths: dict[str, Path], d: Path, block: bool) -> dict:
    """One A/B session: B's outputs either drop (default) or block on a congested link."""
    from jepa_edge.fleet.moments import AnchorWorld
    from jepa_edge.fleet.node import FleetConfig, FleetNode
    from jepa_edge.fleet.transport import TransportConfig
    from jepa_edge.runtime import load_model
    from jepa_edge.runtime.sources import ArraySource, open_source

    pA, pB = free_loopback_ports(2)
    tag = "block" if block else "drop"
    config = d / f"fleet_{tag}.json"
    config.write_text(json.dumps({"fleet": "bench", "n_anchors": 48, "fps": args.b_fps, "block_on_congestion": block,
                                  "world": {"seed": 1000, "steps": 64, "pool": 64}}))
    events_b = d / f"agentB_{tag}.events.jsonl"
    cmd = [sys.executable, "-m", "jepa_edge.cli", "fleet", "run", str(paths["B"]), "--backend", "ort-cpu",
           "--source", "sim:oblique?size=16&seed=5", "--config", str(config), "--follow", "agentA",
           "--events", str(events_b), "--listen", f"tcp/127.0.0.1:{pB}", "--connect", f"tcp/127.0.0.1:{pA}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log_b = open(d / f"agentB_{tag}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log_b, stderr=log_b, env=env)
    received: list[tuple[float, int]] = []  # (arrival time, B's seq)
    cfg = FleetConfig(fleet="bench", n_anchors=48, fps=30.0, world=AnchorWorld(1000, 64, 64),
                      transport=TransportConfig(listen=[f"tcp/127.0.0.1:{pA}"]))
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
            n0, t0 = len(received), time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                sent.append(node.publish_probe(paths["probe"]))
                time.sleep(args.probe_period)
            n1, t1 = len(received), time.perf_counter()
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
        "outputs_on_congestion": tag,
        "publish_to_applied_ms": {"n": len(latency_ms), "sent": len(sent), "p50": pct(latency_ms, 50),
                                  "p99": pct(latency_ms, 99), "max": max(latency_ms) if latency_ms else None},
        "outputs": {"received_in_window": len(seqs), "window_s": round(t1 - t0, 3),
                    "rate_per_s": len(seqs) / (t1 - t0),
                    "lost_in_window": int(seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else None,
                    "refused_by_inbox_total": len(refusals),
                    "refusal_reasons": sorted({r[2][:100] for r in refusals})},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window after B attached")
    ap.add_argument("--probe-period", type=float, default=0.2, help="A republishes its probe this often")
    ap.add_argument("--b-fps", type=float, default=0.0, help="B's frame rate (0 = unpaced, as fast as it goes)")
    ap.add_argument("--modes", nargs="+", default=["drop", "block"], choices=["drop", "block"],
                    help="B's outputs on a congested link: drop (default config) and/or block")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="fleet_bench_"))
    paths = make_agents(d)
    runs = [run_once(args, paths, d, mode == "block") for mode in args.modes]
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared, loaded machine (other jobs running): numbers are indicative only"},
        "runs": runs,
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
