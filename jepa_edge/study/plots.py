"""PNG figures of a study result dict (matplotlib, no pyplot state, no display)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes

COLORS = {"trained": "tab:blue", "untrained": "tab:orange", "other_world": "tab:green", "shuffled": "tab:gray",
          "objects_world": "tab:purple"}
TITLES = {"trained": "trained", "untrained": "untrained encoders", "other_world": "different world",
          "shuffled": "shuffled anchors", "objects_world": "different object count"}


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure  # Agg canvas, no global pyplot state

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


SWEEP_STYLES = ("-", "--", ":", "-.")  # one line style per estimator (colour: condition)
SWEEP_LABELS = {"retrieval_top1": "top-1 retrieval (held-out)", "r2": "R² of W·z_B vs z_A (held-out)"}


def plot_sweep(results: dict[str, Any], path: Path) -> None:
    """Metric vs number of anchors, one line per condition (colour) and estimator (style); the legend, drawn from
    the lines themselves, sits right of the panels, and every panel's y range holds all its points."""
    from matplotlib.ticker import FormatStrFormatter

    sweep = results["sweep"]
    counts = sweep["counts"]
    ests = [e for e in results["config"]["sweep_estimators"] if e in sweep]
    keys = list(sweep[ests[0]]["trained"]) if ests else []
    fig, axes = _figure(1, max(1, len(keys)), (3.6 * max(1, len(keys)) + 2.2, 3.4))
    for ax, key in zip(axes[0], keys):
        for est, style in zip(ests, SWEEP_STYLES):
            for cond, d in sweep[est].items():
                mean = np.array([np.nan if v is None else v for v in d[key]["mean"]])
                ax.plot(counts, mean, linestyle=style, marker="o", ms=3, color=COLORS.get(cond, "k"),
                        label=f"{TITLES.get(cond, cond)} ({est})")
        if key == "retrieval_top1":
            ax.plot(counts, [results["split"]["n_eval"] ** -1] * len(counts), linestyle=":", color="k", lw=1,
                    label="chance")
        if ax.get_ylim()[0] < -1.05:  # a bad control's R² far below 0: log-like below -1, linear above
            ax.set_yscale("symlog", linthresh=1.0, linscale=2.0)
            ax.set_yticks([t for t in (-100, -30, -10, -3, -1, -0.5, 0, 0.5, 1) if t >= ax.get_ylim()[0] * 1.5])
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xscale("log")
        ax.set_xlabel("anchors (log scale)")
        ax.set_ylabel(SWEEP_LABELS.get(key, f"{key.removeprefix('probe_')} probe_A ∘ W on B (held-out)"))
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    if keys:
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize=7, handlelength=3.5)
    _save(fig, path)


def plot_controls(results: dict[str, Any], path: Path) -> None:
    """Bars: CKA and mutual k-NN (no W) and retrieval (primary estimator) per condition."""
    sim = results["similarity"]
    row = results["estimators"][results["config"]["primary_estimator"]]
    panels = {
        "linear CKA": {c: sim[c]["cka"] for c in sim},
        "mutual k-NN": {c: sim[c]["mutual_knn"] for c in sim},
        "retrieval top-1": {c: (v["retrieval_top1"]["mean"] if c == "shuffled" else v["retrieval_top1"])
                            for c, v in row.items() if "error" not in v},
    }
    fig, axes = _figure(1, 3, (12, 3.6))
    for ax, (title, vals) in zip(axes[0], panels.items()):
        names = list(vals)
        ax.bar(range(len(names)), [vals[n] for n in names], color=[COLORS.get(n, "k") for n in names])
        ax.set_xticks(range(len(names)), [TITLES.get(n, n) for n in names], rotation=20, fontsize=8)
        for i, n in enumerate(names):
            ax.text(i, max(vals[n], 0) + 0.02, f"{vals[n]:.2f}", ha="center", fontsize=8)
        ax.set_ylim(min(0.0, *vals.values()) * 1.1, 1.1)
        ax.set_xlabel("condition")
        ax.set_ylabel(f"{title} (held-out)")
        ax.set_title(title)
    _save(fig, path)


def plot_pca(results: dict[str, Any], path: Path) -> None:
    """A's latents, B's before W (own PCA basis) and after W (A's basis), coloured by ground truth."""
    p = results["pca"]
    src, tgt = results["agents"]["source"]["name"], results["agents"]["target"]["name"]
    panels = [("target", f"{tgt} (A)"), ("source_before", f"{src} (B) before W, own PCA"),
              ("source_after", f"{src} (B) after W, A's PCA")]
    fig, axes = _figure(1, 3, (12, 3.8))
    for ax, (key, title) in zip(axes[0], panels):
        xy = np.asarray(p[key])  # (P, 2)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=p["color"], s=6, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    both = np.concatenate([np.asarray(p["target"]), np.asarray(p["source_after"])])  # (2P, 2)
    lo, hi = both.min(0), both.max(0)
    pad = 0.05 * (hi - lo)
    for ax in (axes[0][0], axes[0][2]):  # same axes for A and B-after-W so alignment is visible, every point in
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    fig.colorbar(sc, ax=axes[0].tolist(), label=p["color_label"])
    _save(fig, path)


def plot_visibility(results: dict[str, Any], path: Path) -> None:
    """Position R² per visibility group (3D): A's own probe, B's native probe, probe_A ∘ W on B; trained pair
    and, hatched, the untrained control's transferred probe."""
    from jepa_edge.study.visibility import GROUP_TITLES, GROUPS

    row = results["estimators"][results["config"]["primary_estimator"]]
    trained = row["trained"].get("probes", {}).get("position", {}).get("by_visibility")
    if trained is None:  # the primary estimator could not be fitted: no figure
        return
    untrained = row.get("untrained", {}).get("probes", {}).get("position", {}).get("by_visibility")
    bars = [("probe_A on A", trained, "home_on_target", "tab:gray", ""),
            ("native probe on B", trained, "native_on_source", "tab:green", ""),
            ("probe_A ∘ W on B", trained, "transferred", "tab:blue", "")]
    if untrained:
        bars.append(("probe_A ∘ W on B, untrained encoders", untrained, "transferred", "tab:orange", "//"))
    fig, axes = _figure(1, 1, (8, 3.8))
    ax = axes[0][0]
    width = 0.8 / len(bars)
    for j, (label, table, key, color, hatch) in enumerate(bars):
        vals = [np.nan if table[g][key] is None else max(table[g][key], -1.0) for g in GROUPS]
        ax.bar(np.arange(len(GROUPS)) + (j - (len(bars) - 1) / 2) * width, vals, width, color=color, hatch=hatch,
               label=label)
    ax.set_xticks(range(len(GROUPS)), [f"{GROUP_TITLES[g]}\n({100 * trained[g]['share']:.0f}% of entries)"
                                       for g in GROUPS], fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("object visibility (A's camera, B's camera)")
    ax.set_ylabel("position R² within the group (held-out; floor -1)")
    ax.set_title("position probe by what each camera sees")
    ax.legend(fontsize=7)
    _save(fig, path)


def write_plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """All figures; returns their file names."""
    figures = {"anchor_sweep.png": plot_sweep, "controls.png": plot_controls, "pca.png": plot_pca}
    if "visibility" in results:
        figures["visibility.png"] = plot_visibility
    for name, fn in figures.items():
        fn(results, out_dir / name)
    return list(figures)
