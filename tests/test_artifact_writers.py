"""Every writer goes through jepa_edge.artifacts: what the moved writers now produce, byte for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jepa_edge.artifacts import atomic_write, atomic_write_json, replace_synced


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
