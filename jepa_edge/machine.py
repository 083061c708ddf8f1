"""The machine a benchmark ran on, recorded with every benchmark report (torch-free).

``machine_info()`` is the one description used by ``jepa-edge bench`` and every
script in ``benchmarks/``: OS, Python, CPU model and cores (and how many this
process may use), the load average when it was taken (a busy shared machine
makes every number slower), GPUs as ``nvidia-smi`` lists them ("none" without
one), the ONNX Runtime build and providers, and the versions of torch,
TensorRT, OpenCV and numpy where they are installed. Versions are read from
the installed distributions: nothing heavy is imported (torch never is).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def cpu_model(cpuinfo_path: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; Jetson kernels may lack it: then the architecture)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def gpu_info(smi: str = "nvidia-smi", timeout_s: float = 10.0) -> list[dict[str, Any]] | str:
    """GPUs as ``nvidia-smi`` reports them (name, driver, memory), or "none" where it is absent or fails."""
    exe = shutil.which(smi)
    if exe is None:
        return "none"
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    try:
        p = subprocess.run([exe, *query], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    gpus = []
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        fields = [f.strip() for f in line.split(",")]  # "NVIDIA H100 80GB HBM3, 580.65.06, 81559"
        if len(fields) == 3 and fields[0]:
            mem = int(fields[2]) if fields[2].isdigit() else None
            gpus.append({"name": fields[0], "driver": fields[1], "memory_mib": mem})
    return gpus or "none"


def dist_version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed (None: none is)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_info() -> dict[str, Any]:
    """ONNX Runtime version, providers, and which of its pip builds are installed (two builds clash)."""
    dists = {name: dist_version(name) for name in ("onnxruntime", "onnxruntime-gpu")}
    info: dict[str, Any] = {"version": "none", "providers": [], "distributions": dists}
    if all(dists.values()):
        info["warning"] = ("onnxruntime and onnxruntime-gpu are both installed and overwrite each other; "
                           "`pip uninstall -y onnxruntime onnxruntime-gpu`, then install one of them")
    try:
        import onnxruntime as ort
    except ImportError:
        return info
    info.update(version=ort.__version__, providers=list(ort.get_available_providers()))
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """What a benchmark number depends on: OS, Python, CPU and load, GPUs, ONNX Runtime and library versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,  # this process's CPU affinity (a container or taskset may allow fewer)
        "load_avg": load_average(),  # when the report was started: other jobs on a shared machine slow it
        "gpu": gpu_info(),
        "onnxruntime": onnxruntime_info(),
        "torch": dist_version("torch"),
        "tensorrt": dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        "opencv": dist_version(*OPENCV_DISTS),
        "numpy": dist_version("numpy"),
    }
