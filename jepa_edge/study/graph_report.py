"""Report rendering of the N-agent alignment graph (``jepa_edge.calib.graph``): markdown table and heatmaps."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.study.plots import _figure, _save


def graph_report(result: dict[str, Any]) -> str:
    """Markdown: per-pair direct vs best path, cycles, and the cost of composition."""
    s, key = result["summary"], result["summary"]["score"]
    lines = [f"# Alignment graph: {len(result['agents'])} agents ({', '.join(result['agents'])})", "",
             f"W per ordered pair: `{result['estimator']}` on {result['n_fit']} anchor moments; every score is on "
             f"{result['n_eval']} held-out moments. Score: `{key}`"
             + (" (target agent's state probe applied to the mapped latents, R² vs the true state)"
                if key == "transfer_r2" else " (mapped latents vs the target's own)") + ".", "",
             "| pair | direct | best path | best | native probe |", "| --- | --- | --- | --- | --- |"]
    for pair, p in result["pairs"].items():
        native = f"{p['native_r2']:.3f}" if "native_r2" in p else "–"
        lines.append(f"| {pair} | {p['direct'][key]:.3f} | {' → '.join(p['best']['path'])} | "
                     f"{p['best'][key]:.3f} | {native} |")
    lines += ["", f"**Composition cost**: direct maps score {s['direct_mean']:.3f} on average, two-hop compositions "
              + (f"{s['two_hop_mean']:.3f} ({s['composition_cost']:+.3f} lost per extra hop on average); "
                 if s["two_hop_mean"] is not None else "(none with 2 agents); ")
              + f"the direct map is the best path for {s['pairs_best_direct']} of {s['pairs']} pairs.", "",
              "| cycle | held-out relative error | ‖W_cycle − I‖_F/√D |", "| --- | --- | --- |"]
    for c in result["cycles"]:
        lines.append(f"| {' → '.join(c['cycle'])} | {c['relative_error']:.3f} | {c['identity_distance']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_graph(result: dict[str, Any], path: str | Path) -> None:
    """Heatmaps (source × target): direct score and best-path score."""
    names, key = result["agents"], result["summary"]["score"]
    n = len(names)
    mats = {"direct": np.full((n, n), np.nan), "best path": np.full((n, n), np.nan)}
    for i, s in enumerate(names):
        for j, t in enumerate(names):
            if s != t:
                p = result["pairs"][f"{s}->{t}"]
                mats["direct"][i, j], mats["best path"][i, j] = p["direct"][key], p["best"][key]
    fig, axes = _figure(1, 2, (9, 4))
    lo = np.nanmin(list(mats.values()))
    for ax, (title, m) in zip(axes[0], mats.items()):
        im = ax.imshow(m, vmin=min(0.0, lo), vmax=1.0, cmap="viridis")
        ax.set_xticks(range(n), names, rotation=45)
        ax.set_yticks(range(n), names)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"{title}: {key}")
        for i, j in itertools.product(range(n), range(n)):
            if i != j:
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    _save(fig, Path(path))
