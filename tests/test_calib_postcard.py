"""Postcards round-trip exactly; bad files are refused with a clear error."""

import json

import numpy as np
import pytest
from safetensors.numpy import save

from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.head import build_head
from jepa_edge.calib.postcard import Postcard, PostcardError, load_postcard, save_postcard

FP_A, FP_B = "a" * 64, "b" * 64


def _postcard(ds=6, dt=4, seed=0) -> Postcard:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, ds))
    y = x @ rng.normal(size=(ds, dt)) + 0.1 * rng.normal(size=(50, dt))
    lm = fit_map(x, y, FitConfig("ridge"))
    return Postcard.from_map(
        lm, "B_to_A",
        source={"name": "agentB", "fingerprint": FP_B, "latent_dim": ds, "view": "oblique"},
        target={"name": "agentA", "fingerprint": FP_A, "latent_dim": dt, "view": "top"},
        metrics={"r2": np.float64(0.93), "retrieval_top1": 0.8},
    )


def _write_raw(path, tensors, meta):
    path.write_bytes(save(tensors, metadata={"jepa_edge": json.dumps(meta)}))


def _raw_parts(pc: Postcard):
    tensors = {"W": pc.weight, "bias": pc.bias, "source_mean": pc.source_mean, "source_scale": pc.source_scale,
               "target_mean": pc.target_mean, "target_scale": pc.target_scale}
    return {k: v.copy() for k, v in tensors.items()}, pc.metadata()


def test_round_trip_keeps_every_field(tmp_path):
    pc = _postcard()
    path = tmp_path / "b_to_a.postcard.safetensors"
    save_postcard(path, pc)
    back = load_postcard(path, expect_source_fingerprint=FP_B, expect_target_fingerprint=FP_A)
    for f in ("weight", "bias", "source_mean", "source_scale", "target_mean", "target_scale"):
        np.testing.assert_array_equal(getattr(back, f), getattr(pc, f))
        assert getattr(back, f).dtype == np.float32
    for f in ("name", "source", "target", "estimator", "n_anchors"):
        assert getattr(back, f) == getattr(pc, f)
    assert back.metrics == pytest.approx({"r2": 0.93, "retrieval_top1": 0.8})
    assert back.source_fingerprint == FP_B and back.target_fingerprint == FP_A
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_file_follows_formats_md(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "p.postcard.safetensors"
    save_postcard(path, _postcard(ds=6, dt=4))
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["jepa_edge"])
        assert f.get_tensor("W").shape == (4, 6)
        assert set(f.keys()) == {"W", "bias", "source_mean", "source_scale", "target_mean", "target_scale"}
    assert meta["kind"] == "postcard" and meta["version"] == 1
    assert meta["source"]["latent_dim"] == 6 and meta["target"]["view"] == "top"
    assert meta["estimator"] == "ridge" and meta["n_anchors"] == 50


def test_postcard_plugs_into_build_head():
    pc = _postcard()
    z = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    head = build_head(FP_B, 6, postcard=pc)
    np.testing.assert_allclose(head.split(head.apply(z))["z_mapped"], pc.apply(z), rtol=1e-5, atol=1e-5)


def test_wrong_fingerprint_refused(tmp_path):
    path = tmp_path / "p.postcard.safetensors"
    save_postcard(path, _postcard())
    with pytest.raises(PostcardError, match="source fingerprint.*another encoder"):
        load_postcard(path, expect_source_fingerprint="c" * 64)
    with pytest.raises(PostcardError, match="target fingerprint"):
        load_postcard(path, expect_target_fingerprint=FP_B)


def test_truncated_and_garbage_files_refused(tmp_path):
    path = tmp_path / "p.postcard.safetensors"
    save_postcard(path, _postcard())
    data = path.read_bytes()
    for name, blob in {"cut_body": data[:-9], "cut_header": data[:40], "tiny": data[:5],
                       "garbage": bytes(range(256)) * 3}.items():
        bad = tmp_path / f"{name}.postcard.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(PostcardError, match=str(bad.name)):
            load_postcard(bad)
    with pytest.raises(PostcardError, match="no such"):
        load_postcard(tmp_path / "missing.postcard.safetensors")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t, m: t.__setitem__("W", t["W"][:, :-1].copy()), "W has shape"),
        (lambda t, m: t["bias"].__setitem__(0, np.nan), "NaN"),
        (lambda t, m: t.pop("target_scale"), "missing"),
        (lambda t, m: t.__setitem__("W", t["W"].astype(np.float64)), "float64"),
        (lambda t, m: m.__setitem__("kind", "probe"), "not a postcard"),
        (lambda t, m: m.__setitem__("version", 2), "version 2"),
        (lambda t, m: m.pop("target"), "lacks 'target'"),
        (lambda t, m: m["source"].__setitem__("latent_dim", 7), "expected"),
        (lambda t, m: m["source"].pop("fingerprint"), "source must be a dict"),
    ],
)
def test_inconsistent_files_refused(tmp_path, edit, match):
    tensors, meta = _raw_parts(_postcard())
    edit(tensors, meta)
    path = tmp_path / "bad.postcard.safetensors"
    _write_raw(path, tensors, meta)
    with pytest.raises(PostcardError, match=match):
        load_postcard(path)


def test_file_without_jepa_edge_metadata_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(save({"W": np.zeros((2, 2), np.float32)}))
    with pytest.raises(PostcardError, match="not a jepa-edge postcard"):
        load_postcard(path)


def test_invalid_postcard_is_not_written(tmp_path):
    pc = _postcard()
    pc.weight[0, 0] = np.inf
    path = tmp_path / "p.postcard.safetensors"
    with pytest.raises(PostcardError, match="NaN or Inf"):
        save_postcard(path, pc)
    assert not path.exists()
