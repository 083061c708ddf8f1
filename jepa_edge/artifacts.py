"""The file-format layer shared by train, calib, export, fleet, world, the study and the runtime (torch-free).

Atomic writes, size-capped reads, and the one safetensors container of postcards, probes and fleet
messages: float32 tensors plus a JSON object under the safetensors metadata key ``jepa_edge`` that
names its ``kind`` and ``version`` (never pickle). ``ArtifactError`` is the base of every error about
a file that cannot be used as is (``PostcardError``, ``ProbeError``, ``CheckpointError``, …), and
``AgentRef`` is the one description of an agent such files carry.

Every artifact is written atomically: a temporary sibling, flushed and
fsync'ed, then ``os.replace``d over the target, so a crash leaves the old file
or the new one, never half of one. The temporary sibling is
``.{name}.{pid}.{random}.tmp``, created with the mode a plain ``open()`` gives
(0666 less the umask; ``mkstemp``'s 0600 would survive the rename). A writer
killed with SIGKILL cannot remove its temporary file, so every write to a path
first removes the siblings ``.{name}.{pid}.*.tmp`` whose writer process is
gone. Every untrusted file (postcards, probes,
sidecars, metadata, anything a robot receives) is size-checked *before* it is
parsed, so a hostile or corrupt file cannot make a reader allocate without
bound.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Size caps before parsing. Generous for what jepa-edge writes (a postcard of a
# 4096-dim W is 64 MiB), far below what would exhaust a Jetson's memory.
MAX_POSTCARD_BYTES = 256 * 1024 * 1024  # postcards and probes (.safetensors)
MAX_JSON_BYTES = 16 * 1024 * 1024  # meta.json, engine sidecars, configs
MAX_METADATA_BYTES = 1024 * 1024  # ONNX metadata_props["jepa_edge"] text
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # safetensors' own header limit
METADATA_KEY = "jepa_edge"  # the safetensors metadata entry holding a file's JSON (kind, version, ...)
AGENT_KEYS = ("name", "fingerprint", "latent_dim", "view")


class ArtifactError(ValueError):
    """A file that cannot be used as is: missing, oversized, not a regular file, not parseable.

    The base of every file-format error (postcards, probes, checkpoints, recordings, fleet messages, keys, bags).
    """


def temp_path(path: str | Path, keep_suffix: bool = False, folder: bool = False) -> Path:
    """A fresh temporary sibling of ``path`` named after this process: ``.{name}.{pid}.{random}.tmp``.

    ``keep_suffix`` appends ``path``'s suffix (``….tmp.avi``) for libraries that pick a format by it;
    ``folder`` names a temporary folder (``….tmpdir``) for an artifact that is a folder.
    """
    path = Path(path)
    extra = "dir" if folder else path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{extra}")


def process_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists (a process of another user still counts as alive)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: alive, owned by someone else; OverflowError: not a pid
        return False
    return False


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove ``path``'s temporary siblings (files or folders) left by writers that died; return them.

    Only names of the ``temp_path`` scheme whose pid no longer exists are touched: another process's
    write in progress keeps its file.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp(dir|\.\w+)?")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and process_gone(int(m.group(1))):
            try:
                if m.group(2) == "dir" and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:  # another writer cleaned it first
                continue
            removed.append(Path(entry.path))
    return removed


def refuse_existing(*paths: str | Path | None, overwrite: bool) -> None:
    """The one overwrite rule: an existing output is refused unless ``overwrite`` (--overwrite), before any work."""
    for path in paths:
        if path is not None and Path(path).exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or choose another path")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], mode: int = 0o666) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then ``os.replace``: never half-written.

    The file gets ``mode`` less the umask, as ``open()`` would give it (pass 0o600 for a secret).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # about the folder (or one above it) that could not be made
        raise cannot_write(path, exc, exc.filename) from exc
    remove_stale_temps(path)
    while True:
        tmp = temp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # mode & ~umask, like open()
            break
        except FileExistsError:  # a 32-bit random collision with a live writer: draw again
            continue
        except OSError as exc:
            raise cannot_write(path, exc, tmp) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, exc, tmp) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def cannot_write(path: str | Path, exc: OSError, tmp: str | Path | None = None) -> OSError:
    """``exc`` (same type and errno) re-worded to name ``path``, the file the caller asked for, never the
    temporary sibling ``tmp`` an atomic write failed on; the hint says what to check. An error about
    another file (raised while producing the bytes) is returned as is."""
    ours = {str(path), str(Path(path).parent), str(tmp)}
    if (exc.filename is not None and str(exc.filename) not in ours) or (
            exc.filename is None and str(path) in str(exc)):  # another file's, or already worded for the caller
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = "free some space on that disk" if exc.errno == errno.ENOSPC else "check the path and its permissions"
    new = type(exc)(f"cannot write {path}: {reason}; {fix}")
    new.errno = exc.errno  # strerror and filename stay unset: str(new) is the sentence above
    return new


def replace_synced(tmp: str | Path, path: str | Path) -> None:
    """fsync a temp file another library wrote by name (e.g. OpenCV's VideoWriter), then ``os.replace`` it.

    Name ``tmp`` with ``temp_path(path, keep_suffix=True)`` so a killed writer's file is found and removed
    by the next write to ``path`` (this call removes such leftovers too).
    """
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc, tmp) from exc
    remove_stale_temps(path)
    _fsync_dir(Path(path).parent)


def replace_folder_synced(new: str | Path, path: str | Path, scratch: str | Path) -> None:
    """fsync every file of the folder ``new`` and the folder, move it to ``path`` (an old folder there is moved
    into ``scratch`` first), then delete ``scratch``: a reader sees the old folder or the new one, whole."""
    new, path, scratch = Path(new), Path(path), Path(scratch)
    for f in new.iterdir():
        _fsync_path(f)
    _fsync_path(new)
    if path.exists() or path.is_symlink():
        os.replace(path, scratch / ".replaced")
    os.replace(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(scratch)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the data itself is already synced
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """Strict JSON (no NaN/Inf), indented, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def check_regular_file(path: str | Path, what: str, fix: str, cap: int) -> Path:
    """``path`` as a Path after checking it is a regular file (not a symlink) of at most ``cap`` bytes."""
    path = Path(path)
    if path.is_symlink():
        raise ArtifactError(f"{path}: {what} is a symbolic link, refused; {fix}")
    if not path.exists():
        raise ArtifactError(f"{path}: no such {what}; {fix}")
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} is not a regular file; {fix}")
    size = path.stat().st_size
    if size > cap:
        raise ArtifactError(f"{path}: {what} is {size} bytes, over the {cap}-byte limit; {fix}")
    return path


def read_bytes_capped(path: str | Path, what: str, fix: str, cap: int) -> bytes:
    """Read a whole file after the regular-file and size checks; also refuses a file that grew past ``cap``."""
    path = check_regular_file(path, what, fix, cap)
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ArtifactError(f"{path}: {what} is over the {cap}-byte limit; {fix}")
    return data


def read_json_capped(path: str | Path, what: str, fix: str, cap: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from ``path`` (size-capped, strict: a list or scalar at the top is refused)."""
    data = read_bytes_capped(path, what, fix, cap)
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {what} is not valid JSON ({exc}); {fix}") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level: [[[[…]]]] ends here
        raise ArtifactError(f"{path}: {what} is JSON nested too deeply to parse; {fix}") from exc
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: {what} must be a JSON object, got {type(obj).__name__}; {fix}")
    return obj


# ---------------------------------------------------------------- the agent a file belongs to


@dataclass(frozen=True)
class AgentRef:
    """An agent as files name it: JSON ``{name, fingerprint, latent_dim, view}``.

    Postcards carry two (``source``, ``target``), a probe one (``agent``), a fleet card one; ``fingerprint``
    is the sha256 of the encoder's weights (``calib.fingerprint``), the part every check compares.
    """

    name: str
    fingerprint: str
    latent_dim: int
    view: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "latent_dim": self.latent_dim, "view": self.view}

    @classmethod
    def from_dict(cls, agent: Any, owner: str = "file", role: str = "agent",
                  error: type[ArtifactError] = ArtifactError) -> AgentRef:
        """Check a JSON agent object (all of ``AGENT_KEYS``, sane types); ``owner``/``role`` name it in ``error``."""
        if not isinstance(agent, dict) or any(k not in agent for k in AGENT_KEYS):
            raise error(f"{owner}: {role} must be a dict with keys {list(AGENT_KEYS)}, got {agent!r}")
        return cls.checked(cls(agent["name"], agent["fingerprint"], agent["latent_dim"], agent["view"]),
                           owner, role, error)

    @classmethod
    def checked(cls, agent: AgentRef | dict[str, Any], owner: str = "file", role: str = "agent",
                error: type[ArtifactError] = ArtifactError) -> AgentRef:
        """``agent`` (an AgentRef or its JSON dict) with checked types, ``latent_dim`` a Python int."""
        if not isinstance(agent, AgentRef):
            return cls.from_dict(agent, owner, role, error)
        dim = agent.latent_dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise error(f"{owner}: {role}.latent_dim={dim!r} must be a positive integer")
        if not isinstance(agent.fingerprint, str) or not agent.fingerprint:
            raise error(f"{owner}: {role}.fingerprint must be a non-empty string (sha256 of the encoder)")
        if not isinstance(agent.name, str) or not isinstance(agent.view, str):
            raise error(f"{owner}: {role}.name and {role}.view must be strings, got {agent.name!r} / {agent.view!r}")
        return agent if type(dim) is int else cls(agent.name, agent.fingerprint, int(dim), agent.view)


def check_fingerprint(owner: str, role: str, got: str, expected: str | None,
                      error: type[ArtifactError] = ArtifactError) -> None:
    """Refuse a file made for another encoder than the one in use (``expected``; None: no check)."""
    if expected is not None and got != expected:
        raise error(
            f"{owner}: {role} fingerprint is {got[:12]}… but the encoder in use is {expected[:12]}…; "
            f"this file belongs to another encoder: fit or fetch the one for this agent"
        )


# ---------------------------------------------------------------- safetensors + JSON files


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/Inf → None (strict JSON has neither); an AgentRef → its dict."""
    if isinstance(obj, AgentRef):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def artifact_bytes(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """safetensors bytes: float32 tensors, ``meta`` as strict JSON under the metadata key ``jepa_edge``."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return save(arrays, metadata={METADATA_KEY: json.dumps(jsonable(meta), allow_nan=False)})


def save_artifact(path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """``artifact_bytes`` written atomically to ``path``."""
    atomic_write_bytes(path, artifact_bytes(tensors, meta))


@contextmanager
def refused_as(error: type[ArtifactError], path: str, kind: str) -> Iterator[None]:
    """Turn any failure while reading an untrusted file into ``error`` naming it (``error`` passes through).

    For cases the explicit checks do not name (e.g. ``RecursionError`` from nesting deep enough to pass
    ``json.loads`` but not ``str()``): still a refused file, never a crashed reader thread.
    """
    try:
        yield
    except error:
        raise
    except Exception as exc:
        raise error(f"{path}: cannot read the {kind} file ({type(exc).__name__}: {exc}); "
                    f"re-download or re-export it") from exc


def read_safetensors_header(path: str | Path, data: bytes, error: type[ArtifactError] = ArtifactError
                            ) -> dict[str, Any]:
    """The JSON header of safetensors bytes, checked against the data's length before it is parsed."""
    fix = "re-download or re-export the file"
    if len(data) < 8:
        raise error(f"{path}: file is {len(data)} bytes, too short for safetensors (truncated?); {fix}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_SAFETENSORS_HEADER or 8 + n > len(data):
        raise error(f"{path}: header claims {n} bytes but the file has {len(data) - 8}: truncated or not safetensors; {fix}")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: header is not valid JSON ({exc}): not a safetensors file; {fix}") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level: [[[[…]]]] ends here
        raise error(f"{path}: header JSON is nested too deeply to parse: not a jepa-edge file; {fix}") from exc
    if not isinstance(header, dict):
        raise error(f"{path}: header is not a JSON object: not a safetensors file; {fix}")
    return header


def read_artifact_bytes(path: str | Path, kind: str, error: type[ArtifactError] = ArtifactError) -> bytes:
    """The file's bytes after the regular-file (no symlink) and size checks, as ``error``s."""
    path = Path(path)
    try:
        return read_bytes_capped(path, f"{kind} file", f"pass a *.{kind}.safetensors file written by jepa-edge",
                                 MAX_POSTCARD_BYTES)
    except error:
        raise
    except ArtifactError as exc:
        raise error(str(exc)) from exc
    except OSError as exc:  # unreadable (permissions, I/O error)
        raise error(f"{path}: cannot read the {kind} file ({exc.strerror or exc}); check its permissions") from exc


def load_artifact(path: str | Path, kind: str, version: int, error: type[ArtifactError] = ArtifactError
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a jepa-edge safetensors file; check readability, kind, version and finiteness."""
    path = Path(path)
    return parse_artifact(read_artifact_bytes(path, kind, error), str(path), kind, version, error)


def parse_artifact(data: bytes, path: str, kind: str, version: int, error: type[ArtifactError] = ArtifactError
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``load_artifact`` on bytes already in memory (e.g. received over the fleet); ``path`` names them.

    Every failure is an ``error``: the bytes may come from anywhere, and a reader thread (the head
    watcher, the fleet inbox) must be able to refuse them without dying.
    """
    with refused_as(error, path, kind):
        return _parse_artifact(data, path, kind, version, error)


def _parse_artifact(data: bytes, path: str, kind: str, version: int, error: type[ArtifactError]
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    header = read_safetensors_header(path, data, error)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc}); re-download or re-export it") from exc
    metadata = header.get("__metadata__") or {}
    raw = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        raise error(f"{path}: no '{METADATA_KEY}' metadata: not a jepa-edge {kind}; export it with jepa-edge")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: '{METADATA_KEY}' metadata is not JSON ({exc}); re-export the {kind}") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level: [[[[…]]]] ends here
        raise error(f"{path}: '{METADATA_KEY}' metadata JSON is nested too deeply to parse; "
                    f"re-export the {kind}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        got = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise error(f"{path}: this file is a {got!r}, not a {kind}; pass a *.{kind}.safetensors file")
    if meta.get("version") != version:
        raise error(f"{path}: {kind} version {meta.get('version')!r} is not supported (this jepa-edge reads "
                    f"version {version}); re-export it with this jepa-edge version")
    for key, a in tensors.items():
        if a.dtype != np.float32:
            raise error(f"{path}: tensor {key!r} is {a.dtype}, expected float32; re-export the {kind}")
        if not np.all(np.isfinite(a)):
            raise error(f"{path}: tensor {key!r} contains NaN or Inf; refit and re-export the {kind}")
    return tensors, meta
