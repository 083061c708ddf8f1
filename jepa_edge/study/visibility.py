"""Position transfer split by what each camera sees (numpy only).

In the 3D world a camera sees only part of the arena: agent A's camera may see an object that agent B's
does not, and the reverse. Every (moment, object) entry falls in one group by the two cameras'
visibility masks (``render3d.visibility``): seen by both, only by A, only by B, or by neither. The
transferred position probe (probe_A ∘ W on B's latents) is scored per group, beside B's native probe and
A's own probe, so the report says whether W carries what B's camera never saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jepa_edge.calib.metrics import kept_fraction

GROUPS = ("both", "only_a", "only_b", "neither")
GROUP_TITLES = {"both": "both cameras see it", "only_a": "only A sees it", "only_b": "only B sees it",
                "neither": "neither sees it"}


def visibility_groups(visible_a: np.ndarray, visible_b: np.ndarray) -> np.ndarray:
    """(M, n) index into GROUPS of every (moment, object) entry, from A's and B's (M, n) visibility masks."""
    a, b = np.asarray(visible_a, bool), np.asarray(visible_b, bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"visibility masks must both be (moments, objects), got {a.shape} and {b.shape}")
    return np.where(a & b, 0, np.where(a, 1, np.where(b, 2, 3))).astype(np.int64)  # (M, n)


def grouped_r2(pred: np.ndarray, true: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, Any]]:
    """R² of predicted object positions per visibility group.

    ``pred``, ``true``: (M, 2n) position columns (obj0.x, obj0.y, obj1.x, …); ``groups``: (M, n). For the
    entries of one group, R² = 1 − Σ‖pred − true‖² / Σ‖true − mean‖² (the mean (x, y) of that group's true
    positions); None where a group has fewer than 2 entries.
    """
    m, n = groups.shape
    p = np.asarray(pred, np.float64).reshape(m, n, 2)  # (M, n, 2)
    t = np.asarray(true, np.float64).reshape(m, n, 2)
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(GROUPS):
        sel = groups == i  # (M, n)
        count = int(sel.sum())
        r2 = None
        if count >= 2:
            pt, tt = p[sel], t[sel]  # (K, 2)
            total = float(((tt - tt.mean(0)) ** 2).sum())
            r2 = 1.0 - float(((pt - tt) ** 2).sum()) / total if total > 0 else None
        out[name] = {"r2": r2, "n": count, "share": count / groups.size}
    return out


def group_table(transferred: np.ndarray, native: np.ndarray, home: np.ndarray, true: np.ndarray,
                groups: np.ndarray, min_native: float) -> dict[str, dict[str, Any]]:
    """Per group: probe_A ∘ W on B, B's native probe, A's own probe (R²), entry count, and the kept fraction.

    kept = ``calib.metrics.kept_fraction`` with R²'s chance 0 (transferred / native); None where the native probe's R²
    is below ``min_native`` or a group is too small to score.
    """
    t, nat, hom = (grouped_r2(x, true, groups) for x in (transferred, native, home))
    out = {}
    for g in GROUPS:
        tr, nv = t[g]["r2"], nat[g]["r2"]
        kept = None if tr is None or nv is None else kept_fraction(tr, nv, 0.0, min_native)
        out[g] = {"n": t[g]["n"], "share": t[g]["share"], "transferred": tr, "native_on_source": nv,
                  "home_on_target": hom[g]["r2"], "kept": kept}
    return out
