"""MCAP recording of a run: Foxglove schemas, exact values through JSON, atomic write, path checks."""

from __future__ import annotations

import base64
import io
import json
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("mcap")
from mcap.reader import make_reader
from onnx_fixtures import grouped, make_encoder, make_model, reference_head

from jepa_edge.artifacts import ArtifactError
from jepa_edge.bags.mcap_out import McapRecorder, McapUnavailableError, read_mcap_summary
from jepa_edge.runtime import ArraySource, PipelineConfig, load_model, open_source, run
from jepa_edge.runtime.outputs import softmax
from jepa_edge.runtime.pipeline import annotate

T0 = 1_700_000_000.123456
LABELS = {"position": ("regression", ["obj0_x", "obj0_y", "obj1_x", "obj1_y"]),
          "danger": ("classification", ["low", "mid", "high"])}
STAGES = ("wait", "read", "preprocess", "infer", "head", "e2e")


def sim_frames(n: int) -> list[np.ndarray]:
    with open_source(f"sim:top?size=32&seed=1&frames={n}") as src:
        src.open()
        frames = [src.read() for _ in range(n)]
    assert all(f is not None for f in frames)
    return frames


def fake_frame(i: int, rng: np.random.Generator, latent: bool) -> tuple[dict, dict]:
    """A record and outputs shaped like the pipeline's (``frame_record``)."""
    outputs = {"position": rng.random((1, 4), dtype=np.float32), "danger": rng.standard_normal((1, 3), np.float32)}
    if latent:
        outputs["z"] = rng.standard_normal((1, 8), np.float32)
    record = {"frame": i, "t": round(T0 + 0.0333 * i, 6), "pts": None, "head_version": 1 + i // 3,
              "outputs": {k: v[0].tolist() for k, v in outputs.items()},
              "latency_ms": {s: round(float(rng.random() * 10), 3) for s in STAGES}, "dropped": i // 2, "corrupt": 0}
    return record, outputs


def messages(path) -> dict[str, list]:
    """topic → [(schema name, log_time, publish_time, sequence, decoded JSON)] in file order."""
    out: dict[str, list] = {}
    with open(path, "rb") as f:
        for schema, channel, msg in make_reader(f, validate_crcs=True).iter_messages(log_time_order=False):
            out.setdefault(channel.topic, []).append(
                (schema.name, msg.log_time, msg.publish_time, msg.sequence, json.loads(msg.data)))
    return out


def decode_jpeg(msg: dict) -> np.ndarray:
    assert msg["format"] == "jpeg" and msg["frame_id"]
    return cv2.imdecode(np.frombuffer(base64.b64decode(msg["data"]), np.uint8), cv2.IMREAD_COLOR)


def jpeg_roundtrip(img: np.ndarray, quality: int = 90) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def stamp_ns(msg: dict) -> int:
    return msg["timestamp"]["sec"] * 1_000_000_000 + msg["timestamp"]["nsec"]


def test_round_trip_foxglove_schemas_exact_values_and_times(tmp_path):
    n, rng, path = 5, np.random.default_rng(0), tmp_path / "run.mcap"
    frames = sim_frames(n)
    rec = McapRecorder(path, emit_latent=True, meta={"model": "tiny.onnx", "latent_dim": 8})
    fed = []
    for i, img in enumerate(frames):
        record, outputs = fake_frame(i, rng, latent=True)
        rec.frame(img, record, outputs, LABELS)
        fed.append((record, outputs))
    rec.close()

    summary = read_mcap_summary(path)  # CRCs, counts against the statistics, every JSON message parsed
    want = {"/camera/image": "foxglove.CompressedImage", "/outputs/position": "jepa_edge.Output",
            "/outputs/danger": "jepa_edge.Output", "/latency": "jepa_edge.Latency", "/z": "jepa_edge.Latent"}
    assert {t: c["schema"] for t, c in summary["channels"].items()} == want
    assert all(c["messages"] == n and c["message_encoding"] == "json" and c["schema_encoding"] == "jsonschema"
               for c in summary["channels"].values())
    assert summary["messages"] == n * len(want)
    meta = summary["metadata"]["jepa_edge"]
    assert meta["model"] == "tiny.onnx" and json.loads(meta["latent_dim"]) == 8 and meta["emit_latent"] == "true"

    got = messages(path)
    capture_ns = [round(r["t"] * 1e6) * 1000 for r, _ in fed]
    assert capture_ns == sorted(set(capture_ns))  # the fed times increase strictly
    for topic, rows in got.items():
        assert [r[0] for r in rows] == [want[topic]] * n
        assert [r[1] for r in rows] == capture_ns == [r[2] for r in rows], topic  # log = publish = capture time
        assert [stamp_ns(r[4]) for r in rows] == capture_ns, topic
        assert [r[3] for r in rows] == list(range(n)), topic  # sequence = frame index
    for i, ((record, outputs), img) in enumerate(zip(fed, frames)):
        decoded = decode_jpeg(got["/camera/image"][i][4])
        assert psnr(decoded, img) > 25 and np.array_equal(decoded, jpeg_roundtrip(img))  # sim frames are noisy
        for name, (kind, cols) in LABELS.items():
            msg = got[f"/outputs/{name}"][i][4]
            row = outputs[name][0].astype(np.float64)
            want = softmax(row) if kind == "classification" else row  # probabilities, as in the JSON lines
            assert msg["values"] == want.tolist()
            assert (msg["kind"], msg["labels"], msg["frame"], msg["head_version"]) == (
                kind, cols, i, record["head_version"])
        lat = got["/latency"][i][4]
        assert {k: lat[f"{k}_ms"] for k in STAGES} == record["latency_ms"]
        assert (lat["frame"], lat["dropped"], lat["corrupt"]) == (i, record["dropped"], 0)
        assert got["/z"][i][4]["values"] == outputs["z"][0].tolist()


def test_annotated_frames_and_no_latent_by_default(tmp_path):
    path, rng, frames = tmp_path / "a.mcap", np.random.default_rng(1), sim_frames(2)
    with McapRecorder(path, annotate=True, annotate_size=64) as rec:
        fed = [fake_frame(i, rng, latent=True) for i in range(2)]
        for img, (record, outputs) in zip(frames, fed):
            rec.frame(img, record, outputs, LABELS)
    got = messages(path)
    assert "/z" not in got and "/outputs/z" not in got  # the latent only with emit_latent
    for img, (record, outputs), row in zip(frames, fed, got["/camera/image"]):
        drawn = annotate(img, outputs, LABELS, 64, f"#{record['frame']} head v{record['head_version']} "
                                                   f"drop {record['dropped']}")
        decoded = decode_jpeg(row[4])
        assert decoded.shape == (64, 64, 3) and psnr(decoded, drawn) > psnr(decoded, cv2.resize(img, (64, 64)))


def test_path_checks_before_any_frame_and_atomic_close(tmp_path):
    (tmp_path / "taken.mcap").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        McapRecorder(tmp_path / "taken.mcap")
    with pytest.raises(ValueError, match=r"\.mcap"):
        McapRecorder(tmp_path / "run.bag")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        McapRecorder(tmp_path / "missing" / "run.mcap")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mcap"]
    assert (tmp_path / "taken.mcap").read_bytes() == b"keep me"

    rec = McapRecorder(tmp_path / "taken.mcap", overwrite=True)
    rng = np.random.default_rng(2)
    for i, img in enumerate(sim_frames(3)):
        rec.frame(img, *fake_frame(i, rng, latent=False), LABELS)
    assert (tmp_path / "taken.mcap").read_bytes() == b"keep me"  # the old file stays until close
    rec.close()
    rec.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mcap"]  # no temporary sibling left
    assert read_mcap_summary(tmp_path / "taken.mcap")["channels"]["/latency"]["messages"] == 3
    with pytest.raises(RuntimeError, match="closed"):
        rec.frame(sim_frames(1)[0], *fake_frame(3, rng, latent=False), LABELS)


def test_empty_run_is_a_valid_recording(tmp_path):
    McapRecorder(tmp_path / "empty.mcap", meta={"agent": "B"}).close()
    summary = read_mcap_summary(tmp_path / "empty.mcap")
    assert summary["messages"] == 0 and summary["metadata"]["jepa_edge"]["agent"] == "B"


def test_write_failure_surfaces_and_leaves_nothing(tmp_path, monkeypatch):
    rec, rng = McapRecorder(tmp_path / "fail.mcap"), np.random.default_rng(3)
    frames = sim_frames(2)
    rec.frame(frames[0], *fake_frame(0, rng, latent=False), LABELS)  # starts the writer
    rec.flush()  # frame 0 is on disk: the failure below hits frame 1, whatever the writer thread's pace

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rec._writer, "add_message", full)
    rec.frame(frames[1], *fake_frame(1, rng, latent=False), LABELS)
    with pytest.raises(OSError, match=r"fail\.mcap: MCAP recording failed .*No space left"):
        rec.close()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_truncated_file_is_refused(tmp_path):
    path = tmp_path / "run.mcap"
    with McapRecorder(path) as rec:
        rng = np.random.default_rng(4)
        for i, img in enumerate(sim_frames(4)):
            rec.frame(img, *fake_frame(i, rng, latent=False), LABELS)
    data = bytearray(path.read_bytes())
    (tmp_path / "short.mcap").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="short.mcap"):
        read_mcap_summary(tmp_path / "short.mcap")
    summary_only = bytearray(data)
    summary_only[data.rindex(b"jepa_edge.Latency")] ^= 0x20  # the schema name repeated in the summary section
    (tmp_path / "summary.mcap").write_bytes(bytes(summary_only))
    with pytest.raises(ArtifactError, match="summary CRC"):
        read_mcap_summary(tmp_path / "summary.mcap")
    data[len(data) // 3] ^= 0xFF  # inside the compressed chunk: the chunk CRC no longer matches
    (tmp_path / "flip.mcap").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="flip.mcap"):
        read_mcap_summary(tmp_path / "flip.mcap")


def test_missing_mcap_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mcap", None)
    with pytest.raises(McapUnavailableError, match=r"pip install 'jepa-edge\[robot\]'"):
        McapRecorder(tmp_path / "x.mcap")


def test_pipeline_run_records_every_frame_like_the_json_lines(tmp_path):
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=2)
    onnx_path = make_model(tmp_path / "fused.onnx", enc, "fused", reference_head(enc, seed=5))
    frames = np.stack(sim_frames(6))
    path, out = tmp_path / "run.mcap", io.StringIO()
    rec = McapRecorder(path, emit_latent=True)
    summary = run(load_model(onnx_path, "ort-cpu"), ArraySource(frames), PipelineConfig(emit_latent=True),
                  out=out, sinks=[rec])
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert summary.frames == len(lines) == 6
    got = messages(path)
    assert set(got) == {"/camera/image", "/latency", "/z", "/outputs/position", "/outputs/z_mapped"}
    assert all(len(rows) == 6 for rows in got.values())
    for i, line in enumerate(lines):
        ns = round(line["t"] * 1e6) * 1000
        assert all(rows[i][1] == ns for rows in got.values())
        named = grouped(line["outputs"])
        for name in ("position", "z_mapped"):
            np.testing.assert_allclose(got[f"/outputs/{name}"][i][4]["values"], named[name], atol=1e-6)
        assert got["/z"][i][4]["values"] == line["outputs"]["z"]
        assert {k: got["/latency"][i][4][f"{k}_ms"] for k in STAGES} == line["latency_ms"]
        assert np.array_equal(decode_jpeg(got["/camera/image"][i][4]), jpeg_roundtrip(frames[i]))
