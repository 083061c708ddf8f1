"""Held-out state probe: does the latent z linearly encode the world state?

Probes are fitted on the first episodes and scored on the last ones (``world.dataset.heldout_split``), so
consecutive (nearly identical) frames never sit on both sides of the split.
"""

from __future__ import annotations

import numpy as np
import torch

from jepa_edge.artifacts import AgentRef
from jepa_edge.calib.probes import evaluate_probe, fit_probe
from jepa_edge.train.model import Encoder
from jepa_edge.world.dataset import heldout_split
from jepa_edge.world.sim import WorldStates


@torch.no_grad()
def encode_frames(encoder: Encoder, frames: np.ndarray, batch: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 frames (..., S, S, 3) BGR → latents (M, D) float32, M = prod of leading dims."""
    was_training = encoder.training
    encoder.eval()
    flat = frames.reshape(-1, *frames.shape[-3:])  # (M, S, S, 3)
    out = []
    for i in range(0, len(flat), batch):
        x = torch.from_numpy(flat[i : i + batch]).to(device).permute(0, 3, 1, 2).float()  # (b, 3, S, S)
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy()


def effective_rank(z: np.ndarray) -> float:
    """exp(entropy) of the normalised singular value spectrum of centred z."""
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s**2 / max(float((s**2).sum()), 1e-12)
    return float(np.exp(-(p * np.log(p + 1e-12)).sum()))


def state_probe(z: np.ndarray, states: WorldStates, heldout_fraction: float = 0.25) -> dict[str, float]:
    """Position R² and danger-label balanced accuracy on held-out episodes."""
    E, T = states.n_episodes, states.n_steps
    fit, held = heldout_split(np.repeat(np.arange(E), T), heldout_fraction)
    pos = states.state_vector().reshape(E * T, -1)  # (M, 2n)
    danger = states.danger.reshape(E * T)  # (M,)
    agent = AgentRef("probe", "eval", z.shape[1])
    reg = fit_probe(z[fit], pos[fit], "regression", "position", agent)
    out = {"position_r2": evaluate_probe(reg, z[held], pos[held])["r2"]}
    if len(np.unique(danger[fit])) > 1:
        cls = fit_probe(z[fit], danger[fit], "classification", "danger", agent, labels=["safe", "danger"])
        out["danger_bal_acc"] = evaluate_probe(cls, z[held], danger[held])["balanced_accuracy"]
    out["z_std"] = float(z.std(0).mean())
    out["effective_rank"] = effective_rank(z)
    return out
