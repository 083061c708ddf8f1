"""Encoder fingerprints: sha256 over the weights, computed without torch."""

from __future__ import annotations

import hashlib

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

