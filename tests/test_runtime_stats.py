"""Latency statistics against numpy on known data; drift; RSS."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from jepa_edge.runtime.stats import StageTimes, drift, percentile, rss_kb, summarize


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy(q):
    data = np.random.default_rng(0).lognormal(1.0, 0.8, size=1001)
    assert percentile(data, q) == pytest.approx(np.percentile(data, q), rel=1e-12)
    small = [3.0, 1.0, 2.0, 10.0]
    assert percentile(small, q) == pytest.approx(np.percentile(small, q), rel=1e-12)


def test_summary_on_known_data():
    s = summarize(np.arange(1, 101, dtype=float))  # 1..100 ms
    assert (s.n, s.mean_ms, s.max_ms) == (100, 50.5, 100.0)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.p50_ms)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_drift_first_vs_last_ten_percent():
    samples = np.r_[np.full(10, 2.0), np.full(80, 5.0), np.full(10, 3.0)]
    d = drift(samples)
    assert (d.first_p50_ms, d.last_p50_ms, d.ratio) == (2.0, 3.0, 1.5)
    assert drift([4.0]).ratio == 1.0  # one sample: compared with itself
    with pytest.raises(ValueError):
        drift(samples, fraction=0.7)


def test_rss_from_proc_status(tmp_path):
    fake = tmp_path / "status"
    fake.write_text("Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\n")
    assert rss_kb(fake) == 123456
    assert rss_kb(tmp_path / "missing") is None
    here = rss_kb()
    assert here is None or here > 1000  # a Python process with numpy is well above 1 MB


def test_stage_times():
    t = StageTimes()
    with t.stage("infer"):
        time.sleep(0.002)
    t.add("infer", 1.0)
    assert t.samples("infer")[0] >= 2.0 and t.last("infer") == 1.0
    assert t.summary()["infer"].n == 2 and t.stages == ["infer"]
    assert t.samples("missing").size == 0
