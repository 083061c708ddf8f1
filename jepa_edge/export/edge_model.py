"""The module that gets exported: camera frames in, latent (+ head) out.

``EdgeModel`` wraps an ``Encoder`` so the exported model takes exactly what
OpenCV delivers (uint8 BGR, NHWC) and does the cast, the layout change and
the normalisation (inside the encoder) itself. Three modes:

* ``fused``: the head (W and every probe, collapsed by ``build_head``) is one
  ``Linear`` with constant weight (K, D): one Gemm, then one ``Split`` hands
  out a named output per head slice.
* ``head_inputs``: ``head_weight (K, D)`` and ``head_bias (K,)`` are model
  inputs; the output ``head (B, K)`` lets the runtime swap heads (any K)
  without re-exporting or rebuilding an engine.
* ``encoder_only``: the encoder alone, output ``z`` only.

``attention="split_qkv"`` traces every transformer block's attention as three
q/k/v projections and ``softmax(q k^T / sqrt(hd)) v`` (the same maths as the
packed ``qkv`` + SDPA the model trains with: the q/k/v weights are slices of
``qkv``): the pattern ONNX Runtime's transformer optimizer fuses into one
``Attention`` op. The default ``"packed"`` traces the model as it is.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from jepa_edge.calib.head import FusedHead
from jepa_edge.runtime.meta import MODES, unknown_mode

INPUT_NAME = "frames"
LATENT_NAME = "z"
HEAD_WEIGHT_NAME = "head_weight"
HEAD_BIAS_NAME = "head_bias"
HEAD_OUTPUT_NAME = "head"
ATTENTION_FORMS = ("packed", "split_qkv")


class EdgeModelError(ValueError):
    """An encoder/head/mode combination that cannot be exported."""


class SplitQKVAttention(nn.Module):
    """Export form of ``Attention``: separate q/k/v MatMul+Add and ``(q @ k^T) / sqrt(hd)``, same weights."""

    def __init__(self, attn: nn.Module, tokens: int):
        super().__init__()
        self.attn = attn
        self.tokens = tokens  # N as a Python int: reshapes are constants (-1 for the batch), no Shape plumbing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, N = self.attn, self.tokens
        C = a.num_heads * a.head_dim
        w, b = a.qkv.weight, a.qkv.bias  # (3C, C), (3C,): rows [q; k; v]
        q, k, v = (F.linear(x, w[i * C:(i + 1) * C], b[i * C:(i + 1) * C])  # (B, N, C)
                   .reshape(-1, N, a.num_heads, a.head_dim).transpose(1, 2) for i in range(3))  # each (B, h, N, hd)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(a.head_dim)  # (B, h, N, N)
        x = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, N, C)  # (B, h, N, hd) → (B, N, C)
        return a.proj(x)


def split_qkv(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` whose blocks trace their attention as ``SplitQKVAttention`` (the caller's is untouched)."""
    encoder = copy.deepcopy(encoder)
    for blk in encoder.blocks:
        blk.attn = SplitQKVAttention(blk.attn, int(encoder.cfg.num_patches))
    return encoder


class EdgeModel(nn.Module):
    """uint8 frames (B, H, W, 3) BGR → ``z`` (B, D) [+ head outputs]."""

    def __init__(self, encoder: nn.Module, head: FusedHead | None = None, mode: str = "fused",
                 attention: str = "packed"):
        super().__init__()
        if mode not in MODES:
            raise EdgeModelError(unknown_mode(mode))
        if attention not in ATTENTION_FORMS:
            raise EdgeModelError(f"unknown attention form {attention!r}; choose one of {list(ATTENTION_FORMS)}")
        if attention == "split_qkv":
            encoder = split_qkv(encoder)
        self.attention = attention
        latent_dim = int(encoder.cfg.latent_dim)
        self.encoder = encoder
        self.mode = mode
        self.latent_dim = latent_dim
        self.head_outputs: list[str] = []
        self.head_widths: list[int] = []
        if mode != "fused" and head is not None:
            raise EdgeModelError(
                f"mode {mode!r} bakes no head into the model "
                f"({'it is fed at run time' if mode == 'head_inputs' else 'z only'}); "
                "export without a head, or use --mode fused"
            )
        if mode == "fused":
            if head is None or head.width == 0:
                raise EdgeModelError(
                    "mode 'fused' needs a head with at least one output (a postcard and/or probes); "
                    "export with --mode encoder-only for the encoder alone, or --mode head-inputs to feed the head at run time"
                )
            if head.weight.shape != (head.width, latent_dim) or head.latent_dim != latent_dim:
                raise EdgeModelError(
                    f"head weight is {tuple(head.weight.shape)} but the encoder's latent dim is {latent_dim}; "
                    "build the head for this agent with build_head(fingerprint, latent_dim, ...)"
                )
            self.head = nn.Linear(latent_dim, head.width)  # weight (K, D): one Gemm in the model
            with torch.no_grad():
                self.head.weight.copy_(torch.as_tensor(head.weight, dtype=torch.float32))
                self.head.bias.copy_(torch.as_tensor(head.bias, dtype=torch.float32))
            self.head.requires_grad_(False)
            self.head_outputs = [o.name for o in head.outputs]
            self.head_widths = [o.width for o in head.outputs]

    @property
    def input_names(self) -> list[str]:
        extra = [HEAD_WEIGHT_NAME, HEAD_BIAS_NAME] if self.mode == "head_inputs" else []
        return [INPUT_NAME, *extra]

    @property
    def output_names(self) -> list[str]:
        if self.mode == "fused":
            return [LATENT_NAME, *self.head_outputs]
        if self.mode == "head_inputs":
            return [LATENT_NAME, HEAD_OUTPUT_NAME]
        return [LATENT_NAME]

    def forward(
        self, frames: torch.Tensor, head_weight: torch.Tensor | None = None, head_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        x = frames.to(torch.float32).permute(0, 3, 1, 2)  # (B, H, W, 3) uint8 → (B, 3, H, W) float, still BGR
        z = self.encoder(x)  # (B, D); normalisation is inside the encoder
        if self.mode == "fused":
            values = self.head(z)  # (B, K): W and every probe in one Gemm
            if len(self.head_widths) == 1:
                return z, values
            return (z, *torch.split(values, self.head_widths, dim=1))  # one (B, width) per named output
        if self.mode == "head_inputs":
            return z, F.linear(z, head_weight, head_bias)  # (B, K), K set by the inputs
        return (z,)
