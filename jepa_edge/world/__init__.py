"""Built-in multi-view world simulator and multi-camera recordings (no torch)."""

from jepa_edge.world.dataset import (
    VIDEO_EXTENSIONS,
    Recording,
    ViewData,
    load_recording,
    make_view_dataset,
    read_video,
)
from jepa_edge.world.record import (
    CODECS,
    RecordingError,
    simulate_recording,
    write_recording,
    write_video,
)
from jepa_edge.world.sim import WorldConfig, WorldStates, simulate
from jepa_edge.world.views import VIEWS, ViewSpec, get_view, render, view_names

__all__ = [
    "CODECS",
    "VIDEO_EXTENSIONS",
    "VIEWS",
    "Recording",
    "RecordingError",
    "ViewData",
    "ViewSpec",
    "WorldConfig",
    "WorldStates",
    "get_view",
    "load_recording",
    "make_view_dataset",
    "read_video",
    "render",
    "simulate",
    "simulate_recording",
    "view_names",
    "write_recording",
    "write_video",
]
