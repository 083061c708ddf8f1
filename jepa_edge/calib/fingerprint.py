"""Encoder fingerprints: sha256 over the weights, computed without torch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def fingerprint_arrays(arrays: dict[str, np.ndarray]) -> str:
    """sha256 hex over tensors in sorted key order (see docs/FORMATS.md)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        shape = "x".join(str(s) for s in a.shape)
        h.update(f"{key}|{a.dtype.name}|{shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint_file(path: str | Path) -> str:
    """Fingerprint of the tensors stored in a ``.safetensors`` file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .safetensors file ({exc}); re-export or re-train it") from exc
    return fingerprint_arrays(arrays)
