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


def test_a_follower_refuses_a_peer_of_the_other_world_at_attach(tmp_path, monkeypatch):
    from onnx_fixtures import make_encoder, make_model

    from jepa_edge.fleet.messages import AgentCard
    from jepa_edge.fleet.node import FleetConfig, FleetNode
    from jepa_edge.runtime import load_model

    enc = make_encoder(16, 16, 8, seed=3, name="agentB", view="top")
    peer = make_encoder(16, 16, 8, seed=4, name="agentA", view="front")
    card = AgentCard(peer.agent, "jepa-edge test", (16, 16), FleetConfig().world.to_dict())
    with load_model(str(make_model(tmp_path / "b.onnx", enc, "head_inputs")), "ort-cpu") as model:
        node = FleetNode(model, FleetConfig(fleet="t", follow="agentA"))
        monkeypatch.setattr(node.inbox, "card", lambda name: card if name == "agentA" else None)
        with pytest.raises(ValueError, match=r"agentA sees the 3d world \(view 'front'\), this robot the 2d world"):
            node._attach({"epoch": 1})
    assert node.postcard is None and not node.peer_alive
