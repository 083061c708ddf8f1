"""The JEPA objective: predict the EMA target's latents of a future frame.

A training clip is ``k + h`` consecutive frames of one view. The online
encoder sees the ``k`` context frames; the EMA target encoder (stop-grad) sees
frame ``t + h``. Two prediction terms, both in latent space:

* tokens: a token predictor maps the context tokens to the target frame's
  tokens (LayerNorm'ed target, as in I-JEPA). This is what makes the patch
  tokens carry where the objects are.
* global: one matrix (``z_head: "linear"``, the default; or an MLP) maps the k
  context latents ``z`` to the target ``z``; this trains the pool (by default one
  linear map of all tokens in place) that produces the exchanged latent. Its
  target ``z`` is standardised per dimension over the batch (``z_target_norm:
  "batch"``), so faint directions count as much as strong ones and the loss
  keeps its scale while ``z`` grows.

Anti-collapse: VICReg variance + covariance on the online context tokens,
computed per patch position across the batch. See docs/RECIPE.md for what was
measured (regularising ``z`` itself collapsed it to rank 1-2 every time).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from jepa_edge.train.model import Encoder, EncoderConfig, Predictor, PredictorConfig

REGULARISERS = ("vicreg",)
Z_TARGET_NORMS = ("none", "layer", "batch")


@dataclass
class JEPAConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    context_frames: int = 2  # k: two frames give position and velocity, enough to predict t+1
    horizon: int = 1  # h: predict frame t+1; objects move ~1.5 px/step at 32 px, already non-trivial
    token_weight: float = 1.0  # token prediction: the term that makes tokens encode object positions
    z_weight: float = 1.0  # global z prediction: trains the pool (raw targets: its loss grew with z's scale, ≈ 6)
    regulariser: str = "vicreg"  # on tokens per patch position; only vicreg is implemented (sigreg on z collapsed)
    reg_weight: float = 1.0  # weight of (variance + cov_weight * covariance); the best of the runs in RECIPE.md
    cov_weight: float = 0.04  # VICReg's 25:1 variance:covariance ratio
    var_target: float = 1.0  # hinge: per-dimension std across the batch should reach 1
    z_decorr_weight: float = 0.0  # > 0: penalise correlations between z's dimensions (standardised, so scale-free);
    # an experiment for views whose z keeps less than their tokens (docs/RECIPE.md, after "a flatten pool"); off by default
    z_recon_weight: float = 0.0  # > 0: a linear decoder maps the predicted z to the target frame's (LayerNorm'ed)
    # tokens, so z must carry what the tokens carry (the same experiment's other variant); training-only, off by default
    z_target_norm: str = "batch"  # the z prediction's target: "batch" (each dimension standardised over the batch:
    # every direction of z counts, faint objects' too; docs/RECIPE.md, "a standardised z target"), "none" (raw target z, the recipe
    # before it; its scale grows to ~10 and the z loss dominates) or "layer" (LayerNorm'ed per sample)
    ema_start: float = 0.99  # target follows fast at first (the tokens change a lot early)...
    ema_end: float = 0.998  # ...and keeps tracking at the end: 1.0 froze a lagging target (docs/RECIPE.md)

    def validate(self) -> None:
        self.encoder.validate()
        self.predictor.validate()
        if self.z_decorr_weight < 0:
            raise ValueError(f"jepa.z_decorr_weight {self.z_decorr_weight} must be >= 0 (0 turns the term off)")
        if self.z_target_norm not in Z_TARGET_NORMS:
            raise ValueError(f"jepa.z_target_norm {self.z_target_norm!r} is not one of {Z_TARGET_NORMS}")
        if self.z_recon_weight < 0:
            raise ValueError(f"jepa.z_recon_weight {self.z_recon_weight} must be >= 0 (0 turns the term off)")
        if self.context_frames < 1 or self.horizon < 1:
            raise ValueError(f"context_frames ({self.context_frames}) and horizon ({self.horizon}) must be >= 1")
        if self.regulariser not in REGULARISERS:
            raise ValueError(f"unknown regulariser {self.regulariser!r}; choose one of {REGULARISERS}")
        if self.predictor.embed_dim % self.predictor.num_heads:
            raise ValueError(
                f"predictor.embed_dim {self.predictor.embed_dim} is not a multiple of "
                f"predictor.num_heads {self.predictor.num_heads}"
            )


def vicreg_terms(x: torch.Tensor, target_std: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (G, B, D): G groups of B samples → (variance hinge, covariance penalty), averaged over groups."""
    x = x - x.mean(1, keepdim=True)  # (G, B, D)
    std = torch.sqrt(x.var(1) + 1e-4)  # (G, D)
    var = F.relu(target_std - std).mean()
    cov = x.transpose(1, 2) @ x / (x.shape[1] - 1)  # (G, D, D)
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))  # (G, D, D) off-diagonal part
    return var, off.pow(2).sum((1, 2)).mean() / x.shape[-1]


def standardise(z: torch.Tensor) -> torch.Tensor:
    """z (M, Z) → each dimension centred and scaled to unit std over the M samples (same shape)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0) + 1e-4)


def z_correlation(z: torch.Tensor) -> torch.Tensor:
    """z (M, Z) → mean squared off-diagonal correlation between its dimensions, times Z (0 = decorrelated)."""
    return vicreg_terms(standardise(z)[None])[1]  # (1, M, Z): VICReg's covariance term, on standardised z a correlation


class JEPA(nn.Module):
    """Online encoder + EMA target encoder + predictors; ``loss(clip)`` is the objective."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        self.predictor = Predictor(cfg.encoder, cfg.predictor, cfg.context_frames)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        if cfg.z_recon_weight > 0:  # training-only: never exported, only in train_state for --resume
            e = cfg.encoder
            self.z_decoder = nn.Linear(e.latent_dim, e.num_patches * e.embed_dim)  # z → N*D

    @property
    def clip_len(self) -> int:
        return self.cfg.context_frames + self.cfg.horizon

    def set_fused_attn(self, fused: bool) -> None:
        """One switch for every attention module (online and target encoders, predictor)."""
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused

    def loss(self, clip: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """clip (B, k+h, 3, H, W) float in [0, 255] → (scalar loss, logs as detached 0-d tensors).

        Nothing here reads a value back to the host: the trainer accumulates the logs on
        the device and reads them at log steps only.
        """
        cfg, k = self.cfg, self.cfg.context_frames
        B = clip.shape[0]
        tokens = self.encoder.forward_features(clip[:, :k].flatten(0, 1))  # (B*k, N, D)
        z = self.encoder.pool(tokens)  # (B*k, Z)
        with torch.no_grad():
            target_tokens = self.target_encoder.forward_features(clip[:, -1])  # (B, N, D)
            target_z = self.target_encoder.pool(target_tokens)  # (B, Z)
            target_tokens = F.layer_norm(target_tokens, target_tokens.shape[-1:])
            if cfg.z_target_norm == "layer":
                target_z = F.layer_norm(target_z, target_z.shape[-1:])
            elif cfg.z_target_norm == "batch":
                target_z = standardise(target_z)  # (B, Z), each dimension over the batch
        pred_tokens, pred_z = self.predictor(tokens.reshape(B, k, *tokens.shape[1:]), z.reshape(B, k, -1))
        loss_tok = F.mse_loss(pred_tokens, target_tokens)
        loss_z = F.mse_loss(pred_z, target_z)
        var, cov = vicreg_terms(tokens.transpose(0, 1), cfg.var_target)  # groups = patch positions
        loss = cfg.token_weight * loss_tok + cfg.z_weight * loss_z + cfg.reg_weight * (var + cfg.cov_weight * cov)
        logs = {"loss": loss, "loss_tokens": loss_tok, "loss_z": loss_z, "tok_var": var, "tok_cov": cov,
                "z_std": z.detach().float().std(0).mean()}
        if cfg.z_decorr_weight > 0:
            logs["z_corr"] = z_correlation(z)
            loss = loss + cfg.z_decorr_weight * logs["z_corr"]
        if cfg.z_recon_weight > 0:
            recon = self.z_decoder(pred_z).reshape(target_tokens.shape)  # (B, N*D) → (B, N, D)
            logs["loss_z_recon"] = F.mse_loss(recon, target_tokens)
            loss = loss + cfg.z_recon_weight * logs["loss_z_recon"]
        logs["loss"] = loss  # the total, optional terms included (the key keeps its place: first)
        return loss, {k: v.detach() for k, v in logs.items()}

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: target ← momentum · target + (1 − momentum) · online, two multi-tensor ops over all parameters.

        The same two operations per tensor as a per-parameter ``mul_``/``add_`` loop, so the
        result is bit-identical to it (tests/test_train_speed_paths.py); ``_foreach_lerp_``
        would be one kernel but rounds differently.
        """
        targets = list(self.target_encoder.parameters())
        online = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, online, alpha=1.0 - momentum)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, times a cosine decay from ``base`` to 0 over ``total``."""
    ramp = min(1.0, (step + 1) / max(1, warmup))
    return base * ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def ema_momentum_at(step: int, total: int, start: float, end: float) -> float:
    """Cosine ramp of the EMA momentum from ``start`` (step 0) to ``end`` (step ``total``)."""
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

