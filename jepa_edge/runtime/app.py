"""``jepa-edge run``: one exported model on one source, or on several in one batch (runtime/multi.py).

The wiring the command needs and nothing else: load the model, build the head from postcard/probe files,
watch a folder for new heads, open the source and the sinks (MCAP, live page), run the loop, close everything
in reverse order. Output files are opened last, so a bad model, head or source leaves none behind.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jepa_edge.runtime.pipeline import PipelineConfig, RunSummary


@dataclass
class RunFiles:
    """What ``run`` reads besides the model and writes besides stdout (paths as the user gave them)."""

    postcard: str = ""  # W (this agent → another) applied to z
    probes: list[str] = field(default_factory=list)
    watch: str = ""  # folder watched for new postcards / probes (hot swap)
    jsonl: str = ""  # JSON lines here instead of stdout
    record: str = ""  # MCAP file
    serve: str = ""  # HOST:PORT of the live page
    overwrite: bool = False  # replace existing --jsonl / --video-out / --record files


def head_from_files(meta: Any, postcard: str | Path | None, probes: Sequence[str | Path]) -> Any:
    """The numpy head (W and probes) for a model's agent, or None when neither file is given."""
    if not postcard and not probes:
        return None
    from jepa_edge.calib import build_head, load_postcard, load_probe

    pc = load_postcard(postcard, expect_source_fingerprint=meta.agent_fingerprint) if postcard else None
    return build_head(meta.agent_fingerprint, meta.latent_dim, pc, [load_probe(p) for p in probes])


def encoder_only_hint(meta: Any, head: Any, cfg: PipelineConfig) -> str | None:
    """A model with no head, run with no head and no --emit-latent, prints nothing but frame counters: say so."""
    if head is None and not meta.head_outputs and not cfg.emit_latent:
        return (f"{meta.agent_name}'s model has no head (encoder only) and no --postcard/--probe was given: "
                "each line has no outputs; pass --emit-latent to print z, or --probe/--postcard to run a head")
    return None


def run_model(model_path: str | Path, source: str | Sequence[str], cfg: PipelineConfig, files: RunFiles, *,
              backend: str = "auto", threads: int = 0, cuda_graph: bool | None = None, decode_threads: int = 0,
              tf32: bool = False,
              on_url: Callable[[str], None] | None = None,
              on_hint: Callable[[str], None] | None = None) -> RunSummary:
    """Run until the source ends, ``cfg.max_frames``, or Ctrl-C; returns the summary.

    ``source``: one spec, or several (one batch per step, outputs per stream: a ``MultiRunSummary``; they take
    no --video-out / --record / --serve). A live source lost mid-run raises ``SourceError`` with the summary of
    what ran as ``exc.summary``.
    """
    from jepa_edge.runtime import HeadWatcher, open_source
    from jepa_edge.runtime import run as run_pipeline
    from jepa_edge.runtime.backends import load_model_for_run
    from jepa_edge.runtime.multi import ONE_SOURCE_ONLY, run_multi
    from jepa_edge.runtime.sinks import frame_sinks

    specs = [source] if isinstance(source, str) else list(source)
    cfg.validate()
    if len(specs) > 1 and (cfg.video_out or files.record or files.serve):
        raise ValueError(ONE_SOURCE_ONLY)
    model = load_model_for_run(str(model_path), backend, None, cfg.head_mode, threads=threads, cuda_graph=cuda_graph,
                               tf32=tf32)
    watcher = None
    srcs: list[Any] = []
    out = sys.stdout
    sinks: list[Any] = []
    try:
        head = head_from_files(model.meta, files.postcard or None, files.probes)
        hint = encoder_only_hint(model.meta, head, cfg) if not files.watch else None
        if hint and on_hint is not None:
            on_hint(hint)
        if files.watch:
            watcher = HeadWatcher(files.watch, model.meta.agent_fingerprint, model.meta.latent_dim).start()
        for spec in specs:
            srcs.append(open_source(spec, decode_threads=decode_threads))
        sinks = frame_sinks(files.record or None, files.serve or None, overwrite=files.overwrite,
                            emit_latent=cfg.emit_latent, annotate_size=cfg.annotate_size, on_url=on_url,
                            meta={"model": str(model_path), "agent": model.meta.agent_name,
                                  "view": model.meta.agent_view})
        if files.jsonl:  # opened last: a bad model, head or source leaves no file behind
            out = open(files.jsonl, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        if len(srcs) > 1:
            return run_multi(model, srcs, cfg, head=head, watcher=watcher, out=out, stop=threading.Event())
        return run_pipeline(model, srcs[0], cfg, head=head, watcher=watcher, out=out, stop=threading.Event(),
                            sinks=sinks)
    finally:
        for sink in sinks:  # idempotent: the pipeline closed them already unless it never started
            sink.close()
        for src in srcs:
            src.close()
        if watcher is not None:
            watcher.close()
        model.close()
        if out is not sys.stdout:
            out.close()
