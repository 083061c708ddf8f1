"""FP16 ONNX for strongly typed TensorRT networks and for ONNX Runtime (no torch, no TensorRT needed).

TensorRT 11 removed ``BuilderFlag.FP16``: a network runs in the types its
ONNX declares (strongly typed), so an fp16 engine needs an fp16 graph; ONNX
Runtime's CUDA EP likewise runs each node in the types the graph gives it
(``jepa-edge export --precision fp16``). This rewrites an exported graph the
way NVIDIA's ModelOpt AutoCast does, small enough to read in one sitting:

* every float32 tensor computed by the encoder becomes float16 (weights
  converted, ``Cast(to=FLOAT)`` retargeted, float ``Constant`` /
  ``ConstantOfShape`` values converted);
* kept in float32: the head (every node computed from ``z``: W and probes
  are metric values and logits), ops whose statistics need the range
  (``LayerNormalization`` by default), and the graph's inputs and outputs —
  ``frames`` stays uint8 and ``z``/head outputs stay float32, so the runtime
  and the sidecar contract do not change;
* a ``Cast`` is inserted wherever a float32 tensor meets a float16 node or
  the other way round (one per tensor and direction).

Two variants differ only in the ops kept in float32: ``KEEP_FP32_OPS``
(TensorRT: ``LayerNormalization``) and ``ORT_KEEP_FP32_OPS`` (none: ONNX
Runtime's LayerNormalization / SkipLayerNormalization kernels, CPU and CUDA,
read fp16 tensors but compute mean and variance in float32 inside the kernel,
so the two Casts per norm TensorRT needs would only add kernels).

A graph with ONNX Runtime's fused ``com.microsoft`` ops (``--fuse-transformer``:
Attention, SkipLayerNormalization, BiasGelu) is typed with ONNX Runtime's
symbolic shape inference, which knows those ops (ONNX's own inference leaves
everything after the first fused op untyped); their fp16 kernels exist on the
CUDA EP, and the CPU EP runs them by inserting Casts around its float32 kernels.

Weights beyond fp16's range are clipped (counted in ``Fp16Report``). The
result is checked with ``onnx.checker`` and full shape inference (the standard
ops; fused contrib ops have no ONNX schema, the export's parity run checks them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes
from jepa_edge.export.int8 import downstream_indices

KEEP_FP32_OPS = ("LayerNormalization",)  # TensorRT: variance of 64-wide tokens: cheap, and fragile in fp16
ORT_KEEP_FP32_OPS: tuple[str, ...] = ()  # ONNX Runtime: its norm kernels keep fp32 statistics on fp16 tensors
CONTRIB_DOMAIN = "com.microsoft"
_FP32_ONLY_INPUTS = {"Resize": {2}}  # (op, input index) the ONNX spec types as float32 only
_FP16_MAX = float(np.finfo(np.float16).max)


class Fp16Error(ValueError):
    """A graph this converter cannot rewrite (e.g. control flow)."""


@dataclass
class Fp16Report:
    converted_nodes: int = 0
    kept_fp32_nodes: list[str] = field(default_factory=list)
    casts_inserted: int = 0
    weights_converted: int = 0
    weights_clipped: int = 0  # weight values beyond ±65504 clipped to it


def _fp16_array(a: np.ndarray, report: Fp16Report) -> np.ndarray:
    over = np.abs(a) > _FP16_MAX
    report.weights_clipped += int(over.sum())
    return np.clip(a, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _retype_tensor(t: Any, report: Fp16Report) -> Any:
    """A float32 TensorProto → float16 (same name); anything else unchanged."""
    from onnx import TensorProto, numpy_helper

    if t.data_type != TensorProto.FLOAT:
        return t
    return numpy_helper.from_array(_fp16_array(numpy_helper.to_array(t), report), t.name)


def convert_to_fp16(model: Any, keep_ops: tuple[str, ...] = KEEP_FP32_OPS,
                    keep_head: bool = True) -> tuple[Any, Fp16Report]:
    """Return an fp16 copy of ``model`` (an ``onnx.ModelProto``) and what was done."""
    model = copy.deepcopy(model)
    graph = model.graph
    _refuse_control_flow(graph)
    elem = _element_types(model)
    report = Fp16Report()
    nodes = list(graph.node)  # nodes are identified by position: protobuf wrappers have no stable id()
    keep = _kept_fp32(nodes, keep_ops, keep_head)
    report.kept_fp32_nodes = [nodes[k].name or nodes[k].op_type for k in sorted(keep)]
    half = _half_outputs(nodes, keep, elem) | _convert_initializers(graph, nodes, keep, report)
    new_nodes = _retype_nodes(nodes, keep, half, elem, report)
    _restore_output_types(graph, new_nodes, half, report)
    _replace_nodes_and_check(model, new_nodes)
    return model, report


def _refuse_control_flow(graph: Any) -> None:
    import onnx

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise Fp16Error("graph has control flow (If/Loop/Scan); export without it, or build precision='fp32'")


def _element_types(model: Any) -> dict[str, int]:
    """Tensor name → ONNX element type, from strict shape inference plus the initializers.

    A graph with ``com.microsoft`` ops is typed by ONNX Runtime's symbolic shape inference (it knows them).
    """
    import onnx

    if any(n.domain == CONTRIB_DOMAIN for n in model.graph.node):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    else:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    elem = {vi.name: vi.type.tensor_type.elem_type
            for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    elem.update({t.name: t.data_type for t in model.graph.initializer})
    return elem


def _kept_fp32(nodes: list[Any], keep_ops: tuple[str, ...], keep_head: bool) -> set[int]:
    """Positions of the nodes that stay float32: the head (downstream of ``z``) and ``keep_ops``."""
    head = set(downstream_indices(nodes, "z")) if keep_head else set()
    return {k for k, n in enumerate(nodes) if k in head or n.op_type in keep_ops}


def _half_outputs(nodes: list[Any], keep: set[int], elem: dict[str, int]) -> set[str]:
    """Float outputs of the converted nodes: the tensors they will compute in fp16."""
    from onnx import TensorProto

    return {o for k, n in enumerate(nodes) if k not in keep for o in n.output if elem.get(o) == TensorProto.FLOAT}


def _convert_initializers(graph: Any, nodes: list[Any], keep: set[int], report: Fp16Report) -> set[str]:
    """Retype to fp16 the float initializers read only by converted nodes (in fp16-capable inputs)."""
    from onnx import TensorProto

    readers: dict[str, list[tuple[int, int]]] = {}
    for k, n in enumerate(nodes):
        for i, name in enumerate(n.input):
            readers.setdefault(name, []).append((k, i))
    half: set[str] = set()
    for name, t in {t.name: t for t in graph.initializer}.items():
        uses = readers.get(name, [])
        if t.data_type == TensorProto.FLOAT and uses and all(
                k not in keep and i not in _FP32_ONLY_INPUTS.get(nodes[k].op_type, ()) for k, i in uses):
            graph.initializer.remove(t)
            graph.initializer.append(_retype_tensor(t, report))
            report.weights_converted += 1
            half.add(name)
    return half


class _Casts:
    """One ``Cast`` per (tensor, direction), appended to ``out`` right before its first reader."""

    def __init__(self, out: list[Any], report: Fp16Report) -> None:
        self.out, self.report = out, report
        self.names: dict[tuple[str, int], str] = {}

    def __call__(self, name: str, to: int) -> str:
        from onnx import TensorProto, helper

        key = (name, to)
        if key not in self.names:
            self.names[key] = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            self.out.append(helper.make_node("Cast", [name], [self.names[key]], name=f"{self.names[key]}_cast",
                                             to=to))
            self.report.casts_inserted += 1
        return self.names[key]


def _retype_nodes(nodes: list[Any], keep: set[int], half: set[str], elem: dict[str, int],
                  report: Fp16Report) -> list[Any]:
    """The node list with a Cast before every input whose type does not match its reader's precision."""
    from onnx import TensorProto

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    new_nodes: list[Any] = []
    cast = _Casts(new_nodes, report)
    for k, n in enumerate(nodes):
        converted = k not in keep
        for i, name in enumerate(n.input):
            if not name or elem.get(name) not in (FLOAT, HALF):
                continue
            fp32_only = i in _FP32_ONLY_INPUTS.get(n.op_type, ())
            want_half = converted and not fp32_only
            if want_half and name not in half and elem.get(name) == FLOAT:
                n.input[i] = cast(name, HALF)
            elif not want_half and name in half:
                n.input[i] = cast(name, FLOAT)
        if converted:
            report.converted_nodes += 1
            _retype_attributes(n, report)
        new_nodes.append(n)
    return new_nodes


def _retype_attributes(n: Any, report: Fp16Report) -> None:
    """A converted node's float32 attributes → fp16: ``Cast(to=FLOAT)``, ``Constant``/``ConstantOfShape`` values."""
    from onnx import TensorProto

    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif n.op_type in ("Constant", "ConstantOfShape") and a.name == "value":
            a.t.CopyFrom(_retype_tensor(a.t, report))
        elif n.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            raise Fp16Error(f"node {n.name!r}: Constant {a.name} is not supported; re-export the model")


def _restore_output_types(graph: Any, new_nodes: list[Any], half: set[str], report: Fp16Report) -> None:
    """Graph outputs keep their types: a converted producer writes name__fp16, a Cast restores the name."""
    from onnx import TensorProto, helper

    for out in graph.output:
        if out.name in half:
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if o == out.name else o for o in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], name=f"{out.name}_to_fp32",
                                              to=TensorProto.FLOAT))
            report.casts_inserted += 1


def _replace_nodes_and_check(model: Any, new_nodes: list[Any]) -> None:
    import onnx

    graph = model.graph
    del graph.node[:]
    graph.node.extend(new_nodes)  # still topological: each Cast sits right before its first reader
    del graph.value_info[:]  # stale float32 annotations; shape inference recomputes them
    onnx.checker.check_model(model)  # also checks that order
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # raises on any type clash


def write_fp16_onnx(onnx_path: str | Path, out_path: str | Path,
                    keep_ops: tuple[str, ...] = KEEP_FP32_OPS) -> tuple[Path, Fp16Report]:
    """``convert_to_fp16`` of a file; the ``jepa_edge`` metadata_props are kept as they are."""
    import onnx

    model = onnx.load(str(onnx_path))
    half, report = convert_to_fp16(model, keep_ops)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, half.SerializeToString())
    return out_path, report
