"""GPU / TensorRT test gating: skip where the hardware or package is missing, fail under JEPA_EDGE_REQUIRE_GPU=1.

A GPU test that cannot start (no GPU, broken CUDA/TensorRT install) reports
*skipped*, never *failed*, unless ``JEPA_EDGE_REQUIRE_GPU=1`` is set (as
``make gpu-check`` does): then every such skip is a failure, so a GPU machine
cannot pass by skipping. Skips caused by a missing optional package name that
package in the reason.
"""

from __future__ import annotations

import os

import pytest


def gpu_required() -> bool:
    return os.environ.get("JEPA_EDGE_REQUIRE_GPU", "") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """``pytest.skip(reason)``, or ``pytest.fail`` when JEPA_EDGE_REQUIRE_GPU=1."""
    if gpu_required():
        pytest.fail(f"JEPA_EDGE_REQUIRE_GPU=1 but: {reason}", pytrace=False)
    pytest.skip(reason)
