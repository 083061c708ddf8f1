"""`reproduce --preset`: a preset's overrides under the caller's, and a short run says so before any number."""

import pytest

from jepa_edge.config import ConfigError
from jepa_edge.study.reproduce import PRESETS, preset_config, short_run_notice
from jepa_edge.train.config import RunConfig


def test_quick_preset_is_small_and_the_callers_fields_win():
    demo, quick = preset_config("demo"), preset_config("quick")
    assert demo.preset == "demo" and demo.other_world and demo.steps == 0  # 0: the RunConfig's steps
    assert quick.preset == "quick" and not quick.other_world and 0 < quick.steps < RunConfig().train.steps
    assert quick.run["data"]["n_episodes"] < RunConfig().data.n_episodes
    assert quick.study.n_perm >= 1 and quick.study.time_shifts  # the shuffled and time-shift controls stay
    mine = preset_config("quick", steps=7, other_world=True, run={"data": {"img_size": 16}})
    assert (mine.steps, mine.other_world) == (7, True)
    assert mine.run["data"] == {**PRESETS["quick"]["run"]["data"], "img_size": 16}  # merged key by key


def test_unknown_preset_names_the_flag_and_the_choices():
    with pytest.raises(ConfigError, match="--preset.*demo, quick"):
        preset_config("fast")


def test_short_run_notice():
    demo_run = RunConfig()
    assert short_run_notice(preset_config("demo"), demo_run) == ""
    short = RunConfig()
    short.train.steps = 100
    assert "undertrained" in short_run_notice(preset_config("demo"), short)
    assert "preset quick" in short_run_notice(preset_config("quick"), demo_run)
