"""Library checks behind the CLI's bad-input rows (tests/test_cli.py): each refuses before any work, in one
line naming the value and the fix, and leaves nothing behind."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from onnx_fixtures import make_encoder, make_model

from jepa_edge.artifacts import atomic_write_bytes, atomic_write_json
from jepa_edge.config import ConfigError, check_finite, from_dict
from jepa_edge.export.onnx_export import ExportError, check_onnx_out
from jepa_edge.fleet.transport import check_endpoint
from jepa_edge.runtime import OrtConfig
from jepa_edge.train.config import RunConfig
from jepa_edge.world.record import RecordingError, check_recording_args, simulate_recording

# ---- atomic writes name the destination, never the temporary sibling


def test_a_failed_atomic_write_names_the_destination_and_leaves_no_temp_file(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:  # os.replace of the temp file onto a folder
        atomic_write_bytes(folder, b"x")
    msg = str(info.value)
    assert msg == f"cannot write {folder}: Is a directory; check the path and its permissions"
    assert info.value.errno is not None and ".tmp" not in msg
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not list(folder.iterdir())

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=rf"^cannot write {blocker}/sub/x.json: .*check the path") as info:
        atomic_write_json(blocker / "sub" / "x.json", {})  # its folder cannot be made: a file is in the way
    assert ".tmp" not in str(info.value)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_unwritable_folder_is_named_not_the_temp_file():
    with pytest.raises(OSError) as info:
        atomic_write_bytes("/proc/x.onnx", b"x")
    assert str(info.value).startswith("cannot write /proc/x.onnx: ") and ".tmp" not in str(info.value)


def test_an_error_about_another_file_is_left_as_it_is(tmp_path):
    def write(f):
        open(tmp_path / "missing.bin", "rb")  # noqa: SIM115 - raises before anything is opened

    from jepa_edge.artifacts import atomic_write

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "out.bin", write)
    assert info.value.filename == str(tmp_path / "missing.bin") and not list(tmp_path.iterdir())


# ---- configs: no NaN or infinity in a float setting, named by its dotted key


@dataclass
class Inner:
    rate: float = 0.5


@dataclass
class Outer:
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize(("data", "key"), [
    ({"scale": math.nan}, "scale"), ({"inner": {"rate": math.inf}}, "inner.rate"),
    ({"weights": {"a": -math.inf}}, "weights.a"),
])
def test_from_dict_refuses_non_finite_floats_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"^Outer: {key} must be a finite number, got"):
        from_dict(Outer, data)


def test_run_config_validate_refuses_non_finite_and_non_positive_lr():
    cfg = RunConfig()
    cfg.train.lr = math.nan
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number, got nan"):
        cfg.validate()
    cfg.train.lr = 0.0
    with pytest.raises(ValueError, match=r"train\.lr must be > 0"):
        cfg.validate()
    check_finite(RunConfig())  # the defaults are finite


# ---- world record: numbers checked before anything is simulated or created


@pytest.mark.parametrize(("kw", "message"), [
    ({"size": 100000}, r"size 100000 is over 1024 px.*--size 1024"),
    ({"size": 4}, r"size 4 is below 8 px.*--size 8"),
    ({"size": 15}, r"size 15 is odd.*--size 16"),
    ({"size": 16.0}, r"size must be a whole number"),
    ({"fps": -1.0}, r"fps -1.0 must be a positive number.*--fps 30"),
    ({"fps": math.inf}, r"fps inf must be a positive"),
    ({"n_episodes": 0}, r"episodes must be >= 1, got 0"),
    ({"n_steps": -3}, r"steps per episode must be >= 1, got -3"),
    ({"size": 1024, "n_episodes": 1000}, r"46\.9 GiB rendered in memory, over the 1 GiB limit"),
    ({"views": ["top", "top"]}, r"distinct view names"),
])
def test_recording_arguments_are_refused_before_anything_is_made(tmp_path, kw, message):
    args = {"views": ["top", "oblique"], "size": 16, "fps": 30.0, "n_episodes": 2, "n_steps": 8, **kw}
    with pytest.raises(RecordingError, match=message):
        check_recording_args(**args)
    with pytest.raises(RecordingError, match=message):
        simulate_recording(tmp_path / "a" / "rec", **args)
    assert not list(tmp_path.iterdir())


def test_odd_sizes_are_fine_in_a_bag():
    check_recording_args(["top"], 15, 30.0, 1, 1, even=False)


def test_a_recording_that_fails_midway_removes_the_folders_it_made(tmp_path, monkeypatch):
    from jepa_edge.world import record

    def broken(*args, **kw):
        raise RecordingError("encoder gone")

    monkeypatch.setattr(record, "write_video", broken)
    with pytest.raises(RecordingError, match="encoder gone"):
        simulate_recording(tmp_path / "a" / "b" / "rec", n_episodes=1, n_steps=2, size=16)
    assert not list(tmp_path.iterdir())
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RecordingError, match="encoder gone"):  # a folder that was there stays
        simulate_recording(kept / "rec", n_episodes=1, n_steps=2, size=16)
    assert list(tmp_path.iterdir()) == [kept] and not list(kept.iterdir())


# ---- ONNX Runtime threads


def test_ort_threads_are_capped_at_four_per_logical_cpu():
    cpus = os.cpu_count() or 1
    OrtConfig(intra_op_threads=4 * cpus, inter_op_threads=4 * cpus).validate()
    with pytest.raises(ValueError, match=rf"^{4 * cpus + 1} ONNX Runtime intra-op threads \(--threads\) is over "
                                         rf"{4 * cpus} .*at most {cpus}$"):
        OrtConfig(intra_op_threads=4 * cpus + 1).validate()
    with pytest.raises(ValueError, match="inter-op threads is over"):
        OrtConfig(inter_op_threads=100000).validate()


# ---- output names


@pytest.mark.parametrize("name", ["model.txt", "model", "model.onnx.bak", "."])
def test_export_refuses_an_output_that_is_not_onnx(tmp_path, name):
    with pytest.raises(ExportError, match=r"must be an \.onnx file; pass e\.g\. --out \w+\.onnx"):
        check_onnx_out(tmp_path / name)


def test_export_accepts_onnx_in_any_case(tmp_path):
    check_onnx_out(tmp_path / "m.onnx")
    check_onnx_out(tmp_path / "M.ONNX")


@pytest.mark.parametrize("name", ["W_BA.json", "W_BA.safetensors", "W_BA.probe.safetensors", ".postcard.safetensors"])
def test_calib_refuses_a_postcard_name_run_watch_would_not_pick_up(tmp_path, name):
    pytest.importorskip("torch")
    from jepa_edge.agents.calibrate import check_postcard_out

    with pytest.raises(ValueError, match=r"NAME\.postcard\.safetensors .*--out W_BA\.postcard\.safetensors"):
        check_postcard_out(tmp_path / name)
    check_postcard_out(tmp_path / "W_BA.postcard.safetensors")


# ---- Zenoh endpoints


@pytest.mark.parametrize("endpoint", [
    "tcp/127.0.0.1:7447", "tcp/localhost:7447", "tcp/[::1]:7447", "tls/robot-a.example.com:443",
    "udp/224.0.0.224:7446", "tcp/127.0.0.1:7447#iface=lo", "quic/10.0.0.2:7447?prio=1", "unixsock-stream//tmp/z.sock",
])
def test_good_endpoints_pass(endpoint):
    check_endpoint(endpoint, "listen")
    check_endpoint(endpoint, "connect")


@pytest.mark.parametrize(("endpoint", "side", "problem"), [
    ("nonsense", "listen", "not PROTOCOL/ADDRESS"),
    ("tcp/", "connect", "not PROTOCOL/ADDRESS"),
    ("TCP/1.2.3.4:5", "listen", "'TCP' is not a Zenoh protocol"),
    ("tcp/nonsense", "connect", "no HOST:PORT after the protocol"),
    ("tcp/:7447", "listen", "no HOST:PORT after the protocol"),
    ("tcp/127.0.0.1:99999", "listen", "port '99999' is not in 0..65535"),
    ("tcp/127.0.0.1:0", "connect", "port '0' is not in 1..65535"),
    ("tcp/127.0.0.1:http", "listen", "port 'http'"),
    ("tcp/999.1.1.1:7447", "connect", "999.1.1.1 is not an IPv4 address"),
    ("tcp/[::1:7447", "listen", "is not a bracketed IPv6 address"),
    ("tcp/a b:1", "connect", "'a b' is not a host name"),
    (7447, "listen", "not a string"),
])
def test_bad_endpoints_are_one_line_naming_the_flag_and_the_form(endpoint, side, problem):
    with pytest.raises(ValueError) as info:
        check_endpoint(endpoint, side)
    msg = str(info.value)
    assert msg.startswith(f"--{side} {endpoint!r}: ") and problem in msg and msg.endswith("e.g. tcp/127.0.0.1:7447")


# ---- a fleet run that never heard from the peer it follows


def test_a_followed_peer_never_seen_is_a_failure_only_when_the_run_ended_by_itself(tmp_path):
    pytest.importorskip("zenoh")
    from jepa_edge.fleet.node import FleetConfig, FleetNode
    from jepa_edge.runtime import load_model

    with load_model(make_model(tmp_path / "m.onnx", make_encoder(), "head_inputs"), "ort-cpu") as model:
        node = FleetNode(model, FleetConfig(fleet="f1", follow="agentZ"))
        for reason in ("end_of_stream", "max_frames"):
            msg = node.followed_never_seen(SimpleNamespace(reason=reason, frames=5))
            assert msg.startswith("never saw agent 'agentZ' on fleet 'f1' in 5 frames: check --follow"), msg
        assert node.followed_never_seen(SimpleNamespace(reason="stopped", frames=5)) == ""
        node.inbox.refuse("card", "agentZ", "bad signature")
        assert "(its messages were refused: bad signature)" in node.followed_never_seen(
            SimpleNamespace(reason="max_frames", frames=5))
        alone = FleetNode(model, FleetConfig(fleet="f1"))
        assert alone.followed_never_seen(SimpleNamespace(reason="max_frames", frames=5)) == ""
