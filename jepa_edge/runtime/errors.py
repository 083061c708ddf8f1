"""Exceptions raised by the runtime; each message names the problem and the fix."""

from __future__ import annotations


class RuntimeModelError(ValueError):
    """A model file (ONNX / TensorRT engine + sidecar) that cannot be run as asked."""


class BackendUnavailableError(RuntimeError):
    """The requested backend is not installed or cannot use the hardware here."""


class HeadModeError(RuntimeModelError):
    """A head operation the model's export mode does not support."""


class SourceError(RuntimeError):
    """Base class of frame-source problems."""


class SourceOpenError(SourceError):
    """A source could not be opened (missing file, no camera, unreachable stream)."""


class SourceDisconnected(SourceError):
    """A live source stopped delivering frames; the capture thread reopens it."""


class CorruptFrame(SourceError):
    """One frame could not be decoded; the next one may be fine."""


class SourceLostError(SourceError):
    """A source could not be reopened within the retry budget."""


def missing_extra(what: str, extra: str, exc: BaseException | None = None) -> BackendUnavailableError:
    """Uniform error for an optional dependency that is not installed."""
    detail = f" ({exc})" if exc is not None else ""
    return BackendUnavailableError(f"{what} is not available{detail}; install it with `pip install 'jepa-edge[{extra}]'`")


def missing_onnxruntime(exc: BaseException | None = None) -> BackendUnavailableError:
    """ONNX Runtime is not a base dependency: name both builds (exactly one may be installed)."""
    detail = f" ({exc})" if exc is not None else ""
    return BackendUnavailableError(
        f"onnxruntime is not installed{detail}; install one build: `pip install 'jepa-edge[cpu]'` (CPU) or "
        "`pip install 'jepa-edge[gpu]'` (CUDA; on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack) "
        "— not both, they overwrite each other"
    )
