"""Small ViT encoder and JEPA predictor.

The encoder takes what a camera gives, converted to float: BGR images,
NCHW, values in [0, 255]. Normalisation happens inside the module so the
PyTorch model and its exported ONNX graph see exactly the same input.

``forward_features`` returns patch tokens (B, N, D); ``forward`` returns the
global latent ``z`` (B, latent_dim), pooled from the tokens by one learned attention
query (``pool="attention"``) or by one linear map of all tokens in place
(``pool="flatten"``, which keeps where each token sits in the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    img_size: int = 32  # square input side, pixels
    patch_size: int = 8  # 32/8 → 4x4 = 16 tokens; objects (5-7 px) still localise (cost vs patch 4: docs/RECIPE.md)
    in_chans: int = 3
    embed_dim: int = 64  # token width; small enough to train on a CPU (wall times: docs/RECIPE.md)
    depth: int = 3  # transformer blocks; enough for the probe scores in docs/RECIPE.md
    num_heads: int = 4
    mlp_ratio: float = 2.0
    latent_dim: int = 64  # size of the global latent z exchanged through W
    pool: str = "flatten"  # tokens → z: "flatten" (a linear map of all N*D token values: the layout reaches z)
    # or "attention" (one learned query, the first release's pool); docs/RECIPE.md, "a flatten pool"
    fused_attn: bool | Literal["auto"] = "auto"  # True = F.scaled_dot_product_attention, False = manual reference path;
    # "auto": modules are built fused, and the trainer picks the faster path for its device (train/loop.py)

    def validate(self) -> None:
        if not (isinstance(self.fused_attn, bool) or self.fused_attn == "auto"):
            raise ValueError(f"fused_attn must be true, false or \"auto\", got {self.fused_attn!r}")
        if self.pool not in POOLS:
            raise ValueError(f"jepa.encoder.pool {self.pool!r} is not one of {POOLS}: set one of them")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


POOLS = ("attention", "flatten")
Z_HEADS = ("mlp", "linear")


@dataclass
class PredictorConfig:
    embed_dim: int = 64  # predictor width (= encoder width: no bottleneck at the token level)
    depth: int = 2  # a shallow predictor: the dynamics are simple, the encoder must do the work
    num_heads: int = 4
    mlp_ratio: float = 2.0
    z_head: str = "linear"  # [z_{t-k+1}..z_t] → z_{t+h}: "linear" (one matrix: z must evolve linearly, which
    # favours codes linear in the world state) or "mlp" (3 layers, width 4Z, the first release's); docs/RECIPE.md

    def validate(self) -> None:
        if self.z_head not in Z_HEADS:
            raise ValueError(f"jepa.predictor.z_head {self.z_head!r} is not one of {Z_HEADS}: set one of them")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, fused_attn: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, h, N, hd)
        p = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            # scale given as a Python float (bit-equal to SDPA's own 1/sqrt(hd)): the export gets a constant, not Sqrt(Shape)
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=1.0 / math.sqrt(self.head_dim))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            attn = F.dropout(attn.softmax(dim=-1), p, training=self.training)
            x = attn @ v  # (B, h, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(x)


def saved_encoder_dict(d: dict) -> dict:
    """An encoder config as saved in a meta.json; agents saved before ``pool`` existed used the attention pool
    (the default since is "flatten"), so a missing key means "attention", never the current default."""
    return {"pool": "attention", **d}


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, fused_attn: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, fused_attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding → (grid*grid, dim)."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))  # (dim/4,)
    out = []
    for c in (yy.flatten(), xx.flatten()):
        angles = c[:, None] * omega[None]  # (N, dim/4)
        out += [angles.sin(), angles.cos()]
    emb = torch.cat(out, 1)  # (N, 4*(dim/4))
    return F.pad(emb, (0, dim - emb.shape[1]))  # (N, dim)


class AttentionPool(nn.Module):
    """One learned query attends over tokens → a single vector."""

    def __init__(self, dim: int, num_heads: int, out_dim: int, fused_attn: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.fused_attn = fused_attn
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.query.expand(B, -1, -1).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, 1, hd)
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, h, N, hd)
        k, v = kv.unbind(0)
        if self.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))  # constant in the export
        else:
            o = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v  # (B, h, 1, hd)
        return self.out(o.reshape(B, C))  # (B, out_dim)


class FlattenPool(nn.Module):
    """All tokens in place → one linear map → a single vector (the token grid's layout is kept)."""

    def __init__(self, dim: int, num_patches: int, out_dim: int):
        super().__init__()
        self.out = nn.Linear(num_patches * dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x.flatten(1))  # (B, N, D) → (B, N*D) → (B, out_dim)


class Encoder(nn.Module):
    """ViT: images (B, 3, H, W) in [0, 255] → tokens (B, N, D) → z (B, latent_dim)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, cfg.patch_size, cfg.patch_size)
        grid = cfg.img_size // cfg.patch_size
        self.register_buffer("pos_embed", sincos_pos_embed(D, grid)[None], persistent=False)  # (1, N, D)
        fused = cfg.fused_attn is not False  # "auto" builds the fused path
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, fused) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D)
        if cfg.pool == "flatten":
            self.pool = FlattenPool(D, cfg.num_patches, cfg.latent_dim)
        else:
            self.pool = AttentionPool(D, cfg.num_heads, cfg.latent_dim, fused)
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                nn.init.zeros_(m.bias)
        if isinstance(self.pool, AttentionPool):
            nn.init.trunc_normal_(self.pool.query, std=0.02)

    def set_fused_attn(self, fused: bool) -> None:
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - 127.5) / 64.0  # (B, 3, H, W) roughly zero-mean, unit-ish scale
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)  # (B, N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))  # (B, latent_dim)


class Predictor(nn.Module):
    """Context tokens of k frames → predicted tokens (and z) of the next frame."""

    def __init__(self, enc: EncoderConfig, cfg: PredictorConfig, context_frames: int):
        super().__init__()
        self.cfg = cfg
        P, D, Z = cfg.embed_dim, enc.embed_dim, enc.latent_dim
        self.k = context_frames
        self.embed = nn.Linear(D, P)
        grid = enc.img_size // enc.patch_size
        self.register_buffer("pos_embed", sincos_pos_embed(P, grid)[None, None], persistent=False)  # (1, 1, N, P)
        self.frame_embed = nn.Parameter(torch.zeros(1, self.k, 1, P))
        fused = enc.fused_attn is not False  # "auto" builds the fused path
        self.blocks = nn.ModuleList(Block(P, cfg.num_heads, cfg.mlp_ratio, fused) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(P)
        self.out = nn.Linear(P, D)
        if cfg.z_head == "linear":
            self.z_head = nn.Linear(self.k * Z, Z)  # [z_{t-k+1}..z_t] → z_{t+h}
        else:
            self.z_head = nn.Sequential(nn.Linear(self.k * Z, 4 * Z), nn.GELU(), nn.Linear(4 * Z, 4 * Z), nn.GELU(),
                                        nn.Linear(4 * Z, Z))  # [z_{t-k+1}..z_t] → z_{t+h}
        nn.init.trunc_normal_(self.frame_embed, std=0.02)

    def forward(self, ctx_tokens: torch.Tensor, ctx_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx_tokens (B, k, N, D), ctx_z (B, k, Z) → (pred tokens (B, N, D), pred z (B, Z))."""
        B, k, N, _ = ctx_tokens.shape
        x = self.embed(ctx_tokens) + self.pos_embed + self.frame_embed  # (B, k, N, P)
        x = x.reshape(B, k * N, -1)  # (B, k*N, P)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x).reshape(B, k, N, -1)[:, -1]  # (B, N, P) outputs at the last frame's slots
        z = self.z_head(ctx_z.reshape(B, -1))  # (B, Z)
        return self.out(x), z
