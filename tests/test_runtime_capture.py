"""Capture thread: latest-frame policy, reopen with backoff, corrupt frames, end of stream, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import CorruptFrame, SourceDisconnected, SourceLostError, SourceOpenError
from jepa_edge.runtime.sources import Source


def numbered(i: int) -> np.ndarray:
    """A 4x4 frame whose pixels all hold ``i``: the consumer can tell which frame it got."""
    return np.full((4, 4, 3), i, np.uint8)


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class GatedSource(Source):
    """Live-like source whose reads block until the test releases them: fully deterministic."""

    live = True

    def __init__(self) -> None:
        super().__init__()
        self.name, self.gate, self.n = "gated", threading.Semaphore(0), 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        while not self.gate.acquire(timeout=0.01):
            if getattr(self, "closed", False):
                return None
        self.n += 1
        return numbered(self.n - 1)

    def close(self) -> None:
        self.closed = True


class ScriptedSource(Source):
    """Plays a script: an int is a frame, "disconnect"/"corrupt" raise, then None (end)."""

    def __init__(self, script: list, live: bool = True, failing_opens: int = 0) -> None:
        super().__init__()
        self.name, self.live, self.script = "scripted", live, list(script)
        self.failing_opens, self.opens = failing_opens, 0

    def open(self) -> None:
        self.opens += 1
        if self.failing_opens > 0:
            self.failing_opens -= 1
            raise SourceOpenError("still down")

    def read(self) -> np.ndarray | None:
        if not self.script:
            return None
        item = self.script.pop(0)
        if item == "disconnect":
            raise SourceDisconnected("link lost")
        if item == "corrupt":
            raise CorruptFrame("bad jpeg")
        return numbered(item)


FAST = {"reconnect_initial_s": 0.001, "reconnect_factor": 2.0, "reconnect_max_s": 0.003}


def test_slow_consumer_gets_newest_frame_and_drops_are_counted():
    src = GatedSource()
    with Capture(src, CaptureConfig(policy="latest")) as cap:
        src.gate.release(5)
        wait_for(lambda: cap.stats.read == 5)
        wait_for(lambda: cap._slot is not None and cap._slot.index == 4)
        frame = cap.get(timeout=1)
        assert frame.index == 4 and frame.image[0, 0, 0] == 4  # the newest, not the oldest
        assert cap.stats.dropped == 4 and cap.stats.delivered == 1
        src.gate.release(1)
        frame = cap.get(timeout=1)
        assert frame.index == 5 and cap.stats.dropped == 4  # consumed in time: no new drop
        with pytest.raises(TimeoutError):
            cap.get(timeout=0.05)  # nothing new: no stale frame is handed out twice
        src.gate.release(1000)  # let the blocked read return so close() joins at once


@pytest.mark.parametrize("policy", ["auto", "inline", "all"])
def test_file_policies_deliver_every_frame_in_order(policy):
    src = ScriptedSource(list(range(20)), live=False)
    with Capture(src, CaptureConfig(policy=policy)) as cap:
        assert cap.policy == ("inline" if policy == "auto" else policy)  # a file read as fast as possible
        got = []
        while (f := cap.get(timeout=2)) is not None:
            time.sleep(0.001 if f.index % 5 == 0 else 0)  # an irregular consumer
            got.append(int(f.image[0, 0, 0]))
        assert got == list(range(20))
        assert cap.stats.dropped == 0 and cap.stats.eof
        assert cap.get(timeout=1) is None  # stays at end of stream


def test_inline_reads_in_the_caller_only_when_asked():
    src = ScriptedSource(list(range(5)), live=False)
    with Capture(src) as cap:
        time.sleep(0.02)
        assert cap._thread is None and len(src.script) == 5  # nothing read ahead of the consumer
        t_before = time.perf_counter()
        frame = cap.get()
        assert len(src.script) == 4 and frame.index == 0
        assert t_before <= frame.t_mono <= time.perf_counter()  # stamped when read, inside this get()
        assert 0.0 <= frame.read_ms <= (frame.t_mono - t_before) * 1e3
        assert cap.stats.read == cap.stats.delivered == 1


def test_inline_is_refused_for_live_or_realtime_sources():
    with pytest.raises(ValueError, match="stale.*latest"):
        Capture(ScriptedSource([0], live=True), CaptureConfig(policy="inline"))
    with pytest.raises(ValueError, match="real time.*latest"):
        Capture(ScriptedSource([0], live=False), CaptureConfig(policy="inline", realtime=True))


def test_read_ahead_adds_slot_time_to_latency_but_inline_does_not():
    """``all`` decodes the next frame while the consumer works; ``inline`` hands out a fresh one."""
    ages = {}
    for policy in ("all", "inline"):
        with Capture(ScriptedSource(list(range(6)), live=False), CaptureConfig(policy=policy)) as cap:
            cap.get(timeout=2)
            time.sleep(0.05)  # the consumer is busy with frame 0
            ages[policy] = time.perf_counter() - cap.get(timeout=2).t_mono
    assert ages["all"] >= 0.04  # frame 1 was read ahead and waited in the slot
    assert ages["inline"] < 0.01


def test_live_source_reopened_with_capped_exponential_backoff():
    src = ScriptedSource([0, 1, "disconnect", 2, 3], live=True, failing_opens=3)
    with Capture(src, CaptureConfig(**FAST, max_retries=5, policy="all")) as cap:
        got = [int(f.image[0, 0, 0]) for f in iter(lambda: cap.get(timeout=2), None)]
    assert got == [0, 1, 2, 3]  # the stream resumes after the reopen
    assert cap.stats.reconnects == 1
    assert src.opens == 4  # 3 failed reopens, then one that worked
    assert cap.stats.backoff_s == pytest.approx([0.001, 0.002, 0.003, 0.003])  # doubled, capped at max


def test_source_that_never_comes_back_raises_clear_error():
    src = ScriptedSource([0, "disconnect"], live=True, failing_opens=99)
    with Capture(src, CaptureConfig(**FAST, max_retries=3)) as cap:
        cap.get(timeout=2)
        with pytest.raises(SourceLostError, match=r"3 reopen attempts failed.*max_retries"):
            cap.get(timeout=2)
    assert src.opens == 3


def test_corrupt_frame_is_skipped_and_counted():
    src = ScriptedSource([0, 1, "corrupt", 3, "corrupt", 5], live=False)
    with Capture(src) as cap:
        got = [int(f.image[0, 0, 0]) for f in iter(lambda: cap.get(timeout=2), None)]
    assert got == [0, 1, 3, 5]
    assert cap.stats.corrupt == 2 and cap.stats.reconnects == 0


def test_too_many_corrupt_frames_in_a_row_is_an_error():
    src = ScriptedSource(["corrupt"] * 5 + [1], live=False)
    with Capture(src, CaptureConfig(max_corrupt_in_row=3)) as cap, pytest.raises(SourceLostError, match="in a row"):
        cap.get(timeout=2)


def test_close_stops_thread_and_releases_source():
    src = GatedSource()
    cap = Capture(src).start()
    src.gate.release(1)
    cap.get(timeout=1)
    src.gate.release(1000)  # a camera keeps delivering while we shut down
    cap.close()  # joins the thread first, then releases the source (never release under a read)
    assert not cap._thread.is_alive()
    assert src.closed
    assert cap.get(timeout=0.1) is None  # closed: no frame, no hang
    cap.close()  # idempotent


def test_realtime_pacing_of_a_file_like_source():
    src = ScriptedSource(list(range(6)), live=False)
    src.fps = 100.0
    t0 = time.perf_counter()
    with Capture(src, CaptureConfig(realtime=True, policy="all")) as cap:
        frames = list(iter(lambda: cap.get(timeout=2), None))
    elapsed = time.perf_counter() - t0
    assert len(frames) == 6
    assert elapsed >= 0.045  # frame 5 is due 50 ms after frame 0
    assert [f.pts for f in frames] == pytest.approx([i / 100 for i in range(6)])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="policy"):
        Capture(ScriptedSource([]), CaptureConfig(policy="newest"))
    with pytest.raises(ValueError, match="reconnect"):
        Capture(ScriptedSource([]), CaptureConfig(reconnect_initial_s=1.0, reconnect_max_s=0.5))
