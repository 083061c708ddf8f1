"""FLOPs per training step, counted by torch on one real step.

``count_step_flops(cfg)`` builds the run's JEPA (and, in student mode, its
alignment term), feeds one real batch of simulator clips and counts with
``torch.utils.flop_counter.FlopCounterMode``:

* ``jepa``: forward and backward of the JEPA loss;
* ``align``: forward and backward of the alignment term (student runs only);
* ``train_step``: the sum of the two, the number the student study multiplies
  by steps.

Listed separately, never inside ``train_step``: the EMA update and the AdamW
step (elementwise: FlopCounterMode counts them as 0, so an estimate per
parameter is given), and the periodic state-probe eval (encoder forwards over
the held-out frames; the numpy probe fit is not counted).

FlopCounterMode counts matmul-class ops only (mm, addmm, bmm, convolution,
the CUDA attention kernels): LayerNorm, GELU, softmax and the like count 0.
On CPU the fused ``scaled_dot_product_attention`` kernel has no FLOP formula
in torch, so counting switches every module to the manual attention path
(``fused_attn = False``: the same math, q@kᵀ and attn@v as bmm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from jepa_edge.agents.latents import world_moments
from jepa_edge.train.config import RunConfig
from jepa_edge.train.jepa import JEPA

EMA_FLOPS_PER_PARAM = 3  # lerp: sub, mul, add
ADAMW_FLOPS_PER_PARAM = 12  # moments, bias corrections, sqrt, div, decay, update: an order-of-magnitude estimate


def forward_backward_flops(loss_fn: Callable[[], torch.Tensor]) -> dict[str, int]:
    """Count ``loss_fn()`` (forward) and ``.backward()`` on its result separately."""
    with FlopCounterMode(display=False) as fwd:
        loss = loss_fn()
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return {"forward": int(fwd.get_total_flops()), "backward": int(bwd.get_total_flops())}


def _use_manual_attention(module: torch.nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def _one_clip(cfg: RunConfig) -> torch.Tensor:
    """A real batch: B short simulated episodes from the run's view → (B, L, 3, S, S) float."""
    L = cfg.jepa.context_frames + cfg.jepa.horizon
    m = world_moments([cfg.data.view], cfg.train.batch_size, L, cfg.data.img_size, cfg.train.seed, cfg.data.sim_world())
    return torch.from_numpy(m.frames[cfg.data.view]).permute(0, 1, 4, 2, 3).float()  # (B, L, 3, S, S)


def count_step_flops(cfg: RunConfig) -> dict[str, Any]:
    """FLOPs of one training step of ``cfg`` (per process), with EMA, optimiser and eval listed separately."""
    cfg.validate()
    with torch.random.fork_rng(devices=[]):  # counting never perturbs a caller's RNG stream
        torch.manual_seed(cfg.train.seed)
        model = JEPA(cfg.jepa)
    _use_manual_attention(model)
    clip = _one_clip(cfg)
    jepa = forward_backward_flops(lambda: model.loss(clip)[0])
    align = None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.teacher.run:
        from jepa_edge.train.teacher import build_alignment

        alignment = build_alignment(cfg, "cpu")
        align = forward_backward_flops(lambda: cfg.teacher.weight * alignment.loss(model.encoder, 0)[0])
        params += [p for p in alignment.parameters() if p.requires_grad]
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    n_trainable = sum(p.numel() for p in params)
    with torch.no_grad(), FlopCounterMode(display=False) as ema:
        model.update_target(0.99)
    with torch.no_grad(), FlopCounterMode(display=False) as one:
        model.target_encoder(clip[:1, 0])  # one frame through an encoder
    eval_frames = cfg.data.eval_episodes * cfg.data.episode_len
    step = sum(jepa.values()) + (sum(align.values()) if align else 0)
    return {
        "counter": "torch.utils.flop_counter.FlopCounterMode: matmul/conv/attention ops; elementwise ops count 0; "
                   "attention counted on the manual (non-fused) path",
        "batch_size": cfg.train.batch_size,
        "anchor_batch": cfg.teacher.anchor_batch if align else 0,
        "jepa": jepa,
        "align": align,
        "train_step": step,
        "separate": {
            "ema": {"counted": int(ema.get_total_flops()), "elementwise_estimate": EMA_FLOPS_PER_PARAM * n_encoder},
            "optimizer": {"elementwise_estimate": ADAMW_FLOPS_PER_PARAM * n_trainable},
            "eval": {"forward": 2 * eval_frames * int(one.get_total_flops()), "frames": eval_frames,
                     "encoders": 2, "note": "target + online encoder over the held-out frames; probe fit not counted"},
        },
        "params": {"encoder": n_encoder, "trainable": n_trainable},
    }
