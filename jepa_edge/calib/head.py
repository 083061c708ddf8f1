"""Fuse W and any number of linear probes into one matrix (numpy only).

``probe ∘ W`` is linear, so the whole head collapses into one
``weight (K, D)`` / ``bias (K,)``: the exported model runs a single
MatMul+Add, and the runtime can swap the two arrays between frames.
``HeadOutput`` names one slice of those K values, here and in an exported
model's metadata (``runtime.meta``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class HeadError(ValueError):
    """Head parts that do not fit together (dimension or fingerprint mismatch)."""


@dataclass(frozen=True)
class HeadOutput:
    """Columns ``[start, stop)`` of the head's values, named ``name``."""

    name: str
    start: int
    stop: int
    kind: str  # "latent" | "regression" | "classification" ("" in a model whose metadata did not say)
    labels: tuple[str, ...] = ()  # per-column names (probe outputs / classes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))

    @property
    def width(self) -> int:
        return self.stop - self.start


@dataclass
class FusedHead:
    weight: np.ndarray  # (K, D) float32
    bias: np.ndarray  # (K,) float32
    outputs: list[HeadOutput]
    encoder_fingerprint: str
    latent_dim: int

    @property
    def width(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, z: np.ndarray) -> np.ndarray:
        """(B, D) latents → (B, K) head values (the unfused numpy reference)."""
        return z @ self.weight.T + self.bias

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """(B, K) → {output name: (B, width)}."""
        return {o.name: values[:, o.start : o.stop] for o in self.outputs}

    def describe(self) -> dict[str, Any]:
        return {
            "encoder_fingerprint": self.encoder_fingerprint,
            "latent_dim": self.latent_dim,
            "width": self.width,
            "outputs": [{**asdict(o), "labels": list(o.labels)} for o in self.outputs],
        }


def _check_finite(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if not np.all(np.isfinite(a)):
            raise HeadError(f"{name}: contains NaN or Inf values; refit or re-download it")


def build_head(
    encoder_fingerprint: str,
    latent_dim: int,
    postcard: Any | None = None,
    probes: Sequence[Any] = (),
) -> FusedHead:
    """Collapse ``[W; probe_1 ∘ (W or I); ...]`` into one (K, D) matrix.

    ``postcard`` maps this encoder's latent (source) to another agent's
    (target). A probe whose agent is the postcard's target is applied through
    W; a probe trained on this encoder itself is applied directly. Anything
    else is refused with the fingerprints named.
    """
    D = int(latent_dim)
    rows_w: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    outputs: list[HeadOutput] = []

    def add(name: str, w: np.ndarray, b: np.ndarray, kind: str, labels: list[str]) -> None:
        if any(o.name == name for o in outputs) or name == "z":
            raise HeadError(f"two head outputs are named {name!r}; rename one probe")
        start = sum(o.width for o in outputs)
        outputs.append(HeadOutput(name, start, start + w.shape[0], kind, labels))
        rows_w.append(w.astype(np.float64))
        rows_b.append(b.astype(np.float64))

    W = b0 = None
    if postcard is not None:
        if postcard.source_fingerprint != encoder_fingerprint:
            raise HeadError(
                f"postcard {postcard.name!r} maps from encoder {postcard.source_fingerprint[:12]}…, "
                f"but this encoder is {encoder_fingerprint[:12]}…; fit W for this agent with `jepa-edge calib`"
            )
        W, b0 = np.asarray(postcard.weight, np.float64), np.asarray(postcard.bias, np.float64)
        if W.shape[1] != D:
            raise HeadError(f"postcard W has input dim {W.shape[1]} but the encoder's latent dim is {D}")
        _check_finite(f"postcard {postcard.name!r}", W, b0)
        add("z_mapped", W, b0, "latent", [])
    for probe in probes:
        P, c = np.asarray(probe.weight, np.float64), np.asarray(probe.bias, np.float64)
        _check_finite(f"probe {probe.name!r}", P, c)
        if probe.agent_fingerprint == encoder_fingerprint:
            if P.shape[1] != D:
                raise HeadError(f"probe {probe.name!r} expects latent dim {P.shape[1]}, encoder gives {D}")
            add(probe.name, P, c, probe.task, list(probe.labels))
        elif W is not None and probe.agent_fingerprint == postcard.target_fingerprint:
            if P.shape[1] != W.shape[0]:
                raise HeadError(
                    f"probe {probe.name!r} expects latent dim {P.shape[1]}, W maps to {W.shape[0]}"
                )
            add(probe.name, P @ W, P @ b0 + c, probe.task, list(probe.labels))  # probe ∘ W
        else:
            hint = "load the postcard that maps this agent into that probe's agent" if W is None else (
                "it was trained neither on this agent nor on the postcard's target agent")
            raise HeadError(
                f"probe {probe.name!r} belongs to encoder {probe.agent_fingerprint[:12]}…: {hint}"
            )
    if outputs:
        weight = np.concatenate(rows_w, 0).astype(np.float32)  # (K, D)
        bias = np.concatenate(rows_b, 0).astype(np.float32)  # (K,)
    else:
        weight, bias = np.zeros((0, D), np.float32), np.zeros((0,), np.float32)
    return FusedHead(weight, bias, outputs, encoder_fingerprint, D)
