"""Writing a file atomically: a reader (or a crash) sees the old file or the new one, never
half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: Path,
    write: Callable[[IO[Any]], object],
    mode: str = "wb",
    *,
    prefix: str | None = None,
    tmp: Path | None = None,
) -> None:
    """Call `write` on a temporary file opened with `mode` in `path`'s directory (created if
    needed), flush and fsync it, then rename it over `path`. On any failure the temporary
    file is removed, `path` is left as it was and the error propagates.

    The temporary file is `tmp` when given, else a fresh `<prefix><random>.tmp` from
    `tempfile.mkstemp`, `prefix` defaulting to `.<name of path>.`. Either way the file gets
    the permissions the umask gives a new file (as `open` does; `mkstemp` alone would make
    it owner-only), so that colleagues can read a shared results directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}." if prefix is None else prefix, suffix=".tmp"
        )
        tmp = Path(name)
        os.fchmod(fd, 0o666 & ~_umask())
    else:
        fd = None
    try:
        with open(tmp, mode) if fd is None else os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
