"""`reproduce` with the object-count control agent: it is trained on its own world and lands in the study."""

import json

import pytest
from test_study_scaling import TINY_RUN

from jepa_edge.study.reproduce import ReproduceConfig, reproduce
from jepa_edge.study.scaling import ScalingConfig


@pytest.mark.slow
def test_reproduce_trains_the_object_count_control_and_reports_every_new_section(tmp_path):
    light = ScalingConfig().study_config()  # the scaling study's light study: the sections, not the sweep
    cfg = ReproduceConfig(steps=2, other_world=False, objects_world=True, objects_world_count=4, anchor_episodes=8,
                          anchor_steps=12, run=TINY_RUN, study=light)
    res = reproduce(cfg, tmp_path, progress=False)
    meta = json.loads((tmp_path / "runs/agentD_objects/meta.json").read_text())
    assert meta["run"]["data"]["world"]["n_objects"] == 4
    assert "objects_world" in res["conditions"] and "objects_world" in res["shared"]
    assert set(res["time_shift"]) == {"1", "5", "25"} and "error" in res["time_shift"]["25"]  # 12-step episodes
    md = (tmp_path / "report.md").read_text()
    assert "different object count" in md and "## How much is shared" in md
