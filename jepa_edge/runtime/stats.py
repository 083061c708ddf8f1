"""Latency statistics, memory readings and drift (numpy only).

Samples are kept exactly (an ``array('d')`` grows in O(1) per append, 8 bytes
per sample: a day at 30 FPS is ~20 MB), so percentiles are exact, not
histogram estimates. The machine a benchmark ran on is ``jepa_edge.machine``.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

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
