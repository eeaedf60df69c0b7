"""Small state files of cmover's own (clean-pass records, watcher state): replaced whole, atomically and durably.

A reader sees the old content or the new one, never a torn file, also after a crash: the new content is
written to a temporary file beside the target (``O_NOFOLLOW``, mode 0600), ``fsync``-ed, renamed over the
target, and the directory is ``fsync``-ed so that the rename itself survives a power loss.
"""

from __future__ import annotations

import os


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` (a creation or a rename in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file ``path`` by ``data`` atomically and durably (OSError when it cannot be written)."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory or ".")


def names(directory: str | os.PathLike[str], prefix: str, suffix: str) -> list[str]:
    """The names in ``directory`` that start with ``prefix`` and end with ``suffix``, in no order; none when the
    directory does not exist (yet)."""
    try:
        return [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(suffix)]
    except FileNotFoundError:
        return []
