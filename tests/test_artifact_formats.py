"""The file-format layer: one agent reference, one error base, one head slice, one video writer."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from jepa_edge.artifacts import (
    AgentRef,
    ArtifactError,
    artifact_bytes,
    load_artifact,
    parse_artifact,
    save_artifact,
)
from jepa_edge.bags.pairing import BagError
from jepa_edge.calib.head import FusedHead, HeadOutput
from jepa_edge.calib.postcard import PostcardError
from jepa_edge.calib.probes import ProbeError
from jepa_edge.fleet.keys import FleetKeyError
from jepa_edge.fleet.messages import FleetMessageError
from jepa_edge.runtime.meta import parse_meta
from jepa_edge.runtime.pipeline import open_writer
from jepa_edge.video import VideoError, open_video_writer
from jepa_edge.world.record import RecordingError

AGENT = {"name": "agentA", "fingerprint": "a" * 64, "latent_dim": 8, "view": "top"}


def test_agent_ref_round_trips_the_json_object_files_carry():
    ref = AgentRef.from_dict(AGENT)
    assert ref == AgentRef("agentA", "a" * 64, 8, "top") and ref.to_dict() == AGENT
    assert list(ref.to_dict()) == ["name", "fingerprint", "latent_dim", "view"]
    assert type(AgentRef.checked(AgentRef("b", "f", np.int64(4))).latent_dim) is int
    with pytest.raises(AttributeError):
        ref.name = "other"  # frozen: a file's agent is never edited in place


@pytest.mark.parametrize(("agent", "match"), [
    ({k: v for k, v in AGENT.items() if k != "view"}, r"w.postcard: source must be a dict with keys"),
    ([1, 2], r"must be a dict with keys"),
    ({**AGENT, "latent_dim": 0}, r"source.latent_dim=0 must be a positive integer"),
    ({**AGENT, "latent_dim": True}, r"latent_dim=True"),
    ({**AGENT, "fingerprint": ""}, r"fingerprint must be a non-empty string"),
    ({**AGENT, "name": 3}, r"name and source.view must be strings"),
])
def test_agent_ref_refuses_a_bad_json_object_with_the_callers_error(agent, match):
    with pytest.raises(PostcardError, match=match):
        AgentRef.from_dict(agent, "w.postcard", "source", PostcardError)


def test_every_file_format_error_is_an_artifact_error_and_probe_is_not_postcard():
    for error in (PostcardError, ProbeError, FleetMessageError, FleetKeyError, RecordingError, BagError, VideoError):
        assert issubclass(error, ArtifactError) and issubclass(error, ValueError), error
    assert not issubclass(ProbeError, PostcardError)


def test_artifact_bytes_and_files_read_back_with_kind_version_and_agent(tmp_path):
    meta = {"kind": "thing", "version": 3, "agent": AgentRef.from_dict(AGENT), "score": float("nan")}
    data = artifact_bytes({"w": np.arange(6, dtype=np.float64).reshape(2, 3)}, meta)
    tensors, got = parse_artifact(data, "mem", "thing", 3)
    assert tensors["w"].dtype == np.float32 and tensors["w"].shape == (2, 3)  # (2, 3) stored as float32
    assert got == {"kind": "thing", "version": 3, "agent": AGENT, "score": None}  # NaN → null: strict JSON
    save_artifact(tmp_path / "t.thing.safetensors", {"w": tensors["w"]}, got)
    assert load_artifact(tmp_path / "t.thing.safetensors", "thing", 3)[1] == got
    with pytest.raises(ProbeError, match="this file is a 'thing', not a probe"):
        parse_artifact(data, "mem", "probe", 1, ProbeError)
    with pytest.raises(ArtifactError, match="version 3 is not supported"):
        parse_artifact(data, "mem", "thing", 4)
    with pytest.raises(ArtifactError, match="too short for safetensors"):
        parse_artifact(data[:5], "mem", "thing", 3)


def test_one_head_slice_type_for_built_heads_and_model_metadata():
    out = HeadOutput("danger", 2, 4, "classification", ["safe", "danger"])
    assert out.labels == ("safe", "danger") and out.width == 2
    head = FusedHead(np.zeros((4, 8), np.float32), np.zeros(4, np.float32), [out], "a" * 64, 8)
    described = json.loads(json.dumps(head.describe()))
    assert described["outputs"] == [{"name": "danger", "start": 2, "stop": 4, "kind": "classification",
                                     "labels": ["safe", "danger"]}]
    meta = {"format": "jepa-edge/onnx", "version": 1, "mode": "fused", "latent_dim": 8,
            "input": {"name": "frames", "layout": "NHWC", "dtype": "uint8", "channels": "BGR", "height": 16,
                      "width": 16},
            "agent": {"name": "agentB", "fingerprint": "b" * 64, "view": "oblique"},
            "head": {"outputs": described["outputs"]}}
    parsed = parse_meta(json.dumps(meta), "m.onnx")
    assert parsed.head_outputs == [out] and type(parsed.head_outputs[0]) is HeadOutput
    assert parsed.agent == AgentRef("agentB", "b" * 64, 8, "oblique")


def test_one_video_writer_picks_the_codec_by_suffix_and_refuses_what_it_cannot_write(tmp_path):
    frames = np.stack([np.full((16, 24, 3), 40 * k, np.uint8) for k in range(4)])  # (4, 16, 24, 3)
    writer = open_video_writer(tmp_path / "a.avi", 10.0, (24, 16))
    for f in frames:
        writer.write(f)
    writer.release()
    cap = cv2.VideoCapture(str(tmp_path / "a.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 24 and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert cap.get(cv2.CAP_PROP_FOURCC) == cv2.VideoWriter_fourcc(*"MJPG")
    cap.release()
    with pytest.raises(VideoError, match=r"x.gif: a video must be one of \['.avi', '.mkv', '.mp4'\]"):
        open_video_writer(tmp_path / "x.gif", 10.0, (24, 16))
    with pytest.raises(VideoError, match="frame size 24x15 is odd"):
        open_video_writer(tmp_path / "y.avi", 10.0, (24, 15))
    with pytest.raises(VideoError, match="fps must be > 0"):
        open_video_writer(tmp_path / "z.avi", 0.0, (24, 16))
    with pytest.raises(VideoError, match=r"codec 'ZZZZ' in a '.avi' file \(shown.avi\)"):
        open_video_writer(tmp_path / "w.avi", 10.0, (24, 16), "ZZZZ", shown="shown.avi")
    annotated = open_writer(tmp_path / "sub" / "run.mp4", 5.0, 32)  # the run loop's annotated video: same writer
    assert annotated.isOpened()
    annotated.release()
