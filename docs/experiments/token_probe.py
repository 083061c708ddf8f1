"""Where the state is lost: held-out ridge probes on z, on all tokens flattened and on the mean token, per
object coordinate, for one agent on its held-out eval episodes (docs/RECIPE.md, lever 3).

usage: python docs/experiments/token_probe.py RUN_DIR
"""

import sys

import numpy as np
import torch

from jepa_edge.train.checkpoint import load_agent
from jepa_edge.world.dataset import make_view_dataset
from jepa_edge.world.sim import WorldConfig

torch.set_num_threads(2)
enc, meta = load_agent(sys.argv[1])
d = meta["run"]["data"]
S = d["img_size"]
held = make_view_dataset(meta["view"], S, world=WorldConfig(), n_episodes=64, n_steps=32, seed=d["world_seed"] + 10_007)
x = torch.from_numpy(held.frames.reshape(-1, S, S, 3)).permute(0, 3, 1, 2).float()  # (M, 3, S, S)
with torch.no_grad():
    tokens = enc.forward_features(x)  # (M, N, D)
    z = enc.pool(tokens)  # (M, Z)
pos = held.states.state_vector().reshape(len(x), -1)  # (M, 2n)
n_train = 48 * 32  # the first 48 episodes fit, the last 16 score


def probe(f: torch.Tensor, alpha: float) -> np.ndarray:
    f = f.numpy().astype(np.float64)
    f = (f - f[:n_train].mean(0)) / (f[:n_train].std(0) + 1e-6)
    X = np.c_[f, np.ones(len(f))]
    w = np.linalg.solve(X[:n_train].T @ X[:n_train] + alpha * np.eye(X.shape[1]), X[:n_train].T @ pos[:n_train])
    y, p = pos[n_train:], X[n_train:] @ w
    return 1 - ((p - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


for name, f, alphas in (("z", z, (0.1, 1, 10)), ("tokens", tokens.flatten(1), (10, 100, 1000)),
                        ("mean token", tokens.mean(1), (0.1, 1, 10))):
    for a in alphas:
        r2 = probe(f, a)
        print(f"{name:10s} alpha {a:6g} R2 mean {r2.mean():.3f} per coordinate {np.round(r2, 3).tolist()}")
