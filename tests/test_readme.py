"""The README as a user meets it: short, its first lines give the two make targets, and its quick start runs as
written (the fenced block under "## Quick start", through bash, with the `jepa-edge` command on PATH)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quick_start() -> str:
    """The first ```bash block after the "## Quick start" heading, verbatim."""
    text = README.read_text()
    section = re.search(r"^## Quick start.*?^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert section, 'README.md has no ```bash block under a "## Quick start" heading'
    return section.group(1)


def test_readme_is_a_short_guide_that_starts_with_make_demo_and_make_test():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"
    first = "\n".join(lines[:6])
    assert "make demo" in first and "make test" in first
    text = "\n".join(lines)
    assert not re.search(r"\bissue \d|\blever \d", text, re.IGNORECASE), "README.md names an issue or a lever"
    for link in re.findall(r"\]\(((?:docs/)?[A-Z]+\.md)\)", text):
        assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"


def _command_dir(tmp_path: Path) -> Path:
    """A folder whose `jepa-edge` is this interpreter's: the console script beside it, else `python -m`."""
    script = Path(sys.executable).parent / "jepa-edge"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "jepa-edge"
    target = f'"{script}"' if script.is_file() else f'"{sys.executable}" -m jepa_edge.cli'
    shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path):
    block = quick_start()
    assert "jepa-edge reproduce --preset quick" in block
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_command_dir(tmp_path)), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this tree's package
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True, check=False,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"quick start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = (work / "quick" / "report.md").read_text()
    assert "the agents are undertrained" in "\n".join(report.splitlines()[:4])  # said before any number
    for png in ("anchor_sweep.png", "controls.png", "pca.png"):
        assert (work / "quick" / png).stat().st_size > 0
    frames = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]
    frames = [f for f in frames if "outputs" in f]
    assert len(frames) == 5  # agent A's position probe on B's frames: x and y of each of the 3 objects
    assert all(sum(name.startswith("position.") for name in f["outputs"]) == 6 for f in frames)
