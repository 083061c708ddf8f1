"""Artifact I/O shared by train, calib, export, world and the runtime (torch-free).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# Size caps before parsing. Generous for what jepa-edge writes (a postcard of a
# 4096-dim W is 64 MiB), far below what would exhaust a Jetson's memory.
MAX_POSTCARD_BYTES = 256 * 1024 * 1024  # postcards and probes (.safetensors)
MAX_JSON_BYTES = 16 * 1024 * 1024  # meta.json, engine sidecars, configs
MAX_METADATA_BYTES = 1024 * 1024  # ONNX metadata_props["jepa_edge"] text


class ArtifactError(ValueError):
    """A file that cannot be used as is: missing, oversized, not a regular file, not parseable."""


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
