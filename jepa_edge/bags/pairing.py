"""Pair frames of several cameras by timestamp (pure NumPy; no ROS packages needed).

The first camera is the reference. For each of its frames and each other camera, the partner
is that camera's frame nearest in time; a pair further apart than the tolerance is dropped.
One frame of a camera is never used for two moments: when several reference frames have the
same nearest frame, the closest of them keeps it and the others are dropped (they are not
re-matched to a second-nearest frame). Because the nearest frame moves forward with the
reference time, the kept partners are strictly increasing: every camera stays in time order.

A reference frame is kept when it has a partner in every camera. Put the slowest camera first:
with a faster reference, frames that lose their partner to a neighbour are dropped.

Default tolerance: half the reference camera's median frame interval (16.7 ms at 30 fps). A
partner further than that from a reference frame is closer in time to the reference's
previous or next frame than to this one, so pairing it here would blur two moments.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jepa_edge.artifacts import ArtifactError


class BagError(ArtifactError):
    """A bag, MCAP file, topic or timestamp set that cannot be read as camera frames."""


def default_tolerance_s(t_ref_ns: np.ndarray) -> float:
    """Half the median interval between consecutive reference frames, in seconds."""
    if len(t_ref_ns) < 2:
        raise BagError("the reference camera has fewer than 2 frames, so it has no frame interval; "
                       "pass the tolerance explicitly (--tolerance SECONDS)")
    half = float(np.median(np.diff(t_ref_ns))) / 2e9
    if half <= 0:
        raise BagError("the reference camera's frames share one timestamp; pass the tolerance explicitly "
                       "(--tolerance SECONDS)")
    return half


def _nearest(t: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index into sorted ``t`` of the element nearest each ``query`` (ties → the earlier one)."""
    right = np.clip(np.searchsorted(t, query, side="left"), 0, len(t) - 1)  # (Q,)
    left = np.clip(right - 1, 0, len(t) - 1)
    take_left = np.abs(query - t[left]) <= np.abs(t[right] - query)
    return np.where(take_left, left, right)


def _first_claim(partner: np.ndarray, gap: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Of the reference frames in ``ok`` that share a partner, keep only the closest (then the earliest)."""
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        return ok
    order = np.lexsort((rows, gap[rows], partner[rows]))  # by partner, then gap, then reference index
    rows, part = rows[order], partner[rows][order]
    winners = rows[np.r_[True, part[1:] != part[:-1]]]
    keep = np.zeros_like(ok)
    keep[winners] = True
    return keep


def _span(t: np.ndarray, t0: int) -> str:
    return f"{(t[0] - t0) / 1e9:.3f}–{(t[-1] - t0) / 1e9:.3f} s"


def pair_by_time(streams: Mapping[str, np.ndarray], tolerance_s: float | None = None,
                 names: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Pair the cameras' frames by time → (frame indices per camera, report).

    ``streams``: camera → (N,) int timestamps in ns, sorted; the first camera is the reference.
    ``tolerance_s``: largest |offset| of a pair (None: half the reference's median frame interval).
    ``names``: how errors name each camera (default: the key).
    Returns ``{camera: (K,) indices}`` (same length K, strictly increasing) and a JSON-able report:
    ``reference``, ``tolerance_s``, ``tolerance_from``, ``frames`` (per camera), ``kept`` (K),
    ``dropped`` (per non-reference camera: reference frames with no partner in it), ``unused``
    (per camera: frames in no pair), ``median_offset_s`` (per non-reference camera, signed
    partner − reference, over kept pairs).
    """
    if not streams:
        raise BagError("pair_by_time needs at least one camera")
    names = {v: (names or {}).get(v, v) for v in streams}
    t = {v: np.asarray(s, dtype=np.int64) for v, s in streams.items()}
    for v, tv in t.items():
        if tv.ndim != 1 or len(tv) == 0:
            raise BagError(f"camera {names[v]} has no frames to pair")
        if np.any(np.diff(tv) < 0):
            raise BagError(f"timestamps of camera {names[v]} are not in time order; sort them before pairing")
    ref, *others = list(t)
    given = tolerance_s is not None
    if given and not (np.isfinite(tolerance_s) and tolerance_s > 0):
        raise BagError(f"tolerance {tolerance_s!r} s: pass a positive number of seconds, e.g. 0.02")
    tol_s = float(tolerance_s) if given else default_tolerance_s(t[ref])
    tol_ns = tol_s * 1e9
    keep = np.ones(len(t[ref]), dtype=bool)
    partners, dropped = {}, {}
    for v in others:
        partner = _nearest(t[v], t[ref])  # (N_ref,) non-decreasing
        gap = np.abs(t[v][partner] - t[ref])  # (N_ref,)
        ok = _first_claim(partner, gap, gap <= tol_ns)
        if not ok.any():
            t0 = int(t[ref][0])
            raise BagError(
                f"cameras {names[ref]} and {names[v]} share no time within {tol_s:g} s: {names[ref]} spans "
                f"{_span(t[ref], t0)}, {names[v]} spans {_span(t[v], t0)} (from {names[ref]}'s first frame; "
                f"nearest frames {gap.min() / 1e9:.3f} s apart); check both cameras use one clock, "
                "or raise the tolerance"
            )
        partners[v], dropped[v] = partner, int((~ok).sum())
        keep &= ok
    if not keep.any():
        raise BagError(f"no frame of {names[ref]} has a partner within {tol_s:g} s in every camera "
                       f"({[names[v] for v in others]}); raise the tolerance or pair fewer cameras")
    rows = np.flatnonzero(keep)  # (K,)
    index = {ref: rows, **{v: partners[v][rows] for v in others}}
    report = {
        "reference": ref,
        "tolerance_s": tol_s,
        "tolerance_from": "given" if given else "half the reference camera's median frame interval",
        "frames": {v: len(tv) for v, tv in t.items()},
        "kept": len(rows),
        "dropped": dropped,
        "unused": {v: len(tv) - len(rows) for v, tv in t.items()},
        "median_offset_s": {v: float(np.median(t[v][index[v]] - t[ref][rows])) / 1e9 for v in others},
    }
    return index, report
