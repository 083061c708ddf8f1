"""`jepa-edge` command line: thin typer commands that build configs and call the library.

Only this module turns exceptions into exit codes: library errors are printed
as one clear line (exit 2), never as a traceback.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

CONTEXT = {"help_option_names": ["-h", "--help"]}


class _TidyParams:
    """Help that names values in CLI words: ``RUN``, ``PATH``, ``N`` (not ``{run}``, ``<list[Path]>``, ``<bool>``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "_tidy", False):
                continue
            p._tidy = True
            if p.param_type_name == "argument":
                word = _metavar(p)
                p.metavar = p.metavar or p.name.upper()
                p.display_type_rich = lambda ctx, word=word: word  # the type column: PATH, not <path>
            elif p.metavar is None:
                p.metavar = _metavar(p)
        return params


class Group(_TidyParams, TyperGroup):
    pass


class Command(_TidyParams, TyperCommand):
    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


def _metavar(p) -> str:
    desc = getattr(p, "type_descriptor", None)
    if desc is None:  # the help option
        return ""
    inner = typing.get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    if desc.is_path or inner is Path:
        return "PATH"
    return "N" if inner is int else "X" if inner is float else "" if inner is bool else "TEXT"


def command(typer_app: typer.Typer, name: str | None = None):
    """``@command(app)``: a typer command with CLI-word help (``Command``)."""
    return typer_app.command(name, cls=Command)


app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings=CONTEXT, cls=Group,
                  help="Train JEPA agents per viewpoint, align them with W, export and run them at the edge.")
world_app = typer.Typer(no_args_is_help=True, context_settings=CONTEXT, cls=Group,
                        help="Built-in multi-view world simulator and recordings.")
app.add_typer(world_app, name="world")
console = Console(stderr=True)


class _State:
    quiet = False  # --quiet: no progress bars and no "wrote …" lines; errors and asked-for output still print


STATE = _State()


def _version(value: bool) -> None:
    if value:
        from jepa_edge import package_version

        say(f"jepa-edge {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars and no 'wrote …' lines.")] = False,
) -> None:
    """Train JEPA agents per viewpoint, align them with W, export and run them at the edge."""
    STATE.quiet = quiet


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


def note(text: str) -> None:
    """An informational line on stdout ("wrote …"): left out under --quiet."""
    if not STATE.quiet:
        say(text)


def emit_json(obj: object) -> None:
    """``--json``: one JSON object on stdout instead of the table."""
    typer.echo(json.dumps(obj, indent=1, default=str))


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


RUN_FILES = ("train_state.json", "train_state.safetensors", "encoder.safetensors", "meta.json", "log.jsonl")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]


@command(app)
@user_errors
def train(
    run: Annotated[Path, typer.Argument(help="Run folder to write (checkpoints, meta.json, log.jsonl).")],
    view: Annotated[str, typer.Option(help="Simulator view: 2-D world top, oblique, rotated, partial; 3-D world "
                                      "overhead, corner, front, rear, side; or a recording's camera name.")] = "top",
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Model init and clip sampling seed.")] = 0,
    world_seed: Annotated[int, typer.Option(help="Seed of the simulated training world.")] = 0,
    name: Annotated[str | None, typer.Option(help="Agent name (default: the run folder's name).")] = None,
    recording: Annotated[Path | None, typer.Option(
        help="Train on a recording instead: a multi-camera folder, a ROS 2 bag folder or an .mcap file.")] = None,
    topic: TopicOpt = [],  # noqa: B006
    batch_size: Annotated[int | None, typer.Option(help="Clips per step (default: the preset's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the training step's loss module.")] = False,
    cuda_graphs: Annotated[str | None, typer.Option(
        help="CUDA graphs (torch.compile reduce-overhead): auto (on for one CUDA process, else off, the reason "
             "recorded in meta.json) | on (refused where they cannot run) | off. Default: the preset's (auto; "
             "gpu: on).")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of RunConfig overrides (unknown keys are errors).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in RUN.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start afresh in RUN, replacing the run it holds.")] = False,
    teacher: Annotated[Path | None, typer.Option(help="Teacher agent's run folder: align this student to it via W.")] = None,
    anchors: Annotated[int, typer.Option(help="Anchor moments whose teacher latents the student receives.")] = 256,
    teacher_weight: Annotated[float, typer.Option(help="Alignment loss weight.")] = 1.0,
    teacher_control: Annotated[str, typer.Option(help="none | shuffled | random (controls).")] = "none",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    preset: Annotated[str | None, typer.Option(help="Starting config: demo (32 px) | 3d (64 px, patch 16: the 3-D "
                                                    "world's views) | vit-tiny (224 px ViT-Tiny) | gpu (the demo agent "
                                                    "at H200 scale: batch 512, 3000 steps, CUDA graphs). Default: 3d "
                                                    "for a 3-D world view, else demo.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train one JEPA agent on one viewpoint (optionally as a student of a teacher agent)."""
    from jepa_edge.train.config import agent_config
    from jepa_edge.train.loop import train as run_train

    if resume and overwrite:
        raise ValueError("--resume continues the run in RUN and --overwrite replaces it: pass one of them")
    if cuda_graphs not in (None, "auto", "on", "off"):
        raise ValueError(f"--cuda-graphs {cuda_graphs!r} is not one of auto, on, off")
    overrides = _checked_run_overrides(config)
    opt = {"batch_size": batch_size, "lr": lr, "cuda_graphs": cuda_graphs}
    cfg = agent_config(
        name or overrides.get("name") or run.name, view, preset=preset, overrides=overrides, seed=seed,
        world_seed=world_seed, steps=steps,
        data={"recording": str(recording or ""), "topics": _topic_map(topic, recording)},
        train={"device": device, "compile": compile, **{k: v for k, v in opt.items() if v is not None}},
        teacher={} if teacher is None else {"run": str(teacher), "anchors": anchors, "weight": teacher_weight,
                                            "control": teacher_control})
    if overwrite:  # only the files a run writes: anything else in the folder is the user's and stays
        for f in RUN_FILES:
            (run / f).unlink(missing_ok=True)
    result = run_train(cfg, run, resume=resume, progress=progress and not STATE.quiet)
    _print_train_summary(result, recording, as_json)


def _print_train_summary(result, recording: Path | None, as_json: bool = False) -> None:
    from rich.table import Table

    if as_json:
        emit_json({"run": str(result.out_dir), "steps": result.step, "wall_s": result.wall_time_s,
                   "fingerprint": result.fingerprint, "heldout": result.metrics, "untrained": result.untrained,
                   "cuda_graphs": result.cuda_graphs, "warmup_time": result.warmup_time})
        return
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
    for key in ("position_r2", "visible_position_r2", "robot_pose_r2", "danger_bal_acc", "effective_rank", "z_std"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.3f}", f"{result.untrained.get(key, float('nan')):.3f}")
    Console().print(table)
    say(f"steps {result.step}  wall {result.wall_time_s:.0f}s  fingerprint {result.fingerprint[:16]}…")


# ---------------------------------------------------------------- world


@command(world_app, "record")
@user_errors
def world_record(
    out: Annotated[Path, typer.Argument(help="Output folder (one video per view + states.npz + recording.json).")],
    world: Annotated[str | None, typer.Option(help="2d (discs in the unit square) | 3d (an arena with mobile robots; "
                                              "folder format only). Default: the world of the --view given, else "
                                              "2d.")] = None,
    views: Annotated[list[str], typer.Option("--view", help="Views to record (repeat; default: top and oblique for "
                                             "2d, overhead, corner, front, rear, side for 3d).")] = [],  # noqa: B006
    episodes: Annotated[int, typer.Option(help="Episodes.")] = 8,
    episode_len: Annotated[int, typer.Option(help="Steps per episode.")] = 64,
    size: Annotated[int | None, typer.Option(help="Frame side in pixels (even; default 32 for 2d, 64 for 3d).")] = None,
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
    path = simulate_recording(out, n_episodes=episodes, n_steps=episode_len, views=tuple(views) or None, size=size,
                              seed=seed, fps=fps, codec=codec, overwrite=overwrite, fmt=format, encoding=encoding,
                              world=world)
    note(f"wrote {path}")


@command(world_app, "info")
@user_errors
def world_info(path: Annotated[Path, typer.Argument(help="Recording folder, ROS 2 bag folder or .mcap file.")],
               as_json: JsonOpt = False) -> None:
    """Describe a recording."""
    from jepa_edge.describe import recording_info
    from jepa_edge.world.dataset import load_recording

    rec = load_recording(path)
    info = {"path": str(path), **recording_info(rec), "pairing": rec.meta.get("pairing") or {}}
    if as_json:
        emit_json(info)
        return
    say(f"{path}: views {rec.views}, {rec.n_episodes} episode(s) x {rec.n_steps} steps, "
        f"states {'yes' if rec.states is not None else 'no'}" + (f", {info['world']} world" if info["world"] else ""))
    if info["topics"]:  # a bag: which topic each view is, and how the cameras paired
        say("topics: " + ", ".join(f"{v}={t}" for v, t in info["topics"].items()))
        if info["pairing"]:
            say(f"pairing: {json.dumps(info['pairing'], default=str)}")

# ---------------------------------------------------------------- calib / probe / reproduce


def _moments_cfg(episodes: int, episode_len: int, seed: int, recording: Path | None, topics: list[str] = (),
                 tolerance: float = 0.0, states_topic: str = ""):
    from jepa_edge.agents.calibrate import MomentsConfig

    return MomentsConfig(episodes=episodes, steps=episode_len, seed=seed, recording=str(recording or ""),
                         topics=_topic_map(topics, recording), tolerance_s=tolerance, states_topic=states_topic)


EpisodesOpt = Annotated[int, typer.Option(help="Fresh simulated episodes (anchors + held-out scoring).")]
EpisodeLenOpt = Annotated[int, typer.Option(help="Steps per simulated episode.")]


@command(app)
@user_errors
def calib(
    from_run: Annotated[Path, typer.Option("--from", help="Agent whose latents W maps FROM (e.g. runs/agentB).")],
    to_run: Annotated[Path, typer.Option("--to", help="Agent whose latent space W maps INTO (e.g. runs/agentA).")],
    out: Annotated[Path, typer.Option(help="Postcard file to write (NAME.postcard.safetensors).")],
    anchors: Annotated[int, typer.Option(help="Paired anchor moments used to fit W.")] = 300,
    estimator: Annotated[str, typer.Option(help="lstsq | ridge | procrustes | orth_lstsq")] = "ridge",
    ridge_alpha: Annotated[float, typer.Option(help="Ridge penalty (relative, on standardised latents).")] = 1e-2,
    episodes: EpisodesOpt = 64,
    episode_len: EpisodeLenOpt = 32,
    seed: Annotated[int, typer.Option(help="World seed of the anchor moments.")] = 777,
    recording: Annotated[Path | None, typer.Option(
        help="Use a recording instead: a multi-camera folder, a ROS 2 bag folder or an .mcap file.")] = None,
    topic: TopicOpt = [],  # noqa: B006
    tolerance: ToleranceOpt = 0.0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit W between two agents from anchor pairs and measure the isomorphism against controls."""
    from jepa_edge.agents.calibrate import CalibConfig, calibrate
    from jepa_edge.artifacts import refuse_existing

    refuse_existing(out, overwrite=overwrite)
    _, report = calibrate(from_run, to_run, out, CalibConfig(estimator=estimator, ridge_alpha=ridge_alpha,
                                                             anchors=anchors),
                          _moments_cfg(episodes, episode_len, seed, recording, topic, tolerance))
    if as_json:
        emit_json(report)
        return
    _print_calib(report)
    note(f"wrote {out}")


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


PROBE_TASKS = ("position", "danger", "pose")  # the simulator's labels (jepa_edge.agents.calibrate._task_targets)


@command(app)
@user_errors
def probe(
    run: Annotated[Path, typer.Argument(help="Agent run folder the probes read (with --transfer: agent B).")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.TASK.probe.safetensors.")] = Path("probes"),
    transfer: Annotated[Path | None, typer.Option(help="Postcard W_BA: run agent A's probes on RUN zero-shot.")] = None,
    probes: Annotated[list[Path], typer.Option("--probe", help="Agent A probe files to transfer (repeat).")] = [],  # noqa: B006
    task: Annotated[list[str], typer.Option(
        help="Tasks to fit: position, danger (the obstacle label in the 3-D world), pose (robot 0's pose, "
             "3-D world) (repeat).")] = ["position", "danger"],  # noqa: B006
    episodes: EpisodesOpt = 64,
    episode_len: EpisodeLenOpt = 32,
    seed: Annotated[int, typer.Option(help="World seed of the moments.")] = 778,
    recording: Annotated[Path | None, typer.Option(
        help="Use a recording with ground-truth states instead (folder with states.npz, bag or .mcap).")] = None,
    topic: TopicOpt = [],  # noqa: B006
    tolerance: ToleranceOpt = 0.0,
    states_topic: StatesTopicOpt = "",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train linear probes on an agent's latents, or transfer another agent's probes through W."""
    from rich.table import Table

    from jepa_edge.agents.calibrate import ProbeRunConfig, train_probes, transfer_probes

    unknown = [t for t in task if t not in PROBE_TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; use --task with one of {list(PROBE_TASKS)}")
    mcfg = _moments_cfg(episodes, episode_len, seed, recording, topic, tolerance, states_topic)
    if transfer is None:
        paths, report = train_probes(run, out, ProbeRunConfig(tasks=tuple(task)), mcfg, overwrite=overwrite)
        if as_json:
            emit_json({"probes": [str(p) for p in paths], "heldout": report})
            return
        table = Table(title=f"held-out probes on {run}")
        for col in ("task", "trained", "untrained (control)"):
            table.add_column(col, justify="right")
        for t, r in report.items():
            table.add_row(t, f"{r['trained']:.3f}", f"{r['untrained']:.3f}")
        Console().print(table)
        for p in paths:
            note(f"wrote {p}")
        return
    if not probes:
        raise ValueError("--transfer needs the probes to move: pass --probe FILE (agent A's *.probe.safetensors)")
    report = transfer_probes(probes, transfer, run, mcfg)
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"zero-shot transfer through {transfer.name} onto {run} (held-out)")
    for col in ("probe", "transferred", "native", "kept", "scrambled W", "untrained native"):
        table.add_column(col, justify="right")
    for name, r in report.items():
        kept = "-" if r["kept_fraction"] is None else f"{100 * r['kept_fraction']:.0f}%"
        table.add_row(name, f"{r['transferred']:.3f}", f"{r['native']:.3f}", kept, f"{r['scrambled_W']:.3f}",
                      f"{r['untrained_native']:.3f}")
    Console().print(table)


@command(app)
@user_errors
def reproduce(
    out: Annotated[Path, typer.Option(help="Output folder: runs/, report.md, results.json, plots, postcard, probes.")] = Path("demo"),
    preset: Annotated[str, typer.Option(help="demo (the recipe, 7-20 min on 2 CPU cores) | quick (tiny, ~2 min: "
                                        "undertrained agents, a smoke test, not the result).")] = "demo",
    world: Annotated[str, typer.Option(help="2d | 3d: the 3D world, over its view pairs (overhead ← front, "
                                       "front ← rear, corner ← front, overhead ← corner) unless --view-a/--view-b "
                                       "name one pair.")] = "2d",
    view_a: Annotated[str | None, typer.Option(help="Agent A's view (W's target). Default: top (2d), overhead "
                                               "(3d --student / --scaling).")] = None,
    view_b: Annotated[str | None, typer.Option(help="Agent B's view (W's source). Default: oblique (2d), front "
                                               "(3d --student / --scaling).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per agent (default: the preset's).")] = None,
    other_world: Annotated[bool, typer.Option(help="Also train the different-world control agent (3d: a finding "
                                              "beside the pairs, not a control).")] = True,
    objects_world: Annotated[bool, typer.Option(help="Also train the control agent of a world with a different "
                                                "number of objects (one more agent to train).")] = False,
    config: Annotated[Path | None, typer.Option(help="JSON file of RunConfig overrides for every agent.")] = None,
    student: Annotated[bool, typer.Option(help="Instead: teacher-accelerated students vs scratch (>= 3 seeds, "
                                          "controls), written to OUT/student_report.md.")] = False,
    scaling: Annotated[bool, typer.Option(help="Instead: the scaling study (agents at several compute budgets, "
                                          "seeds and view pairs), written to OUT/scaling.md + .json + .png.")] = False,
    scaling_config: Annotated[Path | None, typer.Option(help="JSON file of ScalingConfig overrides (budgets, seeds, "
                                                       "views; jepa_edge/study/scaling.py).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Rewrite a finished report in OUT (its trained agents are "
                                            "reused; an unfinished OUT is always resumed).")] = False,
) -> None:
    """Run the paper's experiment on the simulator and write report.md + results.json + plots."""
    from jepa_edge.artifacts import refuse_existing
    from jepa_edge.study.reproduce import ReproduceConfig, check_views
    from jepa_edge.study.reproduce import reproduce as run_reproduce

    report = out / ("scaling.md" if scaling else "student_report.md" if student else "report.md")
    refuse_existing(report, overwrite=overwrite)
    check_views(world, [v for v in (view_a, view_b) if v is not None])  # a view of the other world fails now
    if world == "3d" and objects_world:
        raise ValueError("--objects-world is a 2D control; drop it with --world 3d")
    pair = {"2d": ("top", "oblique"), "3d": ("overhead", "front")}[world]  # --student / --scaling defaults
    overrides = _checked_run_overrides(config)  # a bad key fails now, not after the first agent trained
    progress = progress and not STATE.quiet
    if scaling:
        from jepa_edge.config import ConfigError, from_dict
        from jepa_edge.study.scaling import ScalingConfig, run_scaling

        default = {"view_a": pair[0], "views_b": [pair[1]]} if world == "3d" else {}  # under the file's keys
        flags = {**({"view_a": view_a} if view_a else {}), **({"views_b": [view_b]} if view_b else {})}  # over them
        try:
            sc = from_dict(ScalingConfig, {"run": overrides, **default,
                                           **_load_json_arg(scaling_config, "ScalingConfig overrides"), **flags})
        except ConfigError as exc:
            raise ConfigError(f"{scaling_config}: {exc}; fix or remove that key (see jepa_edge/study/scaling.py)") from exc
        check_views(world, [sc.view_a, *sc.views_b])
        sc.validate()
        run_scaling(sc, out, progress=progress)
        say(f"report: {report}")
        return
    if student:
        from jepa_edge.config import deep_merge
        from jepa_edge.study.student import SMALL_RUN, StudentStudyConfig, run_student_study, student_metric

        scfg = StudentStudyConfig(view_teacher=view_a or pair[0], view_student=view_b or pair[1],
                                  run=deep_merge(SMALL_RUN, overrides), metric=student_metric(view_b or pair[1]),
                                  **({"steps": steps} if steps else {}))
        run_student_study(scfg, out, progress=progress)
        say(f"report: {report}")
        return

    if world == "3d" and (view_a is None) != (view_b is None):
        raise ValueError("--world 3d: pass both --view-a and --view-b (one pair), or neither (the 3D view pairs)")
    views = ({"pairs": ((view_a, view_b),)} if view_a else {}) if world == "3d" else \
        {"view_a": view_a or pair[0], "view_b": view_b or pair[1]}
    cfg = ReproduceConfig(world=world, steps=steps or 0, other_world=other_world, objects_world=objects_world,
                          preset=preset, run=overrides, **views)
    run_reproduce(cfg, out, progress=progress)
    say(f"report: {report}")


# ---------------------------------------------------------------- export / run / bench


EXPORT_MODES = {"fused": "fused", "head-inputs": "head_inputs", "encoder-only": "encoder_only"}  # CLI → metadata


@command(app)
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Agent run folder (encoder.safetensors + meta.json).")],
    out: Annotated[Path | None, typer.Option(help="ONNX file to write (default: RUN.onnx beside the run folder).")] = None,
    format: Annotated[str, typer.Option("--format", help="onnx | engine (ONNX, then a TensorRT engine beside it; "
                                        "needs the trt extra: pip install 'jepa-edge\\[trt]').")] = "onnx",
    trt: Annotated[bool, typer.Option("--trt", help="Same as --format engine.")] = False,
    postcard: Annotated[Path | None, typer.Option(help="Postcard W (this agent → another) to fuse in.")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files to fuse in (repeat).")] = [],  # noqa: B006
    mode: Annotated[str | None, typer.Option(help="fused (W and probes baked in) | head-inputs (heads swapped at run "
                                             "time) | encoder-only (frames → z). Default: fused when --postcard or "
                                             "--probe is given, else encoder-only.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    exporter: Annotated[str, typer.Option(help="torchscript | dynamo")] = "torchscript",
    manual_attn: Annotated[bool, typer.Option(help="Export the manual attention path instead of SDPA.")] = False,
    batch_size: Annotated[int, typer.Option(help="Static batch size (every shape fixed: CUDA graphs); 0 = dynamic.")] = 0,
    optimize: Annotated[bool | None, typer.Option("--optimize/--no-optimize", help="onnxslim constant folding "
                        "(default: on when onnxslim is installed, the export extra).")] = None,
    fuse_transformer: Annotated[bool, typer.Option(help="ONNX Runtime transformer fusions (com.microsoft ops: "
                                "ONNX Runtime only, not for --format engine; works with --precision fp16).")] = False,
    precision: Annotated[str, typer.Option(help="Model precision: auto | fp32 | fp16 | int8; auto = fp32 for "
                                           "--format onnx, fp16 for --format engine. onnx: fp16 writes an fp16 "
                                           "model for ONNX Runtime (encoder fp16; head, input and outputs fp32; "
                                           "checked against PyTorch at an fp16 bound). engine: the TensorRT "
                                           "precision, built from an fp32 ONNX; int8 is engine only.")] = "auto",
    int8_method: Annotated[str, typer.Option(help="auto | calibrator | qdq")] = "auto",
    fp16_method: Annotated[str, typer.Option(help="auto | flag (BuilderFlag.FP16, TensorRT <= 10) | onnx "
                                             "(fp16 ONNX, strongly typed; TensorRT 11)")] = "auto",
    opt_batch: Annotated[int, typer.Option(help="TensorRT profile: optimal batch size.")] = 1,
    max_batch: Annotated[int, typer.Option(help="TensorRT profile: largest batch size.")] = 8,
    opt_head: Annotated[int, typer.Option(help="TensorRT profile: head width kernels are tuned for "
                                          "(head-inputs mode; 0 = min(72, --max-head)).")] = 0,
    max_head: Annotated[int, typer.Option(help="TensorRT profile: max head width (head-inputs mode).")] = 256,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace limit (MiB).")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="Persisted TensorRT timing cache.")] = None,
    int8_source: Annotated[str, typer.Option(help="INT8 range-calibration frames: sim (the agent's own view), "
                                             "sim:VIEW, sim3d:VIEW, a video file or a recording folder.")] = "sim",
    int8_frames: Annotated[int, typer.Option(help="INT8 range-calibration frames (downscaled, memory-capped).")] = 512,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export encoder + fused linear head (W, probes) to ONNX, optionally to a TensorRT engine."""
    from jepa_edge.artifacts import refuse_existing
    from jepa_edge.export import (
        Int8Config,
        OnnxExportConfig,
        TrtBuildConfig,
        build_engine,
        export_agent,
        require_tensorrt,
    )
    from jepa_edge.export.optimize import node_count_summary
    from jepa_edge.export.trt_build import PRECISIONS

    if format not in ("onnx", "engine"):
        raise ValueError(f"--format {format!r}; use onnx or engine (a TensorRT engine, built from the ONNX)")
    engine = trt or format == "engine"
    if mode is not None and mode not in EXPORT_MODES:
        raise ValueError(f"--mode {mode!r}; use one of {', '.join(EXPORT_MODES)}")
    has_head = postcard is not None or bool(probe)
    if mode is None:
        mode = "fused" if has_head else "encoder-only"
    out = out if out is not None else run.parent / f"{run.name or run.resolve().name}.onnx"
    refuse_existing(out, *((out.with_suffix(".engine"), out.with_suffix(".engine.json")) if engine else ()),
                    overwrite=overwrite)
    if engine and fuse_transformer:
        raise ValueError("--fuse-transformer writes com.microsoft contrib ops TensorRT cannot parse; "
                         "export the engine's ONNX without --fuse-transformer")
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"--precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "fp16" if engine else "fp32"
    if precision == "int8" and not engine:
        raise ValueError("--precision int8 is for TensorRT engines; pass --format engine, or --precision fp16 for "
                         "an fp16 ONNX Runtime model")
    build_cfg = TrtBuildConfig(
        precision=precision, int8_method=int8_method, fp16_method=fp16_method, opt_batch=opt_batch,
        max_batch=max_batch, opt_head=opt_head, max_head=max_head, workspace_mib=workspace_mib,
        timing_cache=str(timing_cache or ""), int8=Int8Config(source=int8_source, n_frames=int8_frames))
    if engine:
        build_cfg.validate()  # a bad profile fails before the export, not after it
        require_tensorrt()  # fail at once, before the export, when the extra is missing
    res = export_agent(run, out, postcard_path=postcard, probe_paths=tuple(probe), mode=EXPORT_MODES[mode],
                       fused_attn=not manual_attn,
                       config=OnnxExportConfig(opset=opset, exporter=exporter, batch=batch_size, optimize=optimize,
                                               fuse_transformer=fuse_transformer,
                                               precision="fp32" if engine else precision))
    what = ("encoder only: frames → z; add --probe/--postcard for a head, or run it with --emit-latent"
            if res.mode == "encoder_only" else res.mode.replace("_", "-"))
    fp16 = res.metadata["precision"] == "fp16"
    note(f"wrote {res.path} ({what}{', fp16' if fp16 else ''}); ONNX Runtime vs PyTorch max abs error: "
         + ", ".join(f"{k} {v:.2e}" for k, v in res.parity.items())
         + (f" (fp16 bound on z: {res.tolerance['fp16_z_rtol']:g} x max(1, max |z|))" if fp16 else ""))
    note(f"model nodes (batch size {batch_size or 'dynamic'}): {node_count_summary(res.metadata['graph']['node_counts'])}")
    if engine:
        built = build_engine(res.path, res.path.with_suffix(".engine"), build_cfg)
        side = built.sidecar
        note(f"wrote {built.engine_path} ({side['precision']}, tf32 {side['tf32']}) + {built.sidecar_path}")


@command(app, "run")
@user_errors
def run_cmd(
    model: Annotated[Path, typer.Argument(help="Exported .onnx or TensorRT .engine.")],
    source: Annotated[list[str], typer.Option(help="Camera index, video file, rtsp://…, GStreamer pipeline, image "
                                              "folder, bag:PATH?topic=/camera, sim:VIEW (2-D world) or sim3d:VIEW "
                                              "(3-D world); repeat for several cameras: one batch per step.")
                      ] = ["sim:top"],  # noqa: B006
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt")] = "auto",
    postcard: Annotated[Path | None, typer.Option(help="Postcard W to apply (head-inputs model or numpy head).")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files (repeat).")] = [],  # noqa: B006
    watch: Annotated[Path | None, typer.Option(help="Folder watched for new postcards/probes (hot swap).")] = None,
    head_mode: Annotated[str, typer.Option(help="Where the head runs: auto | model (inside the exported model) | "
                                           "numpy (on z, after the encoder).")] = "auto",
    frames: Annotated[int, typer.Option(help="Stop after N frames (0 = until the source ends).")] = 0,
    realtime: Annotated[bool, typer.Option(help="Pace a file at its fps (drops frames if inference is slow).")] = False,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = default).")] = 0,
    cuda_graph: Annotated[bool | None, typer.Option("--cuda-graph/--no-cuda-graph", help="ort-cuda: replay a "
                          "captured CUDA graph per batch size (default: on for fused / encoder-only models).")] = None,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a file/stream "
                                                "(0 = FFmpeg's default; 1 = lowest latency on small frames).")] = 0,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="ort-cuda: allow TF32 tensor-core math for fp32 "
                    "MatMul/Conv (faster on Ampere and later GPUs only, ~1e-3 relative error; off = exact fp32).")] = False,
    video_out: Annotated[Path | None, typer.Option(help="Write an annotated video (.avi / .mp4).")] = None,
    jsonl: Annotated[Path | None, typer.Option(help="Write the JSON lines here instead of stdout.")] = None,
    emit_latent: Annotated[bool, typer.Option(help="Include z in every JSON line.")] = False,
    record: Annotated[Path | None, typer.Option(
        help="Also write an MCAP file (frames, outputs, latency; Foxglove schemas).")] = None,
    serve: Annotated[str | None, typer.Option(
        help="Serve a live page (stream, outputs, latency) at HOST:PORT, e.g. 127.0.0.1:8080.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --jsonl / --video-out / --record files.")] = False,
) -> None:
    """Run the exported model on a camera feed / video / stream; one JSON line per frame (named outputs)."""
    from jepa_edge.artifacts import refuse_existing
    from jepa_edge.runtime import CaptureConfig, PipelineConfig
    from jepa_edge.runtime.app import RunFiles, run_model
    from jepa_edge.runtime.errors import SourceError

    refuse_existing(jsonl, video_out, record, overwrite=overwrite)
    pcfg = PipelineConfig(max_frames=frames, head_mode=head_mode, emit_latent=emit_latent,
                          video_out=str(video_out or ""), capture=CaptureConfig(realtime=realtime))
    files = RunFiles(postcard=str(postcard or ""), probes=[str(p) for p in probe], watch=str(watch or ""),
                     jsonl=str(jsonl or ""), record=str(record or ""), serve=serve or "", overwrite=overwrite)
    try:
        summary = run_model(model, source, pcfg, files, backend=backend, threads=threads, cuda_graph=cuda_graph,
                            decode_threads=decode_threads, on_url=_say_url, on_hint=_hint, tf32=tf32)
    except SourceError as exc:  # a live source lost mid-run: the summary of what ran still matters
        if getattr(exc, "summary", None) is not None:
            console.print_json(json.dumps(exc.summary.to_dict()))
        raise
    console.print_json(json.dumps(summary.to_dict()))


def _say_url(url: str) -> None:
    console.print(f"live page: {url}", soft_wrap=True, highlight=False, markup=False)  # stderr: stdout is JSON


def _hint(text: str) -> None:
    console.print(f"[yellow]hint:[/] {escape(text)}", soft_wrap=True, highlight=False)  # stderr: stdout is JSON


@command(app)
@user_errors
def bench(
    model: Annotated[list[Path], typer.Argument(help="Exported .onnx / .engine files to compare.")],
    source: Annotated[list[str], typer.Option(help="Video file, camera, image folder, sim:VIEW or sim3d:VIEW; repeat "
                                              "for several cameras: one batch per step.")] = ["sim:top"],  # noqa: B006
    backend: Annotated[list[str], typer.Option(help="Backends to time (repeat; default: all available).")] = [],  # noqa: B006
    batch_size: Annotated[list[int], typer.Option(help="Batch sizes (repeat; default 1 and 8; at most 1024).")] = [1, 8],  # noqa: B006
    head_mode: Annotated[list[str], typer.Option(help="Where the head runs: model (inside the exported model) "
                                                 "and/or numpy (on z) (repeat; default both).")] = ["model", "numpy"],  # noqa: B006
    frames: Annotated[int, typer.Option(help="Timed frames per configuration.")] = 300,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up batches.")] = 20,
    threads: Annotated[int, typer.Option(help="Intra-op threads of every backend that has them: ONNX Runtime and "
                                         "--torch (0 = each one's default).")] = 0,
    cuda_graph: Annotated[bool | None, typer.Option("--cuda-graph/--no-cuda-graph", help="ort-cuda: replay a "
                          "captured CUDA graph per batch size (default: on for fused / encoder_only models).")] = None,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a video source "
                                                "(0 = FFmpeg's default).")] = 0,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="ort-cuda: allow TF32 tensor-core math for fp32 "
                    "MatMul/Conv (faster on Ampere and later GPUs only, ~1e-3 relative error; off = exact fp32).")] = False,
    realtime: Annotated[bool, typer.Option(help="Play a file at its fps with the latest-frame policy "
                                           "(frames are dropped if too slow), as a live camera would.")] = False,
    torch_run: Annotated[Path | None, typer.Option("--torch", help="Agent run dir: also time PyTorch eager.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here (.json).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout instead of the table.")] = False,
    detail: Annotated[bool, typer.Option(help="Also print per-stage times, e2e spread, threads, drift and memory.")] = False,
) -> None:
    """Latency end to end and per stage (p50, p99, FPS, drops) per model / backend / head mode / batch size.

    Skipped backends and failed models are listed on stderr, one line each; it fails only when nothing ran.
    """
    import sys

    from jepa_edge.artifacts import atomic_write_text
    from jepa_edge.runtime import BenchConfig
    from jepa_edge.runtime.bench import (
        bench_detail,
        bench_notes,
        bench_streams,
        bench_table,
        benchmark,
        check_report_path,
    )

    cfg = BenchConfig(warmup=warmup, n_frames=frames, batch_sizes=tuple(batch_size), head_modes=tuple(head_mode),
                      backends=tuple(backend), threads=threads, decode_threads=decode_threads, realtime=realtime,
                      cuda_graph=cuda_graph, tf32=tf32)
    cfg.validate()  # every option checked before anything loads
    if out is not None:
        check_report_path(out, overwrite)
    if not backend:  # an engine runs on TensorRT only: say at once when it is missing here
        for path in model:
            if path.suffix == ".engine":
                _require_tensorrt()
    extra = None
    if torch_run is not None:
        from jepa_edge.agents.eager import eager_backend

        extra = {"torch-eager": eager_backend(torch_run, threads=threads)}
    report = benchmark([str(p) for p in model], source, cfg, extra_backends=extra)
    notes = bench_notes(report)
    if not any(r["status"] == "ok" for r in report["results"]):  # all skipped or failed: an error, not a benchmark
        raise ValueError("nothing could be benchmarked: " + (" | ".join(notes) or "no backend available here")
                         + "; pick a --backend this machine has (e.g. ort-cpu for an .onnx)")
    for line in notes:  # what did not run, apart from the numbers of what did
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        screen = Console(width=None if sys.stdout.isatty() else 100)
        screen.print(bench_table(report))
        for table in bench_streams(report):
            screen.print(table)
        for table in bench_detail(report) if detail else ():
            screen.print()
            screen.print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=1))
        if json_out:  # stdout holds the JSON alone
            console.print(f"wrote {out}", soft_wrap=True, highlight=False, markup=False)
        else:
            say(f"wrote {out}")


def _require_tensorrt() -> None:
    from jepa_edge.runtime.backend_trt import import_cudart, import_tensorrt

    import_tensorrt()
    import_cudart()


# ---------------------------------------------------------------- fleet (Zenoh; jepa-edge[fleet])


fleet_app = typer.Typer(no_args_is_help=True, context_settings=CONTEXT, cls=Group, help="Robots on a Zenoh fleet: run one, make its signing key.")
app.add_typer(fleet_app, name="fleet")


@command(fleet_app, "run")
@user_errors
def fleet_run(
    model: Annotated[Path, typer.Argument(help="Exported .onnx / .engine (a head-inputs model hot-swaps heads).")],
    source: Annotated[str, typer.Option(help="Camera, video, stream, folder, bag:PATH, sim:VIEW or sim3d:VIEW.")] = "sim:top",
    name: Annotated[str | None, typer.Option("--fleet", help="Fleet name (key expressions jepa/<fleet>/...).")] = None,
    agent: Annotated[str | None, typer.Option(help="This robot's name (default: the model's agent).")] = None,
    follow: Annotated[str | None, typer.Option(help="Peer whose probes to run through a live-fitted W.")] = None,
    probe: Annotated[list[Path], typer.Option(help="Own probe files to publish (repeat).")] = [],  # noqa: B006
    listen: Annotated[list[str], typer.Option(help="Endpoint to listen on, e.g. tcp/127.0.0.1:7447 (repeat).")] = [],  # noqa: B006
    connect: Annotated[list[str], typer.Option(help="Peer (or router) endpoint (repeat).")] = [],  # noqa: B006
    anchors: Annotated[int | None, typer.Option(help="Anchor moments requested for calibration.")] = None,
    fps: Annotated[float | None, typer.Option(help="Pace the loop at this rate (0 = as fast as the source).")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt")] = "auto",
    frames: Annotated[int, typer.Option(help="Stop after N frames (0 = until the source ends).")] = 0,
    jsonl: Annotated[Path | None, typer.Option(help="Write one JSON line per frame here.")] = None,
    events: Annotated[Path | None, typer.Option(help="Write fleet events (attached, calibrated, ...) here.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of FleetConfig settings (unknown keys are errors).")] = None,
    key: Annotated[Path | None, typer.Option(help="This robot's private key (fleet keygen): sign what it sends.")] = None,
    trusted_keys: Annotated[Path | None, typer.Option(
        help="The fleet's trusted-keys file: accept only messages signed by a key in it.")] = None,
    zenoh_config: Annotated[Path | None, typer.Option(
        help="Your own Zenoh JSON5 config (TLS, ACL, ...), merged under jepa-edge's settings.")] = None,
    record: Annotated[Path | None, typer.Option(
        help="Also write an MCAP file (frames, outputs, latency; Foxglove schemas).")] = None,
    serve: Annotated[str | None, typer.Option(
        help="Serve a live page (stream, outputs, latency, the fleet) at HOST:PORT.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --jsonl / --events / --record files.")] = False,
    append: Annotated[bool, typer.Option(help="Add to existing --jsonl / --events files (the same robot, "
                                         "restarted).")] = False,
) -> None:
    """Join a Zenoh fleet: publish card, probes and outputs; calibrate W live against a followed peer."""
    from jepa_edge.artifacts import refuse_existing
    from jepa_edge.config import deep_merge, from_dict
    from jepa_edge.fleet.app import run_fleet
    from jepa_edge.fleet.node import FleetConfig

    if append and overwrite:
        raise ValueError("--append adds to the logs and --overwrite replaces them: pass one of them")
    refuse_existing(*(() if append else (jsonl, events)), record, overwrite=overwrite)
    given = {"fleet": name, "agent": agent, "follow": follow, "n_anchors": anchors, "fps": fps,
             "key": None if key is None else str(key),
             "trusted_keys": None if trusted_keys is None else str(trusted_keys)}
    over = {k: v for k, v in given.items() if v is not None}
    transport = {"listen": listen or None, "connect": connect or None,
                 "user_config": None if zenoh_config is None else str(zenoh_config)}
    if any(v is not None for v in transport.values()):
        over["transport"] = {k: v for k, v in transport.items() if v is not None}
    cfg = from_dict(FleetConfig, deep_merge(_load_json_arg(config), over))
    summary = run_fleet(model, source, cfg, probe, backend=backend, max_frames=frames, jsonl=jsonl,
                        events=events, record=record, serve=serve, overwrite=overwrite, on_url=_say_url,
                        append=append)
    console.print_json(json.dumps(summary, default=str))


@command(fleet_app, "keygen")
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


@command(app, "calib-graph")
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
    overwrite: OverwriteOpt = False,
) -> None:
    """Alignment graph: W for every ordered pair, composed paths vs direct, cycle consistency, best path."""
    from jepa_edge.artifacts import refuse_existing
    from jepa_edge.calib.fit import FitConfig
    from jepa_edge.calib.graph import GraphConfig
    from jepa_edge.fleet.moments import AnchorWorld
    from jepa_edge.study.graph_models import graph_from_models

    refuse_existing(*(out / f for f in ("graph.json", "graph.md", "graph.png")), overwrite=overwrite)
    world = AnchorWorld(seed=seed, steps=64, pool=fit_moments + eval_moments)
    res = graph_from_models(models, out, world, fit_moments, eval_moments,
                            GraphConfig(fit=FitConfig(estimator=estimator), max_hops=max_hops), backend)
    console.print_json(json.dumps(res["summary"]))
    note(f"wrote {out / 'graph.md'}, graph.json, graph.png")


@command(app)
@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="A postcard, probe, run folder, recording, .onnx model or .engine.")],
    as_json: JsonOpt = False,
) -> None:
    """Describe a file jepa-edge wrote: what it is, which agent, shapes, outputs, metrics, how it was made."""
    from jepa_edge.describe import describe, describe_lines

    info = describe(path)
    if as_json:
        emit_json(info)
        return
    for line in describe_lines(info):
        say(line)


if __name__ == "__main__":
    app()
