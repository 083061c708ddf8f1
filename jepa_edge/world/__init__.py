"""Built-in multi-view world simulators (the 2-D world and the 3-D world) and multi-camera recordings (no torch).

``worlds`` is the one dispatch by view name: ``episode_frames``, ``simulate_world``, ``render_view``.
"""

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
from jepa_edge.world.sim3d import World3DConfig, World3DStates
from jepa_edge.world.views import VIEWS, ViewSpec, get_view, render, view_names
from jepa_edge.world.worlds import (
    DEFAULT_SIZE,
    WORLD_KINDS,
    all_view_names,
    default_world,
    episode_frames,
    render_view,
    simulate_world,
    views_of,
    world_kind_of_view,
)

__all__ = [
    "CODECS",
    "DEFAULT_SIZE",
    "VIDEO_EXTENSIONS",
    "VIEWS",
    "WORLD_KINDS",
    "Recording",
    "RecordingError",
    "ViewData",
    "ViewSpec",
    "World3DConfig",
    "World3DStates",
    "WorldConfig",
    "WorldStates",
    "all_view_names",
    "default_world",
    "episode_frames",
    "get_view",
    "load_recording",
    "make_view_dataset",
    "read_video",
    "render",
    "render_view",
    "simulate",
    "simulate_recording",
    "simulate_world",
    "view_names",
    "views_of",
    "world_kind_of_view",
    "write_recording",
    "write_video",
]
