"""Agent checkpoints: ``.safetensors`` + ``meta.json``, written atomically.

Two artifacts live in a run directory:

* the *agent* (``encoder.safetensors`` + ``meta.json``): what export, calib
  and probes read. Its fingerprint is the sha256 of the encoder tensors.
* the *train state* (``train_state.safetensors`` + ``train_state.json``):
  online/target encoder, predictor and optimiser moments, for ``--resume``.

Every file is written atomically (``jepa_edge.artifacts``: temp file, fsync,
``os.replace``), so an interrupted write never leaves a half checkpoint; loading checks every file
and refuses a corrupt or mismatched one instead of silently starting over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save as np_save

from jepa_edge.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, jsonable, read_json_capped
from jepa_edge.calib.fingerprint import fingerprint_arrays
from jepa_edge.config import ConfigError, from_dict
from jepa_edge.train.model import Encoder, EncoderConfig, saved_encoder_dict

AGENT_FORMAT = "jepa-edge/agent"
TRAIN_STATE_FORMAT = "jepa-edge/train-state"
VERSION = 1


class CheckpointError(ArtifactError):
    """A checkpoint is missing, corrupt, or does not match its config."""


def _save_tensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, np_save(arrays, metadata=metadata))


def _save_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, jsonable(obj), sort_keys=True)  # NaN/Inf (a degenerate metric) → null: strict JSON


def _load_tensors(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found; train the agent first (`jepa-edge train --out {path.parent}`)")
    try:
        return np_load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: {what} is corrupt or truncated ({exc}); delete it and re-train, or resume from a good copy"
        ) from exc


def read_json(path: Path, what: str) -> dict[str, Any]:
    """One JSON object from a run folder (size-capped); CheckpointError when missing, oversized or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return read_json_capped(path, what, "the file is corrupt or not one this tool wrote")
    except ArtifactError as exc:
        raise CheckpointError(str(exc)) from exc


def state_to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in state.items()}


# ---------------------------------------------------------------- agent


def save_agent(run_dir: str | Path, encoder: Encoder, meta: dict[str, Any]) -> str:
    """Write ``encoder.safetensors`` then ``meta.json``; returns the fingerprint."""
    run_dir = Path(run_dir)
    arrays = state_to_numpy(encoder.state_dict())
    fingerprint = fingerprint_arrays(arrays)
    _save_tensors(run_dir / "encoder.safetensors", arrays, {"fingerprint": fingerprint})
    full = {**meta, "format": AGENT_FORMAT, "version": VERSION, "fingerprint": fingerprint,
            "encoder": meta["encoder"], "versions": {"torch": torch.__version__, "numpy": np.__version__}}
    _save_json(run_dir / "meta.json", full)
    return fingerprint


def load_agent_meta(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory; train one with `jepa-edge train --out {run_dir}`")
    meta = read_json(run_dir / "meta.json", "agent metadata")
    if meta.get("format") != AGENT_FORMAT:
        raise CheckpointError(f"{run_dir}/meta.json: format is {meta.get('format')!r}, expected {AGENT_FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{run_dir}/meta.json: version {meta.get('version')} is not supported (expected {VERSION})")
    return meta


def load_agent(run_dir: str | Path, fused_attn: bool = True) -> tuple[Encoder, dict[str, Any]]:
    """Load an agent's encoder (eval mode) and its meta; every mismatch is an error."""
    run_dir = Path(run_dir)
    meta = load_agent_meta(run_dir)
    try:
        cfg = from_dict(EncoderConfig, {**saved_encoder_dict(meta["encoder"]), "fused_attn": fused_attn})
        encoder = Encoder(cfg)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{run_dir}/meta.json: bad encoder config ({exc})") from exc
    arrays = _load_tensors(run_dir / "encoder.safetensors", "encoder weights")
    if fingerprint_arrays(arrays) != meta.get("fingerprint"):
        raise CheckpointError(
            f"{run_dir}: encoder.safetensors does not match the fingerprint in meta.json; "
            "the files come from different runs or one was modified"
        )
    _load_state_checked(encoder, arrays, f"{run_dir}/encoder.safetensors")
    encoder.eval()
    return encoder, meta


def _load_state_checked(module: torch.nn.Module, arrays: dict[str, np.ndarray], where: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where}: weights do not match the model config (missing {missing[:5]}, unexpected {extra[:5]}); "
            "was it trained with a different architecture?"
        )
    for k, v in expected.items():
        if tuple(arrays[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: tensor {k!r} has shape {arrays[k].shape}, the config needs {tuple(v.shape)}")
        if not np.all(np.isfinite(arrays[k])):
            raise CheckpointError(f"{where}: tensor {k!r} holds NaN/Inf; the run diverged, resume from an earlier copy")
    module.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in arrays.items()})


# ---------------------------------------------------------------- train state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sd = opt.state_dict()
    arrays: dict[str, np.ndarray] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            arrays[f"optim.{idx}.{key}"] = val.detach().cpu().to(torch.float32).reshape(-1).numpy() if key == "step" \
                else val.detach().cpu().to(torch.float32).contiguous().numpy()
    return arrays, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(arrays: dict[str, np.ndarray], groups: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, a in arrays.items():
        _, idx, key = name.split(".", 2)
        t = torch.from_numpy(a.copy())
        state.setdefault(int(idx), {})[key] = t.reshape(()) if key == "step" else t
    return {"state": state, "param_groups": groups["param_groups"]}


def save_train_state(run_dir: str | Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                     info: dict[str, Any]) -> None:
    """Everything needed to resume at ``info['step']``; the JSON is written last."""
    run_dir = Path(run_dir)
    arrays: dict[str, np.ndarray] = {}
    for prefix, module in modules.items():
        arrays.update({f"{prefix}.{k}": v for k, v in state_to_numpy(module.state_dict()).items()})
    opt_arrays, opt_groups = _flatten_optimizer(opt)
    arrays.update(opt_arrays)
    fingerprint = fingerprint_arrays(arrays)
    _save_tensors(run_dir / "train_state.safetensors", arrays, {"step": str(info["step"])})
    _save_json(run_dir / "train_state.json", {**info, "format": TRAIN_STATE_FORMAT, "version": VERSION,
                                                     "optimizer": opt_groups, "fingerprint": fingerprint})


def load_train_state(run_dir: str | Path, modules: dict[str, torch.nn.Module],
                     opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore modules and optimiser in place; returns the saved info (step, config...)."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "train_state.json", "train state")
    if info.get("format") != TRAIN_STATE_FORMAT or info.get("version") != VERSION:
        raise CheckpointError(f"{run_dir}/train_state.json: not a {TRAIN_STATE_FORMAT} v{VERSION} file")
    arrays = _load_tensors(run_dir / "train_state.safetensors", "train state")
    if fingerprint_arrays(arrays) != info.get("fingerprint"):
        raise CheckpointError(
            f"{run_dir}: train_state.safetensors does not match train_state.json (interrupted copy?); "
            "delete both to restart, or restore them from a backup"
        )
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
        _load_state_checked(module, sub, f"{run_dir}/train_state.safetensors[{prefix}]")
    opt_arrays = {k: v for k, v in arrays.items() if k.startswith("optim.")}
    try:
        opt.load_state_dict(_unflatten_optimizer(opt_arrays, info["optimizer"]))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}: optimiser state does not fit this model ({exc})") from exc
    return info
