"""Every writer goes through jepa_edge.artifacts: what the moved writers now produce, byte for byte."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jepa_edge.artifacts import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temps,
    replace_synced,
    temp_path,
)

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_json_sorts_on_request_and_refuses_nan(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_replace_synced_puts_a_file_written_by_name_in_place(tmp_path):
    tmp, target = tmp_path / ".clip.tmp.avi", tmp_path / "clip.avi"
    target.write_bytes(b"old")
    tmp.write_bytes(b"new")
    replace_synced(tmp, target)
    assert target.read_bytes() == b"new" and not tmp.exists()


def test_atomic_write_callback_gives_the_same_bytes_as_numpy(tmp_path):
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    atomic_write(tmp_path / "x.npy", lambda f: np.save(f, arr))
    np.save(tmp_path / "ref.npy", arr)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_checkpoint_writes_safetensors_and_sorted_strict_json(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from jepa_edge.config import to_dict
    from jepa_edge.train.checkpoint import load_agent_meta, save_agent
    from jepa_edge.train.model import Encoder, EncoderConfig

    torch.manual_seed(0)
    cfg = EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, latent_dim=8)
    enc = Encoder(cfg)
    fp = save_agent(tmp_path, enc, {"name": "a", "view": "top", "encoder": to_dict(cfg), "metrics": {"r2": float("nan")}})
    text = (tmp_path / "meta.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert meta["metrics"]["r2"] is None and meta["fingerprint"] == fp
    assert list(meta) == sorted(meta)
    assert load_agent_meta(tmp_path)["name"] == "a"
    arrays = load_file(str(tmp_path / "encoder.safetensors"))
    for k, v in enc.state_dict().items():
        np.testing.assert_array_equal(arrays[k], v.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.safetensors", "meta.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with open(tmp_path / "ref.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "ref.bin").stat().st_mode) == mode


KILLED_WRITER = textwrap.dedent("""
    import sys, threading
    from jepa_edge.artifacts import atomic_write

    def write(f):
        f.write(b"half of the new")
        f.flush()
        print("writing", flush=True)  # the temp file exists now
        threading.Event().wait()  # until SIGKILL

    atomic_write(sys.argv[1], write)
""")


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until the child is inside write()
        assert line == "writing\n", child.stderr.read()
    finally:
        child.kill()
        child.wait()  # reaped: its pid is gone
    leftovers = [p.name for p in tmp_path.glob(".state.json.*.tmp")]
    assert len(leftovers) == 1 and f".{child.pid}." in leftovers[0]  # SIGKILL: no cleanup ran
    assert target.read_bytes() == b"old"  # the killed write never touched the file
    live = tmp_path / f".state.json.{os.getppid()}.0badc0de.tmp"  # a live writer's file
    live.write_bytes(b"in progress")
    atomic_write_bytes(target, b"the whole new state")
    assert target.read_bytes() == b"the whole new state"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "state.json"])  # only the dead one went


def test_replace_synced_removes_a_killed_writers_temp_file(tmp_path):
    target = tmp_path / "clip.avi"
    dead = target.with_name(f".clip.avi.{_dead_pid()}.12ab34cd.tmp.avi")
    dead.write_bytes(b"partial video")
    tmp = temp_path(target, keep_suffix=True)
    assert tmp.name.startswith(f".clip.avi.{os.getpid()}.") and tmp.name.endswith(".tmp.avi")
    tmp.write_bytes(b"video")
    replace_synced(tmp, target)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]


def test_a_dead_writers_temp_folder_is_removed_and_a_live_ones_kept(tmp_path):
    """Folder artifacts (a rosbag2 bag) use the same temp scheme: ``.{name}.{pid}.{hex}.tmpdir``."""
    target = tmp_path / "bag"
    live = temp_path(target, folder=True)
    assert live.name.startswith(f".bag.{os.getpid()}.") and live.name.endswith(".tmpdir")
    dead = tmp_path / f".bag.{_dead_pid()}.0badc0de.tmpdir"
    for folder in (live, dead):
        folder.mkdir()
        (folder / "metadata.yaml").write_text("x")
    assert remove_stale_temps(target) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
