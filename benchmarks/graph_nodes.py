"""Nodes per frame of the exported graph, before/after each graph pass (a proxy for kernel launches on a GPU).

    python benchmarks/graph_nodes.py --out benchmarks/results/graph_nodes.json

Exports two untrained agents (random init: node counts do not depend on the
weights) through ``export_agent`` in mode ``bare`` (frames → z; a fused head
adds one Gemm and one Split): the demo agent (``RunConfig()``, 32 px, patch
8, width 64, depth 3) and the ``vit-tiny`` preset (224 px, patch 16, width
192, depth 12, 3 heads). For each, at a dynamic batch and at static batch 1,
the columns are:

* ``original``: the graph as torch.onnx.export writes it (``--no-optimize``);
* ``ort_all``: what ONNX Runtime CPU runs after its own ALL-level optimisation
  of the original (``SessionOptions.optimized_model_filepath``; CPU-specific);
* ``onnxslim``: after ``jepa_edge.export.optimize.slim`` (plain ONNX, TensorRT-parsable);
* ``fused``: + ONNX Runtime transformer fusions (com.microsoft ops, ORT only);
* ``fused_ort_all``: ONNX Runtime ALL-level optimisation of the fused graph.

Every pass is parity-checked by ``export_agent`` itself (a pass that changes
the outputs beyond 1e-5 x scale is dropped and listed under ``dropped``).
Counting only: nothing is timed, so the JSON is the same on any machine with
the same torch / onnxslim / onnxruntime versions (recorded).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from jepa_edge.export import OnnxExportConfig, export_agent
from jepa_edge.export.optimize import onnxslim_version, ort_optimized_counts
from jepa_edge.train.untrained import save_untrained_run
from jepa_edge.world.record import write_json_atomic

PRESETS = ("demo", "vit-tiny")
COLUMNS = ("original", "ort_all", "onnxslim", "fused", "fused_ort_all")


def _total(counts: dict[str, int] | None) -> int | None:
    return None if counts is None else sum(counts.values())


def measure(run_dir: Path, out_dir: Path, batch: int) -> dict[str, Any]:
    """Export ``run_dir`` unoptimised and optimised+fused at ``batch`` (0 = dynamic) → counts per stage."""
    tag = f"b{batch}"
    plain = export_agent(run_dir, out_dir / f"{tag}_original.onnx", mode="bare",
                         config=OnnxExportConfig(batch=batch, optimize=False))
    fused = export_agent(run_dir, out_dir / f"{tag}_fused.onnx", mode="bare",
                         config=OnnxExportConfig(batch=batch, optimize=True, fuse_transformer=True))
    graph = fused.metadata["graph"]
    by_stage = {
        "original": graph["node_counts"]["original"],
        "ort_all": ort_optimized_counts(onnx.load(str(plain.path))),
        "onnxslim": graph["node_counts"].get("onnxslim"),
        "fused": graph["node_counts"].get("transformer_fusion"),
        "fused_ort_all": ort_optimized_counts(onnx.load(str(fused.path))),
    }
    return {
        "batch": batch or "dynamic",
        "nodes": {k: _total(v) for k, v in by_stage.items()},
        "by_op": by_stage,
        "passes": graph["passes"],
        "dropped": [p["name"] for p in graph["passes"] if not p["applied"]],
        "z_parity_vs_pytorch": fused.parity.get("z"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/graph_nodes.json"))
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--batches", nargs="+", type=int, default=[0, 1], help="0 = dynamic batch axis")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jepa-edge-graph-nodes-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        for preset in args.presets:
            run_dir = Path(tmp) / preset
            save_untrained_run(run_dir, preset, seed=0)
            for batch in args.batches:
                row = {"preset": preset, **measure(run_dir, Path(tmp), batch)}
                rows.append(row)
    print(f"{'preset':10s} {'batch':>7s} " + " ".join(f"{c:>13s}" for c in COLUMNS))
    for r in rows:
        print(f"{r['preset']:10s} {r['batch']!s:>7s} " + " ".join(f"{r['nodes'][c]!s:>13s}" for c in COLUMNS)
              + (f"  dropped: {r['dropped']}" if r["dropped"] else ""))
    report = {
        "what": "ONNX graph node counts (bare encoder, untrained weights) before/after each graph pass",
        "columns": {c: c for c in COLUMNS} | {
            "ort_all": "ONNX Runtime CPU ALL-level optimised original (optimized_model_filepath)",
            "fused": "onnxslim + onnxruntime.transformers fusions (model_type vit, opt_level 0)",
            "fused_ort_all": "ONNX Runtime CPU ALL-level optimised fused graph"},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxslim": onnxslim_version(), "python": platform.python_version()},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
