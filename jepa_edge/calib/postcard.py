"""Postcards: W between two agents as a safetensors file (see docs/FORMATS.md).

A postcard is what robots exchange instead of video: W, its bias, the anchor
statistics, and who it maps from/to (encoder fingerprints). Loading checks
everything before returning, so a truncated, tampered or mismatched file is
refused with a message naming the file, the problem and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import (
    AgentRef,
    ArtifactError,
    check_fingerprint,
    load_artifact,
    parse_artifact,
    refused_as,
    save_artifact,
)
from jepa_edge.calib.fit import LinearMap

POSTCARD_VERSION = 1


POSTCARD_SUFFIX = ".postcard.safetensors"  # what `run --watch`, `inspect` and the fleet recognise


class PostcardError(ArtifactError):
    """A postcard file or object that cannot be used as is."""


# ---------------------------------------------------------------- postcards

_TENSORS = {  # name → (field, shape in terms of (d_target, d_source))
    "W": ("weight", ("t", "s")),
    "bias": ("bias", ("t",)),
    "source_mean": ("source_mean", ("s",)),
    "source_scale": ("source_scale", ("s",)),
    "target_mean": ("target_mean", ("t",)),
    "target_scale": ("target_scale", ("t",)),
}


@dataclass
class Postcard:
    weight: np.ndarray  # (d_target, d_source) float32, statistics folded in
    bias: np.ndarray  # (d_target,)
    source_mean: np.ndarray  # (d_source,)
    source_scale: np.ndarray  # (d_source,)
    target_mean: np.ndarray  # (d_target,)
    target_scale: np.ndarray  # (d_target,)
    name: str
    source: AgentRef  # the agent W maps from (a JSON dict is accepted and checked)
    target: AgentRef  # ... and the agent W maps into
    estimator: str
    n_anchors: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fname, _ in _TENSORS.values():
            setattr(self, fname, np.asarray(getattr(self, fname), dtype=np.float32))
        self.source = AgentRef.checked(self.source, f"postcard {self.name!r}", "source", PostcardError)
        self.target = AgentRef.checked(self.target, f"postcard {self.name!r}", "target", PostcardError)

    @property
    def source_fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def target_fingerprint(self) -> str:
        return self.target.fingerprint

    def apply(self, z_source: np.ndarray) -> np.ndarray:
        """(B, d_source) → (B, d_target): z_target_hat = z_source @ W.T + bias."""
        return z_source @ self.weight.T + self.bias

    @classmethod
    def from_map(
        cls, lm: LinearMap, name: str, source: AgentRef | dict[str, Any], target: AgentRef | dict[str, Any],
        metrics: dict[str, Any] | None = None,
    ) -> Postcard:
        pc = cls(lm.weight, lm.bias, lm.source_mean, lm.source_scale, lm.target_mean, lm.target_scale,
                 name, source, target, lm.estimator, lm.n_anchors, dict(metrics or {}))
        pc.validate()
        return pc

    def validate(self, where: str | None = None) -> None:
        """Shapes consistent with the agents' latent dims, values finite."""
        owner = where or f"postcard {self.name!r}"
        self.source = AgentRef.checked(self.source, owner, "source", PostcardError)
        self.target = AgentRef.checked(self.target, owner, "target", PostcardError)
        dims = {"s": self.source.latent_dim, "t": self.target.latent_dim}
        for key, (fname, spec) in _TENSORS.items():
            a = getattr(self, fname)
            want = tuple(dims[c] for c in spec)
            if a.shape != want:
                raise PostcardError(
                    f"{owner}: {key} has shape {a.shape}, expected {want} from latent dims "
                    f"(source {dims['s']}, target {dims['t']}); the file is inconsistent: refit W"
                )
            if not np.all(np.isfinite(a)):
                raise PostcardError(f"{owner}: {key} contains NaN or Inf; refit W")
        if isinstance(self.n_anchors, bool) or not isinstance(self.n_anchors, (int, np.integer)):
            raise PostcardError(f"{owner}: n_anchors={self.n_anchors!r} must be an integer")
        if not isinstance(self.metrics, dict):
            raise PostcardError(f"{owner}: metrics must be a dict, got {type(self.metrics).__name__}")

    def metadata(self) -> dict[str, Any]:
        return {"kind": "postcard", "version": POSTCARD_VERSION, "name": self.name,
                "source": self.source.to_dict(), "target": self.target.to_dict(), "estimator": self.estimator,
                "n_anchors": int(self.n_anchors), "metrics": self.metrics}

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays of a postcard file, by their names there (``W``, ``bias``, ...)."""
        return {key: getattr(self, fname) for key, (fname, _) in _TENSORS.items()}


def save_postcard(path: str | Path, postcard: Postcard) -> None:
    """Write ``*.postcard.safetensors`` atomically (validated first)."""
    postcard.validate()
    save_artifact(path, postcard.tensors(), postcard.metadata())


def load_postcard(
    path: str | Path,
    expect_source_fingerprint: str | None = None,
    expect_target_fingerprint: str | None = None,
) -> Postcard:
    """Read and fully check a postcard; refuse it with PostcardError on any problem."""
    tensors, meta = load_artifact(path, "postcard", POSTCARD_VERSION, PostcardError)
    return _postcard_from_artifact(tensors, meta, str(path), expect_source_fingerprint, expect_target_fingerprint)


def postcard_from_bytes(data: bytes, where: str, expect_source_fingerprint: str | None = None,
                        expect_target_fingerprint: str | None = None) -> Postcard:
    """``load_postcard`` on the bytes of a postcard file already in memory (received over the fleet)."""
    tensors, meta = parse_artifact(data, where, "postcard", POSTCARD_VERSION, PostcardError)
    return _postcard_from_artifact(tensors, meta, where, expect_source_fingerprint, expect_target_fingerprint)


def _postcard_from_artifact(tensors: dict[str, np.ndarray], meta: dict[str, Any], path: str,
                            expect_source_fingerprint: str | None, expect_target_fingerprint: str | None
                            ) -> Postcard:
    with refused_as(PostcardError, path, "postcard"):
        return _postcard_checked(tensors, meta, path, expect_source_fingerprint, expect_target_fingerprint)


def _postcard_checked(tensors: dict[str, np.ndarray], meta: dict[str, Any], path: str,
                      expect_source_fingerprint: str | None, expect_target_fingerprint: str | None) -> Postcard:
    missing = sorted(set(_TENSORS) - set(tensors))
    extra = sorted(set(tensors) - set(_TENSORS))
    if missing or extra:
        raise PostcardError(f"{path}: tensors missing {missing} / unexpected {extra}; "
                            f"a postcard holds exactly {list(_TENSORS)}: re-export it")
    for key in ("source", "target", "estimator", "n_anchors"):
        if key not in meta:
            raise PostcardError(f"{path}: metadata lacks {key!r}; re-export the postcard")
    pc = Postcard(
        **{fname: tensors[key] for key, (fname, _) in _TENSORS.items()},
        name=str(meta.get("name", Path(path).name.split(".")[0])),
        source=AgentRef.from_dict(meta["source"], path, "source", PostcardError),
        target=AgentRef.from_dict(meta["target"], path, "target", PostcardError), estimator=str(meta["estimator"]),
        n_anchors=meta["n_anchors"], metrics=meta.get("metrics", {}),
    )
    pc.validate(where=str(path))
    check_fingerprint(str(path), "source", pc.source_fingerprint, expect_source_fingerprint, PostcardError)
    check_fingerprint(str(path), "target", pc.target_fingerprint, expect_target_fingerprint, PostcardError)
    return pc
