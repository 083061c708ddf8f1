"""INT8 range calibration data and the two ways TensorRT can use it (no torch).

"Calibration" elsewhere in jepa-edge means fitting W between agents; here it
is only TensorRT's measurement of activation ranges for INT8, so this module,
its config (``Int8Config``) and the CLI options (``--int8-source``,
``--int8-frames``) say "int8".

Frames come from the built-in simulator (``source="sim"``: the agent's own
view, read from the ONNX metadata, in its world; ``"sim:VIEW"`` for another
view of the 2-D world, ``"sim3d:VIEW"`` of the 3-D world), a video file,
or a recording folder (the camera named like the agent's view). Videos are
streamed: only the ``n_frames`` frames picked evenly over the clip are kept,
each downscaled to the model's input size as it is decoded, and
``n_frames × H × W × 3`` must fit ``Int8Config.max_bytes`` — a whole video is
never loaded.

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

from jepa_edge.artifacts import atomic_write_bytes, read_json_capped
from jepa_edge.runtime.errors import SourceOpenError
from jepa_edge.runtime.sources import SIM_PREFIXES, check_sim_view


class Int8DataError(ValueError):
    """INT8 range-calibration data that cannot be produced or used as asked."""


@dataclass
class Int8Config:
    source: str = "sim"  # "sim" (simulator, the agent's view), "sim:VIEW", "sim3d:VIEW", a video or a recording folder
    view: str = ""  # simulator view / camera of a recording folder; "" = the agent's own view (ONNX metadata)
    n_frames: int = 512  # a few hundred varied frames are enough for per-tensor scales
    batch_size: int = 16  # frames per calibration batch (TensorRT wants full batches: the rest is dropped)
    seed: int = 0  # simulator seed
    cache: str = ""  # TensorRT calibration cache file, read if present and written after; "" = none
    max_bytes: int = 256 << 20  # cap on the frames held in memory (n_frames × H × W × 3 at the model's size)

    def validate(self) -> None:
        if self.n_frames < 1 or self.batch_size < 1:
            raise Int8DataError("Int8Config.n_frames and batch_size must be >= 1")
        if self.n_frames < self.batch_size:
            raise Int8DataError(
                f"Int8Config.n_frames={self.n_frames} is below batch_size={self.batch_size}: "
                "not one full calibration batch; raise --int8-frames or lower batch_size"
            )
        if self.max_bytes < 1:
            raise Int8DataError("Int8Config.max_bytes must be >= 1")

    @property
    def is_sim(self) -> bool:
        return self.source == "sim" or self.source.startswith(tuple(SIM_PREFIXES.values()))

    def resolved_view(self, agent_view: str) -> str:
        """The simulator view / recording camera: ``sim:VIEW`` / ``sim3d:VIEW``, else ``view``, else the agent's
        own view."""
        view = self.source.split(":", 1)[1] if self.source.startswith(tuple(SIM_PREFIXES.values())) else self.view
        view = view or agent_view
        if not view:
            raise Int8DataError("the ONNX metadata names no agent view, so the INT8 frames' view is unknown; "
                                "pass --int8-source sim:VIEW or sim3d:VIEW (or a video file)")
        return view

    def check_sim_view(self, view: str) -> None:
        """``sim:VIEW`` names a view of the 2-D world, ``sim3d:VIEW`` one of the 3-D world (one line otherwise)."""
        named = next((k for k, prefix in SIM_PREFIXES.items() if self.source.startswith(prefix)), None)
        try:  # bare "sim" (named None): the agent's own view, of either world
            check_sim_view(self.source, view, named)
        except SourceOpenError as exc:
            raise Int8DataError(f"--int8-source: {exc}") from exc


def _check_budget(n: int, height: int, width: int, cfg: Int8Config) -> None:
    need = n * height * width * 3
    if need > cfg.max_bytes:
        raise Int8DataError(f"{n} INT8 frames of {width}x{height} need {need >> 20} MiB, over the "
                            f"{cfg.max_bytes >> 20} MiB cap (Int8Config.max_bytes); lower --int8-frames")


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[:2] == (height, width):
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _sim_frames(cfg: Int8Config, view: str, height: int, width: int) -> np.ndarray:
    from jepa_edge.world.worlds import episode_frames

    cfg.check_sim_view(view)
    steps = 64  # per episode: objects cross the arena, so episodes × steps covers positions and overlaps
    side = max(height, width)  # rendered at the model's size, never larger
    frames, _ = episode_frames(view, math.ceil(cfg.n_frames / steps), steps, side, cfg.seed)  # view's world
    frames = frames.reshape(-1, side, side, 3)  # (E*T, S, S, 3)
    return np.stack([_resize(f, height, width) for f in frames[: cfg.n_frames]])


def stream_video_frames(path: Path, n: int, height: int, width: int) -> np.ndarray:
    """Up to ``n`` frames spread evenly over a video, each resized as it is decoded → (n', H, W, 3) uint8."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise Int8DataError(f"{path}: OpenCV cannot open this video for INT8 frames (corrupt or unsupported "
                                "codec); re-encode it or pass --int8-source sim")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        want = set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist()) if total > 0 else None
        last = max(want) if want else None
        out = np.empty((n, height, width, 3), np.uint8)  # the only frame memory held
        k = i = 0
        while k < n and (last is None or i <= last):
            if want is not None and i not in want:
                if not cap.grab():  # skipped frames are demuxed, never converted or kept
                    break
            else:
                ok, frame = cap.read()
                if not ok:
                    break
                out[k] = _resize(frame, height, width)
                k += 1
            i += 1
    finally:
        cap.release()
    if k == 0:
        raise Int8DataError(f"{path}: no decodable frames for INT8 range calibration")
    return out[:k]


def _recording_video(folder: Path, view: str) -> Path:
    """The video of camera ``view`` in a recording folder (simulator layout or one video per camera)."""
    from jepa_edge.world import VIDEO_EXTENSIONS

    meta_file = folder / "recording.json"
    if meta_file.is_file():
        files = read_json_capped(meta_file, "recording.json", "re-record it").get("files", {})
        name = files.get(view) if isinstance(files, dict) else None
        if isinstance(name, str) and Path(name).name == name:  # a plain file name: never leaves the folder
            return folder / name
    else:
        for ext in VIDEO_EXTENSIONS:
            if (folder / f"{view}{ext}").is_file():
                return folder / f"{view}{ext}"
    raise Int8DataError(f"{folder}: recording has no camera {view!r} for INT8 frames; pass --int8-source with "
                        "a video file, or sim:VIEW / sim3d:VIEW")


def load_int8_frames(config: Int8Config, height: int, width: int, agent_view: str = "") -> np.ndarray:
    """(N, height, width, 3) uint8 BGR frames, N a multiple of ``batch_size``, within ``max_bytes``."""
    config.validate()
    _check_budget(config.n_frames, height, width, config)
    if config.is_sim:
        frames = _sim_frames(config, config.resolved_view(agent_view), height, width)
    else:
        path = Path(config.source)
        if not path.exists():
            raise Int8DataError(f"INT8 source {path} does not exist; pass a video file, a recording folder, "
                                "or 'sim'")
        if path.is_dir():
            path = _recording_video(path, config.resolved_view(agent_view))
        frames = stream_video_frames(path, config.n_frames, height, width)
    n = len(frames) // config.batch_size * config.batch_size
    if n == 0:
        raise Int8DataError(
            f"INT8 source {config.source!r} gave {len(frames)} frames, fewer than one batch of "
            f"{config.batch_size}; use a longer video or a smaller batch_size"
        )
    return np.ascontiguousarray(frames[:n], dtype=np.uint8)


def int8_batches(
    frames: np.ndarray, batch_size: int, head: tuple[np.ndarray, np.ndarray] | None = None
) -> list[dict[str, np.ndarray]]:
    """Feed dicts of full batches (views of ``frames``); ``head`` (weight, bias) is added for a head_inputs graph."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise Int8DataError(f"INT8 frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    frames = np.ascontiguousarray(frames)
    batches = []
    for i in range(0, len(frames) - batch_size + 1, batch_size):
        feed = {"frames": frames[i : i + batch_size]}
        if head is not None:
            feed["head_weight"] = np.ascontiguousarray(head[0], np.float32)
            feed["head_bias"] = np.ascontiguousarray(head[1], np.float32)
        batches.append(feed)
    if not batches:
        raise Int8DataError(f"{len(frames)} INT8 frames do not fill one batch of {batch_size}")
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
                raise Int8DataError(f"TensorRT asks calibration data for inputs {unknown}; have {sorted(feed)}")
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
        raise Int8DataError(f"{onnx_path}: {len(unnamed)} nodes have no name; re-export with `jepa-edge export`")
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
