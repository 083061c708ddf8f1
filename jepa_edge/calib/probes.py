"""Linear probes on latents, in numpy: ridge regression and a softmax classifier.

Inputs are standardised with training statistics and the standardisation is
folded into ``weight (k, d)`` / ``bias (k,)``, so ``out = z @ weight.T + bias``
works on raw latents (the fused head needs nothing else). ``transfer_probe``
composes a probe trained on agent A with a postcard W_BA: the result runs on
agent B's latents with no gradient step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import (
    AgentRef,
    ArtifactError,
    check_fingerprint,
    load_artifact,
    parse_artifact,
    refused_as,
    save_artifact,
)
from jepa_edge.calib.fit import ridge_solve
from jepa_edge.calib.postcard import Postcard

PROBE_VERSION = 1
TASKS = ("regression", "classification")


PROBE_SUFFIX = ".probe.safetensors"  # NAME.TASK.probe.safetensors


class ProbeError(ArtifactError):
    """A probe (file, fit inputs or composition) that cannot be used as is."""


@dataclass
class ProbeConfig:
    alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge penalties (×N, standardised); 1 value = fixed
    val_fraction: float = 0.2  # last rows pick alpha: consecutive frames of an episode stay on one side
    classifier: str = "logistic"  # "logistic" (softmax cross-entropy) | "ridge" (ridge to one-hot)
    l2: float = 1e-3  # logistic weight decay on standardised latents
    max_iter: int = 300  # Nesterov gradient steps for the logistic classifier
    tol: float = 1e-6  # stop when the gradient norm falls below this

    def validate(self) -> None:
        if not self.alphas or any(not np.isfinite(a) or a < 0 for a in self.alphas):
            raise ProbeError(f"ProbeConfig.alphas={self.alphas} must be a non-empty list of numbers >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ProbeError(f"ProbeConfig.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.classifier not in ("logistic", "ridge"):
            raise ProbeError(f"ProbeConfig.classifier={self.classifier!r}: use 'logistic' or 'ridge'")
        if self.l2 < 0 or self.max_iter < 1:
            raise ProbeError("ProbeConfig.l2 must be >= 0 and max_iter >= 1")


@dataclass
class Probe:
    weight: np.ndarray  # (k, d) float32, standardisation folded in
    bias: np.ndarray  # (k,)
    name: str  # head output name, e.g. "position", "danger"
    task: str  # "regression" | "classification"
    labels: list[str]  # output names (regression) or class names (classification), one per row
    agent: AgentRef  # the agent whose latents it reads (a JSON dict is accepted and checked)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        self.labels = [str(x) for x in self.labels]
        self.agent = AgentRef.checked(self.agent, f"probe {self.name!r}", "agent", ProbeError)

    @property
    def agent_fingerprint(self) -> str:
        return self.agent.fingerprint

    def apply(self, z: np.ndarray) -> np.ndarray:
        """(B, d) → (B, k) values or logits."""
        return z @ self.weight.T + self.bias

    def predict(self, z: np.ndarray) -> np.ndarray:
        """Regression: (B, k) values; classification: (B,) class indices."""
        out = self.apply(z)
        return out.argmax(1) if self.task == "classification" else out

    def validate(self, where: str | None = None) -> None:
        owner = where or f"probe {self.name!r}"
        self.agent = AgentRef.checked(self.agent, owner, "agent", ProbeError)
        if self.task not in TASKS:
            raise ProbeError(f"{owner}: task={self.task!r} must be one of {list(TASKS)}")
        k, d = len(self.labels), self.agent.latent_dim
        if self.weight.shape != (k, d) or self.bias.shape != (k,):
            raise ProbeError(
                f"{owner}: weight {self.weight.shape} / bias {self.bias.shape} do not match {k} outputs "
                f"and latent dim {d}; the file is inconsistent: refit the probe"
            )
        if not (np.all(np.isfinite(self.weight)) and np.all(np.isfinite(self.bias))):
            raise ProbeError(f"{owner}: weight or bias contains NaN or Inf; refit the probe")
        if not isinstance(self.metrics, dict):
            raise ProbeError(f"{owner}: metrics must be a dict, got {type(self.metrics).__name__}")

    def metadata(self) -> dict[str, Any]:
        meta = {"kind": "probe", "version": PROBE_VERSION, "name": self.name, "task": self.task,
                "agent": self.agent.to_dict(), "outputs": self.labels, "metrics": self.metrics}
        if self.task == "classification":
            meta["classes"] = self.labels
        return meta

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays of a probe file: ``weight`` and ``bias``."""
        return {"weight": self.weight, "bias": self.bias}


# ---------------------------------------------------------------- fitting


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = x.mean(0), x.std(0)
    return mean, np.where(sd > 1e-12, sd, 1.0)


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on raw x, (N, k) y → (weight (k, d), bias (k,)) with standardisation folded in."""
    mean, sd = _standardise(x)
    y_mean = y.mean(0)
    m = ridge_solve((x - mean) / sd, y - y_mean, alpha)  # (k, d) on standardised x
    weight = m / sd
    return weight, y_mean - weight @ mean


def _pick_alpha(x: np.ndarray, y: np.ndarray, config: ProbeConfig, score) -> tuple[float, float | None]:
    """Choose alpha on the last val_fraction of rows; returns (alpha, its validation score)."""
    if len(config.alphas) == 1:
        return float(config.alphas[0]), None
    n_val = max(1, round(len(x) * config.val_fraction))
    xt, yt, xv, yv = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    scores = []
    for a in config.alphas:
        w, b = _ridge_fit(xt, yt, a)
        scores.append(score(xv @ w.T + b, yv))
    best = int(np.argmax(scores))
    return float(config.alphas[best]), float(scores[best])


def _r2_uniform(pred: np.ndarray, true: np.ndarray) -> float:
    sse = ((pred - true) ** 2).sum(0)
    sst = ((true - true.mean(0)) ** 2).sum(0)
    per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), (sse == 0).astype(float))
    return float(per.mean())


def _softmax_fit(x: np.ndarray, y: np.ndarray, k: int, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by Nesterov gradient descent on standardised x."""
    mean, sd = _standardise(x)
    n, d = x.shape
    xa = np.concatenate([(x - mean) / sd, np.ones((n, 1))], 1)  # (N, d+1), last column = bias
    onehot = np.eye(k)[y]  # (N, k)
    reg = np.full((d + 1, 1), config.l2)
    reg[-1] = 0.0  # no decay on the bias
    lipschitz = 0.5 * np.linalg.eigvalsh(xa.T @ xa / n)[-1] + config.l2  # softmax CE Hessian ≤ ½ XᵀX/N
    theta = v = np.zeros((d + 1, k))
    t = 1.0
    for _ in range(config.max_iter):
        logits = xa @ v  # (N, k)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = xa.T @ (p - onehot) / n + reg * v  # (d+1, k)
        if np.linalg.norm(grad) < config.tol:
            theta = v
            break
        theta_next = v - grad / lipschitz
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        v = theta_next + (t - 1) / t_next * (theta_next - theta)
        theta, t = theta_next, t_next
    weight = theta[:-1].T / sd  # (k, d)
    return weight, theta[-1] - weight @ mean


def _check_fit_inputs(latents: np.ndarray, targets: np.ndarray, task: str, agent: AgentRef) -> None:
    if task not in TASKS:
        raise ProbeError(f"task={task!r} must be one of {list(TASKS)}")
    if latents.ndim != 2 or len(latents) != len(targets) or len(latents) < 4:
        raise ProbeError(f"need latents (N, d) and targets with the same N >= 4, got {latents.shape} / {targets.shape}")
    if latents.shape[1] != agent.latent_dim:
        raise ProbeError(f"latents have dim {latents.shape[1]} but agent.latent_dim is {agent.latent_dim}")
    if not (np.all(np.isfinite(latents)) and np.all(np.isfinite(targets))):
        raise ProbeError("latents or targets contain NaN or Inf; drop those moments")


def fit_probe(
    latents: np.ndarray,
    targets: np.ndarray,
    task: str,
    name: str,
    agent: AgentRef | dict[str, Any],
    config: ProbeConfig | None = None,
    labels: list[str] | None = None,
) -> Probe:
    """Fit a linear probe. Regression: targets (N, k) floats. Classification: (N,) ints in [0, k)."""
    config = config or ProbeConfig()
    config.validate()
    agent = AgentRef.checked(agent, f"probe {name!r}", "agent", ProbeError)
    x = np.asarray(latents, np.float64)
    y = np.asarray(targets)
    _check_fit_inputs(x, y, task, agent)
    if task == "regression":
        y = y.astype(np.float64).reshape(len(y), -1)  # (N, k)
        labels = labels or [f"out{i}" for i in range(y.shape[1])]
        alpha, val = _pick_alpha(x, y, config, _r2_uniform)
        weight, bias = _ridge_fit(x, y, alpha)
        fit_info = {"alpha": alpha, "val_r2": val}
    else:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ProbeError("classification targets must be (N,) integer class indices >= 0")
        k = len(labels) if labels else int(y.max()) + 1
        if y.max() >= k:
            raise ProbeError(f"class index {int(y.max())} out of range for {k} labels {labels}")
        labels = labels or [str(i) for i in range(k)]
        if config.classifier == "logistic":
            weight, bias = _softmax_fit(x, y, k, config)
            fit_info = {"l2": config.l2}
        else:
            onehot = np.eye(k)[y]  # (N, k)
            alpha, val = _pick_alpha(x, onehot, config, lambda p, t: float((p.argmax(1) == t.argmax(1)).mean()))
            weight, bias = _ridge_fit(x, onehot, alpha)
            fit_info = {"alpha": alpha, "val_accuracy": val}
    if len(labels) != weight.shape[0]:
        raise ProbeError(f"{len(labels)} labels for {weight.shape[0]} outputs; give one label per output")
    probe = Probe(weight, bias, name, task, list(labels), agent)
    probe.metrics = {"train": evaluate_probe(probe, x, targets), "n_train": len(x), **fit_info}
    probe.validate()
    return probe


def evaluate_probe(probe: Probe, latents: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Regression: mean-over-outputs R² (+ per output, RMSE). Classification: accuracy, balanced accuracy."""
    out = probe.apply(np.asarray(latents, np.float64))
    if probe.task == "regression":
        y = np.asarray(targets, np.float64).reshape(len(out), -1)  # (N, k)
        if y.shape != out.shape:
            raise ProbeError(f"probe {probe.name!r} has {out.shape[1]} outputs, targets have {y.shape[1]}")
        sse = ((out - y) ** 2).sum(0)
        sst = ((y - y.mean(0)) ** 2).sum(0)
        per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), (sse == 0).astype(float))
        return {"r2": float(per.mean()), "r2_per_output": per.tolist(),
                "rmse": float(np.sqrt(((out - y) ** 2).mean()))}
    y = np.asarray(targets).astype(np.int64).reshape(-1)
    pred = out.argmax(1)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "majority_rate": float(np.bincount(y).max() / len(y))}


def primary_score(metrics: dict[str, Any], task: str) -> float:
    """The one number a probe is judged by: R² (regression) or balanced accuracy."""
    return float(metrics["r2"] if task == "regression" else metrics["balanced_accuracy"])


# ---------------------------------------------------------------- composition and files


def transfer_probe(probe: Probe, postcard: Postcard) -> Probe:
    """probe_A ∘ W_BA: a probe that reads agent B's latents (postcard source), no training."""
    if probe.agent_fingerprint != postcard.target_fingerprint:
        raise ProbeError(
            f"probe {probe.name!r} reads encoder {probe.agent_fingerprint[:12]}…, but postcard "
            f"{postcard.name!r} maps into {postcard.target_fingerprint[:12]}…; use the postcard whose "
            "target is the probe's agent"
        )
    P, c = probe.weight.astype(np.float64), probe.bias.astype(np.float64)
    W, b = postcard.weight.astype(np.float64), postcard.bias.astype(np.float64)
    if P.shape[1] != W.shape[0]:
        raise ProbeError(f"probe {probe.name!r} expects latent dim {P.shape[1]}, W maps to {W.shape[0]}")
    metrics = {"transferred_from": probe.agent.name, "postcard": postcard.name}
    out = Probe(P @ W, P @ b + c, probe.name, probe.task, list(probe.labels), postcard.source, metrics)
    out.validate()
    return out


def save_probe(path: str | Path, probe: Probe) -> None:
    """Write ``*.probe.safetensors`` atomically (validated first)."""
    probe.validate()
    save_artifact(path, probe.tensors(), probe.metadata())


def load_probe(path: str | Path, expect_agent_fingerprint: str | None = None) -> Probe:
    """Read and fully check a probe; refuse it with ProbeError on any problem."""
    return probe_from_artifact(*load_artifact(path, "probe", PROBE_VERSION, ProbeError), str(path),
                               expect_agent_fingerprint)


def probe_from_bytes(data: bytes, where: str, expect_agent_fingerprint: str | None = None) -> Probe:
    """``load_probe`` on the bytes of a probe file already in memory (received over the fleet)."""
    return probe_from_artifact(*parse_artifact(data, where, "probe", PROBE_VERSION, ProbeError), where,
                               expect_agent_fingerprint)


def probe_from_artifact(tensors: dict[str, np.ndarray], meta: dict[str, Any], path: str,
                        expect_agent_fingerprint: str | None = None) -> Probe:
    with refused_as(ProbeError, path, "probe"):
        return _probe_checked(tensors, meta, path, expect_agent_fingerprint)


def _probe_checked(tensors: dict[str, np.ndarray], meta: dict[str, Any], path: str,
                   expect_agent_fingerprint: str | None) -> Probe:
    if set(tensors) != {"weight", "bias"}:
        raise ProbeError(f"{path}: tensors are {sorted(tensors)}, a probe holds exactly ['bias', 'weight']; re-export it")
    for key in ("name", "task", "agent", "outputs"):
        if key not in meta:
            raise ProbeError(f"{path}: metadata lacks {key!r}; re-export the probe")
    labels = meta.get("classes", meta["outputs"]) if meta["task"] == "classification" else meta["outputs"]
    if not isinstance(labels, list):
        raise ProbeError(f"{path}: outputs/classes must be a list of names; re-export the probe")
    agent = AgentRef.from_dict(meta["agent"], path, "agent", ProbeError)
    probe = Probe(tensors["weight"], tensors["bias"], str(meta["name"]), str(meta["task"]), labels,
                  agent, meta.get("metrics", {}))
    probe.validate(where=str(path))
    check_fingerprint(str(path), "agent", probe.agent_fingerprint, expect_agent_fingerprint, ProbeError)
    return probe
