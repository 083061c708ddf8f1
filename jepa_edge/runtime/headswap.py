"""Head hot-swap: watch a folder for postcards + probes, build the fused head, swap it between frames.

``HeadWatcher.poll()`` scans the folder once. A set of files is read only
after it looked identical (names, sizes, mtimes) for ``stable_polls`` polls
in a row and its newest file is ``min_age_s`` old, so a half-copied file is
never read. Only regular files count: symlinks (which could point anywhere on
the robot), folders, FIFOs and devices are ignored, and every file is
size-capped before it is parsed (the calib loaders). The head is built with the calib loaders and ``build_head``
(fingerprint and shape checks); a bad set is refused, whatever it raises
(logged, counted, reason kept), and the previous head keeps running; the
background thread survives any failed scan. ``take()`` hands a new head to the
pipeline exactly once; ``HeadStage.swap`` installs it between two frames
(one reference assignment: no engine rebuild).
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jepa_edge.calib.postcard import POSTCARD_SUFFIX
from jepa_edge.calib.probes import PROBE_SUFFIX
from jepa_edge.runtime.errors import HeadModeError, RuntimeModelError
from jepa_edge.runtime.meta import HEAD_MODES
from jepa_edge.runtime.model import Model

if TYPE_CHECKING:
    from typing_extensions import Self

    from jepa_edge.calib.head import FusedHead

log = logging.getLogger(__name__)


@dataclass
class HeadWatcherConfig:
    poll_interval_s: float = 1.0  # background thread: seconds between scans
    stable_polls: int = 2  # a file set must look identical this many scans in a row before it is read
    min_age_s: float = 0.5  # … and its newest file must be at least this old (copies in progress)
    postcard_glob: str = f"*{POSTCARD_SUFFIX}"
    probe_glob: str = f"*{PROBE_SUFFIX}"

    def validate(self) -> None:
        if self.poll_interval_s <= 0 or self.stable_polls < 1 or self.min_age_s < 0:
            raise ValueError("HeadWatcherConfig: need poll_interval_s > 0, stable_polls >= 1, min_age_s >= 0")


@dataclass
class Refusal:
    files: list[str]
    reason: str
    t_wall: float


@dataclass
class WatcherStats:
    scans: int = 0
    loaded: int = 0
    refused: int = 0
    refusals: list[Refusal] = field(default_factory=list)  # most recent last

    def to_dict(self) -> dict[str, Any]:
        return {"scans": self.scans, "loaded": self.loaded, "refused": self.refused,
                "last_refusal": self.refusals[-1].reason if self.refusals else None}


Signature = tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns), sorted


class RefusesHeads:
    """What a pipeline's head source shares: ``stats`` and ``refuse()`` (a head not loaded or not installed)."""

    stats: WatcherStats
    _lock: threading.Lock

    def refuse(self, files: list[str], exc: BaseException, what: str) -> None:
        """Count a head that could not be loaded or installed; keep its reason; log one line."""
        reason = f"{type(exc).__name__}: {exc}"
        with self._lock:  # the watcher thread and the pipeline (a failed install) both refuse
            self.stats.refused += 1
            self.stats.refusals.append(Refusal(list(files), reason, time.time()))
            del self.stats.refusals[:-100]
        log.warning("%s (keeping the current head): %s", what, reason)


class HeadWatcher(RefusesHeads):
    def __init__(
        self,
        folder: str | Path,
        encoder_fingerprint: str,
        latent_dim: int,
        config: HeadWatcherConfig | None = None,
        own_probes: Sequence[Any] = (),
    ) -> None:
        """``own_probes``: probes of this agent that stay in every head (loaded Probe objects)."""
        self.folder = Path(folder)
        self.encoder_fingerprint, self.latent_dim = encoder_fingerprint, int(latent_dim)
        self.config = config or HeadWatcherConfig()
        self.config.validate()
        self.own_probes = list(own_probes)
        self.stats = WatcherStats()
        self._candidate: Signature | None = None
        self._candidate_polls = 0
        self._handled: Signature | None = None  # last set loaded or refused: not read again until it changes
        self._pending: FusedHead | None = None
        self._ignored: set[str] = set()  # names of non-regular entries already warned about
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: head folder does not exist; create it or fix the path")

    def _scan(self) -> tuple[Signature, float]:
        files = {*self.folder.glob(self.config.postcard_glob), *self.folder.glob(self.config.probe_glob)}
        sig, newest = [], 0.0
        for p in files:
            try:
                st = p.lstat()  # the entry itself: a symlink is not followed
            except FileNotFoundError:  # removed between glob and stat: the next scan sees the new set
                continue
            if not stat.S_ISREG(st.st_mode):  # symlinks, folders, FIFOs, devices: never read from the inbox
                if p.name not in self._ignored:
                    self._ignored.add(p.name)
                    log.warning("ignoring %s in the head folder: not a regular file (symlink, folder, FIFO…)", p)
                continue
            sig.append((p.name, st.st_size, st.st_mtime_ns))
            newest = max(newest, st.st_mtime_ns / 1e9)
        return tuple(sorted(sig)), newest

    def _build(self, sig: Signature) -> FusedHead:
        from jepa_edge.calib.head import build_head
        from jepa_edge.calib.postcard import load_postcard
        from jepa_edge.calib.probes import load_probe

        names = [name for name, _, _ in sig]
        postcards = [n for n in names if Path(n).match(self.config.postcard_glob)]
        if len(postcards) > 1:
            raise ValueError(f"{len(postcards)} postcards {postcards}; keep one postcard per head folder")
        postcard = (
            load_postcard(self.folder / postcards[0], expect_source_fingerprint=self.encoder_fingerprint)
            if postcards else None
        )
        probes = [load_probe(self.folder / n) for n in names if n not in postcards]
        return build_head(self.encoder_fingerprint, self.latent_dim, postcard, [*self.own_probes, *probes])

    def poll(self) -> FusedHead | None:
        """Scan once; return the new head when a stable, new file set was loaded, else None."""
        self.stats.scans += 1
        sig, newest = self._scan()
        if not sig or sig == self._handled:
            self._candidate, self._candidate_polls = None, 0
            return None
        if sig != self._candidate:
            self._candidate, self._candidate_polls = sig, 0
        self._candidate_polls += 1
        if self._candidate_polls < self.config.stable_polls or time.time() - newest < self.config.min_age_s:
            return None
        self._handled = sig
        try:
            head = self._build(sig)
        except Exception as exc:  # noqa: BLE001 - any file set that cannot become a head is refused, never fatal
            self.refuse([n for n, _, _ in sig], exc, f"refused head files in {self.folder}")
            return None
        self.stats.loaded += 1
        log.info("new head from %s: %s", self.folder, [o.name for o in head.outputs])
        with self._lock:
            self._pending = head
        return head

    def take(self) -> FusedHead | None:
        """The newest loaded head not yet taken (None if nothing new)."""
        with self._lock:
            head, self._pending = self._pending, None
        return head

    # ---- background polling ------------------------------------------------------------
    def start(self) -> HeadWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"heads:{self.folder}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        """Poll until close(); nothing a scan raises ends the thread (the current head keeps running)."""
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.poll()
            except OSError as exc:  # folder unmounted / permissions: keep the current head, retry later
                log.warning("head folder %s unreadable: %s", self.folder, exc)
            except Exception as exc:  # noqa: BLE001 - a watcher thread that died would never load a head again
                log.warning("head folder %s: scan failed (%s: %s); retrying at the next poll",
                            self.folder, type(exc).__name__, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.poll_interval_s + 1.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HeadStage:
    """The head after the encoder: inside the exported model (``model``) or on ``z`` in numpy (``numpy``).

    ``auto``: a head_inputs model runs its head in the model; an encoder-only
    model runs it in numpy; a fused model keeps its baked-in head unless a
    head is given or swappable=True, in which case numpy (fused models cannot swap).
    """

    def __init__(self, model: Model, mode: str = "auto", head: FusedHead | None = None,
                 swappable: bool = False) -> None:
        if mode not in HEAD_MODES:
            raise ValueError(f"head mode {mode!r}; choose one of {HEAD_MODES} (--head-mode)")
        kind = model.meta.mode
        if mode == "auto":
            if kind == "head_inputs":
                mode = "model"
            elif kind == "encoder_only" or head is not None or swappable:
                mode = "numpy"
            else:
                mode = "model"
        if mode == "model" and kind == "encoder_only":
            raise HeadModeError(f"{model.path}: an encoder-only model has no head; pass --head-mode numpy")
        self.model, self.mode = model, mode
        self.head: FusedHead | None = None
        self.version = 0  # increments at each swap; logged with every frame
        if head is not None:
            self.swap(head)

    def swap(self, head: FusedHead) -> None:
        """Install ``head`` for the next frame (call between frames)."""
        meta = self.model.meta
        if self.mode == "model":
            self.model.set_head(head)  # checks mode, dim and fingerprint
        elif head.encoder_fingerprint != meta.agent_fingerprint or head.latent_dim != meta.latent_dim:
            raise RuntimeModelError(
                f"head built for encoder {head.encoder_fingerprint[:12]}… (dim {head.latent_dim}) cannot run on "
                f"{meta.agent_fingerprint[:12]}… (dim {meta.latent_dim}); build it for this model's agent"
            )
        self.head = head
        self.version += 1

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mode == "model":
            return outputs
        z = outputs["z"]
        if self.head is None:
            return {"z": z}
        return {"z": z, **self.head.split(self.head.apply(z))}
