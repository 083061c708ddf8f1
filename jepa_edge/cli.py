"""`jepa-edge` command line: thin typer commands that build configs and call the library.

Only this module turns exceptions into exit codes: library errors are printed
as one clear line (exit 2), never as a traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train JEPA agents per viewpoint, align them with W, export and run them at the edge.")
world_app = typer.Typer(no_args_is_help=True, help="Built-in multi-view world simulator and recordings.")
app.add_typer(world_app, name="world")
console = Console(stderr=True)

# Exceptions that mean "this input cannot be used" (files, options, configs, devices), whatever module raised
# them; any exception class defined inside jepa_edge counts too, so a new library error type is covered as soon
# as it exists. Anything else (TypeError, AttributeError, …) is a bug and keeps its traceback.
USER_ERRORS = (ValueError, RuntimeError, OSError, ImportError, KeyError, FloatingPointError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) or (
        isinstance(exc, Exception) and type(exc).__module__.split(".")[0] == "jepa_edge"
    )


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (ONNX Runtime and OpenCV messages span several)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(str(text).split())
    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError) and exc.filename is not None:
        text += "; check the path and its permissions"
    return text or type(exc).__name__


def say(text: str) -> None:
    """A plain message on stdout, never wrapped (scripts grep these lines)."""
    Console(soft_wrap=True, highlight=False).print(text, markup=False)


def fail(message: str) -> None:
    """Print the one red error line (never wrapped) and exit with code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def user_errors(fn: Callable) -> Callable:
    """Turn library exceptions into one red line and exit code 2 (the only place exceptions become exit codes)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:  # filtered: programming errors are re-raised with their traceback
            if not is_user_error(exc):
                raise
            fail(one_line(exc))

    return wrapper


def renamed(old: str, new: str, value: object) -> None:
    """A hidden old option name that was given: one line saying what to use instead."""
    if value is not None and value != []:
        raise ValueError(f"{old} was renamed to {new}; use {new} instead")


def _load_json_arg(path: Path | None, what: str = "JSON config") -> dict:
    """A JSON object from ``path`` (size-capped; a list or a scalar at the top is refused)."""
    if path is None:
        return {}
    from jepa_edge.artifacts import read_json_capped

    return read_json_capped(path, what, 'write a JSON object of RunConfig overrides, e.g. {"train": {"steps": 500}}')


def _checked_run_overrides(path: Path | None) -> dict:
    """RunConfig overrides from ``--config``, type-checked against RunConfig before anything runs."""
    from jepa_edge.config import ConfigError, deep_merge, from_dict, to_dict
    from jepa_edge.train.config import RunConfig

    overrides = _load_json_arg(path, "RunConfig overrides")
    try:
        from_dict(RunConfig, deep_merge(to_dict(RunConfig()), overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}; fix or remove that key (see jepa_edge/train/config.py)") from exc
    return overrides


# ---------------------------------------------------------------- train


def _topic_map(topics: list[str] | tuple[str, ...], recording: Path | None) -> dict[str, str]:
    """``--topic front=/front/image_raw`` (repeat) → {view: topic}; only with a bag as --recording."""
    out: dict[str, str] = {}
    for spec in topics:
        view, sep, topic = spec.partition("=")
        if not sep or not view or not topic.startswith("/"):
            raise ValueError(f"--topic {spec!r} must be VIEW=/topic, e.g. --topic front=/front/image_raw")
        out[view] = topic
    if out and recording is None:
        raise ValueError("--topic names cameras inside a ROS 2 bag or .mcap: pass it with --recording BAG")
    return out


TopicOpt = Annotated[list[str], typer.Option(
    "--topic", help="Bag recordings: camera VIEW=/image/topic (repeat; default: views named after the topics).")]
ToleranceOpt = Annotated[float, typer.Option(
    "--tolerance", help="Bag recordings: pair cameras within this many seconds (0 = half a frame interval).")]
StatesTopicOpt = Annotated[str, typer.Option(
    "--states-topic", help="Bag recordings: ground-truth states topic (default /jepa_edge/states if present).")]


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, meta.json, log.jsonl).")],
    view: Annotated[str, typer.Option(help="Simulator view (top, oblique, rotated, partial) or camera name.")] = "top",
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (default from config).")] = None,
    seed: Annotated[int, typer.Option(help="Model init and clip sampling seed.")] = 0,
    world_seed: Annotated[int, typer.Option(help="Seed of the simulated training world.")] = 0,
    name: Annotated[str | None, typer.Option(help="Agent name (default: run directory name).")] = None,
    recording: Annotated[Path | None, typer.Option(
        help="Train on a recording instead: a multi-camera folder, a ROS 2 bag folder or an .mcap file.")] = None,
    topic: TopicOpt = [],  # noqa: B006
    batch_size: Annotated[int | None, typer.Option(help="Clips per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the training step's loss module.")] = False,
    cuda_graphs: Annotated[bool, typer.Option(help="Compile with CUDA graphs (reduce-overhead); CUDA only.")] = False,
    config: Annotated[Path | None, typer.Option(help="JSON RunConfig overrides (unknown keys are errors).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    teacher: Annotated[Path | None, typer.Option(help="Teacher agent run dir: align this student to it via W.")] = None,
    anchors: Annotated[int, typer.Option(help="Anchor moments whose teacher latents the student receives.")] = 256,
    teacher_weight: Annotated[float, typer.Option(help="Alignment loss weight.")] = 1.0,
    teacher_control: Annotated[str, typer.Option(help="none | shuffled | random (controls).")] = "none",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    preset: Annotated[str, typer.Option(help="Starting config: demo (32 px) | vit-tiny (224 px ViT-Tiny).")] = "demo",
) -> None:
    """Train one JEPA agent on one viewpoint (optionally as a student of a teacher agent)."""
    from jepa_edge.config import deep_merge, from_dict, to_dict
    from jepa_edge.train.config import RunConfig, preset_config
    from jepa_edge.train.loop import train as run_train

    base = to_dict(preset_config(preset))
    overrides = _checked_run_overrides(config)
    cfg_dict = deep_merge(base, overrides)
    cfg_dict["name"] = name or overrides.get("name") or out.name
    cfg_dict["data"].update(view=view, world_seed=world_seed, recording=str(recording or ""),
                            topics=_topic_map(topic, recording))
    cfg_dict["train"].update(seed=seed, device=device, compile=compile, cuda_graphs=cuda_graphs)
    if steps is not None:
        cfg_dict["train"]["steps"] = steps
    if batch_size is not None:
        cfg_dict["train"]["batch_size"] = batch_size
    if lr is not None:
        cfg_dict["train"]["lr"] = lr
    if teacher is not None:
        cfg_dict["teacher"].update(run=str(teacher), anchors=anchors, weight=teacher_weight,
                                   control=teacher_control)
    cfg = from_dict(RunConfig, cfg_dict)
    result = run_train(cfg, out, resume=resume, progress=progress)
    _print_train_summary(result, recording)


def _print_train_summary(result, recording: Path | None) -> None:
    from rich.table import Table

    if not result.metrics:  # no held-out episodes were scored: say why in one line instead of an empty table
        from jepa_edge.bags.reader import is_bag

        bag = recording is not None and is_bag(recording)
        has_states = recording is not None and (recording / "states.npz").is_file()
        why = ("training used every moment of it, so none is held out" if bag or has_states
               else "it has no states.npz (no ground truth)")
        say(f"no held-out state probe for {result.out_dir}: trained on recording {recording}, and {why}; "
            f"score it with `jepa-edge probe {result.out_dir} --recording OTHER_RECORDING` "
            "(a recording with ground-truth states the agent did not train on)")
        say(f"steps {result.step}  wall {result.wall_time_s:.0f}s  fingerprint {result.fingerprint[:16]}…")
        return

    table = Table(title=f"held-out state probe — {result.out_dir}")
    table.add_column("metric")
    table.add_column("trained", justify="right")
    table.add_column("untrained (control)", justify="right")
    for key in ("position_r2", "danger_bal_acc", "effective_rank", "z_std"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.3f}", f"{result.untrained.get(key, float('nan')):.3f}")
    Console().print(table)
    say(f"steps {result.step}  wall {result.wall_time_s:.0f}s  fingerprint {result.fingerprint[:16]}…")


# ---------------------------------------------------------------- world


@world_app.command("record")
@user_errors
def world_record(
    out: Annotated[Path, typer.Argument(help="Output folder (one video per view + states.npz + recording.json).")],
    views: Annotated[list[str], typer.Option("--view", help="Views to record (repeat).")] = ["top", "oblique"],  # noqa: B006
    episodes: Annotated[int, typer.Option(help="Episodes.")] = 8,
    steps: Annotated[int, typer.Option(help="Steps per episode.")] = 64,
    size: Annotated[int, typer.Option(help="Frame side in pixels (even).")] = 32,
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    fps: Annotated[float, typer.Option(help="Video frame rate.")] = 30.0,
    codec: Annotated[str | None, typer.Option(
        help="Folder format: MJPG (.avi, default), mp4v (.mp4) or FFV1 (.mkv, lossless).")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="folder (videos + states.npz) | mcap (one ROS 2 .mcap file) | rosbag2 (a bag folder).")
    ] = "folder",
    encoding: Annotated[str | None, typer.Option(
        help="Bag formats: rgb8 (default), bgr8, mono8 or jpeg (CompressedImage).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing recording.")] = False,
) -> None:
    """Write a multi-view recording of the simulator: a folder, or a ROS 2 bag with a states topic."""
    from jepa_edge.world.record import simulate_recording

    if format == "folder" and out.suffix.lower() in (".mcap", ".db3"):
        raise ValueError(f"{out} looks like a bag file but --format is folder; pass --format mcap for one .mcap file")
    path = simulate_recording(out, n_episodes=episodes, n_steps=steps, views=tuple(views), size=size, seed=seed,
                              fps=fps, codec=codec, overwrite=overwrite, fmt=format, encoding=encoding)
    say(f"wrote {path}")


@world_app.command("info")
@user_errors
def world_info(path: Annotated[Path, typer.Argument(help="Recording folder.")]) -> None:
    """Describe a recording folder."""
    from jepa_edge.world.dataset import load_recording

    rec = load_recording(path)
    say(f"{path}: views {rec.views}, {rec.n_episodes} episode(s) x {rec.n_steps} steps, "
        f"states {'yes' if rec.states is not None else 'no'}")
    if rec.meta.get("topics"):  # a bag: which topic each view is, and how the cameras paired
        say("topics: " + ", ".join(f"{v}={t}" for v, t in rec.meta["topics"].items()))
        if rec.meta.get("pairing"):
            say(f"pairing: {json.dumps(rec.meta['pairing'], default=str)}")

# ---------------------------------------------------------------- calib / probe / reproduce


def _moments_cfg(episodes: int, steps: int, seed: int, recording: Path | None, topics: list[str] = (),
                 tolerance: float = 0.0, states_topic: str = ""):
    from jepa_edge.train.calibrate import MomentsConfig

    return MomentsConfig(episodes=episodes, steps=steps, seed=seed, recording=str(recording or ""),
                         topics=_topic_map(topics, recording), tolerance_s=tolerance, states_topic=states_topic)


@app.command()
@user_errors
def calib(
    source: Annotated[Path, typer.Option(help="Agent whose latents W maps FROM (e.g. runs/agentB).")],
    target: Annotated[Path, typer.Option(help="Agent whose latent space W maps INTO (e.g. runs/agentA).")],
    out: Annotated[Path, typer.Option(help="Postcard file to write (*.postcard.safetensors).")],
    anchors: Annotated[int, typer.Option(help="Paired anchor moments used to fit W.")] = 300,
    estimator: Annotated[str, typer.Option(help="lstsq | ridge | procrustes | orth_lstsq")] = "ridge",
    ridge_alpha: Annotated[float, typer.Option(help="Ridge penalty (relative, on standardised latents).")] = 1e-2,
    episodes: Annotated[int, typer.Option(help="Fresh simulated episodes for anchors + held-out scoring.")] = 64,
    steps: Annotated[int, typer.Option(help="Steps per episode.")] = 32,
    seed: Annotated[int, typer.Option(help="World seed of the anchor moments.")] = 777,
    recording: Annotated[Path | None, typer.Option(
        help="Use a recording instead: a multi-camera folder, a ROS 2 bag folder or an .mcap file.")] = None,
    topic: TopicOpt = [],  # noqa: B006
    tolerance: ToleranceOpt = 0.0,
) -> None:
    """Fit W between two agents from anchor pairs and measure the isomorphism against controls."""
    from jepa_edge.train.calibrate import CalibConfig, calibrate

    _, report = calibrate(source, target, out, CalibConfig(estimator=estimator, ridge_alpha=ridge_alpha,
                                                            anchors=anchors),
                          _moments_cfg(episodes, steps, seed, recording, topic, tolerance))
    _print_calib(report)
    say(f"wrote {out}")


def _print_calib(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"W ({report['estimator']}, {report['n_anchors']} anchors) on {report['n_heldout']} "
                  "held-out moments")
    for col in ("metric", "trained", "untrained", "shuffled anchors"):
        table.add_column(col, justify="right")
    for key in ("r2", "cosine", "retrieval_top1", "cka", "mutual_knn", "procrustes_distance"):
        cells = [report[c].get(key) for c in ("trained", "untrained", "shuffled")]
        table.add_row(key, *("-" if v is None else f"{v:.3f}" for v in cells))
    Console().print(table)
    say(f"retrieval chance = {report['retrieval_chance']:.4f}")


PROBE_TASKS = ("position", "danger")  # the simulator's labels (jepa_edge.train.calibrate._task_targets)


@app.command()
@user_errors
def probe(
    run: Annotated[Path, typer.Argument(help="Agent run dir the probes read (or, with --transfer, agent B).")],
    out: Annotated[Path, typer.Option(help="Folder for *.probe.safetensors.")] = Path("probes"),
    transfer: Annotated[Path | None, typer.Option(help="Postcard W_BA: run agent A's probes on RUN zero-shot.")] = None,
    probes: Annotated[list[Path], typer.Option("--probe", help="Agent A probe files to transfer (repeat).")] = [],  # noqa: B006
    task: Annotated[list[str], typer.Option(help="Tasks to fit: position, danger (repeat).")] = ["position", "danger"],  # noqa: B006
    episodes: Annotated[int, typer.Option(help="Fresh simulated episodes.")] = 64,
    steps: Annotated[int, typer.Option(help="Steps per episode.")] = 32,
    seed: Annotated[int, typer.Option(help="World seed of the moments.")] = 778,
    recording: Annotated[Path | None, typer.Option(
        help="Use a recording with ground-truth states instead (folder with states.npz, bag or .mcap).")] = None,
    topic: TopicOpt = [],  # noqa: B006
    tolerance: ToleranceOpt = 0.0,
    states_topic: StatesTopicOpt = "",
) -> None:
    """Train linear probes on an agent's latents, or transfer another agent's probes through W."""
    from rich.table import Table

    from jepa_edge.train.calibrate import ProbeRunConfig, train_probes, transfer_probes

    unknown = [t for t in task if t not in PROBE_TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; use --task with one of {list(PROBE_TASKS)}")
    mcfg = _moments_cfg(episodes, steps, seed, recording, topic, tolerance, states_topic)
    if transfer is None:
        paths, report = train_probes(run, out, ProbeRunConfig(tasks=tuple(task)), mcfg)
        table = Table(title=f"held-out probes on {run}")
        for col in ("task", "trained", "untrained (control)"):
            table.add_column(col, justify="right")
        for t, r in report.items():
            table.add_row(t, f"{r['trained']:.3f}", f"{r['untrained']:.3f}")
        Console().print(table)
        for p in paths:
            say(f"wrote {p}")
        return
    if not probes:
        raise ValueError("--transfer needs the probes to move: pass --probe FILE (agent A's *.probe.safetensors)")
    report = transfer_probes(probes, transfer, run, mcfg)
    table = Table(title=f"zero-shot transfer through {transfer.name} onto {run} (held-out)")
    for col in ("probe", "transferred", "native", "kept", "scrambled W", "untrained native"):
        table.add_column(col, justify="right")
    for name, r in report.items():
        kept = "-" if r["kept_fraction"] is None else f"{100 * r['kept_fraction']:.0f}%"
        table.add_row(name, f"{r['transferred']:.3f}", f"{r['native']:.3f}", kept, f"{r['scrambled_W']:.3f}",
                      f"{r['untrained_native']:.3f}")
    Console().print(table)


@app.command()
@user_errors
def reproduce(
    out: Annotated[Path, typer.Option(help="Output folder: runs/, report.md, results.json, plots, postcard, probes.")] = Path("demo"),
    view_a: Annotated[str, typer.Option(help="Agent A's view (W's target).")] = "top",
    view_b: Annotated[str, typer.Option(help="Agent B's view (W's source).")] = "oblique",
    steps: Annotated[int, typer.Option(help="Training steps per agent (0 = default config).")] = 0,
    other_world: Annotated[bool, typer.Option(help="Also train the different-world control agent.")] = True,
    objects_world: Annotated[bool, typer.Option(help="Also train the control agent of a world with a different "
                                                "number of objects (one more agent to train).")] = False,
    config: Annotated[Path | None, typer.Option(help="JSON RunConfig overrides for every agent.")] = None,
    student: Annotated[bool, typer.Option(help="Instead: teacher-accelerated students vs scratch (>= 3 seeds, "
                                          "controls), written to OUT/student_report.md.")] = False,
    scaling: Annotated[bool, typer.Option(help="Instead: the scaling study (agents at several compute budgets, "
                                          "seeds and view pairs), written to OUT/scaling.md + .json + .png.")] = False,
    scaling_config: Annotated[Path | None, typer.Option(help="JSON ScalingConfig overrides (budgets, seeds, views; "
                                                       "jepa_edge/study/scaling.py).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    preset: Annotated[str, typer.Option(help="demo (the recipe's agents, 8-20 min on 2 CPU cores) | quick "
                                        "(undertrained agents, about 2 min: the pipeline, not the claim).")] = "demo",
) -> None:
    """Run the paper's experiment on the simulator and write report.md + results.json + plots."""
    from jepa_edge.study.reproduce import ReproduceConfig
    from jepa_edge.study.reproduce import reproduce as run_reproduce

    overrides = _checked_run_overrides(config)  # a bad key fails now, not after the first agent trained
    if scaling:
        from jepa_edge.config import ConfigError, from_dict
        from jepa_edge.study.scaling import ScalingConfig, run_scaling

        try:
            sc = from_dict(ScalingConfig, {"run": overrides, **_load_json_arg(scaling_config, "ScalingConfig overrides")})
        except ConfigError as exc:
            raise ConfigError(f"{scaling_config}: {exc}; fix or remove that key (see jepa_edge/study/scaling.py)") from exc
        sc.validate()
        run_scaling(sc, out, progress=progress)
        say(f"report: {out / 'scaling.md'}")
        return
    if student:
        from jepa_edge.config import deep_merge
        from jepa_edge.study.student import SMALL_RUN, StudentStudyConfig, run_student_study

        scfg = StudentStudyConfig(view_teacher=view_a, view_student=view_b,
                                  run=deep_merge(SMALL_RUN, overrides),
                                  **({"steps": steps} if steps else {}))
        run_student_study(scfg, out, progress=progress)
        say(f"report: {out / 'student_report.md'}")
        return

    cfg = ReproduceConfig(view_a=view_a, view_b=view_b, steps=steps, other_world=other_world,
                          objects_world=objects_world, preset=preset, run=overrides)
    run_reproduce(cfg, out, progress=progress)
    say(f"report: {out / 'report.md'}")


# ---------------------------------------------------------------- export / run / bench


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Agent run directory (encoder.safetensors + meta.json).")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    postcard: Annotated[Path | None, typer.Option(help="Postcard W (this agent → another) to fuse in.")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files to fuse in (repeat).")] = [],  # noqa: B006
    head: Annotated[Path | None, typer.Option("--head", hidden=True, help="Renamed --postcard.")] = None,
    mode: Annotated[str, typer.Option(help="fused | head_inputs (swap heads at run time) | encoder_only")] = "fused",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    exporter: Annotated[str, typer.Option(help="torchscript | dynamo")] = "torchscript",
    manual_attn: Annotated[bool, typer.Option(help="Export the manual attention path instead of SDPA.")] = False,
    batch: Annotated[int, typer.Option(help="Static batch N (every shape fixed: CUDA graphs); 0 = dynamic.")] = 0,
    optimize: Annotated[bool | None, typer.Option("--optimize/--no-optimize", help="onnxslim constant folding "
                        "(default: on when onnxslim is installed, the export extra).")] = None,
    fuse_transformer: Annotated[bool, typer.Option(help="ONNX Runtime transformer fusions (com.microsoft ops: "
                                "ORT only, not for --trt).")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine "
                                      "(needs the trt extra: pip install 'jepa-edge\\[trt]').")] = False,
    precision: Annotated[str, typer.Option(help="TensorRT precision: fp32 | fp16 | int8.")] = "fp16",
    int8_method: Annotated[str, typer.Option(help="auto | calibrator | qdq")] = "auto",
    fp16_method: Annotated[str, typer.Option(help="auto | flag (BuilderFlag.FP16, TensorRT <= 10) | onnx "
                                             "(fp16 ONNX, strongly typed; TensorRT 11)")] = "auto",
    opt_batch: Annotated[int, typer.Option(help="TensorRT profile: optimal batch.")] = 1,
    max_batch: Annotated[int, typer.Option(help="TensorRT profile: max batch.")] = 8,
    opt_head: Annotated[int, typer.Option(help="TensorRT profile: head width kernels are tuned for "
                                          "(head_inputs mode; 0 = min(72, --max-head)).")] = 0,
    max_head: Annotated[int, typer.Option(help="TensorRT profile: max head width (head_inputs mode).")] = 256,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace limit (MiB).")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="Persisted TensorRT timing cache.")] = None,
    int8_source: Annotated[str, typer.Option(help="INT8 range-calibration frames: sim (the agent's own view), "
                                             "sim:VIEW, a video file or a recording folder.")] = "sim",
    int8_frames: Annotated[int, typer.Option(help="INT8 range-calibration frames (downscaled, memory-capped).")] = 512,
    calib_source: Annotated[str | None, typer.Option(hidden=True)] = None,  # renamed: --int8-source
    calib_view: Annotated[str | None, typer.Option(hidden=True)] = None,  # renamed: --int8-source sim:VIEW
    calib_frames: Annotated[int | None, typer.Option(hidden=True)] = None,  # renamed: --int8-frames
) -> None:
    """Export encoder + fused linear head (W, probes) to ONNX, optionally to a TensorRT engine."""
    from jepa_edge.export import (
        Int8Config,
        OnnxExportConfig,
        TrtBuildConfig,
        build_engine,
        export_agent,
        require_tensorrt,
    )
    from jepa_edge.export.optimize import count_summary
    from jepa_edge.runtime.meta import MODE_ALIASES

    renamed("--head", "--postcard", head)
    if mode in MODE_ALIASES:  # a deprecated name: one line naming the new one, then go on
        console.print(f"[yellow]hint:[/] --mode {mode} is now --mode {MODE_ALIASES[mode]}")
        mode = MODE_ALIASES[mode]
    for old, value, new in (("--calib-source", calib_source, "--int8-source"),
                            ("--calib-view", calib_view, "--int8-source sim:VIEW"),
                            ("--calib-frames", calib_frames, "--int8-frames")):
        renamed(old, new, value)
    if trt and fuse_transformer:
        raise ValueError("--fuse-transformer writes com.microsoft contrib ops TensorRT cannot parse; "
                         "export the --trt model without --fuse-transformer")
    build_cfg = TrtBuildConfig(
        precision=precision, int8_method=int8_method, fp16_method=fp16_method, opt_batch=opt_batch,
        max_batch=max_batch, opt_head=opt_head, max_head=max_head, workspace_mib=workspace_mib,
        timing_cache=str(timing_cache or ""), int8=Int8Config(source=int8_source, n_frames=int8_frames))
    if trt:
        build_cfg.validate()  # a bad profile fails before the export, not after it
        require_tensorrt()  # fail at once, before the export, when the extra is missing
    res = export_agent(run, out, postcard_path=postcard, probe_paths=tuple(probe), mode=mode,
                       fused_attn=not manual_attn,
                       config=OnnxExportConfig(opset=opset, exporter=exporter, batch=batch, optimize=optimize,
                                               fuse_transformer=fuse_transformer))
    say(f"wrote {res.path} ({res.mode}); ONNX Runtime vs PyTorch max abs error: "
        + ", ".join(f"{k} {v:.2e}" for k, v in res.parity.items()))
    say(f"graph (batch {batch or 'dynamic'}): {count_summary(res.metadata['graph']['node_counts'])}")
    if trt:
        built = build_engine(res.path, res.path.with_suffix(".engine"), build_cfg)
        side = built.sidecar
        say(f"wrote {built.engine_path} ({side['precision']}, tf32 {side['tf32']}) + {built.sidecar_path}")


def _head_from_files(meta, postcard: Path | None, probes: list[Path]):
    if postcard is None and not probes:
        return None
    from jepa_edge.calib import build_head, load_postcard, load_probe

    pc = load_postcard(postcard, expect_source_fingerprint=meta.agent_fingerprint) if postcard else None
    return build_head(meta.agent_fingerprint, meta.latent_dim, pc, [load_probe(p) for p in probes])


@app.command("run")
@user_errors
def run_cmd(
    model: Annotated[Path, typer.Argument(help="Exported .onnx or TensorRT .engine.")],
    source: Annotated[str, typer.Option(help="Camera index, video file, rtsp://…, GStreamer pipeline, image "
                                        "folder, or sim:VIEW.")] = "sim:top",
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt")] = "auto",
    postcard: Annotated[Path | None, typer.Option(help="Postcard W to apply (head_inputs or numpy mode).")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files (repeat).")] = [],  # noqa: B006
    head: Annotated[Path | None, typer.Option("--head", hidden=True, help="Renamed --postcard.")] = None,
    watch: Annotated[Path | None, typer.Option(help="Folder watched for new postcards/probes (hot swap).")] = None,
    head_mode: Annotated[str, typer.Option(help="auto | graph | numpy")] = "auto",
    max_frames: Annotated[int, typer.Option(help="Stop after N frames (0 = until the source ends).")] = 0,
    realtime: Annotated[bool, typer.Option(help="Pace a file at its fps (drops frames if inference is slow).")] = False,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = default).")] = 0,
    cuda_graph: Annotated[bool | None, typer.Option("--cuda-graph/--no-cuda-graph", help="ort-cuda: replay a "
                          "captured CUDA graph per batch size (default: on for fused / encoder_only models).")] = None,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a file/stream "
                                                "(0 = FFmpeg's default; 1 = lowest latency on small frames).")] = 0,
    video_out: Annotated[Path | None, typer.Option(help="Write an annotated video.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help="Write JSON lines here instead of stdout.")] = None,
    emit_latent: Annotated[bool, typer.Option(help="Include z in every JSON line.")] = False,
    record: Annotated[Path | None, typer.Option(
        help="Also write an MCAP file (frames, outputs, latency; Foxglove schemas).")] = None,
    serve: Annotated[str | None, typer.Option(
        help="Serve a live page (stream, outputs, latency) at HOST:PORT, e.g. 127.0.0.1:8080.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --record file.")] = False,
) -> None:
    """Run the exported model on a camera feed / video / stream; one JSON line per frame."""
    import sys
    import threading

    from jepa_edge.runtime import CaptureConfig, HeadWatcher, PipelineConfig, open_source
    from jepa_edge.runtime import run as run_pipeline
    from jepa_edge.runtime.errors import SourceError
    from jepa_edge.runtime.sinks import frame_sinks

    renamed("--head", "--postcard", head)
    pcfg = PipelineConfig(max_frames=max_frames, head_mode=head_mode, emit_latent=emit_latent,
                          video_out=str(video_out or ""), capture=CaptureConfig(realtime=realtime))
    pcfg.validate()
    from jepa_edge.runtime.backends import load_model_for_run

    m = load_model_for_run(str(model), backend, _backend_config(model, backend, threads, cuda_graph), head_mode)
    watcher = src = None
    out_f = sys.stdout
    sinks: list = []
    try:
        fused = _head_from_files(m.meta, postcard, probe)
        if watch is not None:
            watcher = HeadWatcher(str(watch), m.meta.agent_fingerprint, m.meta.latent_dim).start()
        src = open_source(source, decode_threads=decode_threads)
        sinks = frame_sinks(record, serve, overwrite=overwrite, emit_latent=emit_latent,
                            annotate_size=pcfg.annotate_size, on_url=_say_url,
                            meta={"model": str(model), "agent": m.meta.agent_name, "view": m.meta.agent_view})
        if jsonl:  # opened last: a bad model, head or source leaves no file behind
            out_f = open(jsonl, "w")  # noqa: SIM115 (closed below)
        try:
            summary = run_pipeline(m, src, pcfg, head=fused, watcher=watcher, out=out_f, stop=threading.Event(),
                                   sinks=sinks)
        except SourceError as exc:  # a live source lost mid-run: the summary of what ran still matters
            if getattr(exc, "summary", None) is not None:
                console.print_json(json.dumps(exc.summary.to_dict()))
            raise
    finally:
        for sink in sinks:  # idempotent: the pipeline closed them already unless it never started
            sink.close()
        if src is not None:
            src.close()
        if watcher is not None:
            watcher.close()
        m.close()
        if out_f is not sys.stdout:
            out_f.close()
    console.print_json(json.dumps(summary.to_dict()))


def _say_url(url: str) -> None:
    console.print(f"live page: {url}", soft_wrap=True, highlight=False, markup=False)  # stderr: stdout is JSON


def _backend_config(model: Path, backend: str, threads: int, cuda_graph: bool | None = None):
    """OrtConfig for the ONNX Runtime backends, None (defaults) for TensorRT: chosen after resolving ``auto``."""
    from jepa_edge.runtime import OrtConfig
    from jepa_edge.runtime.backend_ort import ORT_BACKENDS
    from jepa_edge.runtime.backends import resolve_backend

    resolved = resolve_backend(model, backend)
    if resolved not in ORT_BACKENDS:
        return None
    return OrtConfig(intra_op_threads=threads, cuda_graph=cuda_graph if resolved == "ort-cuda" else None)


@app.command()
@user_errors
def bench(
    model: Annotated[list[Path], typer.Argument(help="Exported .onnx / .engine files to compare.")],
    source: Annotated[str, typer.Option(help="Video file, camera, image folder or sim:VIEW.")] = "sim:top",
    backend: Annotated[list[str], typer.Option(help="Backends to time (repeat; default: all available).")] = [],  # noqa: B006
    batch: Annotated[list[int], typer.Option(help="Batch sizes (repeat).")] = [1, 8],  # noqa: B006
    head_mode: Annotated[list[str], typer.Option(help="fused and/or unfused (repeat).")] = ["fused", "unfused"],  # noqa: B006
    frames: Annotated[int, typer.Option(help="Timed frames per configuration.")] = 300,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up batches.")] = 20,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = default).")] = 0,
    cuda_graph: Annotated[bool | None, typer.Option("--cuda-graph/--no-cuda-graph", help="ort-cuda: replay a "
                          "captured CUDA graph per batch size (default: on for fused / encoder_only models).")] = None,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a video source "
                                                "(0 = FFmpeg's default).")] = 0,
    realtime: Annotated[bool, typer.Option(help="Play a file at its fps with the latest-frame policy "
                                           "(frames are dropped if too slow), as a live camera would.")] = False,
    torch_run: Annotated[Path | None, typer.Option("--torch", help="Agent run dir: also time PyTorch eager.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Latency per stage and end to end (mean, p50, p90, p99, max, FPS, drops) per backend / head / batch."""
    import sys

    from jepa_edge.artifacts import atomic_write_text
    from jepa_edge.runtime import BenchConfig, bench_table, benchmark

    if not backend:  # an engine runs on TensorRT only: say at once when it is missing here
        for path in model:
            if path.suffix == ".engine":
                _require_tensorrt()
    extra = None
    if torch_run is not None:
        from jepa_edge.train.eager import eager_backend

        extra = {"torch-eager": eager_backend(torch_run)}
    report = benchmark([str(p) for p in model], source, BenchConfig(
        warmup=warmup, n_frames=frames, batch_sizes=tuple(batch), head_modes=tuple(head_mode),
        backends=tuple(backend), intra_op_threads=threads, decode_threads=decode_threads, realtime=realtime,
        cuda_graph=cuda_graph), extra_backends=extra)
    Console(width=None if sys.stdout.isatty() else 200).print(bench_table(report))
    ok = [r for r in report["results"] if r["status"] == "ok"]
    if not ok:  # every configuration was skipped: that is an error, not an empty benchmark
        reasons = sorted({f"{r['backend']}: {r.get('reason', '?')}" for r in report["results"]})
        raise ValueError("nothing could be benchmarked: " + (" | ".join(reasons) or "no backend available")
                         + "; pick a --backend this machine has (e.g. ort-cpu for an .onnx)")
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=1))
        say(f"wrote {out}")


def _require_tensorrt() -> None:
    from jepa_edge.runtime.backend_trt import import_cudart, import_tensorrt

    import_tensorrt()
    import_cudart()


# ---------------------------------------------------------------- fleet (Zenoh; jepa-edge[fleet])


fleet_app = typer.Typer(no_args_is_help=True, help="Robots on a Zenoh fleet: run one, make its signing key.")
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("run")
@user_errors
def fleet_run(
    model: Annotated[Path, typer.Argument(help="Exported .onnx / .engine (head_inputs mode hot-swaps in the graph).")],
    source: Annotated[str, typer.Option(help="Camera, video, stream, folder or sim:VIEW.")] = "sim:top",
    name: Annotated[str | None, typer.Option("--fleet", help="Fleet name (key expressions jepa/<fleet>/...).")] = None,
    agent: Annotated[str | None, typer.Option(help="This robot's name (default: the model's agent).")] = None,
    follow: Annotated[str | None, typer.Option(help="Peer whose probes to run through a live-fitted W.")] = None,
    probe: Annotated[list[Path], typer.Option(help="Own probe files to publish (repeat).")] = [],  # noqa: B006
    listen: Annotated[list[str], typer.Option(help="Endpoint to listen on, e.g. tcp/127.0.0.1:7447.")] = [],  # noqa: B006
    connect: Annotated[list[str], typer.Option(help="Peer (or router) endpoint (repeat).")] = [],  # noqa: B006
    anchors: Annotated[int | None, typer.Option(help="Anchor moments requested for calibration.")] = None,
    fps: Annotated[float | None, typer.Option(help="Pace the loop at this rate (0 = as fast as the source).")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt")] = "auto",
    max_frames: Annotated[int, typer.Option(help="Stop after N frames (0 = until the source ends).")] = 0,
    jsonl: Annotated[Path | None, typer.Option(help="Append one JSON line per frame here.")] = None,
    events: Annotated[Path | None, typer.Option(help="Append fleet events (attached, calibrated, ...) here.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON FleetConfig (unknown keys are errors).")] = None,
    key: Annotated[Path | None, typer.Option(help="This robot's private key (fleet keygen): sign what it sends.")] = None,
    trusted_keys: Annotated[Path | None, typer.Option(
        help="The fleet's trusted-keys file: accept only messages signed by a key in it.")] = None,
    zenoh_config: Annotated[Path | None, typer.Option(
        help="Your own Zenoh JSON5 config (TLS, ACL, ...), merged under jepa-edge's settings.")] = None,
    record: Annotated[Path | None, typer.Option(
        help="Also write an MCAP file (frames, outputs, latency; Foxglove schemas).")] = None,
    serve: Annotated[str | None, typer.Option(
        help="Serve a live page (stream, outputs, latency, the fleet) at HOST:PORT.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --record file.")] = False,
) -> None:
    """Join a Zenoh fleet: publish card, probes and outputs; calibrate W live against a followed peer."""
    from jepa_edge.config import deep_merge, from_dict
    from jepa_edge.fleet.app import run_fleet
    from jepa_edge.fleet.node import FleetConfig

    given = {"fleet": name, "agent": agent, "follow": follow, "n_anchors": anchors, "fps": fps,
             "key": None if key is None else str(key),
             "trusted_keys": None if trusted_keys is None else str(trusted_keys)}
    over = {k: v for k, v in given.items() if v is not None}
    transport = {"listen": listen or None, "connect": connect or None,
                 "user_config": None if zenoh_config is None else str(zenoh_config)}
    if any(v is not None for v in transport.values()):
        over["transport"] = {k: v for k, v in transport.items() if v is not None}
    cfg = from_dict(FleetConfig, deep_merge(_load_json_arg(config), over))
    summary = run_fleet(model, source, cfg, probe, backend=backend, max_frames=max_frames, jsonl=jsonl,
                        events=events, record=record, serve=serve, overwrite=overwrite, on_url=_say_url)
    console.print_json(json.dumps(summary, default=str))


@fleet_app.command("keygen")
@user_errors
def fleet_keygen(
    agent: Annotated[str, typer.Argument(help="The robot's agent name on the fleet.")],
    out: Annotated[Path | None, typer.Option(help="Private key file to write (mode 0600); default AGENT.key.")] = None,
    trusted_keys: Annotated[Path | None, typer.Option(
        help="Add (or replace) AGENT's public key in this trusted-keys file, creating it if needed.")] = None,
    kinds: Annotated[list[str], typer.Option(
        "--kind", help="Message kind AGENT may send (repeat; default: all).")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file.")] = False,
) -> None:
    """Make a robot's Ed25519 signing key; print (or add to a trusted-keys file) its public key."""
    from jepa_edge.fleet.keys import Signer, add_trusted, public_entry, write_private_key
    from jepa_edge.fleet.messages import KINDS, check_name

    check_name("agent", agent)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"--kind {bad[0]!r} is not a fleet message kind; use one of {', '.join(KINDS)}")
    out = out or Path(f"{agent}.key")
    if trusted_keys is not None and trusted_keys.exists():
        from jepa_edge.fleet.keys import load_trust

        load_trust(trusted_keys)  # a broken file is refused before a key is written
    signer = Signer.generate()
    write_private_key(out, signer, overwrite=overwrite)
    say(f"wrote {out} (private: keep it on {agent} only)")
    if trusted_keys is not None:
        add_trusted(trusted_keys, agent, signer, kinds or None)
        say(f"added {agent} (key id {signer.kid}) to {trusted_keys}: copy this file to every robot of the fleet")
    else:
        say(json.dumps({agent: public_entry(signer, kinds or None)}))


@app.command("calib-graph")
@user_errors
def calib_graph(
    models: Annotated[list[Path], typer.Argument(help="Exported models of >= 2 agents (one per view).")],
    out: Annotated[Path, typer.Option(help="Folder for graph.json, graph.md, graph.png.")],
    fit_moments: Annotated[int, typer.Option(help="Anchor moments that fit every W and probe.")] = 256,
    eval_moments: Annotated[int, typer.Option(help="Held-out moments that score them.")] = 256,
    seed: Annotated[int, typer.Option(help="World seed of the anchor moments.")] = 777,
    estimator: Annotated[str, typer.Option(help="lstsq | ridge | procrustes | orth_lstsq")] = "ridge",
    max_hops: Annotated[int, typer.Option(help="Longest composed path scored.")] = 2,
    backend: Annotated[str, typer.Option(help="Runtime backend that encodes the moments.")] = "ort-cpu",
) -> None:
    """Alignment graph: W for every ordered pair, composed paths vs direct, cycle consistency, best path."""
    from jepa_edge.calib.fit import FitConfig
    from jepa_edge.calib.graph import GraphConfig
    from jepa_edge.fleet.graph import graph_from_models
    from jepa_edge.fleet.moments import AnchorWorld

    world = AnchorWorld(seed=seed, steps=64, pool=fit_moments + eval_moments)
    res = graph_from_models(models, out, world, fit_moments, eval_moments,
                            GraphConfig(fit=FitConfig(estimator=estimator), max_hops=max_hops), backend)
    console.print_json(json.dumps(res["summary"]))
    Console().print(f"wrote {out / 'graph.md'}, graph.json, graph.png")


if __name__ == "__main__":
    app()
