"""The runtime on ONNX written by the real exporter (`jepa_edge.export`), checked against PyTorch.

Skipped where torch is absent (a Jetson); the runtime itself never imports it.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_fixtures import make_postcard, make_probe, other_agent, write_head_files

torch = pytest.importorskip("torch")

from jepa_edge.artifacts import AgentRef
from jepa_edge.calib.head import build_head
from jepa_edge.runtime import HeadStage, HeadWatcher, HeadWatcherConfig, load_model, run
from jepa_edge.runtime.sources import ArraySource, open_source

ATOL = 1e-4  # ONNX Runtime vs PyTorch on a ViT: reassociated float32 sums


class _Enc:
    """What write_head_files needs of an encoder: agent, fingerprint, latent dim."""

    def __init__(self, agent: AgentRef) -> None:
        self.agent, self.fingerprint, self.latent_dim = agent, agent.fingerprint, agent.latent_dim


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from jepa_edge.export.edge_model import EdgeModel
    from jepa_edge.export.onnx_export import encoder_fingerprint, export_onnx
    from jepa_edge.train.model import Encoder, EncoderConfig

    d = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, latent_dim=16))
    encoder.eval()
    fp = encoder_fingerprint(encoder)
    agent = AgentRef("agentB", fp, 16, "oblique")
    target = other_agent(16)
    head = build_head(fp, 16, make_postcard(agent, target), [make_probe(target, "position", 6)])
    meta = {"name": "agentB", "fingerprint": fp, "view": "oblique"}
    paths = {mode: export_onnx(encoder, meta, d / f"{mode}.onnx", head=None if mode == "encoder_only" else head,
                               mode=mode).path for mode in ("fused", "head_inputs", "encoder_only")}
    src = open_source("sim:oblique?size=16&frames=6&seed=2")
    frames = np.stack([src.read() for _ in range(6)])  # (6, 16, 16, 3) BGR uint8
    with torch.no_grad():
        (z,) = EdgeModel(encoder, None, "encoder_only").eval()(torch.from_numpy(frames))
    return {"paths": paths, "head": head, "frames": frames, "z": z.numpy(), "agent": agent}


def test_every_export_mode_matches_pytorch(exported):
    head, frames, z = exported["head"], exported["frames"], exported["z"]
    want = {"z": z, **head.split(head.apply(z))}
    fused = load_model(exported["paths"]["fused"], "ort-cpu")
    graph = load_model(exported["paths"]["head_inputs"], "ort-cpu")
    graph.set_head(head)
    enc_only = load_model(exported["paths"]["encoder_only"], "ort-cpu")
    cut = load_model(exported["paths"]["fused"], "ort-cpu", encoder_only=True)
    assert enc_only.meta.mode == "encoder_only" and fused.meta.agent_fingerprint == exported["agent"].fingerprint
    outs = {"fused": fused.infer(frames), "head_inputs": graph.infer(frames),
            "encoder_only+numpy": HeadStage(enc_only, "numpy", head)(enc_only.infer(frames)),
            "cut+numpy": HeadStage(cut, "numpy", head)(cut.infer(frames))}
    for name, out in outs.items():
        assert set(out) == set(want), name
        for key, value in want.items():
            np.testing.assert_allclose(out[key], value, atol=ATOL, rtol=0, err_msg=f"{name}:{key}")


def test_exported_head_inputs_model_hot_swaps(exported, tmp_path):
    model = load_model(exported["paths"]["head_inputs"], "ort-cpu")
    enc = _Enc(exported["agent"])
    watcher = HeadWatcher(tmp_path, enc.fingerprint, 16, HeadWatcherConfig(stable_polls=1, min_age_s=0))
    new = {}
    outputs = []

    def on_frame(record, outs):
        outputs.append(outs)
        if record["frame"] == 2:
            new["head"] = write_head_files(tmp_path, enc, seed=4)[0]
            watcher.poll()

    run(model, ArraySource(exported["frames"]), head=exported["head"], watcher=watcher, out=None, on_frame=on_frame)
    z = exported["z"]
    for i, out in enumerate(outputs):
        head = exported["head"] if i <= 2 else new["head"]
        np.testing.assert_allclose(out["position"], head.split(head.apply(z[i : i + 1]))["position"], atol=ATOL)
    assert "danger" in outputs[3] and "danger" not in outputs[2]
