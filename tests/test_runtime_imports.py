"""The runtime must run on a Jetson without torch: importing it (and what it loads) never pulls torch in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

RUNTIME_MODULES = [
    "jepa_edge.runtime", "jepa_edge.runtime.backends", "jepa_edge.runtime.backend_ort",
    "jepa_edge.runtime.backend_trt", "jepa_edge.runtime.sources", "jepa_edge.runtime.capture",
    "jepa_edge.runtime.headswap", "jepa_edge.runtime.pipeline", "jepa_edge.runtime.bench",
    "jepa_edge.runtime.stats", "jepa_edge.runtime.meta", "jepa_edge.runtime.model",
    # imported lazily by the runtime: the head watcher, the simulator source, the encoder-only cut
    "jepa_edge.calib.head", "jepa_edge.calib.postcard", "jepa_edge.calib.probes", "jepa_edge.world", "onnx",
]


def test_runtime_imports_leave_torch_out():
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {RUNTIME_MODULES!r}:
            importlib.import_module(name)
        heavy = sorted(m for m in ("torch", "tensorrt", "torchvision") if m in sys.modules)
        print(",".join(heavy))
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing the runtime pulled in: {proc.stdout.strip()}"
