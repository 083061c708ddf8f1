"""The benchmark scripts (benchmarks/*.py) as modules, and their main() run in this process.

In-process because a subprocess spends seconds importing torch again; tests that need a clean
environment (no GPU visible) still run the script as a subprocess.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, monkeypatch) -> ModuleType:
    """benchmarks/NAME.py as the module NAME (registered in sys.modules: dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, args: list[str], monkeypatch) -> None:
    """benchmarks/NAME.py's main() with ``args`` as its command line; torch's thread count is restored after."""
    import torch

    script = load_script(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    threads = torch.get_num_threads()
    try:
        script.main()
    finally:
        torch.set_num_threads(threads)  # the scripts pin their own thread count
