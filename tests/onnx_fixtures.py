"""Tiny ONNX models that follow the export contract (docs/FORMATS.md), built with onnx.helper.

No torch and no exporter: ``frames uint8 [B,H,W,3] → Cast → /255 → flatten →
MatMul → Add → Tanh → z``, then a fused head (one Gemm, a Slice per named
output) or the ``head_inputs`` head (Gemm with ``head_weight``/``head_bias``
inputs). ``TinyEncoder.z`` is the same computation in numpy, so tests can
check every runtime path against an independent reference. Postcards and
probes are written with the real calib savers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jepa_edge.artifacts import AgentRef
from jepa_edge.calib.fingerprint import fingerprint_arrays
from jepa_edge.calib.head import FusedHead, build_head
from jepa_edge.calib.postcard import Postcard, save_postcard
from jepa_edge.calib.probes import Probe, save_probe

OPSET = 17


@dataclass
class TinyEncoder:
    height: int
    width: int
    weight: np.ndarray  # (H*W*3, D) float32
    bias: np.ndarray  # (D,)
    name: str = "agentB"
    view: str = "oblique"

    @property
    def latent_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def fingerprint(self) -> str:
        return fingerprint_arrays({"proj.weight": self.weight, "proj.bias": self.bias})

    @property
    def agent(self) -> AgentRef:
        return AgentRef(self.name, self.fingerprint, self.latent_dim, self.view)

    def z(self, frames: np.ndarray) -> np.ndarray:
        """Numpy reference of the graph: (B, H, W, 3) uint8 → (B, D) float32."""
        x = frames.astype(np.float32) / np.float32(255.0)
        x = x.reshape(len(frames), -1)  # (B, H*W*3)
        return np.tanh(x @ self.weight + self.bias).astype(np.float32)


def make_encoder(height: int = 16, width: int = 16, latent_dim: int = 8, seed: int = 0, **kw) -> TinyEncoder:
    rng = np.random.default_rng(seed)
    n_in = height * width * 3
    weight = (rng.standard_normal((n_in, latent_dim)) / np.sqrt(n_in) * 4).astype(np.float32)
    bias = (0.1 * rng.standard_normal(latent_dim)).astype(np.float32)
    return TinyEncoder(height, width, weight, bias, **kw)


def contract_meta(enc: TinyEncoder, mode: str, head: FusedHead | None) -> dict:
    outputs = [] if head is None or mode != "fused" else [
        {"name": o.name, "start": o.start, "stop": o.stop, "kind": o.kind} for o in head.outputs
    ]
    return {
        "format": "jepa-edge/onnx", "version": 1, "mode": mode,
        "input": {"name": "frames", "layout": "NHWC", "dtype": "uint8", "channels": "BGR",
                  "height": enc.height, "width": enc.width},
        "latent_dim": enc.latent_dim,
        "agent": {"name": enc.name, "fingerprint": enc.fingerprint, "view": enc.view},
        "head": {"outputs": outputs},
    }


def _encoder_nodes(enc: TinyEncoder) -> tuple[list, list]:
    n_in = enc.height * enc.width * 3
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
        numpy_helper.from_array(np.array([-1, n_in], np.int64), "flat_shape"),
        numpy_helper.from_array(enc.weight, "proj_w"),
        numpy_helper.from_array(enc.bias, "proj_b"),
    ]
    nodes = [
        helper.make_node("Cast", ["frames"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_f", "c255"], ["x_n"]),
        helper.make_node("Reshape", ["x_n", "flat_shape"], ["x_flat"]),  # (B, H*W*3)
        helper.make_node("MatMul", ["x_flat", "proj_w"], ["x_proj"]),
        helper.make_node("Add", ["x_proj", "proj_b"], ["x_pre"]),
        helper.make_node("Tanh", ["x_pre"], ["z"]),  # (B, D)
    ]
    return nodes, inits


def make_model(path: str | Path, enc: TinyEncoder, mode: str = "fused", head: FusedHead | None = None) -> Path:
    """Write a contract ONNX: mode "fused" (needs ``head``) or "head_inputs"."""
    nodes, inits = _encoder_nodes(enc)
    D = enc.latent_dim
    frames = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["B", enc.height, enc.width, 3])
    inputs = [frames]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", D])]
    if mode == "fused":
        if head is None:
            raise ValueError("a fused model needs a head")
        inits += [numpy_helper.from_array(head.weight, "fused_w"), numpy_helper.from_array(head.bias, "fused_b")]
        nodes.append(helper.make_node("Gemm", ["z", "fused_w", "fused_b"], ["head_all"], transB=1))  # (B, K)
        for o in head.outputs:
            for suffix, value in (("start", o.start), ("stop", o.stop)):
                inits.append(numpy_helper.from_array(np.array([value], np.int64), f"{o.name}_{suffix}"))
            inits.append(numpy_helper.from_array(np.array([1], np.int64), f"{o.name}_axis"))
            nodes.append(helper.make_node(
                "Slice", ["head_all", f"{o.name}_start", f"{o.name}_stop", f"{o.name}_axis"], [o.name]))
            outputs.append(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["B", o.width]))
    elif mode == "head_inputs":
        inputs += [
            helper.make_tensor_value_info("head_weight", TensorProto.FLOAT, ["K", D]),
            helper.make_tensor_value_info("head_bias", TensorProto.FLOAT, ["K"]),
        ]
        nodes.append(helper.make_node("Gemm", ["z", "head_weight", "head_bias"], ["head"], transB=1))  # (B, K)
        outputs.append(helper.make_tensor_value_info("head", TensorProto.FLOAT, ["B", "K"]))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    graph = helper.make_graph(nodes, "tiny_jepa", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    helper.set_model_props(model, {"jepa_edge": json.dumps(contract_meta(enc, mode, head))})
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


# ---- postcards and probes ------------------------------------------------------------------
def make_postcard(source: AgentRef, target: AgentRef, seed: int = 1, name: str = "B_to_A") -> Postcard:
    rng = np.random.default_rng(seed)
    s, t = source.latent_dim, target.latent_dim
    return Postcard(
        weight=(rng.standard_normal((t, s)) / np.sqrt(s)).astype(np.float32),
        bias=(0.1 * rng.standard_normal(t)).astype(np.float32),
        source_mean=np.zeros(s, np.float32), source_scale=np.ones(s, np.float32),
        target_mean=np.zeros(t, np.float32), target_scale=np.ones(t, np.float32),
        name=name, source=source, target=target, estimator="procrustes", n_anchors=100,
    )


def make_probe(agent: AgentRef, name: str = "position", k: int = 6, seed: int = 2, task: str = "regression") -> Probe:
    rng = np.random.default_rng(seed)
    d = agent.latent_dim
    labels = [f"obj{i // 2}_{'xy'[i % 2]}" for i in range(k)] if task == "regression" else [f"c{i}" for i in range(k)]
    return Probe((rng.standard_normal((k, d)) / np.sqrt(d)).astype(np.float32),
                 (0.5 + 0.1 * rng.standard_normal(k)).astype(np.float32), name, task, labels, agent)


def other_agent(latent_dim: int, name: str = "agentA", view: str = "top") -> AgentRef:
    return AgentRef(name, "a" * 64, latent_dim, view)


def write_head_files(folder: str | Path, enc: TinyEncoder, seed: int = 1) -> tuple[FusedHead, list[Path]]:
    """postcard B→A + a position probe on A + a danger probe on B itself; returns the head they build."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = other_agent(enc.latent_dim)
    pc = make_postcard(enc.agent, target, seed=seed)
    pos = make_probe(target, "position", 6, seed=seed + 10)
    danger = make_probe(enc.agent, "danger", 2, seed=seed + 20, task="classification")
    paths = [folder / "b_to_a.postcard.safetensors", folder / "position.probe.safetensors",
             folder / "danger.probe.safetensors"]
    save_postcard(paths[0], pc)
    save_probe(paths[1], pos)
    save_probe(paths[2], danger)
    # the watcher loads probes in name order: danger, position
    return build_head(enc.fingerprint, enc.latent_dim, pc, [danger, pos]), paths


def reference_head(enc: TinyEncoder, seed: int = 1) -> FusedHead:
    """A head for ``enc`` without files (for building fused models)."""
    target = other_agent(enc.latent_dim)
    pc = make_postcard(enc.agent, target, seed=seed)
    return build_head(enc.fingerprint, enc.latent_dim, pc, [make_probe(target, "position", 6, seed=seed + 10)])


# ---- TensorRT (only called by @pytest.mark.trt tests, on a machine with a GPU) -----------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, max_batch: int = 8, max_head: int = 32) -> Path:
    """An fp32 engine + sidecar built by the real ``jepa_edge.export.trt_build.build_engine``."""
    from jepa_edge.export.trt_build import TrtBuildConfig
    from jepa_edge.export.trt_build import build_engine as real_build

    cfg = TrtBuildConfig(precision="fp32", max_batch=max_batch, max_head=max_head, timing_cache="off")
    return real_build(onnx_path, engine_path, cfg).engine_path


def tiny_models(folder: str | Path, enc_seed: int = 0, frames_seed: int = 1) -> dict:
    """A 16x12 encoder with its reference head, exported fused and head_inputs, plus 5 random frames."""
    folder = Path(folder)
    enc = make_encoder(height=16, width=12, latent_dim=8, seed=enc_seed)
    head = reference_head(enc)
    return {
        "enc": enc,
        "head": head,
        "fused": make_model(folder / "fused.onnx", enc, "fused", head),
        "head_inputs": make_model(folder / "head_inputs.onnx", enc, "head_inputs"),
        "frames": np.random.default_rng(frames_seed).integers(0, 256, (5, 16, 12, 3), dtype=np.uint8),
    }


def grouped(named: dict) -> dict[str, list]:
    """A JSON line's named outputs (``position.obj0.x`` → v) grouped back per output, columns in order."""
    out: dict[str, list] = {}
    for key, value in named.items():
        if isinstance(value, list):  # a latent (z, z_mapped) stays a vector
            out[key] = value
        else:
            out.setdefault(key.split(".", 1)[0], []).append(value)
    return out


def expected_named(head: FusedHead, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a JSON line should hold per output for ``head.split(...)`` values: probabilities for classification."""
    from jepa_edge.runtime.outputs import softmax

    kinds = {o.name: o.kind for o in head.outputs}
    return {k: softmax(v[0]) if kinds.get(k) == "classification" else v[0] for k, v in values.items()}
