"""INT8 calibration data and the two ways TensorRT can use it (no torch).

Frames come from the built-in simulator (``source="sim"``, one of its views),
a video file, or a recording folder (one camera = ``view``), resized to the
model's input and cut into full batches.

TensorRT has two INT8 workflows, and which one exists depends on its version:

* **implicit** (``int8_method="calibrator"``): ``IInt8EntropyCalibrator2``
  feeds these batches to the builder, which picks per-tensor scales.
  Deprecated since TensorRT 10.1 and removed in 11 (``BuilderFlag.INT8`` and
  ``IBuilderConfig.int8_calibrator`` are gone there).
* **explicit** (``int8_method="qdq"``): the scales are written into the ONNX
  as QuantizeLinear/DequantizeLinear pairs (symmetric int8, zero point 0, as
  TensorRT requires), here by ONNX Runtime's static quantizer calibrated on
  the same frames; TensorRT then builds a strongly typed network from it.
  The head (every node after ``z``) stays in float: its outputs are metric
  values and logits, and a ``head_inputs`` head is only known at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes


class CalibrationError(ValueError):
    """Calibration data that cannot be produced or used as asked."""


@dataclass
class CalibrationConfig:
    source: str = "sim"  # "sim" (built-in simulator), a video file, or a recording folder
    view: str = "top"  # simulator view, or the camera of a recording folder (ignored for a single video)
    n_frames: int = 512  # a few hundred varied frames are enough for per-tensor scales
    batch_size: int = 16  # frames per calibration batch (TensorRT wants full batches: the rest is dropped)
    seed: int = 0  # simulator seed / frame sampling
    cache: str = ""  # TensorRT calibration cache file, read if present and written after; "" = none

    def validate(self) -> None:
        if self.n_frames < 1 or self.batch_size < 1:
            raise CalibrationError("CalibrationConfig.n_frames and batch_size must be >= 1")
        if self.n_frames < self.batch_size:
            raise CalibrationError(
                f"CalibrationConfig.n_frames={self.n_frames} is below batch_size={self.batch_size}: "
                "not one full calibration batch; raise n_frames or lower batch_size"
            )


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def _pick(frames: np.ndarray, n: int, where: str) -> np.ndarray:
    """``n`` frames spread evenly over the clip (all of them if there are fewer)."""
    if len(frames) == 0:
        raise CalibrationError(f"{where}: no frames to calibrate on")
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(np.int64))
    return frames[idx]


def _sim_frames(cfg: CalibrationConfig, height: int, width: int) -> np.ndarray:
    from jepa_edge.world import WorldConfig, render, simulate

    steps = 64  # per episode: objects cross the arena, so episodes × steps covers positions and overlaps
    states = simulate(WorldConfig(), math.ceil(cfg.n_frames / steps), steps, seed=cfg.seed)
    side = max(height, width)
    frames = render(states, cfg.view, size=side, seed=cfg.seed).reshape(-1, side, side, 3)  # (E*T, S, S, 3)
    return _resize(frames[: cfg.n_frames], height, width)


def load_calibration_frames(config: CalibrationConfig, height: int, width: int) -> np.ndarray:
    """(N, height, width, 3) uint8 BGR frames, N a multiple of ``batch_size``."""
    config.validate()
    if config.source == "sim":
        frames = _sim_frames(config, height, width)
    else:
        path = Path(config.source)
        if not path.exists():
            raise CalibrationError(
                f"calibration source {path} does not exist; pass a video file, a recording folder, or 'sim'"
            )
        if path.is_dir():
            from jepa_edge.world import load_recording

            rec = load_recording(path, views=[config.view])
            video = rec.frames[config.view].reshape(-1, *rec.frames[config.view].shape[2:])  # (E*T, H, W, 3)
        else:
            from jepa_edge.world import read_video

            video = read_video(path)
        frames = _resize(_pick(video, config.n_frames, str(path)), height, width)
    n = len(frames) // config.batch_size * config.batch_size
    if n == 0:
        raise CalibrationError(
            f"calibration source {config.source!r} gave {len(frames)} frames, fewer than one batch of "
            f"{config.batch_size}; use a longer video or a smaller batch_size"
        )
    return np.ascontiguousarray(frames[:n], dtype=np.uint8)


def calibration_batches(
    frames: np.ndarray, batch_size: int, head: tuple[np.ndarray, np.ndarray] | None = None
) -> list[dict[str, np.ndarray]]:
    """Feed dicts of full batches; ``head`` (weight, bias) is added for a ``head_inputs`` graph."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise CalibrationError(f"calibration frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    batches = []
    for i in range(0, len(frames) - batch_size + 1, batch_size):
        feed = {"frames": np.ascontiguousarray(frames[i : i + batch_size])}
        if head is not None:
            feed["head_weight"] = np.ascontiguousarray(head[0], np.float32)
            feed["head_bias"] = np.ascontiguousarray(head[1], np.float32)
        batches.append(feed)
    if not batches:
        raise CalibrationError(f"{len(frames)} calibration frames do not fill one batch of {batch_size}")
    return batches


# ---- implicit INT8: TensorRT's entropy calibrator ------------------------------------------


def make_entropy_calibrator(trt: Any, batches: list[dict[str, np.ndarray]], cache_path: str = "") -> Any:
    """An ``IInt8EntropyCalibrator2`` that copies each batch to the GPU on request.

    ``trt`` is the imported ``tensorrt`` module (this file never imports it).
    Call ``.free()`` after the build to release the device buffers.
    """
    from jepa_edge.runtime.backend_trt import cuda_call, import_cudart

    cudart = import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # the pybind11 base must be initialised explicitly
            self.batches, self.index = batches, 0
            self.cache_path = Path(cache_path) if cache_path else None
            self.device = {name: cuda_call(cudart.cudaMalloc(a.nbytes), f"cudaMalloc({name})")
                           for name, a in batches[0].items()}

        def get_batch_size(self) -> int:
            return int(batches[0]["frames"].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None  # tells TensorRT calibration is done
            feed = self.batches[self.index]
            self.index += 1
            unknown = [n for n in names if n not in feed]
            if unknown:
                raise CalibrationError(f"TensorRT asks calibration data for inputs {unknown}; have {sorted(feed)}")
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            for name in names:
                a = feed[name]
                cuda_call(cudart.cudaMemcpy(self.device[name], a.ctypes.data, a.nbytes, kind), f"cudaMemcpy({name})")
            return [int(self.device[n]) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            if self.cache_path is not None and self.cache_path.is_file():
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is not None:
                atomic_write_bytes(self.cache_path, bytes(cache))

        def free(self) -> None:
            for name, ptr in self.device.items():
                cuda_call(cudart.cudaFree(ptr), f"cudaFree({name})")
            self.device = {}

    return EntropyCalibrator()


# ---- explicit INT8: Q/DQ ONNX ---------------------------------------------------------------


def downstream_indices(nodes: list[Any], tensor: str) -> list[int]:
    """Positions in ``nodes`` (a graph's nodes, topologically sorted as ONNX requires) of those that
    (transitively) consume ``tensor``."""
    reached, out = {tensor}, []
    for k, node in enumerate(nodes):
        if reached.intersection(node.input):
            out.append(k)
            reached.update(node.output)
    return out


def downstream_nodes(model: Any, tensor: str) -> list[Any]:
    """Nodes of ``model.graph`` that (transitively) consume ``tensor``, in graph order."""
    nodes = list(model.graph.node)
    return [nodes[k] for k in downstream_indices(nodes, tensor)]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feed dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_qdq(onnx_path: str | Path, out_path: str | Path, batches: list[dict[str, np.ndarray]]) -> Path:
    """Write a Q/DQ (explicitly quantized) copy of ``onnx_path`` that TensorRT accepts.

    Symmetric int8 activations and weights (zero point 0), per-tensor, only on
    Conv/MatMul/Gemm, biases left in float; nodes after ``z`` (the head) are
    not quantized. Entropy calibration on ``batches``.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = onnx.load(str(onnx_path))
    head = [n.name for n in downstream_nodes(model, "z")]
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:
        raise CalibrationError(f"{onnx_path}: {len(unnamed)} nodes have no name; re-export with `jepa-edge export`")
    with tempfile.TemporaryDirectory(prefix="jepa-edge-qdq-") as tmp:
        tmp_out = Path(tmp) / "qdq.onnx"
        quantize_static(
            str(onnx_path), str(tmp_out), _Reader(batches),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,  # TensorRT: signed int8 only
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=head,
            per_channel=False,
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "CalibTensorRangeSymmetric": True},
        )
        quantized = onnx.load(str(tmp_out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)  # keep the jepa_edge contract
    atomic_write_bytes(out_path, quantized.SerializeToString())
    return out_path
