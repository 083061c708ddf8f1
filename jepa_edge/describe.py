"""``jepa-edge inspect``: what a file is, which agent it belongs to, and how it was made (torch-free).

``describe(path)`` returns one JSON-able dict (``kind`` first); ``describe_lines`` renders it for a terminal.
Kinds: postcard (W between two agents), probe, run (an agent's folder), recording (folder, ROS 2 bag or MCAP),
onnx (an exported model: mode, agent, input, outputs with their labels, precision), engine (a TensorRT engine's sidecar).
Every file is read with the same checks the commands use, so a corrupt file is refused here as it is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jepa_edge.artifacts import jsonable, read_json_capped
from jepa_edge.calib.postcard import POSTCARD_SUFFIX
from jepa_edge.calib.probes import PROBE_SUFFIX

KINDS = ("postcard", "probe", "run", "recording", "onnx", "engine")


def _agent(a: dict[str, Any]) -> str:
    fp = str(a.get("fingerprint", ""))[:12]
    return f"{a.get('name', '?')} (view {a.get('view', '?')}, D={a.get('latent_dim', '?')}, fingerprint {fp}…)"


def kind_of(path: Path) -> str:
    """Which kind ``path`` is, from its name and (for folders) what it holds."""
    name = path.name.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        if (path / "meta.json").is_file() and (path / "encoder.safetensors").exists():
            return "run"
        if (path / "recording.json").is_file() or (path / "metadata.yaml").is_file():
            return "recording"
    elif name.endswith(POSTCARD_SUFFIX):
        return "postcard"
    elif name.endswith(PROBE_SUFFIX):
        return "probe"
    elif name.endswith(".onnx"):
        return "onnx"
    elif name.endswith((".engine", ".engine.json")):
        return "engine"
    elif name.endswith(".mcap"):
        return "recording"
    raise ValueError(f"{path}: not a file jepa-edge describes; pass a *.postcard.safetensors, *.probe.safetensors, "
                     "run folder, recording (folder, bag or .mcap), .onnx model or .engine")


def describe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    kind = kind_of(path)
    return {"kind": kind, "path": str(path), **_DESCRIBE[kind](path)}


def _postcard(path: Path) -> dict[str, Any]:
    from jepa_edge.calib import load_postcard

    pc = load_postcard(path)
    return {"name": pc.name, "from": jsonable(pc.source), "to": jsonable(pc.target), "W_shape": list(pc.weight.shape),
            "estimator": pc.estimator, "anchors": pc.n_anchors, "metrics": jsonable(pc.metrics)}


def _probe(path: Path) -> dict[str, Any]:
    from jepa_edge.calib import load_probe

    p = load_probe(path)
    return {"name": p.name, "task": p.task, "agent": jsonable(p.agent), "outputs": list(p.labels),
            "weight_shape": list(p.weight.shape), "metrics": jsonable(p.metrics)}


def _run(path: Path) -> dict[str, Any]:
    meta = read_json_capped(path / "meta.json", "agent meta.json", "re-train the agent (jepa-edge train)")
    enc = meta.get("encoder", {})
    state = path / "train_state.json"
    return {"name": meta.get("name"), "view": meta.get("view"), "fingerprint": meta.get("fingerprint"),
            "step": meta.get("step"), "data": meta.get("data_source"),
            "encoder": {k: enc.get(k) for k in ("img_size", "patch_size", "embed_dim", "depth", "latent_dim")},
            "heldout": meta.get("metrics", {}), "untrained": meta.get("untrained_metrics", {}),
            "resumable": state.is_file()}


def _recording(path: Path) -> dict[str, Any]:
    from jepa_edge.world.dataset import load_recording

    return recording_info(load_recording(path))


def recording_info(rec: Any) -> dict[str, Any]:
    """What a loaded ``world.dataset.Recording`` holds (``inspect`` and ``world info``)."""
    return {"views": list(rec.views), "episodes": rec.n_episodes, "episode_len": rec.n_steps,
            "states": rec.states is not None, "world": rec.world_kind if rec.states is not None else None,
            "topics": rec.meta.get("topics") or {}}


def _onnx(path: Path) -> dict[str, Any]:
    from jepa_edge.runtime.backend_ort import import_ort
    from jepa_edge.runtime.meta import METADATA_KEY, parse_meta

    ort = import_ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]}); "
                         "re-export it with jepa-edge export") from exc
    meta = parse_meta(sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY), str(path))
    return {"mode": meta.mode.replace("_", "-"), "agent": {"name": meta.agent_name, "view": meta.agent_view,
                                                           "fingerprint": meta.agent_fingerprint,
                                                           "latent_dim": meta.latent_dim},
            "input": {"frames": next(i.shape for i in sess.get_inputs() if i.name == "frames"),
                      "height": meta.height, "width": meta.width},
            "outputs": [{"name": o.name, "kind": o.kind, "columns": list(o.labels)} for o in meta.head_outputs],
            "graph_outputs": [o.name for o in sess.get_outputs()],
            "precision": str(meta.raw.get("precision", "fp32"))}  # models exported before fp16 existed are fp32


def _engine(path: Path) -> dict[str, Any]:
    from jepa_edge.runtime.backend_trt import read_sidecar

    engine = path.with_suffix("") if path.name.endswith(".engine.json") else path
    side = read_sidecar(engine)
    return {"engine_exists": engine.is_file(), "precision": side.get("precision"), "tf32": side.get("tf32"),
            "onnx": side.get("onnx"), "tensorrt": side.get("tensorrt"), "profile": side.get("profile")}


_DESCRIBE = {"postcard": _postcard, "probe": _probe, "run": _run, "recording": _recording, "onnx": _onnx,
             "engine": _engine}


def describe_lines(info: dict[str, Any]) -> list[str]:
    """A few readable lines per kind (``--json`` prints everything)."""
    kind, path = info["kind"], info["path"]
    if kind == "postcard":
        m = info["metrics"]
        return [(f"{path}: postcard {info['name']!r}, W {info['W_shape'][0]}x{info['W_shape'][1]} "
                f"({info['estimator']}, {info['anchors']} anchors)"),
                f"  from {_agent(info['from'])}", f"  to   {_agent(info['to'])}",
                *([f"  held-out: {_fmt(m)}"] if m else [])]
    if kind == "probe":
        cols = info["outputs"]
        shown = ", ".join(cols[:8]) + (f", … ({len(cols)} in all)" if len(cols) > 8 else "")
        return [f"{path}: probe {info['name']!r} ({info['task']}) on {_agent(info['agent'])}",
                f"  outputs: {shown}", *([f"  metrics: {_fmt(info['metrics'])}"] if info["metrics"] else [])]
    if kind == "run":
        e = info["encoder"]
        return [(f"{path}: agent {info['name']!r}, view {info['view']}, step {info['step']}, "
                f"fingerprint {str(info['fingerprint'])[:12]}…"),
                (f"  encoder: {e['img_size']} px, patch {e['patch_size']}, width {e['embed_dim']}, depth {e['depth']}, "
                f"D={e['latent_dim']}; data: {info['data']}"),
                f"  held-out: {_fmt(info['heldout'])}", f"  untrained control: {_fmt(info['untrained'])}"]
    if kind == "recording":
        return [(f"{path}: recording, views {info['views']}, {info['episodes']} episode(s) x {info['episode_len']} "
                f"steps, states {'yes' if info['states'] else 'no'}" + (f", {info['world']} world" if info["world"]
                                                                         else ""))]
    if kind == "onnx":
        a = info["agent"]
        outs = [f"{o['name']} ({o['kind']}" + (f": {', '.join(o['columns'][:6])}{', …' if len(o['columns']) > 6 else ''}"
                                               if o["columns"] else "") + ")" for o in info["outputs"]]
        return [(f"{path}: {info['mode']} model of agent {a['name']!r} (view {a['view']}, D={a['latent_dim']}), "
                f"input frames {info['input']['frames']}"),
                "  outputs: " + ("; ".join(outs) if outs else "z only (encoder-only: run with --emit-latent, "
                                 "or give --probe/--postcard)"),
                "  precision: " + ("fp16 (encoder; head, input and outputs fp32)" if info["precision"] == "fp16"
                                   else info["precision"])]
    return [(f"{path}: TensorRT engine sidecar, precision {info['precision']}, tf32 {info['tf32']}, "
            f"engine file {'present' if info['engine_exists'] else 'MISSING'}"),
            f"  built from {info['onnx'].get('path') if isinstance(info['onnx'], dict) else info['onnx']}"]


def _fmt(metrics: dict[str, Any]) -> str:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("online_")}
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in flat.items()) or "-"
