"""Edge runtime: run an exported encoder + head on a camera, file or stream (no torch).

Only numpy, OpenCV and ONNX Runtime are needed here; TensorRT / cuda-python
(``pip install 'jepa-edge[trt]'``) and onnxruntime-gpu (``'jepa-edge[gpu]'``)
are imported inside the functions that use them.

    model = load_model("agentB.onnx", backend="ort-cpu")
    watcher = HeadWatcher("inbox/", model.meta.agent_fingerprint, model.meta.latent_dim).start()
    run(model, open_source("0"), PipelineConfig(max_frames=1000), watcher=watcher)
"""

from jepa_edge.runtime.backend_ort import OrtConfig
from jepa_edge.runtime.backend_trt import TrtConfig
from jepa_edge.runtime.backends import BACKENDS, available_backends, load_model
from jepa_edge.runtime.bench import BenchConfig, bench_table, benchmark
from jepa_edge.runtime.capture import Capture, CaptureConfig, CaptureStats
from jepa_edge.runtime.errors import (
    BackendUnavailableError,
    CorruptFrame,
    HeadModeError,
    RuntimeModelError,
    SourceDisconnected,
    SourceError,
    SourceLostError,
    SourceOpenError,
)
from jepa_edge.runtime.headswap import HeadStage, HeadWatcher, HeadWatcherConfig
from jepa_edge.runtime.meta import ModelMeta
from jepa_edge.runtime.model import Model
from jepa_edge.runtime.pipeline import PipelineConfig, RunSummary, preprocess, run
from jepa_edge.runtime.sources import ArraySource, Frame, Source, jetson_csi_pipeline, open_source
from jepa_edge.runtime.stats import LatencySummary, drift, percentile, rss_kb, summarize

__all__ = [
    "BACKENDS", "ArraySource", "BackendUnavailableError", "BenchConfig", "Capture", "CaptureConfig",
    "CaptureStats", "CorruptFrame", "Frame", "HeadModeError", "HeadStage", "HeadWatcher", "HeadWatcherConfig",
    "LatencySummary", "Model", "ModelMeta", "OrtConfig", "PipelineConfig", "RunSummary", "RuntimeModelError",
    "Source", "SourceDisconnected", "SourceError", "SourceLostError", "SourceOpenError", "TrtConfig",
    "available_backends", "bench_table", "benchmark", "drift", "jetson_csi_pipeline", "load_model",
    "open_source", "percentile", "preprocess", "rss_kb", "run", "summarize",
]
