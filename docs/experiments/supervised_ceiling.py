"""Supervised ceiling of the position probe for one view: the agent's encoder architecture trained *with
labels* (MSE from z through a linear head to the standardised object positions) on the same frames and budget
as a JEPA agent, then scored exactly as the trainer scores an agent (ridge on z, held-out episodes of the
eval world). It says how much of the state a 32 px (or 48 px) frame of the view lets this encoder recover,
so a JEPA agent's R² can be read against what the pixels allow (docs/RECIPE.md).

usage: python docs/experiments/supervised_ceiling.py VIEW [--img 32 --patch 8 --pool attention --steps 1500]
(the numbers in docs/RECIPE.md, lever 3, used the attention pool, the default before that lever)
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from jepa_edge.train.evaluate import encode_frames, state_probe
from jepa_edge.train.model import Encoder, EncoderConfig
from jepa_edge.world.dataset import make_view_dataset
from jepa_edge.world.sim import WorldConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("view")
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--pool", default="attention", choices=["attention", "flatten"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--episodes", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    world = WorldConfig()
    train = make_view_dataset(a.view, a.img, world=world, n_episodes=a.episodes, n_steps=32, seed=a.world_seed)
    held = make_view_dataset(a.view, a.img, world=world, n_episodes=64, n_steps=32, seed=a.world_seed + 10_007)
    frames = torch.from_numpy(train.frames.reshape(-1, a.img, a.img, 3))  # (M, S, S, 3) uint8
    pos = train.states.state_vector().reshape(len(frames), -1)  # (M, 2n)
    mu, sd = pos.mean(0), pos.std(0)
    target = torch.from_numpy((pos - mu) / sd).float()  # (M, 2n)
    enc = Encoder(EncoderConfig(img_size=a.img, patch_size=a.patch, pool=a.pool, fused_attn=False))
    head = torch.nn.Linear(enc.cfg.latent_dim, target.shape[1])
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(a.steps):
        lr = 2e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(frames), (a.batch,), generator=g)
        x = frames[idx].permute(0, 3, 1, 2).float()  # (B, 3, S, S)
        loss = torch.nn.functional.mse_loss(head(enc(x)), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    wall = time.time() - t0
    z = encode_frames(enc, held.frames)
    out = {"view": a.view, "img": a.img, "patch": a.patch, "pool": a.pool, "steps": a.steps, "episodes": a.episodes,
           "seed": a.seed, "wall_s": round(wall, 1), "final_mse": loss.item(), **state_probe(z, held.states)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
