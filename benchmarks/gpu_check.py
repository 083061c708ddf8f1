"""`make gpu-check`: every GPU check of the project in one command (meant to take ≤ 5 minutes on an H100).

    python3 benchmarks/gpu_check.py               # on a GPU machine; without a CUDA GPU: one line, exit 0
    python3 benchmarks/gpu_check.py --dry-run     # print the plan, run nothing
    python3 benchmarks/gpu_check.py --cpu --skip-tests --models agent32 --steps 2 --frames 8 \\
        --out /tmp/gpu_check_cpu.json             # exercise the script itself on a CPU machine

It uses the interpreter at hand (no venv, no downloads; the repository root is
put on PYTHONPATH) and runs, each step timed and recorded as ok / failed /
skipped with the reason (measurements first, so a hung test cannot cost them):

1. train: a 300-step CUDA training run of the 32 px agent (default config);
2. export: that agent, and a ViT-Tiny-size agent (224 px, patch 16, width 192,
   depth 12, 3 heads; random weights: latency does not depend on training), to
   ONNX in ``head_inputs`` mode — the bench sets a head in the model (head mode
   ``model``) or cuts the model at ``z`` and runs the head in numpy (``numpy``) — and, with a
   position probe fitted on each, in ``fused`` mode (head baked in: the graph
   ONNX Runtime can capture as a CUDA graph), once more with ``--precision fp16``
   (the fp16 rows, beside the fp32 ones); with TensorRT importable, an fp16
   engine of each as well;
3. bench: ort-cpu / ort-cuda (IOBinding, ``--cuda-graph off``) / tensorrt on the
   head_inputs models, ort-cuda with ``--cuda-graph on`` on the fused ones (fp32 and fp16), × head mode model / numpy ×
   batch 1 and 8, through ``benchmarks/runtime_bench.py`` on a generated
   simulator video at the model's input size (decode, capture age, preprocess,
   H2D / GPU compute / D2H / enqueue where the backend measures them, head,
   end to end);
4. ``benchmarks/train_throughput.py --device cuda`` (eager and CUDA graphs,
   batch 128 and 1024);
5. tests: ``JEPA_EDGE_REQUIRE_GPU=1 pytest -m "gpu or trt"`` (a GPU test that
   cannot run fails instead of skipping; a TensorRT test skips with its own
   reason where TensorRT is absent, and fails too where ``import tensorrt``
   works, through ``JEPA_EDGE_REQUIRE_TRT=1``), then the whole suite (same
   setting, one worker per core where pytest-xdist is installed).

Writes ``benchmarks/results/gpu_check.json``: the machine (CPU, GPU, driver,
torch, ONNX Runtime, TensorRT), every step, every bench result, and the
GPU targets with the measured value beside each, for the IOBinding
path and for the CUDA-graph path. Stopped early (SIGTERM, Ctrl-C), it still
writes what ran, with ``stopped`` saying where. Exit status 1 when a step
failed or the check was stopped. ``--cpu`` runs the same pipeline on the CPU
with the backends available there, to check the script without a GPU (its
numbers mean nothing for the GPU targets and go to another file).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ViT-Tiny (DeiT-Ti / timm vit_tiny_patch16_224): the size of a deployable camera model.
VIT_TINY = {"img_size": 224, "patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0,
            "latent_dim": 192}
MODELS = ("agent32", "vit_tiny")
# The GPU targets for the 32 px agent on an H100-class GPU (ort-cuda).
TARGETS = {"ort_cuda_b1_infer_p50_ms_max": 0.25, "ort_cuda_b8_infer_fps_min": 20_000.0,
           "fused_head_overhead_max": 0.03}
# ViT-Tiny on ort-cuda with a CUDA graph (fp16 export): 2x the fp32 graph's 0.946 ms at batch 1 on an H200.
VIT_TINY_TARGETS = {"b1_infer_p50_ms_max": 0.45, "b8_infer_fps_min": 8_000.0}
CAPTURED_VARIANTS = ("graph", "fp16")  # fused models benched with --cuda-graph on: rows count only when captured


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    reason: str = ""  # why skipped / failed
    tail: list[str] = field(default_factory=list)  # last output lines


# ---- GPU detection ---------------------------------------------------------------------------
def nvidia_smi_gpus() -> tuple[bool, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False, "nvidia-smi: not found"
    try:
        p = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi: {exc}"
    gpus = [line for line in p.stdout.splitlines() if line.startswith("GPU ")]
    if p.returncode != 0 or not gpus:
        err = (p.stderr or p.stdout).strip().splitlines()
        return False, f"nvidia-smi: exit {p.returncode}{': ' + err[0] if err else ''}"
    return True, f"nvidia-smi: {len(gpus)} GPU(s)"


def torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch: not installed"
    ok = bool(torch.cuda.is_available())
    return ok, f"torch.cuda.is_available(): {ok}"


def detect_gpu() -> tuple[bool, str]:
    """A CUDA GPU is here when nvidia-smi lists one or torch can use one."""
    smi_ok, smi = nvidia_smi_gpus()
    if smi_ok:
        return True, smi
    cuda_ok, cuda = torch_cuda()
    return cuda_ok, f"{smi}; {cuda}"


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError, not ImportError
        return None
    return str(tensorrt.__version__)


def torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"version": "none"}
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    if info["cuda_available"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
    return info


# ---- running steps ---------------------------------------------------------------------------
def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just before the deadline
        pass


class Runner:
    """Runs each step as a subprocess (a crash in one backend cannot take the check down) and records it."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.steps: list[StepResult] = []
        self.results: list[dict[str, Any]] = []  # bench rows, kept as they come (a stopped check still reports them)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.device = "cpu" if args.cpu else "cuda"

    def skip(self, name: str, reason: str) -> StepResult:
        print(f"== {name}: skipped ({reason})", flush=True)
        result = StepResult(name, "skipped", reason=reason)
        self.steps.append(result)
        return result

    def run(self, name: str, command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> StepResult:
        print(f"== {name}: {shlex.join(command)}", flush=True)
        if self.args.dry_run:
            result = StepResult(name, "skipped", command=command, reason="dry run")
            self.steps.append(result)
            return result
        t0, tail = time.perf_counter(), collections.deque(maxlen=40)
        proc = subprocess.Popen(command, cwd=ROOT, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        # on timeout, kill the step's whole process group: children (pytest's subprocesses) hold the pipe too
        timer = threading.Timer(timeout_s, _kill_group, (proc.pid,))
        timer.start()
        try:
            for line in proc.stdout:  # streamed: a long step shows its progress
                print(f"   {line}", end="", flush=True)
                tail.append(line.rstrip())
            rc = proc.wait()
        except BaseException:  # the check itself was stopped: stop the step's process group with it
            _kill_group(proc.pid)
            self.steps.append(StepResult(name, "failed", round(time.perf_counter() - t0, 2), command, None,
                                         "stopped with the check", list(tail)))
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
        timed_out = seconds >= timeout_s and rc != 0
        status = "ok" if rc == 0 else "failed"
        reason = f"timed out after {timeout_s:.0f} s" if timed_out else ("" if rc == 0 else f"exit status {rc}")
        result = StepResult(name, status, round(seconds, 2), command, rc, reason, list(tail))
        print(f"== {name}: {status} in {seconds:.1f} s{' (' + reason + ')' if reason else ''}", flush=True)
        self.steps.append(result)
        return result

    def in_process(self, name: str, fn: Any, *fn_args: Any) -> StepResult:
        """A step run here (writing the ViT-Tiny agent); its exception is recorded, not raised."""
        print(f"== {name}", flush=True)
        if self.args.dry_run:
            result = StepResult(name, "skipped", reason="dry run")
        else:
            t0 = time.perf_counter()
            try:
                fn(*fn_args)
                result = StepResult(name, "ok", round(time.perf_counter() - t0, 2))
            except Exception as exc:  # noqa: BLE001 - recorded as the step's failure; the other steps still run
                result = StepResult(name, "failed", round(time.perf_counter() - t0, 2),
                                    reason=f"{type(exc).__name__}: {exc}")
                print(f"== {name}: failed ({result.reason})", flush=True)
        self.steps.append(result)
        return result

    def passed(self, result: StepResult) -> bool:
        """The step succeeded (in a dry run: assume so, to print the whole plan)."""
        return self.args.dry_run or result.status == "ok"

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "jepa_edge.cli", *args]


def xdist_args() -> list[str]:
    """One pytest worker per core where pytest-xdist is installed (as `make test` does); else a serial run."""
    import importlib.util

    return ["-n", "auto", "--dist", "worksteal"] if importlib.util.find_spec("xdist") is not None else []


# ---- the models ------------------------------------------------------------------------------
def write_vit_tiny_run(out: Path) -> Path:
    """An untrained ViT-Tiny-size agent run (encoder.safetensors + meta.json), built from the config classes."""
    import torch

    from jepa_edge.config import from_dict, to_dict
    from jepa_edge.train.checkpoint import save_agent
    from jepa_edge.train.config import RunConfig
    from jepa_edge.train.model import Encoder, EncoderConfig

    enc_cfg = from_dict(EncoderConfig, VIT_TINY)
    enc_cfg.validate()
    cfg = RunConfig.from_dict({"name": "vit_tiny", "data": {"img_size": VIT_TINY["img_size"]},
                               "jepa": {"encoder": to_dict(enc_cfg)}})
    cfg.validate()
    torch.manual_seed(0)
    encoder = Encoder(enc_cfg).eval()
    meta = {"name": "vit_tiny", "view": "top", "step": 0, "encoder": to_dict(enc_cfg), "run": cfg.to_dict(),
            "data_source": "none: random initialisation (latency benchmark only)", "metrics": {},
            "untrained_metrics": {}}
    save_agent(out, encoder, meta)
    return out


def quick_train_config(path: Path) -> Path:
    """--cpu: a small dataset and batch so the training step checks the plumbing in seconds."""
    path.write_text(json.dumps({"data": {"n_episodes": 16, "eval_episodes": 8},
                                "train": {"batch_size": 16, "threads": 1}}))
    return path


def train_and_export(r: Runner, trt: str | None) -> dict[str, Path]:
    """Train the 32 px agent, write the ViT-Tiny one, export both (+ engines); returns name → ONNX path."""
    a, w = r.args, r.work
    onnx: dict[str, Path] = {}
    runs: dict[str, Path] = {}
    if "agent32" in a.models:
        cmd = r.cli("train", "--out", str(w / "runs" / "agent32"), "--view", "top", "--steps", str(a.steps),
                    "--device", r.device, "--no-progress")
        if a.cpu:
            cmd += ["--config", str(quick_train_config(w / "quick.json"))]
        if r.passed(r.run("train agent32 (32 px)", cmd, timeout_s=600)):
            runs["agent32"] = w / "runs" / "agent32"
    vit = w / "runs" / "vit_tiny"
    if "vit_tiny" in a.models and r.passed(r.in_process("write vit_tiny (224 px, untrained)", write_vit_tiny_run, vit)):
        runs["vit_tiny"] = vit
    for name, run in runs.items():
        out = w / "onnx" / f"{name}.onnx"
        if r.passed(r.run(f"export {name}", r.cli("export", str(run), "--out", str(out), "--mode", "head_inputs"),
                          timeout_s=300)):
            onnx[name] = out
        # a fused graph (head baked in) for CUDA graphs: a head_inputs model rebinds its head at every set_head
        probes = w / "probes" / name
        if r.passed(r.run(f"probe {name}", r.cli("probe", str(run), "--out", str(probes), "--task", "position",
                                                 "--episodes", "16", "--steps", "16"), timeout_s=300)):
            probe = next(iter(sorted(probes.glob("*.position.probe.safetensors"))), probes / "missing")
            fused = w / "onnx" / f"{name}_fused.onnx"
            if r.passed(r.run(f"export {name} fused", r.cli("export", str(run), "--out", str(fused), "--probe",
                                                            str(probe)), timeout_s=300)):
                onnx[f"{name}@graph"] = fused
            half = w / "onnx" / f"{name}_fused_fp16.onnx"  # the same fused model in fp16 (ONNX Runtime CUDA EP)
            if r.passed(r.run(f"export {name} fp16", r.cli("export", str(run), "--out", str(half), "--probe",
                                                           str(probe), "--precision", "fp16"), timeout_s=300)):
                onnx[f"{name}@fp16"] = half
        if trt is None:
            r.skip(f"tensorrt engine {name}", "`import tensorrt` fails here")
            continue
        engine_onnx = w / "trt" / f"{name}.onnx"  # the engine is written beside it: trt/<name>.engine
        if r.passed(r.run(f"tensorrt engine {name}", r.cli(
                "export", str(run), "--out", str(engine_onnx), "--mode", "head_inputs", "--trt", "--precision",
                "fp16", "--max-batch", "8", "--timing-cache", str(w / "trt" / "timing.cache")), timeout_s=600)):
            onnx[f"{name}@trt"] = engine_onnx
    return onnx


def bench(r: Runner, models: dict[str, Path], backends: list[str]) -> list[dict[str, Any]]:
    """runtime_bench.py per (model, backend): a crash in one backend leaves the others' numbers."""
    a, results = r.args, r.results
    for name, path in models.items():
        label, variant = (name.split("@") + ["head_inputs"])[:2]
        size = VIT_TINY["img_size"] if label == "vit_tiny" else 32
        if variant == "trt":
            todo = ["tensorrt"]
        elif variant == "graph":  # the fused graph, replayed as a CUDA graph (GPU only)
            todo = [b for b in backends if b == "ort-cuda"]
        elif variant == "fp16":  # the fp16 fused graph: CUDA graph on ort-cuda; on ort-cpu only under --cpu
            todo = [b for b in backends if b == ("ort-cpu" if a.cpu else "ort-cuda")]
        else:
            todo = [b for b in backends if b != "tensorrt"]
        for backend in todo:
            out = r.work / "bench" / f"{label}_{variant}_{backend}.json"
            step = r.run(f"bench {label} {variant} {backend}", [
                sys.executable, str(ROOT / "benchmarks" / "runtime_bench.py"), "--model", str(path),
                "--backends", backend, "--frames", str(a.frames), "--warmup", str(a.warmup), "--batch-size", "1",
                "8", "--head-modes", "model", "numpy", "--decode-threads", "1", "--video-size", str(size),
                "--view", "top", "--out", str(out), "--cuda-graph", "on" if variant in CAPTURED_VARIANTS else "off"],
                timeout_s=600)
            if step.status == "ok":  # (never in a dry run)
                for res in json.loads(out.read_text())["results"]:
                    results.append({"agent": label, "variant": variant, **res})
    return results


# ---- report ----------------------------------------------------------------------------------
def _find(results: list[dict], agent: str, backend: str, mode: str, batch: int,
          variant: str = "head_inputs") -> dict | None:
    for res in results:
        if (res.get("status") == "ok" and res["agent"] == agent and res["backend"] == backend
                and res["head_mode"] == mode and res["batch"] == batch and res.get("variant", "head_inputs") == variant
                and (variant not in CAPTURED_VARIANTS or str(res.get("cuda_graph") or "").startswith("on"))):
            return res
    return None


def targets(results: list[dict], variant: str = "head_inputs") -> dict[str, Any]:
    """The GPU targets for the 32 px agent, measured value beside each (None: not measured here).

    ``variant``: "head_inputs" (IOBinding, head weights as graph inputs) or "graph" (the fused graph
    replayed as a CUDA graph); ort-cpu is always the head_inputs model.
    """
    def infer_p50(backend: str, mode: str, batch: int, var: str = variant) -> float | None:
        res = _find(results, "agent32", backend, mode, batch, var)
        return None if res is None else res["stages_ms_per_batch"]["infer"]["p50_ms"]

    cuda1, cpu1 = infer_p50("ort-cuda", "model", 1), infer_p50("ort-cpu", "model", 1, "head_inputs")
    cuda8, bare1 = infer_p50("ort-cuda", "model", 8), infer_p50("ort-cuda", "numpy", 1)
    fps8 = None if cuda8 is None else 8 * 1e3 / cuda8  # model throughput: frames per second of infer time
    overhead = None if cuda1 is None or bare1 is None else cuda1 / bare1 - 1.0

    def check(value: float | None, ok: bool) -> dict[str, Any]:
        return {"measured": value, "met": None if value is None else ok}

    return {
        "ort_cuda_b1_infer_p50_ms<=0.25": check(cuda1, cuda1 is not None and
                                                 cuda1 <= TARGETS["ort_cuda_b1_infer_p50_ms_max"]),
        "ort_cuda_b1_below_ort_cpu": check(None if cuda1 is None or cpu1 is None else cpu1 - cuda1,
                                           cuda1 is not None and cpu1 is not None and cuda1 < cpu1),
        "ort_cuda_b8_infer_fps>=20000": check(fps8, fps8 is not None and fps8 >= TARGETS["ort_cuda_b8_infer_fps_min"]),
        "fused_head_overhead<=3%": check(overhead, overhead is not None and
                                         overhead <= TARGETS["fused_head_overhead_max"]),
        "note": "infer = the model's infer() call (p50); fused head overhead = fused graph vs the encoder-only "
                "graph (head mode numpy) at batch 1 on ort-cuda",
    }


def vit_tiny_targets(results: list[dict], variant: str) -> dict[str, Any]:
    """ViT-Tiny on ort-cuda with a CUDA graph, head in the model: ``variant`` "fp16" or "graph" (the fp32 rows)."""
    def infer_p50(batch: int) -> float | None:
        res = _find(results, "vit_tiny", "ort-cuda", "model", batch, variant)
        return None if res is None else res["stages_ms_per_batch"]["infer"]["p50_ms"]

    b1, b8 = infer_p50(1), infer_p50(8)
    fps8 = None if b8 is None else 8 * 1e3 / b8
    max_ms, min_fps = VIT_TINY_TARGETS["b1_infer_p50_ms_max"], VIT_TINY_TARGETS["b8_infer_fps_min"]
    return {f"vit_tiny_b1_infer_p50_ms<={max_ms:g}": {"measured": b1, "met": None if b1 is None else b1 <= max_ms},
            f"vit_tiny_b8_infer_fps>={min_fps:.0f}": {"measured": fps8,
                                                      "met": None if fps8 is None else fps8 >= min_fps},
            "note": f"{'fp16' if variant == 'fp16' else 'fp32'} fused model, ort-cuda, CUDA graph captured; "
                    "infer = the model's infer() call (p50)"}


def print_summary(results: list[dict], steps: list[StepResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gpu-check: bench (p50 ms; infer is the whole infer() call, GPU = CUDA-event time)")
    for col in ("agent", "graph", "backend", "head", "batch", "precision", "infer", "enqueue", "H2D", "GPU", "D2H", "e2e",
                "FPS"):
        table.add_column(col, justify="left" if col in ("agent", "graph", "backend", "head", "precision") else "right")
    for res in results:
        variant = res.get("variant", "head_inputs")
        if variant in CAPTURED_VARIANTS:
            fused = "fused fp16" if variant == "fp16" else "fused"
            variant = f"{fused}, CUDA graph" if str(res.get("cuda_graph") or "").startswith("on") else f"{fused} (no graph)"
        if res["status"] != "ok":
            table.add_row(res["agent"], variant, res["backend"], res["head_mode"], str(res.get("batch", "")),
                          f"skipped: {res['reason'][:60]}", *[""] * 7)
            continue
        st = res["stages_ms_per_batch"]
        cell = [f"{st[k]['p50_ms']:.3f}" if k in st else "–" for k in ("infer", "enqueue", "h2d", "compute", "d2h")]
        table.add_row(res["agent"], variant, res["backend"], res["head_mode"], str(res["batch"]), res.get("precision", ""),
                      *cell, f"{res['e2e_ms']['p50_ms']:.3f}", f"{res['fps']:.0f}")
    console = Console(width=200)
    console.print(table)
    for s in steps:
        console.print(f"{s.status:>7}  {s.name}  {s.seconds:.1f} s  {s.reason}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--cpu", action="store_true", help="run the pipeline on the CPU (checks the script itself)")
    ap.add_argument("--skip-tests", action="store_true", help="skip the pytest steps")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--steps", type=int, default=300, help="training steps of the 32 px agent")
    ap.add_argument("--frames", type=int, default=300, help="timed frames per bench configuration")
    ap.add_argument("--warmup", type=int, default=20, help="untimed batches per bench configuration")
    ap.add_argument("--no-train-throughput", action="store_true", help="skip benchmarks/train_throughput.py")
    ap.add_argument("--keep", type=Path, help="keep runs, ONNX, engines and bench JSON in this folder")
    ap.add_argument("--out", type=Path, help="report path (default benchmarks/results/gpu_check.json; "
                                             "gpu_check_cpu.json with --cpu)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("gpu_check_cpu.json" if args.cpu else "gpu_check.json")
    return args


def train_throughput(r: Runner, work: Path) -> dict[str, Any] | None:
    """benchmarks/train_throughput.py: eager vs CUDA graphs, fused attention (torch.compile's inductor warm-up
    takes minutes: run the script with --modes compile for it)."""
    script = ROOT / "benchmarks" / "train_throughput.py"
    if r.args.no_train_throughput or not script.is_file():
        r.skip("train throughput", "--no-train-throughput" if r.args.no_train_throughput else f"{script} missing")
        return None
    sizes = ["--batch", "32", "--steps", "5", "--modes", "eager"] if r.args.cpu else \
        ["--batch", "128", "1024", "--steps", "20", "--modes", "eager", "cuda-graphs"]
    out = work / "train_throughput.json"
    step = r.run("train throughput", [sys.executable, str(script), "--device", r.device, *sizes, "--attention",
                                      "fused", "--out", str(out)], timeout_s=300)
    return json.loads(out.read_text()) if step.status == "ok" else None


def require_env(trt: str | None) -> dict[str, str]:
    """The test steps' environment: a GPU test that cannot run fails; so does a TensorRT test where TensorRT
    imports here (``trt``: its version), while without TensorRT those skip with their own reason."""
    return {"JEPA_EDGE_REQUIRE_GPU": "1", **({"JEPA_EDGE_REQUIRE_TRT": "1"} if trt else {})}


def run_tests(r: Runner, trt: str | None) -> None:
    """The GPU/TensorRT tests, then the whole suite, under ``require_env`` (a skip of what is here is a failure)."""
    if r.args.skip_tests:
        r.skip("tests (gpu or trt)", "--skip-tests")
        r.skip("tests (whole suite)", "--skip-tests")
        return
    py, require = sys.executable, require_env(trt)
    r.run("tests (gpu or trt)", [py, "-m", "pytest", "-q", "-m", "gpu or trt"], timeout_s=300, env=require)
    r.run("tests (whole suite)", [py, "-m", "pytest", "-q", *xdist_args()], timeout_s=600, env=require)


def run_all(args: argparse.Namespace, work: Path, gpu_reason: str) -> int:
    r = Runner(args, work)
    trt = None if args.cpu else tensorrt_version()
    if args.dry_run:
        print(f"dry run: the TensorRT steps run only where `import tensorrt` works (here: {trt or 'no'})")
        trt = trt or "dry run"
    t0, stopped, throughput = time.perf_counter(), "", None

    def on_sigterm(signum: int, frame: Any) -> None:  # `timeout` or a scheduler: report what ran, then stop
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:  # measurements first: a test step that hangs cannot cost the numbers
        models = train_and_export(r, trt)
        bench(r, models, ["ort-cpu"] if args.cpu else ["ort-cpu", "ort-cuda", "tensorrt"])
        throughput = train_throughput(r, work)
        run_tests(r, trt)
    except KeyboardInterrupt:
        stopped = f"stopped during '{r.steps[-1].name if r.steps else 'set-up'}'; later steps did not run"
        print(f"gpu-check: {stopped}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.dry_run:
        return 0
    from jepa_edge.machine import machine_info

    report = {
        "mode": "cpu (script check: not GPU numbers)" if args.cpu else "gpu",
        "gpu_detected": gpu_reason,
        "machine": {**machine_info(), "torch": torch_info(), "tensorrt": trt or "none"},
        "duration_s": round(time.perf_counter() - t0, 1),
        "stopped": stopped or None,
        "settings": {"train_steps": args.steps, "frames": args.frames, "warmup": args.warmup,
                     "models": {"agent32": "default RunConfig, 32 px, trained --steps",
                                "vit_tiny": {**VIT_TINY, "weights": "random (untrained)"}},
                     "export_mode": "head_inputs; fused (+ a position probe) for the CUDA-graph rows",
                     "onnx_precision": "fp32; the fp16 rows: the fused model exported with --precision fp16",
                     "tensorrt_precision": "fp16"},
        "steps": [asdict(s) for s in r.steps],
        "targets": {"ort_cuda_iobinding": targets(r.results), "ort_cuda_graph": targets(r.results, "graph"),
                    "vit_tiny_fp32_graph": vit_tiny_targets(r.results, "graph"),
                    "vit_tiny_fp16_graph": vit_tiny_targets(r.results, "fp16")},
        "bench": r.results,
        "train_throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(r.results, r.steps)
    failed = [s.name for s in r.steps if s.status == "failed"]
    print(f"wrote {args.out} in {report['duration_s']:.0f} s; " + (f"{stopped}; " if stopped else "")
          + (f"FAILED: {', '.join(failed)}" if failed else "every step passed"))
    return 1 if failed or stopped else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpu_reason = "--cpu" if args.cpu else ""
    if not (args.cpu or args.dry_run):
        has_gpu, gpu_reason = detect_gpu()
        if not has_gpu:
            print(f"gpu-check: no CUDA GPU here ({gpu_reason}); nothing to check — run it on a GPU machine")
            return 0
    if args.keep:
        if args.keep.is_dir() and any(args.keep.iterdir()):
            print(f"gpu-check: --keep {args.keep} is not empty (training would refuse to overwrite the last "
                  "check's run); pass a new or empty folder")
            return 2
        args.keep.mkdir(parents=True, exist_ok=True)
        return run_all(args, args.keep.resolve(), gpu_reason)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        return run_all(args, Path(tmp), gpu_reason)


if __name__ == "__main__":
    sys.exit(main())
