"""Teacher-accelerated students: align a new agent to an existing one through W.

What crosses from the teacher robot to the student is small and explicit:

* the teacher's latents of N *anchor moments* (N x D float32), and
* how to re-create those moments: the anchor world seed, the anchor world's
  size (episodes x steps) and the N moment ids.

Never the teacher's frames, never its weights. Each robot renders the anchor
moments from its *own* camera: the teacher once, to compute its latents (then
it is dropped), the student every step, through its online encoder.

The alignment term (``Alignment.loss``) pulls ``z_s @ W.T`` towards the
teacher latents on a batch of anchors. W (D x D) is a parameter learned
jointly with the student and kept near-orthogonal by a penalty
``||WᵀW - I||²_F / D``; both sides are centred and scaled by one global
scale each (the ``procrustes`` convention of ``calib.fit``), so an isometry
between the two latent spaces is exactly representable. Why a learned,
near-orthogonal W rather than a periodic closed-form ridge refit: see
docs/STUDENT.md.

Controls (``TeacherConfig.control``): ``shuffled`` permutes the teacher
latents across anchors (same targets, pairing destroyed); ``random`` replaces
the teacher by an untrained encoder of the same architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from jepa_edge.agents.latents import agent_descriptor, latents_of, untrained_like, world_moments
from jepa_edge.config import from_dict
from jepa_edge.train.checkpoint import CheckpointError, load_agent, load_agent_meta
from jepa_edge.train.config import RunConfig, world_key
from jepa_edge.train.model import Encoder
from jepa_edge.world.worlds import all_view_names, world_kind_of_view

CONTROLS = ("none", "shuffled", "random")
ANCHOR_STEPS = 16  # steps per anchor episode (part of the protocol: both robots simulate the same world)
ANCHORS_PER_EPISODE = 4  # N moments are drawn from ceil(N / 4) episodes: spread over many world states
ORTH_WEIGHT = 1.0  # weight of the orthogonality penalty relative to the alignment MSE
RANDOM_TEACHER_SEED = 10_001  # init seed of the `random` control's untrained teacher
SHUFFLE_SEED_OFFSET = 7  # the `shuffled` control's permutation is seeded by anchor_seed + this


class TeacherError(ValueError):
    """The teacher run or the teacher options cannot be used for this student."""


# ---------------------------------------------------------------- anchor moments (the shared protocol)


@dataclass(frozen=True)
class AnchorSet:
    """Which world moments are anchors: enough for either robot to re-create them."""

    seed: int  # world seed of the anchor world
    n_episodes: int
    n_steps: int
    ids: np.ndarray  # (N,) int64 flat moment ids, episode * n_steps + step, sorted

    @classmethod
    def make(cls, n_anchors: int, seed: int) -> AnchorSet:
        n_episodes = math.ceil(n_anchors / ANCHORS_PER_EPISODE)
        rng = np.random.default_rng([seed, n_anchors])
        ids = np.sort(rng.choice(n_episodes * ANCHOR_STEPS, size=n_anchors, replace=False))
        return cls(seed, n_episodes, ANCHOR_STEPS, ids.astype(np.int64))

    def frames(self, views: list[str], size: int, world) -> dict[str, np.ndarray]:
        """Render the anchor moments from each view → {view: (N, S, S, 3) uint8 BGR}."""
        m = world_moments(views, self.n_episodes, self.n_steps, size, self.seed, world)
        return {v: f.reshape(-1, *f.shape[2:])[self.ids] for v, f in m.frames.items()}  # (E*T, ...) → (N, ...)


# ---------------------------------------------------------------- the alignment term


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Centre over the batch and divide by one global RMS scale: (b, D) → (b, D) with mean square 1.

    Applied to both sides per batch, so an exact isometry (rotation x scale + shift) gives a zero fit;
    on the student side it is in the graph, so shrinking or inflating z cannot lower the loss.
    """
    x = x - x.mean(0)
    return x / x.pow(2).mean().add(1e-8).sqrt()


class Alignment(nn.Module):
    """``loss(encoder, step)``: pull ``W · z_student(anchor frames)`` towards the teacher latents.

    ``teacher`` (N, D) holds the teacher latents already centred and scaled with
    anchor statistics; it is a buffer (saved with the train state as the record
    of what the student received) and never requires grad. ``frames`` are the
    student's own renderings of the anchors (re-created, so not saved).
    """

    def __init__(self, teacher_latents: torch.Tensor, frames: torch.Tensor, anchor_batch: int, seed: int,
                 crossed: dict[str, Any] | None = None):
        super().__init__()
        N, D = teacher_latents.shape
        if frames.shape[0] != N:
            raise TeacherError(f"{frames.shape[0]} anchor frames for {N} teacher latents; they must pair row by row")
        if not 2 <= anchor_batch <= N:
            raise TeacherError(f"teacher.anchor_batch={anchor_batch} must lie in [2, anchors={N}]")
        self.anchor_batch = anchor_batch
        self.seed = seed
        self.crossed = dict(crossed or {})
        t = teacher_latents.detach().to(torch.float32)
        t = t - t.mean(0)  # (N, D) centred with anchor statistics
        scale = t.pow(2).sum(1).mean().div(D).sqrt()  # RMS per-dim std: one global scale
        if not torch.isfinite(scale) or scale <= 1e-12:
            raise TeacherError("the teacher latents of all anchors are identical (a collapsed teacher?)")
        self.register_buffer("teacher", t / scale)  # (N, D)
        self.register_buffer("frames", frames.permute(0, 3, 1, 2).contiguous(), persistent=False)  # (N, 3, S, S) uint8
        self.W = nn.Parameter(torch.eye(D))  # (D_teacher, D_student); any orthogonal start is as good as another

    def batch_ids(self, step: int) -> torch.Tensor:
        """Anchors used at ``step``: a pure function of (seed, step, device), so resume needs nothing else.

        Drawn on the teacher's device: no per-step host→device copy (a sync on CUDA). CPU draws are unchanged;
        a CUDA generator draws other (equally seeded) permutations.
        """
        device = self.teacher.device
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + step)
        return torch.randperm(self.teacher.shape[0], generator=g, device=device)[: self.anchor_batch]  # (b,)

    def orthogonality(self) -> torch.Tensor:
        D = self.W.shape[1]
        gram = self.W.T @ self.W  # (D, D)
        return (gram - torch.eye(D, device=gram.device, dtype=gram.dtype)).pow(2).sum() / D

    def loss(self, encoder: nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = self.batch_ids(step)
        z = _normalise(encoder(self.frames[idx].float()).float())  # (b, D) student; grad flows to the encoder
        t = _normalise(self.teacher[idx])  # (b, D) constants, through the same normalisation as the student
        fit = (z @ self.W.T - t).pow(2).mean()
        orth = self.orthogonality()
        loss = fit + ORTH_WEIGHT * orth
        fit_v, orth_v = fit.detach(), orth.detach()  # 0-d tensors: the trainer reads logs at log steps only
        return loss, {"align": fit_v + ORTH_WEIGHT * orth_v, "align_fit": fit_v, "align_orth": orth_v,
                      "align_r2": 1.0 - fit_v}  # t has mean square 1: fit = fraction of teacher variance unexplained


# ---------------------------------------------------------------- building it from a RunConfig


def _check_options(cfg: RunConfig) -> None:
    tc = cfg.teacher
    if tc.control not in CONTROLS:
        raise TeacherError(f"teacher.control={tc.control!r} is unknown; use one of {list(CONTROLS)}")
    if tc.anchors < 2:
        raise TeacherError(f"teacher.anchors={tc.anchors}: need at least 2 anchor moments")
    if not 2 <= tc.anchor_batch <= tc.anchors:
        raise TeacherError(f"teacher.anchor_batch={tc.anchor_batch} must lie in [2, teacher.anchors={tc.anchors}]")
    if not math.isfinite(tc.weight) or tc.weight < 0:
        raise TeacherError(f"teacher.weight={tc.weight} must be a finite number >= 0")
    if cfg.data.recording:
        raise TeacherError("a student must re-render the anchor moments; it needs the simulator, "
                           "not a recording (drop data.recording or train without --teacher)")


def _teacher_meta(cfg: RunConfig) -> dict[str, Any]:
    try:
        meta = load_agent_meta(cfg.teacher.run)
    except CheckpointError as exc:
        raise TeacherError(f"teacher run {cfg.teacher.run!r} cannot be used: {exc}") from exc
    enc = meta.get("encoder", {})
    if int(enc.get("latent_dim", -1)) != cfg.jepa.encoder.latent_dim:
        raise TeacherError(
            f"latent dims differ: teacher {cfg.teacher.run} has latent_dim={enc.get('latent_dim')}, the student "
            f"{cfg.jepa.encoder.latent_dim}; W is square, give the student the teacher's latent_dim"
        )
    if int(enc.get("img_size", -1)) != cfg.data.img_size:
        raise TeacherError(
            f"image sizes differ: teacher {cfg.teacher.run} sees {enc.get('img_size')} px frames, the student "
            f"{cfg.data.img_size} px; anchors are rendered at one size for both, train the student at "
            f"img_size={enc.get('img_size')}"
        )
    if meta.get("view") not in all_view_names():
        raise TeacherError(f"teacher view {meta.get('view')!r} is not a simulator view ({all_view_names()}); "
                           "its anchor moments cannot be rendered")
    teacher_kind, student_kind = world_kind_of_view(meta["view"]), world_kind_of_view(cfg.data.view)
    if teacher_kind != student_kind:
        raise TeacherError(f"teacher {cfg.teacher.run} sees the {teacher_kind} world (view {meta['view']}), the "
                           f"student the {student_kind} world (view {cfg.data.view}); both robots must render the "
                           f"same anchor moments: train the student on a view of the {teacher_kind} world")
    return meta


def _teacher_encoder(cfg: RunConfig, meta: dict[str, Any]) -> tuple[Encoder, dict[str, Any]]:
    if cfg.teacher.control == "random":
        with torch.random.fork_rng(devices=[]):  # the student's own RNG stream stays untouched
            enc = untrained_like(meta, RANDOM_TEACHER_SEED)
        return enc, replace(agent_descriptor(meta), fingerprint=f"untrained(seed={RANDOM_TEACHER_SEED})").to_dict()
    try:
        enc, meta = load_agent(cfg.teacher.run)
    except CheckpointError as exc:
        raise TeacherError(f"teacher run {cfg.teacher.run!r} cannot be used: {exc}") from exc
    return enc, agent_descriptor(meta).to_dict()


def receive_teacher_latents(cfg: RunConfig) -> tuple[np.ndarray, AnchorSet, dict[str, Any]]:
    """The teacher's side: its latents of the anchor moments, seen from its own view; the teacher is dropped.

    Returns (latents (N, D) float32, the anchor set, the record of what crossed).
    """
    _check_options(cfg)
    meta = _teacher_meta(cfg)
    anchors = AnchorSet.make(cfg.teacher.anchors, cfg.teacher.anchor_seed)
    frames = anchors.frames([meta["view"]], cfg.data.img_size, cfg.data.sim_world())[meta["view"]]  # (N, S, S, 3)
    encoder, teacher = _teacher_encoder(cfg, meta)
    latents = latents_of(encoder, frames).astype(np.float32)  # (N, D)
    n_weights = sum(p.numel() for p in encoder.parameters())
    del encoder, frames  # nothing of the teacher but its latents goes further
    if not np.all(np.isfinite(latents)):
        raise TeacherError(f"teacher {cfg.teacher.run} gives NaN/Inf latents on the anchors; is the run diverged?")
    if cfg.teacher.control == "shuffled":
        perm = np.random.default_rng(cfg.teacher.anchor_seed + SHUFFLE_SEED_OFFSET).permutation(len(latents))
        latents = latents[perm]  # same targets, pairing with the moments destroyed
    world = cfg.data.sim_world()  # the student's world config; the teacher's is of the same kind (_teacher_meta)
    teacher_world = meta.get("run", {}).get("data", {}).get(world_key(cfg.data.view))
    crossed = {
        "teacher": teacher, "control": cfg.teacher.control, "student_view": cfg.data.view,
        "n_anchors": int(latents.shape[0]), "latent_dim": int(latents.shape[1]),
        "anchor_seed": anchors.seed, "anchor_episodes": anchors.n_episodes, "anchor_steps": anchors.n_steps,
        "floats": int(latents.size), "ids": int(anchors.ids.size),
        "bytes": int(4 * latents.size + 4 * anchors.ids.size + 3 * 8),  # float32 latents, int32 ids, 3 int64 header
        "frames": 0, "weights": 0,
        "teacher_weights_not_sent_bytes": int(4 * n_weights),
        "teacher_world_matches": teacher_world is None or from_dict(type(world), teacher_world) == world,
    }
    return latents, anchors, crossed


def build_alignment(cfg: RunConfig, device: str | torch.device = "cpu") -> Alignment:
    """The student's alignment term for ``cfg`` (teacher run, anchors, control); see the module docstring."""
    latents, anchors, crossed = receive_teacher_latents(cfg)
    own = anchors.frames([cfg.data.view], cfg.data.img_size, cfg.data.sim_world())[cfg.data.view]  # the student's view
    align = Alignment(torch.from_numpy(latents), torch.from_numpy(own), cfg.teacher.anchor_batch,
                      cfg.teacher.anchor_seed, crossed)
    return align.to(device)
