"""A run's ``log.jsonl`` and ``train_state.json``: the one module that knows what their lines and keys mean.

``log.jsonl`` (written by rank 0, appended across resumes) holds one JSON object per line:

* a train record every ``log_every`` steps (and at step 1): ``{"step", "lr", <metric means>, "steps_averaged",
  "time_s"}``; ``time_s`` is the wall time since this process (re)started the run;
* an eval record every ``eval_every`` steps and at the end: ``{"step", "eval": {<held-out state-probe metrics>}}``;
* a setup record when a process starts (or resumes) the run: ``{"step", "setup": {"cuda_graphs", "attention"}}``
  (the CUDA-graph and attention choices, each with why);
* a warm-up record after that process's first step: ``{"step", "warmup_time": {<laps in seconds>}}``
  (``loop.WarmupClock``; meta.json and train_state.json keep the laps of the first three steps).

``train_state.json`` is written with the train-state tensors by ``checkpoint.save_train_state``; here it is read
for ``--resume`` (its config) and by the studies (``wall_time_s``, summed over resumes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from jepa_edge.train.checkpoint import CheckpointError, read_json

LOG_FILE = "log.jsonl"
STATE_FILE = "train_state.json"


class RunLogError(ValueError):
    """A log.jsonl that cannot give the numbers asked of it."""


# ---------------------------------------------------------------- writing


class RunLog:
    """Appends records to the run's ``log.jsonl``, one flushed line each; writes nothing on ranks other than 0."""

    def __init__(self, f: IO[str] | None):
        self._f = f

    def _write(self, record: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()

    def train(self, step: int, lr: float, values: dict[str, float], steps_averaged: int, time_s: float) -> None:
        """Means of the last ``steps_averaged`` steps' metrics; ``time_s`` since this process (re)started."""
        self._write({"step": step, "lr": lr, **values, "steps_averaged": steps_averaged, "time_s": round(time_s, 2)})

    def eval(self, step: int, metrics: dict[str, Any]) -> None:
        self._write({"step": step, "eval": metrics})

    def setup(self, step: int, choices: dict[str, Any]) -> None:
        self._write({"step": step, "setup": choices})

    def warmup_time(self, step: int, laps: dict[str, float]) -> None:
        self._write({"step": step, "warmup_time": laps})


@contextmanager
def open_log(run_dir: Path, is_main: bool) -> Iterator[RunLog]:
    """The run's log, appended across resumes (rank 0 only: other ranks get a log that writes nothing)."""
    if not is_main:
        yield RunLog(None)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "a") as f:
        yield RunLog(f)


# ---------------------------------------------------------------- reading log.jsonl


def last_logged_step(run_dir: Path) -> int:
    """The last step a (running) run wrote to its log.jsonl; 0 before its first complete record."""
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            last = f.read().splitlines()[-1]
        return int(json.loads(last)["step"])
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return 0


@dataclass
class EvalSeries:
    steps: np.ndarray  # (K,) eval steps, increasing, starting at 0
    scores: np.ndarray  # (K,) the metric at those steps
    wall_s: np.ndarray  # (K,) training wall time when that eval ran (periodic evals included)


def read_evals(path: str | Path, metric: str) -> EvalSeries:
    """Eval points of ``metric`` in one run's log (``path``: the run directory or its log.jsonl).

    A resumed run's repeated steps keep their last record. Train records carry ``time_s`` since the
    (re)start; after a resume it restarts from 0, so it is offset by the time already reached at the
    resume step. An eval at step s ran right after the train record of step s; its wall time is
    interpolated between the nearest train records.
    """
    path = Path(path)
    path = path / LOG_FILE if path.is_dir() else path
    evals: dict[int, float] = {}
    times: dict[int, float] = {0: 0.0}
    offset, last_step, last_time = 0.0, 0, 0.0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunLogError(f"{path}:{n}: not JSON ({exc})") from exc
        step = int(rec["step"])
        if "eval" in rec:
            if metric in rec["eval"]:
                evals[step] = float(rec["eval"][metric])
            continue
        if "time_s" not in rec:
            continue
        if step <= last_step or rec["time_s"] + offset < last_time:  # a restart: continue the clock from `step - 1`
            before = [s for s in times if s < step]
            offset = times[max(before)] if before else 0.0
        times[step] = offset + float(rec["time_s"])
        last_step, last_time = step, times[step]
    if not evals:
        raise RunLogError(f"{path}: no eval records with {metric!r}; was eval_every larger than the run?")
    steps = np.array(sorted(evals))
    t_steps = np.array(sorted(times))
    wall = np.interp(steps, t_steps, [times[s] for s in t_steps])
    return EvalSeries(steps, np.array([evals[s] for s in steps]), wall)


# ---------------------------------------------------------------- reading train_state.json


def read_train_state(run_dir: Path) -> dict[str, Any]:
    """The run's train_state.json (CheckpointError when missing, corrupt, or without the saved config)."""
    path = run_dir / STATE_FILE
    state = read_json(path, "train state")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: no saved config in it (not a train state this tool wrote); "
                              f"train into another run folder (or pass --overwrite)")
    return state


def train_wall_time(run_dir: Path) -> float | None:
    """The run's training wall time in seconds (summed over resumes); None when not recorded."""
    try:
        wall = read_train_state(run_dir).get("wall_time_s")
    except CheckpointError:
        return None
    return float(wall) if isinstance(wall, (int, float)) else None
