"""Latency statistics, memory readings, drift and the machine a benchmark ran on (numpy only).

Samples are kept exactly (an ``array('d')`` grows in O(1) per append, 8 bytes
per sample: a day at 30 FPS is ~20 MB), so percentiles are exact, not
histogram estimates. ``machine_info`` records what a number means: CPU model
and cores, GPU name and driver (``nvidia-smi``, "none" without one) and the
ONNX Runtime build.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


def percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default method), ``q`` in [0, 100]."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    if v.size == 0:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} is outside [0, 100]")
    pos = (v.size - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


@dataclass
class LatencySummary:
    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ms: np.ndarray | list[float]) -> LatencySummary:
    v = np.asarray(samples_ms, np.float64).ravel()
    if v.size == 0:
        return LatencySummary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return LatencySummary(
        n=int(v.size),
        mean_ms=float(v.mean()),
        p50_ms=percentile(v, 50),
        p90_ms=percentile(v, 90),
        p99_ms=percentile(v, 99),
        max_ms=float(v.max()),
    )


@dataclass
class Drift:
    first_p50_ms: float  # median of the first `fraction` of samples
    last_p50_ms: float  # median of the last `fraction` of samples
    ratio: float  # last / first: > 1 means the run got slower (thermal throttling, leaks)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def drift(samples_ms: np.ndarray | list[float], fraction: float = 0.1) -> Drift:
    """Compare the p50 of the first and last ``fraction`` of a run (at least one sample each)."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"drift fraction {fraction} must be in (0, 0.5]")
    v = np.asarray(samples_ms, np.float64).ravel()
    if v.size == 0:
        return Drift(math.nan, math.nan, math.nan)
    k = max(1, round(v.size * fraction))
    first, last = percentile(v[:k], 50), percentile(v[-k:], 50)
    return Drift(first, last, last / first if first > 0 else math.nan)


def rss_kb(status_path: str | Path = "/proc/self/status") -> int | None:
    """Resident set size in KiB from ``/proc/self/status`` (Linux/Jetson); None where it does not exist."""
    try:
        text = Path(status_path).read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])  # "VmRSS:   123456 kB"
    return None


class StageTimes:
    """Per-stage latency samples in milliseconds: ``with times.stage("infer"): ...``."""

    def __init__(self) -> None:
        self._samples: dict[str, array] = {}

    def add(self, stage: str, ms: float) -> None:
        self._samples.setdefault(stage, array("d")).append(ms)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1e3)

    def last(self, stage: str) -> float:
        return self._samples[stage][-1]

    def samples(self, stage: str) -> np.ndarray:
        return np.frombuffer(self._samples.get(stage, array("d")), np.float64).copy()

    @property
    def nbytes(self) -> int:
        """Memory the samples themselves hold (a soak's RSS grows by this much by design)."""
        return sum(a.itemsize * len(a) for a in self._samples.values())

    @property
    def stages(self) -> list[str]:
        return list(self._samples)

    def summary(self) -> dict[str, LatencySummary]:
        return {name: summarize(self.samples(name)) for name in self._samples}


# ---- the machine a benchmark ran on -------------------------------------------------------
def cpu_model(cpuinfo_path: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; Jetson kernels may lack it: then the architecture)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def gpu_info(smi: str = "nvidia-smi", timeout_s: float = 10.0) -> list[dict[str, Any]] | str:
    """GPUs as ``nvidia-smi`` reports them (name, driver, memory), or "none" where it is absent or fails."""
    exe = shutil.which(smi)
    if exe is None:
        return "none"
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    try:
        p = subprocess.run([exe, *query], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    gpus = []
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        fields = [f.strip() for f in line.split(",")]  # "NVIDIA H100 80GB HBM3, 580.65.06, 81559"
        if len(fields) == 3 and fields[0]:
            mem = int(fields[2]) if fields[2].isdigit() else None
            gpus.append({"name": fields[0], "driver": fields[1], "memory_mib": mem})
    return gpus or "none"


def onnxruntime_info() -> dict[str, Any]:
    """ONNX Runtime version, providers, and which of its pip builds are installed (two builds clash)."""
    from importlib import metadata

    dists = {}
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            dists[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            dists[name] = None
    info: dict[str, Any] = {"version": "none", "providers": [], "distributions": dists}
    if all(dists.values()):
        info["warning"] = ("onnxruntime and onnxruntime-gpu are both installed and overwrite each other; "
                           "`pip uninstall -y onnxruntime onnxruntime-gpu`, then install one of them")
    try:
        import onnxruntime as ort
    except ImportError:
        return info
    info.update(version=ort.__version__, providers=list(ort.get_available_providers()))
    return info


def machine_info() -> dict[str, Any]:
    """What a benchmark number depends on: OS, Python, CPU model and cores, GPUs, ONNX Runtime build."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,  # this process's CPU affinity (a container or taskset may allow fewer)
        "gpu": gpu_info(),
        "onnxruntime": onnxruntime_info(),
    }
