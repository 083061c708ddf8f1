"""Nodes per frame of the exported graph, before/after each graph pass (a proxy for kernel launches on a GPU).

    python benchmarks/graph_nodes.py --out benchmarks/results/graph_nodes.json

Exports two untrained agents (random init: node counts do not depend on the
weights) through ``export_agent`` in mode ``encoder_only`` (frames → z; a fused head
adds one Gemm and one Split): the demo agent (``RunConfig()``, 32 px, patch
8, width 64, depth 3) and the ``vit-tiny`` preset (224 px, patch 16, width
192, depth 12, 3 heads). For each, at a dynamic batch and at static batch 1,
the columns are:

* ``original``: the graph as torch.onnx.export writes it (``--no-optimize``);
* ``ort_all``: what ONNX Runtime CPU runs after its own ALL-level optimisation
  of the original (``SessionOptions.optimized_model_filepath``; CPU-specific);
* ``onnxslim``: the default export (``--optimize``: plain ONNX, TensorRT-parsable);
* ``fused``: ``--fuse-transformer``: split-q/k/v trace, ONNX Runtime transformer
  fusions, then onnxslim (com.microsoft ops, ONNX Runtime only);
* ``fused_ort_all``: ONNX Runtime ALL-level optimisation of the fused graph.

``stages`` keeps each export's own per-pass counts (the fused export starts
from its split-q/k/v trace, so its ``original`` differs from the column above).

Every pass is parity-checked by ``export_agent`` itself (a pass that changes
the outputs beyond 1e-5 x scale is dropped and listed under ``dropped``).
Counting only: nothing is timed, so the JSON is the same on any machine with
the same torch / onnxslim / onnxruntime versions (recorded).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from jepa_edge.agents.untrained import save_untrained_run
from jepa_edge.artifacts import atomic_write_json
from jepa_edge.export import OnnxExportConfig, export_agent
from jepa_edge.export.optimize import node_counts, onnxslim_version, ort_optimized_counts
from jepa_edge.machine import machine_info

PRESETS = ("demo", "vit-tiny")
COLUMNS = ("original", "ort_all", "onnxslim", "fused", "fused_ort_all")


def _total(counts: dict[str, int] | None) -> int | None:
    return None if counts is None else sum(counts.values())


def measure(run_dir: Path, out_dir: Path, batch: int) -> dict[str, Any]:
    """Export ``run_dir`` three ways at ``batch`` (0 = dynamic) → node counts per column."""
    variants = {"original": {"optimize": False}, "onnxslim": {"optimize": True},
                "fused": {"optimize": True, "fuse_transformer": True}}
    res = {name: export_agent(run_dir, out_dir / f"b{batch}_{name}.onnx", mode="encoder_only",
                              config=OnnxExportConfig(batch=batch, **cfg)) for name, cfg in variants.items()}
    final = {name: onnx.load(str(r.path)) for name, r in res.items()}
    by_column = {
        "original": node_counts(final["original"]),
        "ort_all": ort_optimized_counts(final["original"]),
        "onnxslim": node_counts(final["onnxslim"]),
        "fused": node_counts(final["fused"]),
        "fused_ort_all": ort_optimized_counts(final["fused"]),
    }
    passes = [p for r in res.values() for p in r.metadata["graph"]["passes"]]
    return {
        "batch": batch or "dynamic",
        "nodes": {k: _total(v) for k, v in by_column.items()},
        "by_op": by_column,
        "stages": {name: {stage: _total(c) for stage, c in r.metadata["graph"]["node_counts"].items()}
                   for name, r in res.items()},
        "passes": {name: r.metadata["graph"]["passes"] for name, r in res.items()},
        "dropped": [p["name"] for p in passes if not p["applied"]],
        "z_parity_vs_pytorch": {name: r.parity.get("z") for name, r in res.items()},
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
        "what": "ONNX graph node counts (encoder only, untrained weights) before/after each graph pass",
        "columns": {c: c for c in COLUMNS} | {
            "ort_all": "ONNX Runtime CPU ALL-level optimised original (optimized_model_filepath)",
            "onnxslim": "default export: onnxslim (FusionGemm skipped), plain ONNX",
            "fused": "split-qkv trace + onnxruntime.transformers fusions (vit, opt_level 0) + onnxslim",
            "fused_ort_all": "ONNX Runtime CPU ALL-level optimised fused graph"},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxslim": onnxslim_version()},
        "machine": machine_info(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
