"""Calibration between agents, numpy only (no torch: this runs on the robot).

fit W from paired anchors (``fit_map``), score the alignment (``metrics``),
exchange it as a postcard, fit/transfer linear probes. The study that backs
the paper's table lives in ``jepa_edge.study`` (experiments, not robot code).
"""

from jepa_edge.calib.fit import ESTIMATORS, FitConfig, FitError, LinearMap, fit_map
from jepa_edge.calib.head import FusedHead, HeadError, build_head
from jepa_edge.calib.metrics import isomorphism_metrics, permutation_null
from jepa_edge.calib.postcard import Postcard, PostcardError, load_postcard, save_postcard
from jepa_edge.calib.probes import (
    Probe,
    ProbeConfig,
    ProbeError,
    evaluate_probe,
    fit_probe,
    load_probe,
    save_probe,
    transfer_probe,
)

__all__ = [
    "ESTIMATORS", "FitConfig", "FitError", "FusedHead", "HeadError", "LinearMap", "Postcard", "PostcardError",
    "Probe", "ProbeConfig", "ProbeError", "build_head", "evaluate_probe", "fit_map", "fit_probe",
    "isomorphism_metrics", "load_postcard", "load_probe", "permutation_null", "save_postcard", "save_probe",
    "transfer_probe",
]
