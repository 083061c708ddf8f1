"""Simulator throughput: frames/s per view and size, for rendering and video I/O.

    python benchmarks/sim_throughput.py --out benchmarks/results/sim_throughput.json

For every view and size it times rendering (the frames a trainer consumes
from the simulator), then writing those frames as an MJPG video and decoding
them back (what a recording costs). Best of ``--repeats`` runs; one process
with OpenCV held to one thread (``cv2.setNumThreads(1)``), so the render
numbers are per CPU core. Both worlds: the 2-D views at ``--sizes``, the 3-D
views (robot-mounted cameras, occlusion, shading) at ``--sizes-3d``; the 3-D
row ``sim+render fps`` also counts the physics (``simulate3d``), the cost of
a frame from nothing. The 3-D world's target: >= 1,500 frames/s at 64 px.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2

from jepa_edge.artifacts import atomic_write_json
from jepa_edge.machine import machine_info
from jepa_edge.world import WorldConfig, read_video, render, simulate, view_names, write_video
from jepa_edge.world.render3d import render3d
from jepa_edge.world.sim3d import World3DConfig, simulate3d
from jepa_edge.world.views3d import view3d_names


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--views", nargs="+", default=view_names())
    ap.add_argument("--sizes-3d", type=int, nargs="+", default=[64])
    ap.add_argument("--views-3d", nargs="+", default=view3d_names())
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sim_throughput.json"))
    args = ap.parse_args()

    cv2.setNumThreads(1)
    cfg = WorldConfig()
    n_frames = args.episodes * args.steps
    sim_s = best_time(lambda: simulate(cfg, args.episodes, args.steps, args.seed), args.repeats)
    states = simulate(cfg, args.episodes, args.steps, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for view in args.views:
                render(states, view, size=size, seed=args.seed)  # warm-up (background, caches)
                render_s = best_time(partial(render, states, view, size=size, seed=args.seed), args.repeats)
                frames = render(states, view, size=size, seed=args.seed).reshape(-1, size, size, 3)
                path = Path(tmp) / f"{view}_{size}.avi"
                write_s = best_time(partial(write_video, path, frames, codec="MJPG"), args.repeats)
                read_s = best_time(partial(read_video, path), args.repeats)
                rows.append(
                    {
                        "world": "2d",
                        "view": view,
                        "size": size,
                        "frames": n_frames,
                        "render_fps": n_frames / render_s,
                        "sim_render_fps": 1 / (1 / (n_frames / render_s) + sim_s / n_frames),
                        "mjpg_write_fps": n_frames / write_s,
                        "mjpg_read_fps": n_frames / read_s,
                    }
                )
        cfg3 = World3DConfig()
        sim3_s = best_time(lambda: simulate3d(cfg3, args.episodes, args.steps, args.seed), args.repeats)
        states3 = simulate3d(cfg3, args.episodes, args.steps, args.seed)
        for size in args.sizes_3d:
            for view in args.views_3d:
                render3d(states3, view, size, args.seed, cfg3)  # warm-up
                render_s = best_time(partial(render3d, states3, view, size, args.seed, cfg3), args.repeats)
                frames = render3d(states3, view, size, args.seed, cfg3).reshape(-1, size, size, 3)
                path = Path(tmp) / f"{view}_{size}.avi"
                write_s = best_time(partial(write_video, path, frames, codec="MJPG"), args.repeats)
                read_s = best_time(partial(read_video, path), args.repeats)
                rows.append({"world": "3d", "view": view, "size": size, "frames": n_frames,
                             "render_fps": n_frames / render_s, "sim_render_fps": n_frames / (render_s + sim3_s),
                             "mjpg_write_fps": n_frames / write_s, "mjpg_read_fps": n_frames / read_s})

    header = (f"{'world':<6}{'view':<10}{'size':>6}{'render fps':>14}{'sim+render fps':>16}{'MJPG write fps':>17}"
              f"{'MJPG read fps':>16}")
    print(
        f"simulate: {n_frames / sim_s:,.0f} states/s ({args.episodes} episodes x {args.steps} steps, "
        f"{cfg.n_objects} objects); simulate3d: {n_frames / sim3_s:,.0f} states/s"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['world']:<6}{r['view']:<10}{r['size']:>6}{r['render_fps']:>14,.0f}{r['sim_render_fps']:>16,.0f}"
            f"{r['mjpg_write_fps']:>17,.0f}"
            f"{r['mjpg_read_fps']:>16,.0f}"
        )

    result = {
        "benchmark": "sim_throughput",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "simulate_states_per_s": n_frames / sim_s,
        "simulate3d_states_per_s": n_frames / sim3_s,
        "rows": rows,
        "machine": {**machine_info(), "opencv_threads": cv2.getNumThreads()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
