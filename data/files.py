"""Every file the project writes goes through here: written beside its destination, then renamed over
it, so a reader (or a process killed half-way) never sees a half-written file. Files get the mode
any new file gets under the umask (0644 usually), not the 0600 of a temporary file; what a killed
write leaves behind (`.NAME.*.tmp`) is removed by `remove_leftovers` before a folder is used again."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class WriteFailed(RuntimeError):
    """A file the file system would not let be written (a full disk, no permission): one line naming
    it; the file itself is as it was before."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: can't be written ({reason}); it is as it was before")


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file in `path`'s folder, flush it to disk, and rename it
    to `path`. On any error (or Ctrl-C) the temporary file is removed and `path` is untouched; an
    error of the file system (ENOSPC, EACCES, ...) is raised as WriteFailed naming `path`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            cause = e
        else:  # torch.save wraps the OSError; Ctrl-C stays Ctrl-C
            cause = (e.__cause__ or e.__context__) if isinstance(e, Exception) else None
        if isinstance(cause, OSError) and cause.errno is not None:
            raise WriteFailed(path, os.strerror(cause.errno)) from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(folder: str | Path, name: str = "*", recursive: bool = False) -> list[Path]:
    """Delete the temporary files that killed atomic writes of `name` left in `folder` (and below it,
    with `recursive`); call it only while no other process writes there. Returns what was removed."""
    pattern = f".{name}.*.tmp"
    found = sorted(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex: the identity of a data file, a model's weights, an adapter."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: str | Path, error: type[Exception] = ValueError, what: str = "file") -> dict:
    """A JSON object read from `path`, or `error` with one line naming the file and what is wrong with
    it (missing, unreadable, not JSON, not an object). `what` names the file in the first case."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found" if not path.exists() else f"{path}: is a folder, not a {what}")
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: can't read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def files_digest(paths) -> str:
    """SHA-256 over several files, each by its name and its bytes' digest, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()


def strict_json(value):
    """`value` with every NaN or infinite float as null, so that results.json is strict JSON."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: numpy would add ".npz" to a bare temporary name
        np.savez_compressed(f, **arrays)
