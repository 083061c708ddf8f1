"""The study's figures: every axes labelled, the anchor sweep's legend styled like its lines, no point off-axes."""

import numpy as np
import pytest
from test_study_alignment import SMALL, _world

from jepa_edge.study import plots
from jepa_edge.study.alignment import run_study


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Every figure write_plots draws, for a related pair and for an unrelated one (controls' R² far below 0)."""
    drawn = {}
    for related in (True, False):
        results = run_study(_world(np.random.default_rng(0), related=related), SMALL)
        saved = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(plots, "_save", lambda fig, path, saved=saved: saved.append(fig))
            names = plots.write_plots(results, tmp_path_factory.mktemp("plots"))
        drawn.update({(related, name): fig for name, fig in zip(names, saved, strict=True)})
    return drawn


def test_every_axes_is_labelled(figures):
    for key, fig in figures.items():
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel(), f"{key}: colour bar without a label"
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), f"{key}: axes {ax.get_title()!r} lacks an x or y label"


def test_sweep_legend_matches_the_lines_and_covers_no_data(figures):
    for related in (True, False):
        fig = figures[(related, "anchor_sweep.png")]
        assert not any(ax.get_legend() for ax in fig.axes)  # one figure legend, outside the panels
        (legend,) = fig.legends
        lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
        texts = [t.get_text() for t in legend.get_texts()]
        assert set(texts) == set(lines) and any("(procrustes)" in t for t in texts)
        for handle, text in zip(legend.legend_handles, texts, strict=True):
            line = lines[text]
            assert (handle.get_linestyle(), handle.get_color()) == (line.get_linestyle(), line.get_color()), text
        assert {lines[t].get_linestyle() for t in texts if "(ridge)" in t} == {"-"}
        assert {lines[t].get_linestyle() for t in texts if "(procrustes)" in t} == {"--"}
        fig.draw_without_rendering()  # the constrained layout places the legend at draw time
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), "the legend covers a panel"


def test_no_sweep_point_falls_outside_its_axes(figures):
    for related in (True, False):
        for ax in figures[(related, "anchor_sweep.png")].axes:
            lo, hi = ax.get_ylim()
            for line in ax.get_lines():
                y = np.asarray(line.get_ydata(), float)
                y = y[np.isfinite(y)]
                assert ((y >= lo) & (y <= hi)).all(), f"{ax.get_title()}: {line.get_label()} clipped"
        assert related or min(ax.get_ylim()[0] for ax in figures[(related, "anchor_sweep.png")].axes) < -1.05
