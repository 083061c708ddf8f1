"""The ``metadata_props["jepa_edge"]`` contract of an exported model (docs/FORMATS.md).

Defined here once (torch-free) and imported by the exporter and the runtime: the
format name, its version, the metadata key, the export modes and where a head runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jepa_edge.artifacts import MAX_METADATA_BYTES, AgentRef
from jepa_edge.calib.head import HeadOutput
from jepa_edge.runtime.errors import RuntimeModelError

FORMAT = "jepa-edge/onnx"
VERSION = 1
METADATA_KEY = "jepa_edge"  # the ONNX metadata_props entry holding the JSON below
# fused: head baked in; head_inputs: head weight/bias are graph inputs; encoder_only: frames → z
# (exported so, or a fused/head_inputs graph cut at `z` by the runtime)
MODES = ("fused", "head_inputs", "encoder_only")

# Where the head runs after the encoder (HeadStage, PipelineConfig.head_mode, `--head-mode`): "model" = inside
# the exported model (baked in, or set as head inputs), "numpy" = on z after the encoder; "auto" picks one.
HEAD_MODES = ("auto", "model", "numpy")


def unknown_mode(mode: str) -> str:
    """The one-line error for an export mode not in MODES (in the CLI's words: --mode fused|head-inputs|encoder-only)."""
    return f"unknown export mode {mode!r}; choose one of {list(MODES)} (--mode {'|'.join(m.replace('_', '-') for m in MODES)})"


@dataclass
class ModelMeta:
    mode: str  # "fused" | "head_inputs" | "encoder_only"
    height: int  # input frame height the graph expects
    width: int
    latent_dim: int
    agent_name: str
    agent_fingerprint: str
    agent_view: str
    head_outputs: list[HeadOutput]  # baked-in slices of a fused model (empty otherwise)
    raw: dict[str, Any] = field(default_factory=dict)  # the full JSON, extra keys included

    @property
    def input_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def agent(self) -> AgentRef:
        """The agent whose encoder this model runs."""
        return AgentRef(self.agent_name, self.agent_fingerprint, self.latent_dim, self.agent_view)


def _need(d: dict[str, Any], key: str, where: str, source: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise RuntimeModelError(
            f"{source}: metadata lacks {where}{key!r}; re-export the model with `jepa-edge export`"
        )
    return d[key]


def parse_meta(text: str | None, source: str) -> ModelMeta:
    """Parse and validate the JSON string; ``source`` names the file in errors."""
    if text is None:
        raise RuntimeModelError(
            f"{source}: no metadata_props[{METADATA_KEY!r}]; this is not a `jepa-edge export` model, re-export it"
        )
    if len(text) > MAX_METADATA_BYTES:  # size cap before parsing: the file may come from anywhere
        raise RuntimeModelError(f"{source}: metadata_props['jepa_edge'] is {len(text)} characters, over the "
                                f"{MAX_METADATA_BYTES} limit; re-export the model with `jepa-edge export`")
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: [[[[…]]]] nested past the parser
        raise RuntimeModelError(
            f"{source}: metadata_props[{METADATA_KEY!r}] is not valid JSON ({type(exc).__name__}: {exc}); re-export"
        ) from exc
    if _need(d, "format", "", source) != FORMAT:
        raise RuntimeModelError(f"{source}: metadata format is {d['format']!r}, expected {FORMAT!r}")
    if _need(d, "version", "", source) != VERSION:
        raise RuntimeModelError(
            f"{source}: metadata version {d['version']} is not supported (this runtime reads {VERSION}); "
            "upgrade jepa-edge or re-export with this version"
        )
    mode = _need(d, "mode", "", source)
    if mode not in MODES:
        raise RuntimeModelError(f"{source}: unknown export mode {mode!r}; expected one of {MODES}")
    inp = _need(d, "input", "", source)
    for key, want in (("name", "frames"), ("layout", "NHWC"), ("dtype", "uint8"), ("channels", "BGR")):
        got = _need(inp, key, "input.", source)
        if got != want:
            raise RuntimeModelError(f"{source}: input.{key} is {got!r}; the runtime feeds {want!r}, re-export")
    agent = _need(d, "agent", "", source)
    head = d.get("head") or {}
    slices = [
        HeadOutput(str(o["name"]), int(o["start"]), int(o["stop"]), str(o.get("kind", "")), o.get("labels", ()))
        for o in head.get("outputs", [])
    ]
    return ModelMeta(
        mode=mode,
        height=int(_need(inp, "height", "input.", source)),
        width=int(_need(inp, "width", "input.", source)),
        latent_dim=int(_need(d, "latent_dim", "", source)),
        agent_name=str(_need(agent, "name", "agent.", source)),
        agent_fingerprint=str(_need(agent, "fingerprint", "agent.", source)),
        agent_view=str(agent.get("view", "")),
        head_outputs=slices,
        raw=d,
    )
