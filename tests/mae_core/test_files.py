"""mae_core.files: the one atomic write and the hashes, checked against real peers (git
itself for the blob id) and against a plain open() for the permissions it leaves."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from mae_core.files import atomic_write, git_blob_sha1, sha256_file, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_whole_and_keeps_open_s_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what open() gives under this umask
    target = tmp_path / "sub" / "file.bin"
    write_atomic(target, b"first")
    write_atomic(target, "second")
    assert target.read_bytes() == b"second"
    assert _mode(target) == _mode(plain)
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_hashes_match_git_and_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    by_git = subprocess.run(
        ["git", "hash-object", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_blob_sha1(path) == git_blob_sha1(data) == by_git
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(TypeError, match="ambiguous"):
        git_blob_sha1(str(path))  # type: ignore[arg-type]
