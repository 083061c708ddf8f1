"""The built-in worlds behind one interface: the flat 2-D world and the 3-D world with robot-mounted cameras.

A view name says which world it belongs to (the 2-D ``top, oblique, rotated, partial``; the 3-D ``overhead,
corner, front, rear, side``), so callers simulate and render through these functions and never ask which
world they are in.
"""

from __future__ import annotations

from jepa_edge.world.render3d import render3d
from jepa_edge.world.sim import WorldConfig, WorldStates, simulate
from jepa_edge.world.sim3d import World3DConfig, World3DStates, simulate3d
from jepa_edge.world.views import render, view_names
from jepa_edge.world.views3d import get_view3d, view3d_names

WORLD_KINDS = ("2d", "3d")
DEFAULT_SIZE = {"2d": 32, "3d": 64}  # frame side each world is rendered at by default (docs/RECIPE.md)


def views_of(kind: str) -> list[str]:
    if kind not in WORLD_KINDS:
        raise ValueError(f"unknown world {kind!r}; choose one of {', '.join(WORLD_KINDS)}")
    return view_names() if kind == "2d" else view3d_names()


def all_view_names() -> list[str]:
    return view_names() + view3d_names()


def world_kind_of_view(view: str) -> str:
    """"2d" or "3d": the world a simulator view belongs to."""
    if view in view_names():
        return "2d"
    if view in view3d_names():
        return "3d"
    raise ValueError(f"unknown view {view!r}: the 2-D world's views are {', '.join(view_names())}; the 3-D "
                     f"world's are {', '.join(view3d_names())}")


def on_robot(view: str) -> bool:
    """True for a camera mounted on robot 0 (it moves and turns with the robot: it sees the world in its frame)."""
    return world_kind_of_view(view) == "3d" and get_view3d(view).mount == "robot"


def default_world(kind: str) -> WorldConfig | World3DConfig:
    views_of(kind)  # validates the kind
    return WorldConfig() if kind == "2d" else World3DConfig()


def world_kind_of(world: WorldConfig | World3DConfig) -> str:
    if isinstance(world, World3DConfig):
        return "3d"
    if isinstance(world, WorldConfig):
        return "2d"
    raise TypeError(f"not a world config: {type(world).__name__}")


def world_of_kind(kind: str, world: WorldConfig | World3DConfig | None, who: str) -> WorldConfig | World3DConfig:
    """``world`` checked to configure the ``kind`` world ("2d" or "3d"); that world's default config when None.
    ``who`` names the caller's views or argument in the error."""
    if world is None:
        return default_world(kind)
    if world_kind_of(world) != kind:
        raise ValueError(f"{who}: the world config is a {type(world).__name__}, not a config of the {kind} world; "
                         f"pass a {type(default_world(kind)).__name__}")
    return world


def simulate_world(world: WorldConfig | World3DConfig, n_episodes: int, n_steps: int,
                   seed: int) -> WorldStates | World3DStates:
    """Roll out episodes of the world ``world`` configures (2-D or 3-D by its type)."""
    if world_kind_of(world) == "3d":
        return simulate3d(world, n_episodes, n_steps, seed)
    return simulate(world, n_episodes, n_steps, seed)


def render_view(states: WorldStates, view: str, size: int, seed: int,
                world: WorldConfig | World3DConfig | None = None):
    """Frames (E, T, S, S, 3) uint8 BGR of ``states`` seen from ``view``; ``world``: the 3-D world's config
    (its geometry: walls, posts, shapes, colours), default World3DConfig()."""
    kind = world_kind_of_view(view)
    if kind != states.kind:
        raise ValueError(f"view {view!r} belongs to the {kind} world but the states come from the "
                         f"{states.kind} world; pick one of {', '.join(views_of(states.kind))}")
    if kind == "3d":
        return render3d(states, view, size, seed, world if isinstance(world, World3DConfig) else None)
    return render(states, view, size, seed)


def episode_frames(view: str, n_episodes: int, n_steps: int, size: int, seed: int,
                   world: WorldConfig | World3DConfig | None = None):
    """Simulate ``n_episodes`` x ``n_steps`` of the view's world with ``seed`` and render ``view`` with the same
    seed → (frames (E, T, S, S, 3), states). ``world`` must be a config of the view's world (default: its own)."""
    world = world_of_kind(world_kind_of_view(view), world, f"view {view!r}")
    states = simulate_world(world, n_episodes, n_steps, seed)
    return render_view(states, view, size, seed, world), states
