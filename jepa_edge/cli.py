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

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError, KeyError, OSError)


def user_errors(fn: Callable) -> Callable:
    """Turn library exceptions into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None

    return wrapper


def _load_json_arg(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


# ---------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, meta.json, log.jsonl).")],
    view: Annotated[str, typer.Option(help="Simulator view (top, oblique, rotated, partial) or camera name.")] = "top",
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (default from config).")] = None,
    seed: Annotated[int, typer.Option(help="Model init and clip sampling seed.")] = 0,
    world_seed: Annotated[int, typer.Option(help="Seed of the simulated training world.")] = 0,
    name: Annotated[str | None, typer.Option(help="Agent name (default: run directory name).")] = None,
    recording: Annotated[Path | None, typer.Option(help="Train on a recorded multi-camera folder instead.")] = None,
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
) -> None:
    """Train one JEPA agent on one viewpoint (optionally as a student of a teacher agent)."""
    from jepa_edge.config import deep_merge, from_dict, to_dict
    from jepa_edge.train.config import RunConfig
    from jepa_edge.train.loop import train as run_train

    base = to_dict(RunConfig())
    overrides = _load_json_arg(config)
    cfg_dict = deep_merge(base, overrides)
    cfg_dict["name"] = name or overrides.get("name") or out.name
    cfg_dict["data"].update(view=view, world_seed=world_seed, recording=str(recording or ""))
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
    _print_train_summary(result)


def _print_train_summary(result) -> None:
    from rich.table import Table

    table = Table(title=f"held-out state probe — {result.out_dir}")
    table.add_column("metric")
    table.add_column("trained", justify="right")
    table.add_column("untrained (control)", justify="right")
    for key in ("position_r2", "danger_bal_acc", "effective_rank", "z_std"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.3f}", f"{result.untrained.get(key, float('nan')):.3f}")
    Console().print(table)
    Console().print(f"steps {result.step}  wall {result.wall_time_s:.0f}s  fingerprint {result.fingerprint[:16]}…")


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
    codec: Annotated[str, typer.Option(help="MJPG (.avi), mp4v (.mp4) or FFV1 (.mkv, lossless).")] = "MJPG",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing recording.")] = False,
) -> None:
    """Write a multi-view recording of the simulator (the same layout real robots' recordings use)."""
    from jepa_edge.world.record import simulate_recording

    path = simulate_recording(out, n_episodes=episodes, n_steps=steps, views=tuple(views), size=size, seed=seed,
                              fps=fps, codec=codec, overwrite=overwrite)
    Console().print(f"wrote {path}")


@world_app.command("info")
@user_errors
def world_info(path: Annotated[Path, typer.Argument(help="Recording folder.")]) -> None:
    """Describe a recording folder."""
    from jepa_edge.world.dataset import load_recording

    rec = load_recording(path)
    Console().print(f"{path}: views {rec.views}, {rec.n_episodes} episode(s) x {rec.n_steps} steps, "
                    f"states {'yes' if rec.states is not None else 'no'}")

# ---------------------------------------------------------------- calib / probe / reproduce


def _moments_cfg(episodes: int, steps: int, seed: int, recording: Path | None):
    from jepa_edge.train.calibrate import MomentsConfig

    return MomentsConfig(episodes=episodes, steps=steps, seed=seed, recording=str(recording or ""))


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
    recording: Annotated[Path | None, typer.Option(help="Use a recorded multi-camera folder instead.")] = None,
) -> None:
    """Fit W between two agents from anchor pairs and measure the isomorphism against controls."""
    from jepa_edge.train.calibrate import CalibConfig, calibrate

    _, report = calibrate(source, target, out, CalibConfig(estimator=estimator, ridge_alpha=ridge_alpha,
                                                            anchors=anchors),
                          _moments_cfg(episodes, steps, seed, recording))
    _print_calib(report)
    Console().print(f"wrote {out}")


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
    Console().print(f"retrieval chance = {report['retrieval_chance']:.4f}")


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
    recording: Annotated[Path | None, typer.Option(help="Use a recorded folder with states instead.")] = None,
) -> None:
    """Train linear probes on an agent's latents, or transfer another agent's probes through W."""
    from rich.table import Table

    from jepa_edge.train.calibrate import ProbeRunConfig, train_probes, transfer_probes

    mcfg = _moments_cfg(episodes, steps, seed, recording)
    if transfer is None:
        paths, report = train_probes(run, out, ProbeRunConfig(tasks=tuple(task)), mcfg)
        table = Table(title=f"held-out probes on {run}")
        for col in ("task", "trained", "untrained (control)"):
            table.add_column(col, justify="right")
        for t, r in report.items():
            table.add_row(t, f"{r['trained']:.3f}", f"{r['untrained']:.3f}")
        Console().print(table)
        for p in paths:
            Console().print(f"wrote {p}")
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
    config: Annotated[Path | None, typer.Option(help="JSON RunConfig overrides for every agent.")] = None,
    student: Annotated[bool, typer.Option(help="Instead: teacher-accelerated students vs scratch (>= 3 seeds, "
                                          "controls), written to OUT/student_report.md.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the paper's experiment on the simulator and write report.md + results.json + plots."""
    from jepa_edge.train.reproduce import ReproduceConfig
    from jepa_edge.train.reproduce import reproduce as run_reproduce

    if student:
        from jepa_edge.config import deep_merge
        from jepa_edge.train.student_study import SMALL_RUN, StudentStudyConfig, run_student_study

        scfg = StudentStudyConfig(view_teacher=view_a, view_student=view_b,
                                  run=deep_merge(SMALL_RUN, _load_json_arg(config)),
                                  **({"steps": steps} if steps else {}))
        run_student_study(scfg, out, progress=progress)
        Console().print(f"report: {out / 'student_report.md'}")
        return

    cfg = ReproduceConfig(view_a=view_a, view_b=view_b, steps=steps, other_world=other_world,
                          run=_load_json_arg(config))
    run_reproduce(cfg, out, progress=progress)
    Console().print(f"report: {out / 'report.md'}")


# ---------------------------------------------------------------- export / run / bench


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Agent run directory (encoder.safetensors + meta.json).")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    head: Annotated[Path | None, typer.Option(help="Postcard W (this agent → another) to fuse in.")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files to fuse in (repeat).")] = [],  # noqa: B006
    mode: Annotated[str, typer.Option(help="fused | head_inputs (swap heads at run time) | bare")] = "fused",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    exporter: Annotated[str, typer.Option(help="torchscript | dynamo")] = "torchscript",
    manual_attn: Annotated[bool, typer.Option(help="Export the manual attention path instead of SDPA.")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine "
                                      "(needs the trt extra: pip install 'jepa-edge\\[trt]').")] = False,
    precision: Annotated[str, typer.Option(help="TensorRT precision: fp32 | fp16 | int8.")] = "fp16",
    int8_method: Annotated[str, typer.Option(help="auto | calibrator | qdq")] = "auto",
    fp16_method: Annotated[str, typer.Option(help="auto | flag (BuilderFlag.FP16, TensorRT <= 10) | onnx "
                                             "(fp16 ONNX, strongly typed; TensorRT 11)")] = "auto",
    opt_batch: Annotated[int, typer.Option(help="TensorRT profile: optimal batch.")] = 1,
    max_batch: Annotated[int, typer.Option(help="TensorRT profile: max batch.")] = 8,
    max_head: Annotated[int, typer.Option(help="TensorRT profile: max head width (head_inputs mode).")] = 256,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace limit (MiB).")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="Persisted TensorRT timing cache.")] = None,
    calib_source: Annotated[str, typer.Option(help="INT8 calibration frames: sim, a video file or a recording.")] = "sim",
    calib_view: Annotated[str, typer.Option(help="Simulator view for INT8 calibration.")] = "top",
    calib_frames: Annotated[int, typer.Option(help="INT8 calibration frames.")] = 512,
) -> None:
    """Export encoder + fused linear head (W, probes) to ONNX, optionally to a TensorRT engine."""
    from jepa_edge.export import (
        CalibrationConfig,
        OnnxExportConfig,
        TrtBuildConfig,
        build_engine,
        export_agent,
        require_tensorrt,
    )

    if trt:
        require_tensorrt()  # fail at once, before the export, when the extra is missing
    res = export_agent(run, out, postcard_path=head, probe_paths=tuple(probe), mode=mode,
                       config=OnnxExportConfig(opset=opset, exporter=exporter), fused_attn=not manual_attn)
    Console().print(f"wrote {res.path} ({res.mode}); ONNX Runtime vs PyTorch max abs error: "
                    + ", ".join(f"{k} {v:.2e}" for k, v in res.parity.items()))
    if trt:
        built = build_engine(res.path, res.path.with_suffix(".engine"), TrtBuildConfig(
            precision=precision, int8_method=int8_method, fp16_method=fp16_method, opt_batch=opt_batch,
            max_batch=max_batch, max_head=max_head, workspace_mib=workspace_mib, timing_cache=str(timing_cache or ""),
            calibration=CalibrationConfig(source=calib_source, view=calib_view, n_frames=calib_frames)))
        Console().print(f"wrote {built.engine_path} ({built.sidecar['precision']}) + {built.sidecar_path}")


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
    head: Annotated[Path | None, typer.Option(help="Postcard W to apply (head_inputs or numpy mode).")] = None,
    probe: Annotated[list[Path], typer.Option(help="Probe files (repeat).")] = [],  # noqa: B006
    watch: Annotated[Path | None, typer.Option(help="Folder watched for new postcards/probes (hot swap).")] = None,
    head_mode: Annotated[str, typer.Option(help="auto | graph | numpy")] = "auto",
    max_frames: Annotated[int, typer.Option(help="Stop after N frames (0 = until the source ends).")] = 0,
    realtime: Annotated[bool, typer.Option(help="Pace a file at its fps (drops frames if inference is slow).")] = False,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = default).")] = 0,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a file/stream "
                                                "(0 = FFmpeg's default; 1 = lowest latency on small frames).")] = 0,
    video_out: Annotated[Path | None, typer.Option(help="Write an annotated video.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help="Write JSON lines here instead of stdout.")] = None,
    emit_latent: Annotated[bool, typer.Option(help="Include z in every JSON line.")] = False,
) -> None:
    """Run the exported model on a camera feed / video / stream; one JSON line per frame."""
    import sys
    import threading

    from jepa_edge.runtime import CaptureConfig, HeadWatcher, OrtConfig, PipelineConfig, load_model, open_source
    from jepa_edge.runtime import run as run_pipeline

    cfg = OrtConfig(intra_op_threads=threads) if backend != "tensorrt" else None
    m = load_model(str(model), backend=backend, config=cfg, encoder_only=False)
    watcher = None
    out_f = open(jsonl, "w") if jsonl else sys.stdout  # noqa: SIM115
    try:
        fused = _head_from_files(m.meta, head, probe)
        if watch is not None:
            watcher = HeadWatcher(str(watch), m.meta.agent_fingerprint, m.meta.latent_dim).start()
        pcfg = PipelineConfig(max_frames=max_frames, head_mode=head_mode, emit_latent=emit_latent,
                              video_out=str(video_out or ""), capture=CaptureConfig(realtime=realtime))
        src = open_source(source, decode_threads=decode_threads)
        summary = run_pipeline(m, src, pcfg, head=fused, watcher=watcher, out=out_f, stop=threading.Event())
    finally:
        if watcher is not None:
            watcher.close()
        m.close()
        if jsonl:
            out_f.close()
    console.print_json(json.dumps(summary.to_dict()))


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
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for a video source "
                                                "(0 = FFmpeg's default).")] = 0,
    realtime: Annotated[bool, typer.Option(help="Play a file at its fps with the latest-frame policy "
                                           "(frames are dropped if too slow), as a live camera would.")] = False,
    torch_run: Annotated[Path | None, typer.Option("--torch", help="Agent run dir: also time PyTorch eager.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Latency per stage and end to end (mean, p50, p90, p99, max, FPS, drops) per backend / head / batch."""
    import sys

    from jepa_edge.runtime import BenchConfig, bench_table, benchmark

    extra = None
    if torch_run is not None:
        from jepa_edge.train.eager import eager_backend

        extra = {"torch-eager": eager_backend(torch_run)}
    report = benchmark([str(p) for p in model], source, BenchConfig(
        warmup=warmup, n_frames=frames, batch_sizes=tuple(batch), head_modes=tuple(head_mode),
        backends=tuple(backend), intra_op_threads=threads, decode_threads=decode_threads, realtime=realtime),
        extra_backends=extra)
    Console(width=None if sys.stdout.isatty() else 200).print(bench_table(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        Console().print(f"wrote {out}")


if __name__ == "__main__":
    app()
