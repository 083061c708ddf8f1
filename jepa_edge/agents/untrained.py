"""An untrained agent run of any RunConfig / preset: random-init encoder saved like a trained one.

For export, runtime and benchmark paths that need a model of a given *size*
(e.g. the ViT-Tiny preset) without training it: the run directory has the
same ``encoder.safetensors`` + ``meta.json`` as ``jepa-edge train`` writes,
with ``step: 0`` and ``untrained: true`` in the meta so nobody mistakes it
for a trained agent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jepa_edge.config import to_dict
from jepa_edge.train.checkpoint import save_agent
from jepa_edge.train.config import RunConfig, preset_config
from jepa_edge.train.model import Encoder


def save_untrained_run(run_dir: str | Path, config: RunConfig | str = "demo", seed: int = 0,
                       name: str | None = None) -> str:
    """Write a random-init agent of ``config`` (a RunConfig or a preset name) to ``run_dir``; returns its fingerprint."""
    cfg = preset_config(config) if isinstance(config, str) else config
    cfg.validate()
    torch.manual_seed(seed)
    encoder = Encoder(cfg.jepa.encoder).eval()  # Encoder.init_weights: the same init training starts from
    meta = {"name": name or Path(run_dir).name, "view": cfg.data.view, "step": 0, "untrained": True, "seed": seed,
            "encoder": to_dict(cfg.jepa.encoder), "run": cfg.to_dict(), "data_source": "none (untrained)",
            "metrics": {}, "untrained_metrics": {}}
    return save_agent(run_dir, encoder, meta)
