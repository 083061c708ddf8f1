"""The alignment graph of a fleet's exported models (torch-free): latents of shared anchor moments → report.

Each model (one per robot / view) encodes the same anchor-world moments
through its own camera view (``fleet.moments.moment_frames``); the first
``n_fit`` moments fit every W and probe, the next ``n_eval`` score them
(held-out: different episodes when ``n_fit`` is a multiple of ``world.steps``).
Targets are the simulator's object positions, so "transfer" is what a robot
gets running another robot's position probe through the map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.calib.graph import GraphConfig, alignment_graph
from jepa_edge.fleet.moments import AnchorWorld, moment_frames, moment_positions
from jepa_edge.study.graph_report import graph_report, plot_graph
from jepa_edge.world.worlds import world_kind_of_view


def model_latents(model: Any, world: AnchorWorld, view: str, ids: Sequence[int]) -> np.ndarray:
    """z (N, D) of moments ``ids`` seen from ``view`` through ``model`` (batches of 64)."""
    from jepa_edge.runtime.pipeline import preprocess

    H, W = model.meta.input_size
    frames = moment_frames(world, view, max(H, W), ids)  # (N, S, S, 3)
    return np.concatenate([model.infer(preprocess(frames[i : i + 64], (H, W)))["z"]
                           for i in range(0, len(frames), 64)]).astype(np.float32)


def one_world(kinds: dict[str, str]) -> str:
    """The world ("2d" or "3d") every agent's view belongs to: one alignment graph pairs the same moments, and a
    moment id names different states in the two worlds."""
    found = sorted(set(kinds.values()))
    if len(found) != 1:
        by = "; ".join(f"{k}: {', '.join(a for a in kinds if kinds[a] == k)}" for k in found)
        raise ValueError(f"the models see different worlds ({by}); graph the models of one world at a time")
    return found[0]


def graph_from_models(model_paths: Sequence[str | Path], out_dir: str | Path, world: AnchorWorld | None = None,
                      n_fit: int = 256, n_eval: int = 256, config: GraphConfig | None = None,
                      backend: str = "ort-cpu") -> dict[str, Any]:
    """Write ``graph.json``, ``graph.md`` and ``graph.png`` for >= 2 models; returns the result dict."""
    from jepa_edge.artifacts import atomic_write_json, atomic_write_text
    from jepa_edge.runtime import load_model

    world = world or AnchorWorld(seed=777, steps=64, pool=n_fit + n_eval)
    if n_fit < 3 or n_eval < 3 or n_fit + n_eval > world.pool:
        raise ValueError(f"need n_fit, n_eval >= 3 and n_fit + n_eval <= world.pool ({world.pool})")
    ids = list(range(n_fit + n_eval))
    latents: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}  # agent → the world its view belongs to
    for path in model_paths:
        with load_model(str(path), backend) as model:
            name = model.meta.agent_name
            if name in latents:
                raise ValueError(f"{path}: two models of agent {name!r}; each agent once")
            kinds[name] = world_kind_of_view(model.meta.agent_view)
            kind = one_world(kinds)  # refused before encoding a model of the other world
            latents[name] = model_latents(model, world, model.meta.agent_view, ids)
    result = alignment_graph(latents, np.arange(n_fit), np.arange(n_fit, n_fit + n_eval),
                             moment_positions(world, ids, kind=kind), config)
    result["world"] = world.to_dict()
    out = Path(out_dir)
    atomic_write_json(out / "graph.json", json.loads(json.dumps(result)))
    atomic_write_text(out / "graph.md", graph_report(result))
    plot_graph(result, out / "graph.png")
    return result
