"""Do students aligned to a teacher through W learn faster? (`jepa-edge reproduce --student`)

The paper's claim: a new agent aligned to an existing one through W needs
3-4x fewer steps and ~70% less compute. ``run_student_study``:

1. trains a teacher on view A once (or reuses ``teacher_run``);
2. for every seed trains on view B, with the same init and the same clips:
   ``scratch`` (plain JEPA), ``teacher`` (aligned to the teacher),
   ``shuffled`` (teacher latents permuted across anchors) and ``random``
   (an untrained teacher of the same architecture); every run logs the
   held-out state-probe score to its ``log.jsonl`` every ``eval_every`` steps;
3. computes everything from those log files only (``analyse``): per seed the
   target is ``target_fraction`` x the scratch run's final score; steps, wall
   time and FLOPs until a run's probe score first reaches it (FLOPs = steps x
   ``count_step_flops`` of that condition), final scores, mean ± spread,
   speed-ups against scratch; the verdict on the claim is derived from them;
4. writes ``student_results.json``, ``student_report.md`` and
   ``student_curves.png``.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes, jsonable
from jepa_edge.config import to_dict
from jepa_edge.train.checkpoint import load_agent_meta
from jepa_edge.train.config import RunConfig, agent_config
from jepa_edge.train.log import EvalSeries, RunLogError, read_evals
from jepa_edge.train.loop import ensure_trained
from jepa_edge.train.pool import train_all

CONDITIONS = ("scratch", "teacher", "shuffled", "random")
CONTROL_OF = {"teacher": "none", "shuffled": "shuffled", "random": "random"}  # condition → TeacherConfig.control
TITLES = {"scratch": "scratch", "teacher": "with teacher", "shuffled": "shuffled teacher (control)",
          "random": "untrained teacher (control)"}
TARGET_MODES = ("final", "gain")


def student_metric(view: str) -> str:
    """The student's metric: what its camera can see (train.evaluate.state_probe). position_r2 (2D);
    visible_position_r2 (a fixed 3D camera: positions of the objects in view); visible_ego_r2 (a camera on robot 0:
    the same in the robot's frame)."""
    from jepa_edge.world.worlds import on_robot, world_kind_of_view

    if world_kind_of_view(view) == "2d":
        return "position_r2"
    return "visible_ego_r2" if on_robot(view) else "visible_position_r2"
COLORS = {"scratch": "tab:gray", "teacher": "tab:blue", "shuffled": "tab:orange", "random": "tab:green"}

# The recipe's model (jepa.py / model.py defaults) on CPU; sizes are the recipe owner's, only the run
# plumbing is set here. Timings on the 2-core CPU are in docs/STUDENT.md.
SMALL_RUN: dict[str, Any] = {
    "train": {"device": "cpu", "threads": 1, "log_every": 25, "ckpt_every": 500},  # 1 thread: see workers
}


class StudentStudyError(ValueError):
    """Study options or logs that cannot give meaningful numbers."""


@dataclass
class StudentStudyConfig:
    view_teacher: str = "top"  # view A: the existing agent (a 2D or a 3D view: the world follows the view)
    view_student: str = "oblique"  # view B: the new agent, a view of the teacher's world
    teacher_run: str = ""  # reuse this finished teacher ("" = train one into out_dir/runs/teacher)
    teacher_steps: int = 2000  # TrainConfig default, longer than any student: the teacher stands for a mature agent
    teacher_eval_every: int = 250  # the teacher's curve is not analysed: evaluate it rarely
    teacher_threads: int = 2  # the teacher trains alone, before the students: give it both cores
    steps: int = 1500  # every student / scratch run; below TrainConfig's 2000 to keep the study short (docs/STUDENT.md)
    seeds: tuple[int, ...] = (0, 1, 2)  # model seed and clip order; shared by the conditions of one seed
    conditions: tuple[str, ...] = CONDITIONS  # must include scratch and teacher
    workers: int = 2  # runs trained at once, one torch thread each (run.train.threads=1): on a 2-core CPU
    # shared with other jobs, two 1-thread runs beat one 2-thread run, which stalls at OpenMP barriers
    eval_every: int = 50  # probe evaluation period of every run: the resolution of steps-to-target
    metric: str = "position_r2"  # eval key: held-out position-probe R² of the saved (target) encoder
    target_fraction: float = 0.9  # see target_mode; per seed, from that seed's scratch run
    target_mode: str = "gain"  # gain: step-0 score + fraction x (final - step-0) | final: fraction x final score;
    # gain, because an untrained encoder already scores R² ~0.4 on the oblique view (docs/STUDENT.md)
    claim_speedup: float = 3.0  # the paper: 3-4x fewer steps
    claim_saving: float = 0.7  # the paper: ~70% less compute
    saving_tolerance: float = 0.05  # "~70%": a saving >= claim_saving - tolerance counts as matching
    teacher_seed: int = 1000  # model seed of the teacher
    teacher_world_seed: int = 0  # the teacher's training episodes
    student_world_seed: int = 100  # students train on other episodes (+ seed)
    run: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(SMALL_RUN)))  # RunConfig overrides
    teacher: dict[str, Any] = field(default_factory=lambda: {"anchors": 256, "anchor_batch": 32})  # TeacherConfig

    def validate(self) -> None:
        unknown = sorted(set(self.conditions) - set(CONDITIONS))
        if unknown or not {"scratch", "teacher"} <= set(self.conditions):
            raise StudentStudyError(f"conditions {list(self.conditions)}: use a subset of {list(CONDITIONS)} "
                                    "that includes scratch and teacher")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise StudentStudyError(f"seeds {list(self.seeds)} must be distinct and non-empty")
        if self.target_mode not in TARGET_MODES:
            raise StudentStudyError(f"target_mode={self.target_mode!r}: use one of {list(TARGET_MODES)}")
        if not 0 < self.target_fraction <= 1:
            raise StudentStudyError(f"target_fraction={self.target_fraction} must lie in (0, 1]")
        if self.workers < 1:
            raise StudentStudyError(f"workers={self.workers} must be >= 1")
        if self.steps < self.eval_every or self.eval_every < 1:
            raise StudentStudyError(f"steps={self.steps} must be >= eval_every={self.eval_every} >= 1")
        if "run" in self.teacher or "control" in self.teacher:
            raise StudentStudyError("StudentStudyConfig.teacher must not set run/control: the study sets them")
        from jepa_edge.world.worlds import world_kind_of_view

        kinds = {v: world_kind_of_view(v) for v in (self.view_teacher, self.view_student)}
        if len(set(kinds.values())) > 1:
            raise StudentStudyError(f"teacher and student views {kinds} are of different worlds: pick both views "
                                    "of one world (--world 2d or --world 3d)")


# ---------------------------------------------------------------- run configs


def teacher_config(cfg: StudentStudyConfig) -> RunConfig:
    return agent_config("teacher", cfg.view_teacher, overrides=cfg.run,
                        seed=cfg.teacher_seed, world_seed=cfg.teacher_world_seed, steps=cfg.teacher_steps,
                        train={"eval_every": cfg.teacher_eval_every, "threads": cfg.teacher_threads})


def student_config(cfg: StudentStudyConfig, condition: str, seed: int, teacher_run: str | Path) -> RunConfig:
    """One run on view B; the conditions of one seed differ only in the teacher section."""
    teacher = {} if condition == "scratch" else {**cfg.teacher, "run": str(teacher_run),
                                                 "control": CONTROL_OF[condition]}
    return agent_config(f"{condition}_s{seed}", cfg.view_student,
                        overrides=cfg.run, seed=seed, world_seed=cfg.student_world_seed + seed, steps=cfg.steps,
                        train={"eval_every": cfg.eval_every}, teacher=teacher)


def read_series(run: Path, metric: str) -> EvalSeries:
    """The eval points of one run (its directory or its log.jsonl), as a study error when unusable."""
    try:
        return read_evals(run, metric)
    except RunLogError as exc:
        raise StudentStudyError(str(exc)) from exc


# ---------------------------------------------------------------- analysis (from logs only)


def steps_to_target(series: EvalSeries, target: float) -> tuple[int | None, float | None]:
    """First logged eval step (and its wall time) whose score reaches ``target``; (None, None) if none does."""
    hit = np.flatnonzero(series.scores >= target)
    if not hit.size:
        return None, None
    return int(series.steps[hit[0]]), float(series.wall_s[hit[0]])


def seed_target(scratch: EvalSeries, cfg: StudentStudyConfig, seed: int) -> float:
    """The score every run of this seed must reach, from the scratch run's logged curve."""
    start, final = float(scratch.scores[0]), float(scratch.scores[-1])
    if cfg.target_mode == "final":
        if final <= 0:
            raise StudentStudyError(f"seed {seed}: the scratch run's final {cfg.metric} is {final:.3f} <= 0, so "
                                    f"'{cfg.target_fraction} x final' is no target; train longer")
        return cfg.target_fraction * final
    if final <= start:
        raise StudentStudyError(f"seed {seed}: the scratch run did not improve {cfg.metric} ({start:.3f} → "
                                f"{final:.3f}); there is no gain to reach")
    return start + cfg.target_fraction * (final - start)


def _summary(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], np.float64)
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size), "of": len(values)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def analyse(runs: dict[str, dict[int, Path]], flops_per_step: dict[str, float], cfg: StudentStudyConfig
            ) -> dict[str, Any]:
    """Steps / wall / FLOPs to target, final scores, speed-ups and the verdict, from ``log.jsonl`` files.

    ``runs[condition][seed]`` is a run directory (or a log file); ``flops_per_step[condition]`` the
    counted training FLOPs of one step of that condition.
    """
    if "scratch" not in runs:
        raise StudentStudyError("the analysis needs the scratch runs: they define every target")
    series = {c: {s: read_series(p, cfg.metric) for s, p in r.items()}
              for c, r in runs.items()}
    per_seed: dict[str, dict[int, dict[str, Any]]] = {c: {} for c in runs}
    for seed, scratch in series["scratch"].items():
        target = seed_target(scratch, cfg, seed)
        base_steps, _ = steps_to_target(scratch, target)
        base = None
        for c in runs:
            if seed not in series[c]:
                continue
            s = series[c][seed]
            n, wall = steps_to_target(s, target)
            flops = None if n is None else n * flops_per_step[c]
            row = {"target": target, "trivial_target": base_steps == 0, "start": float(s.scores[0]),
                   "final": float(s.scores[-1]), "best": float(s.scores.max()),
                   "steps_to_target": n, "wall_to_target_s": wall, "flops_to_target": flops,
                   "steps": int(s.steps[-1]), "wall_total_s": float(s.wall_s[-1]),
                   "curve": {"steps": s.steps.tolist(), "scores": s.scores.tolist()}}
            if c == "scratch":
                base = row
            per_seed[c][seed] = row
        for c in runs:
            row = per_seed[c].get(seed)
            if row is None:
                continue
            trivial = base_steps == 0  # the untrained encoder already reaches it: no speed-up is measurable
            row["speedup_steps"] = None if trivial else _ratio(base_steps, row["steps_to_target"])
            row["speedup_wall"] = None if trivial else _ratio(base["wall_to_target_s"], row["wall_to_target_s"])
            row["speedup_flops"] = None if trivial else _ratio(base["flops_to_target"], row["flops_to_target"])
            row["compute_saving"] = None if row["speedup_flops"] is None else 1.0 - 1.0 / row["speedup_flops"]
    keys = ("final", "steps_to_target", "wall_to_target_s", "flops_to_target", "speedup_steps", "speedup_wall",
            "speedup_flops", "compute_saving")
    summary = {c: {k: _summary([per_seed[c][s][k] for s in sorted(per_seed[c])]) for k in keys} for c in runs}
    for c in runs:
        summary[c]["flops_per_step"] = flops_per_step[c]
        summary[c]["step_cost_vs_scratch"] = flops_per_step[c] / flops_per_step["scratch"]
    trivial = sorted(s for s, r in per_seed["scratch"].items() if r["trivial_target"])
    return {"per_seed": per_seed, "summary": summary, "trivial_target_seeds": trivial,
            "verdict": verdict(summary, cfg, trivial)}


def other_target(runs: dict[str, dict[int, Path]], flops_per_step: dict[str, float], cfg: StudentStudyConfig
                 ) -> dict[str, Any]:
    """The same analysis under the other target definition: how much the verdict depends on it."""
    mode = TARGET_MODES[1 - TARGET_MODES.index(cfg.target_mode)]
    try:
        an = analyse(runs, flops_per_step, dataclasses.replace(cfg, target_mode=mode))
    except StudentStudyError as exc:
        return {"target_mode": mode, "error": str(exc)}
    keep = ("final", "steps_to_target", "speedup_steps", "speedup_flops", "compute_saving")
    return {"target_mode": mode, "verdict": an["verdict"],
            "summary": {c: {k: v[k] for k in keep} for c, v in an["summary"].items()}}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _beats(teacher: dict[str, Any], control: dict[str, Any]) -> bool:
    """The teacher's steps speed-up beats a control's: more seeds reach the target, or as many (at least one) and
    a larger mean speed-up."""
    if teacher["n"] != control["n"]:
        return teacher["n"] > control["n"]
    return teacher["n"] > 0 and control["mean"] is not None and teacher["mean"] > control["mean"]


def verdict(summary: dict[str, Any], cfg: StudentStudyConfig, trivial: list[int] = ()) -> dict[str, Any]:
    """Plain statements on the claim, derived from the summary numbers and the config thresholds."""
    t = summary.get("teacher")
    if t is None:
        return {"steps": "no teacher runs", "compute": "no teacher runs", "controls": "", "holds": False}
    sp, sv = t["speedup_steps"], t["compute_saving"]
    reached = f"{sp['n']}/{sp['of']} seeds reached the target"
    if trivial:
        steps = (f"not measurable: for seeds {list(trivial)} the untrained encoder already reaches the target at "
                 "step 0; set target_mode to gain, or a higher target_fraction, in the study config")
        return {"steps": steps, "compute": steps, "controls": "", "steps_holds": False, "compute_holds": False,
                "teacher_beats_controls": False, "holds": False}
    if sp["n"] < sp["of"]:
        steps = (f"does not hold: only {reached} with the teacher; the claim needs every student to reach it "
                 f"{cfg.claim_speedup:g}x sooner")
        steps_ok = False
    else:
        steps_ok = sp["mean"] >= cfg.claim_speedup
        what = "holds" if steps_ok else ("does not hold (a smaller speed-up)" if sp["mean"] > 1.25
                                         else "does not hold (no speed-up)")
        steps = (f"{what}: {_x(sp['mean'])} fewer steps (± {_fmt(sp['std'])}, range {_x(sp['min'])} to "
                 f"{_x(sp['max'])}) vs the claimed {cfg.claim_speedup:g}-4x; {reached}")
    need = cfg.claim_saving - cfg.saving_tolerance
    if sv["n"] < sv["of"]:
        compute, compute_ok = f"does not hold: only {reached}", False
    else:
        compute_ok = sv["mean"] >= need
        compute = (f"{'holds' if compute_ok else 'does not hold'}: {100 * sv['mean']:.0f}% less training compute "
                   f"(± {100 * sv['std']:.0f} points; one student step costs {t['step_cost_vs_scratch']:.2f}x a "
                   f"scratch step) vs the claimed ~{100 * cfg.claim_saving:.0f}%")
    ctl = []
    for c in ("shuffled", "random"):
        if c in summary:
            s = summary[c]["speedup_steps"]
            ctl.append(f"{TITLES[c]}: {_x(s['mean'])} ({s['n']}/{s['of']} reached)")
    beats = all(_beats(sp, summary[c]["speedup_steps"]) for c in ("shuffled", "random") if c in summary)
    controls = (f"with teacher {_x(sp['mean'])} vs " + "; ".join(ctl) + (
        " — the teacher beats every control" if beats else " — a control does as well: the speed-up is not "
        "the teacher's knowledge")) if ctl else "no controls run"
    return {"steps": steps, "compute": compute, "controls": controls, "steps_holds": steps_ok,
            "compute_holds": compute_ok, "teacher_beats_controls": beats,
            "holds": bool(steps_ok and compute_ok and beats)}


# ---------------------------------------------------------------- figure and report


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Probe score vs steps and vs training FLOPs: mean over seeds, band = min..max."""
    from matplotlib.figure import Figure  # Agg canvas, no global pyplot state

    an = results["analysis"]
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for c, rows in an["per_seed"].items():
        curves = [r["curve"] for r in rows.values()]
        n = min(len(cv["steps"]) for cv in curves)
        steps = np.array(curves[0]["steps"][:n], np.float64)
        scores = np.array([cv["scores"][:n] for cv in curves])  # (seeds, K)
        for ax, x in zip(axes, (steps, steps * an["summary"][c]["flops_per_step"])):
            ax.plot(x, scores.mean(0), color=COLORS[c], label=f"{TITLES[c]} (n={len(curves)})")
            ax.fill_between(x, scores.min(0), scores.max(0), color=COLORS[c], alpha=0.2, lw=0)
    target = np.mean([r["target"] for r in an["per_seed"]["scratch"].values()])
    for ax, xlabel in zip(axes, ("training steps", "training FLOPs (counted per step x steps)")):
        ax.axhline(target, color="k", ls=":", lw=1, label=f"target (mean) {target:.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"held-out {results['config']['metric']}")
        ax.grid(alpha=0.3)
        lo = min(min(r["curve"]["scores"]) for rows in an["per_seed"].values() for r in rows.values())
        ax.set_ylim(max(lo, -0.5) - 0.02, None)
    axes[0].legend(fontsize=7)
    fig.suptitle("Student on view B: probe score (mean over seeds, band = min..max)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def _cell(s: dict[str, Any], fmt=_fmt) -> str:
    if s["mean"] is None:
        return f"not reached (0/{s['of']})"
    tail = "" if s["n"] == s["of"] else f" [{s['n']}/{s['of']} reached]"
    return f"{fmt(s['mean'])} ± {fmt(s['std'])}{tail}"


def _target_words(cfg: dict[str, Any]) -> str:
    f = cfg["target_fraction"]
    if cfg.get("target_mode", "final") == "final":
        return f"{f:g} x the scratch run's final score"
    return f"the scratch run's step-0 score + {f:g} x its gain by the end (untrained → final)"


def render_report(results: dict[str, Any]) -> str:
    an, cfg, crossed = results["analysis"], results["config"], results.get("crossed") or {}
    v = an["verdict"]
    L = ["# Teacher-accelerated students: results", "",
         (f"Teacher on view `{cfg['view_teacher']}` ({cfg['teacher_steps']} steps), students on view "
          f"`{cfg['view_student']}`, {cfg['steps']} steps each, seeds {cfg['seeds']}; metric: held-out "
          f"`{cfg['metric']}` every {cfg['eval_every']} steps. Target per seed: {_target_words(cfg)}; a run's "
          "steps-to-target is its first logged eval at or above it; speed-up = scratch's steps-to-target / "
          "the run's, per seed."), "",
         "## Verdict on the paper's claim (3-4x fewer steps, ~70% less compute)", "",
         f"**Overall: {'the claim holds here' if v['holds'] else 'the claim does not hold here'}.**", "",
         f"* Steps: {v['steps']}.", f"* Compute: {v['compute']}.", f"* Controls: {v['controls']}.", "",
         "## Per condition (mean ± std over seeds)", "",
         ("| condition | final score | steps to target | wall s to target | FLOPs to target | speed-up (steps) "
          "| speed-up (wall) | compute saving | FLOPs / step |"),
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c, s in an["summary"].items():
        L.append(f"| {TITLES[c]} | {_cell(s['final'], lambda x: _fmt(x, 3))} "
                 f"| {_cell(s['steps_to_target'], lambda x: _fmt(x, 0))} "
                 f"| {_cell(s['wall_to_target_s'], lambda x: _fmt(x, 1))} | {_cell(s['flops_to_target'], _sci)} "
                 f"| {_cell(s['speedup_steps'])} | {_cell(s['speedup_wall'])} "
                 f"| {_cell(s['compute_saving'], lambda x: f'{100 * x:.0f}%')} | {_sci(s['flops_per_step'])} |")
    L += ["", "## Per seed", "", "| condition | seed | target | final | steps to target | speed-up (steps) |",
          "| --- | --- | --- | --- | --- | --- |"]
    for c, rows in an["per_seed"].items():
        for seed, r in rows.items():
            L.append(f"| {TITLES[c]} | {seed} | {r['target']:.3f} | {r['final']:.3f} | "
                     f"{'not reached' if r['steps_to_target'] is None else r['steps_to_target']} | "
                     f"{_fmt(r['speedup_steps'])} |")
    alt = results.get("other_target")
    if alt:
        L += ["", f"## Sensitivity: target_mode `{alt['target_mode']}` instead of `{cfg['target_mode']}`", ""]
        if "error" in alt:
            L += [f"Not computable: {alt['error']}."]
        else:
            L += [f"* Steps: {alt['verdict']['steps']}.", f"* Compute: {alt['verdict']['compute']}.",
                  f"* Controls: {alt['verdict']['controls']}."]
    if crossed:
        L += ["", "## What crossed from teacher to student", "",
              (f"{crossed['floats']} floats ({crossed['n_anchors']} anchors x {crossed['latent_dim']} dims) + "
               f"{crossed['ids']} moment ids + the anchor world seed {crossed['anchor_seed']}: "
               f"{crossed['bytes']} bytes. No frames, no weights (the teacher's weights would have been "
               f"{crossed['teacher_weights_not_sent_bytes']} bytes).")]
    fl = results.get("flops", {})
    if fl:
        L += ["", "## FLOPs per training step (torch FlopCounterMode, forward + backward)", "",
              "| condition | JEPA fwd | JEPA bwd | alignment fwd | alignment bwd | step |",
              "| --- | --- | --- | --- | --- | --- |"]
        for c, f in fl.items():
            a = f.get("align") or {"forward": 0, "backward": 0}
            L.append(f"| {TITLES[c]} | {_sci(f['jepa']['forward'])} | {_sci(f['jepa']['backward'])} | "
                     f"{_sci(a['forward'])} | {_sci(a['backward'])} | {_sci(f['train_step'])} |")
        ev = next(iter(fl.values()))["separate"]["eval"]
        L += ["", (f"Not in the step count: EMA and AdamW (elementwise), and each probe eval "
                   f"({_sci(ev['forward'])} FLOPs of encoder forwards over {ev['frames']} held-out frames).")]
    if "teacher_run" in results:
        L += ["", (f"Teacher: `{results['teacher_run']}` (final {cfg['metric']} "
                   f"{_fmt(results.get('teacher_metrics', {}).get(cfg['metric']), 3)}); its training cost is not "
                   "charged to the student (the teacher already exists).")]
    L += ["", "![probe score vs steps](student_curves.png)", ""]
    return "\n".join(L)


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "student_results.json", out_dir / "student_report.md", out_dir / "student_curves.png"]
    atomic_write_bytes(paths[0], json.dumps(jsonable(results), indent=1, allow_nan=False).encode())
    atomic_write_bytes(paths[1], render_report(results).encode())
    plot_curves(results, paths[2])
    return paths


# ---------------------------------------------------------------- the study


def run_student_study(cfg: StudentStudyConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from rich.console import Console

    from jepa_edge.train.flops import count_step_flops
    from jepa_edge.train.teacher import receive_teacher_latents

    cfg.validate()
    out_dir = Path(out_dir)
    console = Console(stderr=True)
    runs_dir = out_dir / "runs"
    teacher_run = Path(cfg.teacher_run) if cfg.teacher_run else runs_dir / "teacher"
    if cfg.teacher_run:
        load_agent_meta(teacher_run)  # a missing or broken teacher fails here, before any student trains
    else:
        console.print(f"teacher on view {cfg.view_teacher}: {cfg.teacher_steps} steps → {teacher_run}")
        ensure_trained(teacher_config(cfg), teacher_run, progress)
    runs: dict[str, dict[int, Path]] = {c: {} for c in cfg.conditions}
    configs: dict[str, RunConfig] = {}
    jobs: list[tuple[RunConfig, Path]] = []
    for seed in cfg.seeds:
        for c in cfg.conditions:
            run_cfg = student_config(cfg, c, seed, teacher_run)
            configs.setdefault(c, run_cfg)
            runs[c][seed] = runs_dir / run_cfg.name
            jobs.append((run_cfg, runs[c][seed]))
    console.print(f"{len(jobs)} runs on view {cfg.view_student} ({cfg.workers} at a time) → {runs_dir}")
    train_all(jobs, cfg.workers, progress)
    flops = {c: count_step_flops(configs[c]) for c in cfg.conditions}
    per_step = {c: float(f["train_step"]) for c, f in flops.items()}
    results: dict[str, Any] = {
        "config": to_dict(cfg), "teacher_run": str(teacher_run),
        "teacher_metrics": load_agent_meta(teacher_run).get("metrics", {}),
        "runs": {c: {str(s): str(p) for s, p in r.items()} for c, r in runs.items()},
        "crossed": receive_teacher_latents(configs["teacher"])[2],
        "flops": flops,
        "analysis": analyse(runs, per_step, cfg),
        "other_target": other_target(runs, per_step, cfg),
    }
    write_outputs(results, out_dir)
    return results

