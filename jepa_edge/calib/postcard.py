"""Postcards: W between two agents as a safetensors file (see docs/FORMATS.md).

A postcard is what robots exchange instead of video: W, its bias, the anchor
statistics, and who it maps from/to (encoder fingerprints). Loading checks
everything before returning, so a truncated, tampered or mismatched file is
refused with a message naming the file, the problem and the fix.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import MAX_POSTCARD_BYTES, ArtifactError, atomic_write_bytes, read_bytes_capped
from jepa_edge.calib.fit import LinearMap

POSTCARD_VERSION = 1
METADATA_KEY = "jepa_edge"
AGENT_KEYS = ("name", "fingerprint", "latent_dim", "view")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header limit


class PostcardError(ValueError):
    """A postcard (or probe) file or object that cannot be used as is."""


# ---------------------------------------------------------------- shared file helpers


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/Inf → None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def save_artifact(path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """safetensors with float32 tensors and JSON under metadata key ``jepa_edge``."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    atomic_write_bytes(path, save(arrays, metadata={METADATA_KEY: json.dumps(jsonable(meta), allow_nan=False)}))


@contextmanager
def refused_as(error: type[ValueError], path: str, kind: str) -> Iterator[None]:
    """Turn any failure while reading an untrusted file into ``error`` naming it (``error`` passes through).

    For cases the explicit checks do not name (e.g. ``RecursionError`` from nesting deep enough to pass
    ``json.loads`` but not ``str()``): still a refused file, never a crashed reader thread.
    """
    try:
        yield
    except error:
        raise
    except Exception as exc:
        raise error(f"{path}: cannot read the {kind} file ({type(exc).__name__}: {exc}); "
                    f"re-download or re-export it") from exc


def _read_header(path: Path, data: bytes, error: type[ValueError]) -> dict[str, Any]:
    fix = "re-download or re-export the file"
    if len(data) < 8:
        raise error(f"{path}: file is {len(data)} bytes, too short for safetensors (truncated?); {fix}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise error(f"{path}: header claims {n} bytes but the file has {len(data) - 8}: truncated or not safetensors; {fix}")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: header is not valid JSON ({exc}): not a safetensors file; {fix}") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level: [[[[…]]]] ends here
        raise error(f"{path}: header JSON is nested too deeply to parse: not a jepa-edge file; {fix}") from exc
    if not isinstance(header, dict):
        raise error(f"{path}: header is not a JSON object: not a safetensors file; {fix}")
    return header


def read_artifact_bytes(path: Path, kind: str, error: type[ValueError]) -> bytes:
    """The file's bytes after the regular-file (no symlink) and size checks, as ``error``s."""
    try:
        return read_bytes_capped(path, f"{kind} file", f"pass a *.{kind}.safetensors file written by jepa-edge",
                                 MAX_POSTCARD_BYTES)
    except ArtifactError as exc:
        raise error(str(exc)) from exc
    except OSError as exc:  # unreadable (permissions, I/O error)
        raise error(f"{path}: cannot read the {kind} file ({exc.strerror or exc}); check its permissions") from exc


def load_artifact(
    path: str | Path, kind: str, version: int, error: type[ValueError]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a jepa-edge safetensors file; check readability, kind, version and finiteness."""
    path = Path(path)
    return parse_artifact(read_artifact_bytes(path, kind, error), str(path), kind, version, error)


def parse_artifact(
    data: bytes, path: str, kind: str, version: int, error: type[ValueError]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``load_artifact`` on bytes already in memory (e.g. received over the fleet); ``path`` names them.

    Every failure is an ``error``: the bytes may come from anywhere, and a reader thread (the head
    watcher, the fleet inbox) must be able to refuse them without dying.
    """
    with refused_as(error, path, kind):
        return _parse_artifact(data, path, kind, version, error)


def _parse_artifact(
    data: bytes, path: str, kind: str, version: int, error: type[ValueError]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    header = _read_header(path, data, error)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc}); re-download or re-export it") from exc
    metadata = header.get("__metadata__") or {}
    raw = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        raise error(f"{path}: no '{METADATA_KEY}' metadata: not a jepa-edge {kind}; export it with jepa-edge")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: '{METADATA_KEY}' metadata is not JSON ({exc}); re-export the {kind}") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level: [[[[…]]]] ends here
        raise error(f"{path}: '{METADATA_KEY}' metadata JSON is nested too deeply to parse; "
                    f"re-export the {kind}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        got = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise error(f"{path}: this file is a {got!r}, not a {kind}; pass a *.{kind}.safetensors file")
    if meta.get("version") != version:
        raise error(f"{path}: {kind} version {meta.get('version')!r} is not supported (this jepa-edge reads "
                    f"version {version}); re-export it with this jepa-edge version")
    for key, a in tensors.items():
        if a.dtype != np.float32:
            raise error(f"{path}: tensor {key!r} is {a.dtype}, expected float32; re-export the {kind}")
        if not np.all(np.isfinite(a)):
            raise error(f"{path}: tensor {key!r} contains NaN or Inf; refit and re-export the {kind}")
    return tensors, meta


def check_agent(owner: str, role: str, agent: Any, error: type[ValueError]) -> dict[str, Any]:
    """An agent descriptor {name, fingerprint, latent_dim, view} with sane types."""
    if not isinstance(agent, dict) or any(k not in agent for k in AGENT_KEYS):
        raise error(f"{owner}: {role} must be a dict with keys {list(AGENT_KEYS)}, got {agent!r}")
    dim = agent["latent_dim"]
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise error(f"{owner}: {role}.latent_dim={dim!r} must be a positive integer")
    if not isinstance(agent["fingerprint"], str) or not agent["fingerprint"]:
        raise error(f"{owner}: {role}.fingerprint must be a non-empty string (sha256 of the encoder)")
    return {**agent, "latent_dim": int(dim)}


def check_fingerprint(owner: str, role: str, got: str, expected: str | None, error: type[ValueError]) -> None:
    if expected is not None and got != expected:
        raise error(
            f"{owner}: {role} fingerprint is {got[:12]}… but the encoder in use is {expected[:12]}…; "
            f"this file belongs to another encoder: fit or fetch the one for this agent"
        )


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
    source: dict[str, Any]  # {name, fingerprint, latent_dim, view} of the agent W maps from
    target: dict[str, Any]  # ... and of the agent W maps into
    estimator: str
    n_anchors: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fname, _ in _TENSORS.values():
            setattr(self, fname, np.asarray(getattr(self, fname), dtype=np.float32))

    @property
    def source_fingerprint(self) -> str:
        return str(self.source["fingerprint"])

    @property
    def target_fingerprint(self) -> str:
        return str(self.target["fingerprint"])

    def apply(self, z_source: np.ndarray) -> np.ndarray:
        """(B, d_source) → (B, d_target): z_target_hat = z_source @ W.T + bias."""
        return z_source @ self.weight.T + self.bias

    @classmethod
    def from_map(
        cls, lm: LinearMap, name: str, source: dict[str, Any], target: dict[str, Any],
        metrics: dict[str, Any] | None = None,
    ) -> Postcard:
        pc = cls(lm.weight, lm.bias, lm.source_mean, lm.source_scale, lm.target_mean, lm.target_scale,
                 name, dict(source), dict(target), lm.estimator, lm.n_anchors, dict(metrics or {}))
        pc.validate()
        return pc

    def validate(self, where: str | None = None) -> None:
        """Shapes consistent with the agents' latent dims, values finite."""
        owner = where or f"postcard {self.name!r}"
        self.source = check_agent(owner, "source", self.source, PostcardError)
        self.target = check_agent(owner, "target", self.target, PostcardError)
        dims = {"s": self.source["latent_dim"], "t": self.target["latent_dim"]}
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
                "source": self.source, "target": self.target, "estimator": self.estimator,
                "n_anchors": int(self.n_anchors), "metrics": self.metrics}


def save_postcard(path: str | Path, postcard: Postcard) -> None:
    """Write ``*.postcard.safetensors`` atomically (validated first)."""
    postcard.validate()
    tensors = {key: getattr(postcard, fname) for key, (fname, _) in _TENSORS.items()}
    save_artifact(path, tensors, postcard.metadata())


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
        source=meta["source"], target=meta["target"], estimator=str(meta["estimator"]),
        n_anchors=meta["n_anchors"], metrics=meta.get("metrics", {}),
    )
    pc.validate(where=str(path))
    check_fingerprint(str(path), "source", pc.source_fingerprint, expect_source_fingerprint, PostcardError)
    check_fingerprint(str(path), "target", pc.target_fingerprint, expect_target_fingerprint, PostcardError)
    return pc
