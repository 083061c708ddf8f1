"""Several training runs at once: ``ensure_trained`` in spawned worker processes, one progress bar per run.

The studies train many small agents; on a CPU shared with other jobs, two 1-thread runs beat one
2-thread run (docs/STUDENT.md, docs/SCALING.md). Workers are spawned, so no torch state is forked,
and print nothing: their bars follow each run's log.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from jepa_edge.train.config import RunConfig
from jepa_edge.train.log import last_logged_step
from jepa_edge.train.loop import ensure_trained, progress_task, training_progress


def worker_pool(workers: int) -> Executor:
    """``workers`` spawned training processes (no torch state is forked)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def train_all(jobs: list[tuple[RunConfig, Path]], workers: int, progress: bool, pool: Executor | None = None,
              on_done: Callable[[Path, bool], None] | None = None) -> None:
    """``ensure_trained`` every job, ``workers`` processes at a time (1 and no ``pool``: in this process).

    ``pool``: an open executor to reuse (the scaling study keeps one for all its points); ``on_done(out,
    reused)`` is called as each job finishes, in the order they finish."""
    if workers <= 1 and pool is None:
        for run_cfg, out in jobs:
            reused = ensure_trained(run_cfg, out, progress)
            if on_done:
                on_done(out, reused)
        return
    if pool is None:
        with worker_pool(workers) as own:
            return train_all(jobs, workers, progress, own, on_done)
    from concurrent.futures import FIRST_COMPLETED, wait

    futures = {pool.submit(ensure_trained, run_cfg, out, False): (run_cfg, out) for run_cfg, out in jobs}
    pending = set(futures)
    with training_progress(progress) as bar:
        tasks = {f: progress_task(bar, c) for f, (c, _) in futures.items()}
        shown = dict.fromkeys(futures, 0)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for f in pending:  # never backwards: a record being written reads as 0
                shown[f] = max(shown[f], last_logged_step(futures[f][1]))
                bar.update(tasks[f], completed=shown[f])
            for f in done:
                reused = f.result()  # a failed run raises here, with its own message
                bar.update(tasks[f], completed=futures[f][0].train.steps)
                if on_done:
                    on_done(futures[f][1], reused)
