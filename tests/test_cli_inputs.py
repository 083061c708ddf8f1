"""What the CLI feeds the library: typed configs (`from_dict`), size-capped untrusted files, backend choice."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from onnx_fixtures import make_encoder, make_model, make_postcard, make_probe, other_agent

from jepa_edge import artifacts
from jepa_edge.calib.postcard import PostcardError, load_postcard, save_postcard
from jepa_edge.calib.probes import ProbeError, load_probe, save_probe
from jepa_edge.config import ConfigError, from_dict
from jepa_edge.runtime import OrtConfig, backend_trt, load_model
from jepa_edge.runtime.backends import available_backends
from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError
from jepa_edge.runtime.meta import parse_meta
from jepa_edge.train.config import RunConfig


@dataclass
class Inner:
    ratio: float = 0.5
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    count: int = 1
    flag: bool = False
    name: str = "x"
    limit: int | None = None
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)
    weights: dict[str, float] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(("data", "message"), [
    ({"count": "3"}, "Outer: count must be int, got str '3'"),
    ({"count": True}, "count must be int, got bool"),  # bool is not an int
    ({"count": 2.5}, "count must be int, got float"),
    ({"flag": 1}, "flag must be bool, got int"),
    ({"name": 3}, "name must be str"),
    ({"limit": "none"}, "limit must be int | None"),
    ({"sizes": [1, "2"]}, r"sizes\[1\] must be int"),
    ({"sizes": 3}, r"sizes must be tuple\[int, ...\]"),
    ({"pair": [1.0]}, "pair must have 2 entries"),
    ({"weights": {"a": "heavy"}}, "weights.a must be float"),
    ({"mode": "c"}, r"mode must be one of \['a', 'b'\]"),
    ({"inner": {"ratio": "half"}}, "inner.ratio must be float"),
    ({"inner": {"tags": ["ok", 1]}}, r"inner.tags\[1\] must be str"),
    ({"inner": [0.5]}, "inner must be an object of Inner settings"),
    ({"inner": {"ratoi": 0.5}}, r"unknown key\(s\) \['inner.ratoi'\]; valid keys under 'inner' are \['ratio', 'tags'\]"),
    ({"cuont": 1}, r"unknown key\(s\) \['cuont'\]"),
    ([{"count": 1}], "expected an object of settings .* got list"),
    ("count=1", "got str"),
])
def test_from_dict_refuses_wrong_types_naming_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_from_dict_accepts_and_normalises_valid_values():
    cfg = from_dict(Outer, {"count": 3, "flag": True, "limit": None, "sizes": [4, 5], "pair": [1, 2],
                            "weights": {"a": 1}, "mode": "b", "extra": {"any": [1, "x"]},
                            "inner": {"ratio": 1, "tags": ["t"]}})
    assert cfg.sizes == (4, 5) and cfg.pair == (1.0, 2.0) and isinstance(cfg.pair[0], float)
    assert cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)  # an int is a fine float
    assert cfg.weights == {"a": 1.0} and cfg.limit is None and cfg.mode == "b"
    assert from_dict(Outer, {"limit": 7}).limit == 7 and from_dict(Outer, None) == Outer()


def test_run_config_round_trips_through_json():
    cfg = RunConfig()
    assert from_dict(RunConfig, json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- size caps and regular files before parsing --------------------------------------------------------


@pytest.fixture()
def files(tmp_path):
    enc = make_encoder(latent_dim=6)
    pc = tmp_path / "W.postcard.safetensors"
    save_postcard(pc, make_postcard(enc.agent, other_agent(6)))
    pr = tmp_path / "p.probe.safetensors"
    save_probe(pr, make_probe(enc.agent))
    return {"enc": enc, "postcard": pc, "probe": pr}


def test_oversized_postcard_and_probe_are_refused_before_parsing(files, monkeypatch):
    monkeypatch.setattr(artifacts, "MAX_POSTCARD_BYTES", 64)
    with pytest.raises(PostcardError, match="over the 64-byte limit"):
        load_postcard(files["postcard"])
    with pytest.raises(ProbeError, match="over the 64-byte limit"):
        load_probe(files["probe"])


def test_symlinked_or_non_regular_artifacts_are_refused(files, tmp_path):
    link = tmp_path / "link.postcard.safetensors"
    link.symlink_to(files["postcard"])
    with pytest.raises(PostcardError, match="symbolic link"):
        load_postcard(link)
    (tmp_path / "d.probe.safetensors").mkdir()
    with pytest.raises(ProbeError, match="not a regular file"):
        load_probe(tmp_path / "d.probe.safetensors")
    assert load_postcard(files["postcard"]).weight.shape == (6, 6)  # the regular file itself loads


def test_oversized_onnx_metadata_is_refused_before_parsing():
    with pytest.raises(RuntimeModelError, match="over the"):
        parse_meta("{" + " " * (2 * 1024 * 1024) + "}", "big.onnx")


def test_deeply_nested_onnx_metadata_is_one_clear_error():
    with pytest.raises(RuntimeModelError, match="deep.onnx: metadata_props.*not valid JSON"):
        parse_meta('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.onnx")


# ---- backend choice for engines ------------------------------------------------------------------------


def test_engine_is_never_offered_to_onnx_runtime(tmp_path):
    assert "ort-cpu" in available_backends(tmp_path / "m.onnx")
    assert not [b for b in available_backends(tmp_path / "m.engine") if b.startswith("ort-")]


def test_engine_with_an_ort_config_asks_for_tensorrt_first(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")

    def no_trt():
        raise BackendUnavailableError("TensorRT is not available; install it with `pip install 'jepa-edge[trt]'`")

    monkeypatch.setattr(backend_trt, "import_tensorrt", no_trt)
    with pytest.raises(BackendUnavailableError, match="jepa-edge\\[trt\\]"):
        load_model(engine, config=OrtConfig())  # the missing extra, not a config TypeError
    monkeypatch.setattr(backend_trt, "import_tensorrt", lambda: object())
    with pytest.raises(ValueError, match="backend 'tensorrt' takes a TrtConfig"):
        load_model(engine, config=OrtConfig())


def test_ort_backend_with_a_dict_config(tmp_path):
    path = make_model(tmp_path / "m.onnx", make_encoder(), "head_inputs")
    with load_model(path, "ort-cpu", {"intra_op_threads": 1}) as model:
        assert model.config.intra_op_threads == 1
    with pytest.raises(ConfigError, match="intra_op_threads must be int"):
        load_model(path, "ort-cpu", {"intra_op_threads": "one"})


# ---- which exceptions become the one-line exit 2 ------------------------------------------------------


class NewLibraryError(RuntimeError):
    """Stands in for a library exception added later (e.g. a TrainingDivergedError(RuntimeError))."""


class DivergedHere(Exception):
    """An exception type defined inside jepa_edge but derived from Exception only."""


DivergedHere.__module__ = "jepa_edge.train.loop"


@pytest.mark.parametrize(("exc", "user"), [
    (NewLibraryError("loss became nan at step 7; lower --lr"), True),
    (FloatingPointError("loss became inf"), True),
    (DivergedHere("diverged"), True),
    (ConfigError("RunConfig: train.steps must be int"), True),
    (FileNotFoundError(2, "No such file or directory", "x.onnx"), True),
    (TypeError("unsupported operand"), False),  # a bug: keeps its traceback
    (AttributeError("'list' object has no attribute 'items'"), False),
])
def test_library_errors_map_to_one_line_and_bugs_keep_their_traceback(exc, user):
    import typer
    from typer.testing import CliRunner

    from jepa_edge.cli import is_user_error, one_line, user_errors

    assert is_user_error(exc) is user
    app = typer.Typer()

    @app.command()
    @user_errors
    def boom() -> None:
        raise exc

    res = CliRunner().invoke(app, [])
    if user:
        assert res.exit_code == 2 and res.stderr.strip() == f"error: {one_line(exc)}"
        assert "\n" not in one_line(exc)
    else:
        assert res.exit_code == 1 and res.exception is exc


def test_multi_line_messages_are_folded_into_one_line():
    from jepa_edge.cli import one_line

    assert one_line(RuntimeError("ONNX Runtime:\n  [ONNXRuntimeError] : 2\n  bad")) == \
        "ONNX Runtime: [ONNXRuntimeError] : 2 bad"
    assert one_line(KeyError("view 'x' is not loaded")) == "view 'x' is not loaded"  # no repr quotes
    assert one_line(PermissionError(13, "Permission denied", "/dev/video0")).endswith("check the path and its permissions")
