"""Calibration between agents, numpy only (no torch: this runs on the robot).

fit W from paired anchors (``fit_map``), score the alignment (``metrics``),
exchange it as a postcard, fit/transfer linear probes, and run the study
that backs the paper's table.
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
from jepa_edge.calib.study import StudyConfig, StudyError, StudyInputs, run_study, write_report

__all__ = [
    "ESTIMATORS", "FitConfig", "FitError", "FusedHead", "HeadError", "LinearMap", "Postcard", "PostcardError",
    "Probe", "ProbeConfig", "ProbeError", "StudyConfig", "StudyError", "StudyInputs", "build_head",
    "evaluate_probe", "fit_map", "fit_probe", "isomorphism_metrics", "load_postcard", "load_probe",
    "permutation_null", "run_study", "save_postcard", "save_probe", "transfer_probe", "write_report",
]
