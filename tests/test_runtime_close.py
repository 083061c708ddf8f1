"""Closing a model: calls after close() fail with one clear error, and close() waits for a frame in flight."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_trt import install_fakes
from onnx_fixtures import make_encoder, make_model, reference_head, tiny_models

from jepa_edge.runtime import OrtConfig, RuntimeModelError, load_model
from jepa_edge.runtime.model import ModelClosedError

ATOL = 2e-5
ORT_PATHS = {"iobinding": OrtConfig(io_binding=True), "plain": OrtConfig(io_binding=False)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("close"))


@pytest.mark.parametrize("path", sorted(ORT_PATHS))
def test_infer_and_set_head_after_close_say_load_it_again(tiny, path):
    model = load_model(tiny["head_inputs"], "ort-cpu", ORT_PATHS[path])
    model.infer(tiny["frames"][:1])
    model.close()
    assert model.closed
    with pytest.raises(ModelClosedError, match=r"is closed; load it again with load_model\(") as info:
        model.infer(tiny["frames"][:1])
    assert isinstance(info.value, RuntimeModelError) and str(tiny["head_inputs"]) in str(info.value)
    with pytest.raises(ModelClosedError, match="is closed"):
        model.set_head(tiny["head"])
    model.close()  # idempotent


@pytest.mark.parametrize("path", sorted(ORT_PATHS))
def test_close_while_a_thread_infers_ends_with_the_clear_error(tiny, path):
    """A pipeline thread inferring in a loop while the main thread closes the model: it finishes or gets
    ModelClosedError, never an AttributeError from a released session."""
    frames = tiny["frames"][:1]
    for _ in range(20):
        model = load_model(tiny["fused"], "ort-cpu", ORT_PATHS[path])
        running, outcome = threading.Event(), []

        def loop(model=model, running=running, outcome=outcome):
            try:
                for i in range(300):
                    model.infer(frames)
                    if i == 2:
                        running.set()
                outcome.append("finished")
            except Exception as exc:  # noqa: BLE001 - the test asserts which exception it was
                outcome.append(exc)
            finally:
                running.set()

        t = threading.Thread(target=loop)
        t.start()
        running.wait()
        model.close()
        t.join()
        assert outcome[0] == "finished" or isinstance(outcome[0], ModelClosedError), repr(outcome[0])
        with pytest.raises(ModelClosedError):
            model.infer(frames)


def test_close_waits_for_the_frame_in_flight(tiny):
    """Ordering by construction: the frame is held inside _run until close() has started."""
    enc, frames = tiny["enc"], tiny["frames"][:2]
    model = load_model(tiny["fused"], "ort-cpu")
    entered, release = threading.Event(), threading.Event()
    real_run = model._run

    def held_run(*args):
        entered.set()
        release.wait()
        return real_run(*args)

    model._run = held_run
    result = []
    worker = threading.Thread(target=lambda: result.append(model.infer(frames)))
    worker.start()
    entered.wait()
    closer = threading.Thread(target=model.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and model.closed  # closed to new calls, but waiting for the frame in flight
    with pytest.raises(ModelClosedError):
        model.infer(frames)  # a new call is refused at once, it does not wait
    release.set()
    worker.join()
    closer.join()
    np.testing.assert_allclose(result[0]["z"], enc.z(frames), atol=ATOL)  # the frame ran on a live session


def test_tensorrt_model_after_close_says_load_it_again(monkeypatch, tmp_path):
    """The same for the native TensorRT backend, on the emulated runtime (tests/fake_trt.py)."""
    from jepa_edge.export.trt_build import TrtBuildConfig, build_engine

    fake = install_fakes(monkeypatch)
    enc = make_encoder(height=8, width=8, latent_dim=4, seed=3)
    onnx_path = make_model(tmp_path / "model.onnx", enc, "head_inputs")
    cfg = TrtBuildConfig(precision="fp32", max_batch=4, max_head=16, timing_cache="off")
    model = load_model(build_engine(onnx_path, None, cfg).engine_path, "tensorrt")
    frames = np.random.default_rng(2).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    model.infer(frames)
    model.close()
    assert fake.cudart.mem == {}  # released
    with pytest.raises(ModelClosedError, match=r"is closed; load it again with load_model\(.*'tensorrt'"):
        model.infer(frames)
    with pytest.raises(ModelClosedError, match="is closed"):
        model.set_head(reference_head(enc, seed=1))


def test_closing_the_model_under_a_running_pipeline_stops_its_loop(tiny):
    """The deploy loop on a never-ending source ends with reason "model_closed" and its summary, no traceback."""
    from jepa_edge.runtime import run
    from jepa_edge.runtime.sources import ArraySource

    model = load_model(tiny["head_inputs"], "ort-cpu")
    frames = np.repeat(tiny["frames"][:1], 8, axis=0)  # (8, H, W, 3)
    seen, result = threading.Event(), {}

    def on_frame(record, _):
        if record["frame"] >= 10:
            seen.set()

    t = threading.Thread(target=lambda: result.update(s=run(model, ArraySource(frames, loop=True), out=None,
                                                              on_frame=on_frame)), daemon=True)
    t.start()
    assert seen.wait(30)
    model.close()
    t.join(30)
    assert not t.is_alive() and result["s"].reason == "model_closed" and result["s"].frames >= 10
