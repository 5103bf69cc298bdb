"""Files written whole or not at all, and hashed the ways the Hugging Face Hub does.

`atomic_write` is the one way this package replaces a file that someone may be reading
(checkpoints, metrics, hub refs and records): a temporary file in the same folder,
flushed and fsynced, renamed over the target, then the folder fsynced, so a reader (or a
crash) sees the old file or the new one, never a part. `sha256_file` is the LFS object id
and the weights hash shown everywhere; `git_blob_sha1` is the id git gives a file, which
the Hub reports for files stored outside LFS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write `path`'s new content into; it replaces `path` only when the
    block ends without an error (otherwise the temporary file is removed). The file gets
    the permissions a plain `open()` would give (0666 less the umask): a run folder or a
    models folder shared between users stays readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace `path` with `data` (str is written as UTF-8), atomically."""
    with atomic_write(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(CHUNK):
        yield block


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in _chunks(f):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(content: bytes | os.PathLike[str]) -> str:
    """git's object id of a file: sha1 of `blob <size>\\0` and the bytes. `content` is the
    bytes themselves or the path (a `Path`) of a file holding them (read in chunks)."""
    if isinstance(content, str):
        raise TypeError("git_blob_sha1 takes bytes or a Path; a str is ambiguous")
    if isinstance(content, bytes | bytearray):
        h = hashlib.sha1(b"blob %d\0" % len(content), usedforsecurity=False)
        h.update(content)
        return h.hexdigest()
    path = Path(content)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in _chunks(f):
            h.update(block)
    return h.hexdigest()
