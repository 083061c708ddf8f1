"""A fleet robot follows only a peer of its own world: a moment id names different states in the 2-D and 3-D
worlds, so anchor latents of the two would pair unrelated frames."""

from __future__ import annotations

import pytest

from jepa_edge.fleet.node import check_same_world


def test_peers_of_one_world_pass():
    check_same_world("top", "agentB", "oblique")
    check_same_world("front", "agentB", "overhead")


def test_a_2d_and_a_3d_peer_are_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        check_same_world("top", "agentB", "front")
    msg = str(err.value)
    assert "\n" not in msg and "agentB sees the 3d world (view 'front')" in msg and "the 2d world" in msg
    assert "top, oblique, rotated, partial" in msg  # names the views that would do
    with pytest.raises(ValueError, match="sees the 2d world"):
        check_same_world("rear", "agentB", "partial")
