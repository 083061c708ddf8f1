"""`reproduce --preset`: a preset's values under the caller's, and a short run says so before any number."""

import pytest

from jepa_edge.config import ConfigError
from jepa_edge.study.reproduce import PRESETS, ReproduceConfig, short_run_notice, with_preset
from jepa_edge.train.config import RunConfig


def test_quick_preset_is_small_and_the_callers_fields_win():
    demo, quick = with_preset(ReproduceConfig()), with_preset(ReproduceConfig(preset="quick"))
    assert demo == ReproduceConfig()  # the demo preset is ReproduceConfig() itself
    assert quick.preset == "quick" and not quick.other_world and 0 < quick.steps < RunConfig().train.steps
    assert quick.run["data"]["n_episodes"] < RunConfig().data.n_episodes
    assert quick.study.n_perm >= 1 and quick.study.time_shifts  # the shuffled and time-shift controls stay
    mine = with_preset(ReproduceConfig(preset="quick", steps=7, view_b="rotated", run={"data": {"img_size": 16}}))
    assert (mine.steps, mine.view_b, mine.anchor_episodes) == (7, "rotated", PRESETS["quick"]["anchor_episodes"])
    assert mine.run["data"] == {**PRESETS["quick"]["run"]["data"], "img_size": 16}  # merged key by key
    assert with_preset(mine) == mine


def test_unknown_preset_names_the_flag_and_the_choices():
    with pytest.raises(ConfigError, match="--preset.*demo, quick"):
        with_preset(ReproduceConfig(preset="fast"))


def test_short_run_notice():
    assert short_run_notice(ReproduceConfig(), RunConfig()) == ""
    short = RunConfig()
    short.train.steps = 100
    assert "undertrained" in short_run_notice(ReproduceConfig(), short)
    assert "preset quick" in short_run_notice(ReproduceConfig(preset="quick"), RunConfig())
