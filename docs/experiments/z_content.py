"""What is in z? The share of each agent's latent variance explained, held out (episodes split 1:2), by the
true state linearly (ridge from positions + velocities) and by nearest neighbours in state space, the
between-episode share, and the share of z_A explained linearly (and by neighbours) from z_B.
Variance-weighted R² (1 - total squared residual / total variance). Prints JSON.

usage: python docs/experiments/z_content.py RUN_A RUN_B   (the reproduce moments: 96 x 32 of world 4242)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from jepa_edge.agents.latents import latents_of, world_moments
from jepa_edge.study.reproduce import ReproduceConfig
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.world.sim import WorldConfig

a_run, b_run = Path(sys.argv[1]), Path(sys.argv[2])
rc = ReproduceConfig()
(enc_a, meta_a), (enc_b, meta_b) = load_agent(a_run), load_agent(b_run)
va, vb = meta_a["view"], meta_b["view"]
m = world_moments([va, vb], rc.anchor_episodes, rc.anchor_steps, 32, rc.anchor_seed, WorldConfig())
za, zb = latents_of(enc_a, m.frames[va]).astype(np.float64), latents_of(enc_b, m.frames[vb]).astype(np.float64)
pos = m.positions.astype(np.float64)  # (N, 6)
E, T = rc.anchor_episodes, rc.anchor_steps
p3 = pos.reshape(E, T, -1)
vel = np.concatenate([p3[:, 1:2] - p3[:, :1], p3[:, 1:] - p3[:, :-1]], 1).reshape(E * T, -1)
state = np.concatenate([pos, vel], 1)
ep = m.episode
test = ep % 3 == 0
def std(x, tr):
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
    return (x - mu) / sd
def explained(X, Y, alpha=1.0):
    """variance-weighted held-out R² of ridge X → Y (Y centred on train)."""
    tr = ~test
    Xs = std(X, tr); Xs = np.concatenate([Xs, np.ones((len(Xs), 1))], 1)
    A = Xs[tr].T @ Xs[tr] + alpha * np.eye(Xs.shape[1]); A[-1, -1] -= alpha
    B = np.linalg.solve(A, Xs[tr].T @ Y[tr])
    res = Y[test] - Xs[test] @ B
    return 1 - (res ** 2).sum() / ((Y[test] - Y[tr].mean(0)) ** 2).sum()
def knn(X, Y, k):
    tr = ~test
    Xs = std(X, tr)
    d = ((Xs[test][:, None, :] - Xs[tr][None]) ** 2).sum(-1)
    idx = np.argsort(d, 1)[:, :k]
    pred = Y[tr][idx].mean(1)
    return 1 - ((Y[test] - pred) ** 2).sum() / ((Y[test] - Y[tr].mean(0)) ** 2).sum()
def between(z):
    zc = z - z.mean(0)
    means = np.stack([zc[ep == e].mean(0) for e in np.unique(ep)])[np.searchsorted(np.unique(ep), ep)]
    return float((means ** 2).sum() / (zc ** 2).sum())
out = {}
for name, z in (("A", za), ("B", zb)):
    ev = np.linalg.eigvalsh(np.cov(z.T))[::-1]; ev = ev / ev.sum()
    out[name] = {
        "eff_rank": float(np.exp(-(ev * np.log(ev + 1e-12)).sum())), "top5_var": [round(float(v), 3) for v in ev[:5]],
        "state_linear": explained(state, z), "pos_linear": explained(pos, z),
        "state_knn": {k: knn(state, z, k) for k in (3, 10, 30)},
        "pos_knn": {k: knn(pos, z, k) for k in (3, 10)},
        "between_episode": between(z),
    }
out["A_from_B_linear"] = explained(zb, za)
out["A_from_B_knn"] = {k: knn(zb, za, k) for k in (3, 10, 30)}
print(json.dumps(out, indent=1, default=float))
