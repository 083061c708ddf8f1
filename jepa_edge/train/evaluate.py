"""Held-out state probe: does the latent z linearly encode the world state?

Probes are fitted on the first episodes and scored on the last ones (``world.dataset.heldout_split``), so
consecutive (nearly identical) frames never sit on both sides of the split. In the 3-D world the probe also
reads robot 0's pose, and scores positions on what the camera sees (an object out of view or hidden has no
pixel to encode it).
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


def visible_r2(pred: np.ndarray, pos: np.ndarray, visible: np.ndarray) -> float | None:
    """R² of predicted positions pooled over the visible (moment, object) entries.

    ``pred``, ``pos`` (M, 2n); ``visible`` (M, n) bool. Each object's x and y are centred on its own mean over
    the moments it is visible in (as the per-object R² of ``position_r2``), then errors and spread are summed
    over every visible entry, so an object seen twice weighs little. Objects seen fewer than twice are left out;
    None when none is left or the visible entries do not spread.
    """
    M, n = visible.shape
    truth = pos.reshape(M, n, 2).astype(np.float64)  # (M, n, 2)
    err = (pred.reshape(M, n, 2) - truth) ** 2  # (M, n, 2)
    sse = sst = 0.0
    for k in range(n):
        rows = visible[:, k]
        if rows.sum() >= 2:
            sse += float(err[rows, k].sum())
            sst += float(((truth[rows, k] - truth[rows, k].mean(0)) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else None


def visible_probe_r2(z: np.ndarray, pos: np.ndarray, seen: np.ndarray, fit: np.ndarray, held: np.ndarray,
                     agent: AgentRef) -> float | None:
    """``visible_r2`` of a probe per object fitted only where the camera sees it: object k's (x, y) in ``pos``
    (M, 2n) is regressed on z over the ``fit`` rows with ``seen[:, k]`` (M, n) and scored on the ``held`` rows
    where it is seen. A camera cannot know where an object is while it is out of view, so those moments would
    only pull the probe away from what the camera does see. Objects seen in fewer fit rows than twice z's width
    (an underdetermined fit) are left out."""
    n, min_rows = seen.shape[1], max(10, 2 * z.shape[1])
    pred = np.zeros((len(held), 2 * n))  # (H, 2n)
    scored = np.zeros((len(held), n), bool)  # (H, n)
    for k in range(n):
        rows = fit[seen[fit, k]]
        if len(rows) >= min_rows:
            probe = fit_probe(z[rows], pos[rows, 2 * k:2 * k + 2], "regression", f"obj{k}", agent)
            pred[:, 2 * k:2 * k + 2] = probe.apply(z[held])
            scored[:, k] = seen[held, k]
    return visible_r2(pred, pos[held], scored)


def state_probe(z: np.ndarray, states: WorldStates, heldout_fraction: float = 0.25,
                visible: np.ndarray | None = None, ego: bool = False) -> dict[str, float]:
    """Position R² and danger-label balanced accuracy on held-out episodes.

    3-D world (``World3DStates``): ``danger`` is the obstacle label, plus ``robot_pose_r2`` (robot 0's x, y,
    cos, sin heading) and, with ``visible`` ((E, T, n) bool, ``render3d.visibility`` of the view),
    ``visible_position_r2``: positions of the objects the camera sees (``visible_probe_r2``: probes fitted and
    scored on the (moment, object) entries in view).
    ``ego`` (a camera on robot 0) adds ``visible_ego_r2``: the same for positions in robot 0's frame, what a
    moving camera sees (world positions are its pose composed with them: not linear in what it sees).
    """
    E, T = states.n_episodes, states.n_steps
    fit, held = heldout_split(np.repeat(np.arange(E), T), heldout_fraction)
    pos = states.state_vector().reshape(E * T, -1)  # (M, 2n)
    danger = states.danger.reshape(E * T)  # (M,)
    agent = AgentRef("probe", "eval", z.shape[1])
    reg = fit_probe(z[fit], pos[fit], "regression", "position", agent)
    out = {"position_r2": evaluate_probe(reg, z[held], pos[held])["r2"]}
    if states.kind == "3d":
        pose = states.robot_pose_vector().reshape(E * T, 4)  # (M, 4)
        pose_probe = fit_probe(z[fit], pose[fit], "regression", "robot_pose", agent)
        out["robot_pose_r2"] = evaluate_probe(pose_probe, z[held], pose[held])["r2"]
        if visible is not None:
            seen = np.asarray(visible, bool).reshape(E * T, -1)  # (E, T, n) → (M, n)
            r2 = visible_probe_r2(z, pos, seen, fit, held, agent)
            if r2 is not None:
                out["visible_position_r2"] = r2
            if ego:
                r2 = visible_probe_r2(z, states.ego_positions().reshape(E * T, -1), seen, fit, held, agent)
                if r2 is not None:
                    out["visible_ego_r2"] = r2
    if len(np.unique(danger[fit])) > 1:
        cls = fit_probe(z[fit], danger[fit], "classification", "danger", agent, labels=["safe", "danger"])
        out["danger_bal_acc"] = evaluate_probe(cls, z[held], danger[held])["balanced_accuracy"]
    out["z_std"] = float(z.std(0).mean())
    out["effective_rank"] = effective_rank(z)
    return out
