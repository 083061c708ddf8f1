"""One frame's head outputs as a user reads them: named values, classification as probabilities.

The head returns arrays by output name (``position``: (B, 6), ``danger``: (B, 2) logits, ``z``: (B, D)).
A JSON line names every value instead: ``position.obj0.x``, and a classification output becomes the
probability of each class label (softmax of the probe's logits), ``danger.safe`` + ``danger.danger`` summing
to 1. Latents (``z``, ``z_mapped``, kind "latent") stay vectors: their columns have no meaning of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LATENTS = ("z", "z_mapped")


def softmax(logits: np.ndarray) -> np.ndarray:
    """(..., K) logits → (..., K) probabilities (stable: the max is subtracted first)."""
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def shown(row: np.ndarray, kind: str) -> np.ndarray:
    """One output's (K,) row as users see it (JSON lines, the live page, MCAP): class probabilities for a
    classification output, the values themselves otherwise."""
    return softmax(row) if kind == "classification" else np.asarray(row)


def column_names(name: str, width: int, labels: list[str] | tuple[str, ...]) -> list[str]:
    """``name.label`` per column; ``name.i`` where the file named no labels (an older probe)."""
    labels = list(labels) if len(labels) == width else [str(i) for i in range(width)]
    return [f"{name}.{label}" for label in labels]


def named_values(outputs: dict[str, np.ndarray], kinds: dict[str, tuple[str, list[str]]],
                 emit_latent: bool = False) -> dict[str, Any]:
    """Row 0 of each output by name → {``name.label``: float}, latents as lists (``z`` only with emit_latent).

    ``kinds``: output name → (kind, column labels), as the head or the model's metadata describes it.
    A non-finite value stays a float (NaN): the JSON writer decides how to spell it.
    """
    named: dict[str, Any] = {}
    for name, value in outputs.items():
        row = np.asarray(value)[0]  # (K,)
        kind, labels = kinds.get(name, ("latent" if name in LATENTS else "regression", []))
        if name in LATENTS or kind == "latent":
            if emit_latent or name != "z":
                named[name] = row.tolist()
            continue
        row = shown(row, kind)
        for col, v in zip(column_names(name, len(row), labels), row.tolist(), strict=True):
            named[col] = round(float(v), 6)
    return named
