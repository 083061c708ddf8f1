"""The runtime must run on a Jetson without torch: importing it (and what it loads) never pulls torch in.

Also the layout rules: ``runtime/``, ``calib/`` and ``artifacts.py`` never import torch nor ``jepa_edge.study``
(experiments), and ``artifacts.py`` is the one module that renames files into place.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

RUNTIME_MODULES = [
    "jepa_edge.runtime", "jepa_edge.runtime.backends", "jepa_edge.runtime.backend_ort",
    "jepa_edge.runtime.backend_trt", "jepa_edge.runtime.sources", "jepa_edge.runtime.capture",
    "jepa_edge.runtime.headswap", "jepa_edge.runtime.pipeline", "jepa_edge.runtime.bench",
    "jepa_edge.runtime.stats", "jepa_edge.runtime.meta", "jepa_edge.runtime.model",
    # imported lazily by the runtime: the head watcher, the simulator source, the encoder-only cut
    "jepa_edge.calib.head", "jepa_edge.calib.postcard", "jepa_edge.calib.probes", "jepa_edge.world", "onnx",
    # artifact I/O shared by everything, and the whole numpy calibration package
    "jepa_edge.artifacts", "jepa_edge.calib", "jepa_edge.calib.fit", "jepa_edge.calib.metrics",
    "jepa_edge.calib.fingerprint", "jepa_edge.video",
]
PACKAGE = Path(__file__).resolve().parents[1] / "jepa_edge"
TORCH_FREE = [PACKAGE / "artifacts.py", PACKAGE / "video.py", *sorted((PACKAGE / "runtime").glob("*.py")),
              *sorted((PACKAGE / "calib").glob("*.py"))]


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


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_torch_free_modules_import_neither_torch_nor_study_even_lazily():
    bad = {}
    for path in TORCH_FREE:
        hits = sorted(m for m in _imported_modules(path)
                      if m.split(".")[0] == "torch" or m == "jepa_edge.study" or m.startswith("jepa_edge.study."))
        if hits:
            bad[str(path.relative_to(PACKAGE.parent))] = hits
    assert not bad, f"torch-free modules import torch or jepa_edge.study: {bad}"


def test_fleet_never_imports_the_study():
    bad = {str(p.relative_to(PACKAGE.parent)): hits for p in sorted((PACKAGE / "fleet").glob("*.py"))
           if (hits := sorted(m for m in _imported_modules(p) if m.startswith("jepa_edge.study")))}
    assert not bad, f"fleet modules import jepa_edge.study (experiments): {bad}"


RENAMERS = ("replace", "rename", "mkstemp", "NamedTemporaryFile")


def test_artifacts_is_the_one_module_that_renames_files_into_place():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "artifacts.py" and path.parent == PACKAGE:
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value.id}.{node.attr}"
                      for node in ast.walk(ast.parse(path.read_text(), str(path)))
                      if isinstance(node, ast.Attribute) and node.attr in RENAMERS
                      and isinstance(node.value, ast.Name) and node.value.id in ("os", "tempfile")]
    assert not offenders, f"write artifacts with jepa_edge.artifacts instead: {offenders}"
