"""Head hot-swap: postcards arriving mid-stream, half-copied files, bad postcards refused."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from onnx_fixtures import (
    grouped,
    make_encoder,
    make_model,
    make_postcard,
    make_probe,
    other_agent,
    reference_head,
    write_head_files,
)
from safetensors.numpy import save_file

from jepa_edge.artifacts import atomic_write_bytes
from jepa_edge.calib.postcard import PostcardError, load_postcard, save_postcard
from jepa_edge.calib.probes import ProbeError, load_probe, save_probe
from jepa_edge.runtime import HeadWatcher, HeadWatcherConfig, PipelineConfig, load_model, run
from jepa_edge.runtime.sources import ArraySource

ATOL = 2e-5
NOW = HeadWatcherConfig(stable_polls=2, min_age_s=0.0)  # tests drive poll() by hand


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("swap")
    enc = make_encoder(height=12, width=12, latent_dim=6, seed=4)
    head0 = reference_head(enc, seed=3)
    return {
        "enc": enc,
        "head0": head0,
        "head_inputs": make_model(d / "hi.onnx", enc, "head_inputs"),
        "fused": make_model(d / "fused.onnx", enc, "fused", head0),
        "frames": np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8),
    }


def expected(head, enc, frame):
    return head.split(head.apply(enc.z(frame[None])))


def run_with_swap(model, frames, watcher, at_frame, action, **kw):
    """Run the pipeline; after frame ``at_frame`` is output, ``action()`` runs and the watcher polls twice."""
    records, outputs = [], []

    def on_frame(record, outs):
        records.append(record)
        outputs.append({k: v.copy() for k, v in outs.items()})
        if record["frame"] == at_frame:
            action()
            watcher.poll()  # sees the new set
            watcher.poll()  # same set again: stable, loaded (or refused)

    summary = run(model, ArraySource(frames), PipelineConfig(), watcher=watcher, out=None, on_frame=on_frame, **kw)
    assert summary.frames == len(frames) and summary.reason == "end_of_stream"
    return records, outputs, summary


@pytest.mark.parametrize("variant", ["model/head_inputs", "numpy/encoder_only", "numpy/fused"])
def test_postcard_swapped_exactly_at_a_frame_boundary(setup, tmp_path, variant):
    enc, head0, frames = setup["enc"], setup["head0"], setup["frames"]
    if variant == "model/head_inputs":
        model = load_model(setup["head_inputs"], "ort-cpu")
    elif variant == "numpy/encoder_only":
        model = load_model(setup["fused"], "ort-cpu", encoder_only=True)
    else:
        model = load_model(setup["fused"], "ort-cpu")  # fused graph + watcher → head runs in numpy
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, NOW)
    new_head = {}
    records, outputs, summary = run_with_swap(
        model, frames, watcher, 4, lambda: new_head.update(head=write_head_files(tmp_path, enc, seed=1)[0]),
        head=head0,
    )
    assert summary.heads["mode"] == variant.split("/")[0]
    head1 = new_head["head"]
    assert watcher.stats.loaded == 1 and watcher.stats.refused == 0
    for i, (rec, out) in enumerate(zip(records, outputs)):
        head = head0 if i <= 4 else head1  # frames 0-4 on the old head, 5+ on the new one
        want = expected(head, enc, frames[i])
        assert set(out) == {"z", *want}, i
        for name, value in want.items():
            np.testing.assert_allclose(out[name], value, atol=ATOL, rtol=0, err_msg=f"frame {i} {name}")
        assert rec["head_version"] == (1 if i <= 4 else 2)
        assert grouped(rec["outputs"]).keys() == want.keys()
    assert "danger" not in grouped(records[4]["outputs"]) and "danger" in grouped(records[5]["outputs"])


def _nan_postcard(folder, enc):
    pc = make_postcard(enc.agent, other_agent(enc.latent_dim))
    tensors = {"W": pc.weight.copy(), "bias": pc.bias, "source_mean": pc.source_mean,
               "source_scale": pc.source_scale, "target_mean": pc.target_mean, "target_scale": pc.target_scale}
    tensors["W"][0, 0] = np.nan
    save_file(tensors, str(folder / "nan.postcard.safetensors"), metadata={"jepa_edge": json.dumps(pc.metadata())})


def _foreign_postcard(folder, enc):
    foreign = replace(enc.agent, fingerprint="b" * 64)  # W fitted for another robot's encoder
    save_postcard(folder / "foreign.postcard.safetensors", make_postcard(foreign, other_agent(enc.latent_dim)))


def _truncated_postcard(folder, enc):
    path = folder / "cut.postcard.safetensors"
    save_postcard(path, make_postcard(enc.agent, other_agent(enc.latent_dim)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "writer, reason",
    [(_nan_postcard, "NaN"), (_foreign_postcard, "fingerprint"), (_truncated_postcard, "truncated")],
)
def test_bad_postcard_refused_and_old_head_keeps_running(setup, tmp_path, writer, reason):
    enc, head0, frames = setup["enc"], setup["head0"], setup["frames"]
    model = load_model(setup["head_inputs"], "ort-cpu")
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, NOW)
    records, outputs, summary = run_with_swap(model, frames, watcher, 3, lambda: writer(tmp_path, enc), head=head0)
    assert watcher.stats.refused == 1 and watcher.stats.loaded == 0
    assert reason in watcher.stats.refusals[-1].reason
    assert summary.heads["refused"] == 1 and reason in summary.heads["last_refusal"]
    for i, out in enumerate(outputs):  # every frame, before and after the bad file, on the old head
        for name, value in expected(head0, enc, frames[i]).items():
            np.testing.assert_allclose(out[name], value, atol=ATOL, rtol=0, err_msg=f"frame {i} {name}")
    assert {r["head_version"] for r in records} == {1}
    # the refused set is not re-read every poll; a corrected set replaces it
    assert watcher.poll() is None and watcher.stats.refused == 1
    for p in tmp_path.iterdir():
        p.unlink()
    head1, _ = write_head_files(tmp_path, enc, seed=2)
    watcher.poll()
    assert watcher.poll() is not None and watcher.stats.loaded == 1
    np.testing.assert_allclose(watcher.take().weight, head1.weight)


def test_half_copied_file_is_never_read(setup, tmp_path):
    enc = setup["enc"]
    src = tmp_path / "staging"
    head, paths = write_head_files(src, enc)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = HeadWatcher(inbox, enc.fingerprint, enc.latent_dim, NOW)
    data = paths[0].read_bytes()
    target = inbox / paths[0].name
    target.write_bytes(data[:100])  # a copy in progress
    assert watcher.poll() is None  # first sight: not stable yet
    with open(target, "ab") as f:
        f.write(data[100:])  # the copy goes on between two polls
    assert watcher.poll() is None  # changed since the last poll: wait again
    for p in paths[1:]:
        (inbox / p.name).write_bytes(p.read_bytes())
    assert watcher.poll() is None
    got = watcher.poll()
    assert got is not None and watcher.stats.refused == 0  # the partial file was never parsed
    np.testing.assert_allclose(got.weight, head.weight)
    assert watcher.take() is got and watcher.take() is None  # handed over exactly once
    assert watcher.poll() is None and watcher.stats.loaded == 1  # same files: not reloaded


def test_min_age_waits_for_quiet_files(setup, tmp_path):
    enc = setup["enc"]
    _, paths = write_head_files(tmp_path, enc)
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, HeadWatcherConfig(stable_polls=1, min_age_s=60))
    assert watcher.poll() is None and watcher.poll() is None
    old = time.time() - 120
    for p in paths:
        os.utime(p, (old, old))
    assert watcher.poll() is not None


def test_two_postcards_in_one_folder_refused(setup, tmp_path):
    enc = setup["enc"]
    write_head_files(tmp_path, enc)
    save_postcard(tmp_path / "second.postcard.safetensors", make_postcard(enc.agent, other_agent(enc.latent_dim)))
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, HeadWatcherConfig(stable_polls=1, min_age_s=0))
    assert watcher.poll() is None
    assert "one postcard per head folder" in watcher.stats.refusals[-1].reason


def test_background_watcher_thread(setup, tmp_path):
    enc = setup["enc"]
    cfg = HeadWatcherConfig(poll_interval_s=0.01, stable_polls=2, min_age_s=0.3)  # > the gap between the three fsync'ed writes
    with HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, cfg) as watcher:
        head, _ = write_head_files(tmp_path, enc)
        want = [o.name for o in head.outputs]
        deadline = time.monotonic() + 5
        got = None
        while time.monotonic() < deadline:  # on a loaded machine the postcard alone may be loaded first
            got = watcher.take() or got
            if got is not None and [o.name for o in got.outputs] == want:
                break
            time.sleep(0.005)
    assert got is not None and [o.name for o in got.outputs] == want
    assert not watcher._thread.is_alive()


def test_missing_folder_is_a_clear_error(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="head folder does not exist"):
        HeadWatcher(tmp_path / "nope", setup["enc"].fingerprint, 6)


def test_symlinks_and_non_regular_files_are_ignored(setup, tmp_path):
    """The inbox is untrusted: a symlink (which could point anywhere), a folder or a FIFO is never read."""
    enc = setup["enc"]
    staging, inbox = tmp_path / "staging", tmp_path / "inbox"
    head, paths = write_head_files(staging, enc)
    inbox.mkdir()
    for p in paths:
        (inbox / p.name).symlink_to(p)
    (inbox / "dir.probe.safetensors").mkdir()
    os.mkfifo(inbox / "fifo.probe.safetensors")  # reading a FIFO would block the watcher forever
    watcher = HeadWatcher(inbox, enc.fingerprint, enc.latent_dim, NOW)
    assert watcher.poll() is None and watcher.poll() is None
    assert watcher.stats.loaded == 0 and watcher.stats.refused == 0  # ignored, not even parsed
    for p in paths:  # the same files as regular files are loaded
        (inbox / p.name).unlink()
        (inbox / p.name).write_bytes(p.read_bytes())
    watcher.poll()
    got = watcher.poll()
    assert got is not None and watcher.stats.refused == 0
    np.testing.assert_allclose(got.weight, head.weight)


# ---- files and installs that fail in ways no check names: refused, never fatal -----------------------------
DEEP = "[" * 20_000 + "]" * 20_000  # 40 KB of nesting: json.loads raises RecursionError on it


def _wait_until(cond, timeout_s=60.0):
    """Poll ``cond`` (the watcher thread's progress); the bound only stops a broken test from hanging."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the watcher thread"
        threading.Event().wait(0.01)


def _deep_probe_bytes(enc, where):
    """A probe file whose JSON nests 20 000 levels deep: in the jepa_edge metadata string, or in the header."""
    from safetensors.numpy import save

    probe = make_probe(enc.agent, "danger", 2, task="classification")
    text = json.dumps(probe.metadata())
    if where == "metadata":
        text = text[:-1] + f', "junk": {DEEP}}}'
    data = save({"weight": probe.weight, "bias": probe.bias}, metadata={"jepa_edge": text})
    if where == "header":
        (n,) = struct.unpack("<Q", data[:8])
        header = data[8 : 8 + n].decode().rstrip()[:-1] + f', "junk": {DEEP}}}'
        data = struct.pack("<Q", len(header)) + header.encode() + data[8 + n :]  # tensor offsets are relative
    return data


@pytest.mark.parametrize("where", ["metadata", "header"])
def test_deeply_nested_json_is_a_probe_error(setup, tmp_path, where):
    path = tmp_path / "deep.probe.safetensors"
    path.write_bytes(_deep_probe_bytes(setup["enc"], where))
    with pytest.raises(ProbeError, match="nested too deeply"):
        load_probe(path)
    with pytest.raises(PostcardError, match="nested too deeply"):
        load_postcard(path.rename(tmp_path / "deep.postcard.safetensors"))


def test_watcher_thread_refuses_a_deeply_nested_probe_then_loads_a_good_one(setup, tmp_path):
    enc = setup["enc"]
    cfg = HeadWatcherConfig(poll_interval_s=0.01, stable_polls=2, min_age_s=0.0)
    with HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, cfg) as watcher:
        atomic_write_bytes(tmp_path / "deep.probe.safetensors", _deep_probe_bytes(enc, "metadata"))
        _wait_until(lambda: watcher.stats.refused >= 1)
        assert "nested too deeply" in watcher.stats.refusals[-1].reason
        assert watcher._thread.is_alive() and watcher.take() is None
        (tmp_path / "deep.probe.safetensors").unlink()
        good = make_probe(enc.agent, "danger", 2, seed=9, task="classification")
        save_probe(tmp_path / "good.probe.safetensors", good)
        got = []
        _wait_until(lambda: got.append(watcher.take()) or got[-1] is not None)
    np.testing.assert_allclose(got[-1].weight, good.weight)
    assert watcher.stats.refused == 1 and watcher.stats.loaded == 1


def test_any_exception_while_building_a_head_is_a_refusal(setup, tmp_path, monkeypatch):
    """A failure no loader names (a bug, an exotic file) refuses the set with its type, like a bad file."""
    from jepa_edge.calib import probes

    enc = setup["enc"]
    write_head_files(tmp_path, enc)
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, NOW)

    def broken(path, *a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(probes, "load_probe", broken)
    assert watcher.poll() is None and watcher.poll() is None
    assert watcher.stats.refused == 1 and watcher.stats.refusals[-1].reason.startswith("RecursionError: ")


def test_watcher_thread_survives_a_failed_scan(setup, tmp_path, monkeypatch):
    enc = setup["enc"]
    cfg = HeadWatcherConfig(poll_interval_s=0.01, stable_polls=2, min_age_s=0.0)
    watcher = HeadWatcher(tmp_path, enc.fingerprint, enc.latent_dim, cfg)
    real_poll, failed = watcher.poll, threading.Event()

    def poll_once_broken():
        if not failed.is_set():
            failed.set()
            raise RuntimeError("scan blew up")
        return real_poll()

    monkeypatch.setattr(watcher, "poll", poll_once_broken)
    with watcher:
        _wait_until(failed.is_set)
        good = make_probe(enc.agent, "danger", 2, seed=9, task="classification")
        save_probe(tmp_path / "good.probe.safetensors", good)
        got = []
        _wait_until(lambda: got.append(watcher.take()) or got[-1] is not None)
    np.testing.assert_allclose(got[-1].weight, good.weight)


def test_failed_head_install_keeps_the_old_head_and_the_loop_goes_on(setup, tmp_path):
    """A device upload that fails (here: the model's head upload raises) is a refusal, not the end of the run."""
    enc, head0, frames = setup["enc"], setup["head0"], setup["frames"]
    model = load_model(setup["head_inputs"], "ort-cpu")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = HeadWatcher(inbox, enc.fingerprint, enc.latent_dim, NOW)
    _, files1 = write_head_files(tmp_path / "v1", enc, seed=1)
    head2, files2 = write_head_files(tmp_path / "v2", enc, seed=2)
    real_prepare, armed = model._prepare_head, []

    def upload(state):
        if armed:
            armed.clear()
            raise RuntimeError("cudaMemcpy failed")
        real_prepare(state)

    model._prepare_head = upload
    records, outputs = [], []

    def on_frame(record, outs):
        records.append(record)
        outputs.append(outs)
        if record["frame"] in (2, 5):  # a head for frame 3 (whose upload fails), another for frame 6
            for p in inbox.iterdir():
                p.unlink()
            for p in files1 if record["frame"] == 2 else files2:
                (inbox / f"f{record['frame']}_{p.name}").write_bytes(p.read_bytes())
            if record["frame"] == 2:
                armed.append(True)  # the next upload fails
            watcher.poll()
            assert watcher.poll() is not None  # loaded: handed to the loop at the next frame

    summary = run(model, ArraySource(frames), PipelineConfig(), head=head0, watcher=watcher, out=None,
                  on_frame=on_frame)
    assert summary.frames == len(frames) and summary.reason == "end_of_stream"
    assert [r["head_version"] for r in records] == [1] * 6 + [2] * 4  # frame 3's install failed: still head 1
    assert watcher.stats.loaded == 2 and watcher.stats.refused == 1
    assert watcher.stats.refusals[-1].reason == "RuntimeError: cudaMemcpy failed"
    assert summary.heads["refused"] == 1 and summary.heads["last_refusal"] == "RuntimeError: cudaMemcpy failed"
    for i, out in enumerate(outputs):  # frames 0-5 on the old head, 6+ on the good later one
        for name, value in expected(head0 if i <= 5 else head2, enc, frames[i]).items():
            np.testing.assert_allclose(out[name], value, atol=ATOL, rtol=0, err_msg=f"frame {i} {name}")
