"""Model repos on disk, in the `huggingface_hub` cache layout, with atomic commits.

    root/<ns>/<name>/
        blobs/<sha256>                 file contents by sha256; rewritten only to repair damage
        snapshots/<commit>/<path>      relative symlinks into blobs/: a loadable folder per commit
        refs/<branch>                  the branch's head commit (moved last, atomically)
        commits/<commit>.json          parent, message, date, and every file's size and hashes
        repo.json                      created_at, private
    root/.trash/                       repos being deleted (renamed here first, then removed)

This is the embedded hub (`models/`): `local:ns/name@rev` reads it, `mae push
--to-models-dir` and the service's hub endpoints write it. A commit writes and verifies its
blobs first, then the snapshot folder, then its record, and moves the branch ref last, so
a crash at any point leaves the previous revision intact, and a revision never changes
once written; what a writer killed mid-commit leaves (a temporary file or folder) is
cleared by the next commit. `verify_revision` checks a revision's files against their
record (loading a `local:` model does, so a damaged blob is refused, never used as
weights), and a stored object is re-hashed before an upload is skipped as already done,
so pushing the same files again repairs a damaged blob. Deleting a repo renames its
folder into `.trash/` (one atomic step: the repo is there whole or gone) and only then
removes the files; deleting a branch removes its ref and keeps its commits, still
reachable by sha. Names and paths are checked before they touch the file system: nothing
can resolve outside the root.

One concept, kept whole (about 650 lines): the records, the naming rules and the
commit and delete protocols are read together when the store's guarantees are checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from .errors import MAEError
from .files import CHUNK, atomic_write, git_blob_sha1, sha256_file, write_atomic

REPO_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*/[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$"
)
BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Weights are reported as LFS files (sha256 ETag, `lfs` metadata) however they were sent.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".msgpack",
    ".h5",
    ".npz",
    ".gguf",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
MAX_PATH = 1000
DEFAULT_BRANCH = "main"
TRASH = ".trash"  # not a valid namespace (ids start with a letter or digit): never a repo
# A blob's temporary file untouched this long belongs to a writer that died: an LFS upload
# writes its own outside the repo's lock, and keeps it fresh while the bytes arrive.
STALE_UPLOAD_S = 3600
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()


class HubError(MAEError):
    """A request the store refuses: HTTP status, the Hub's X-Error-Code, a message."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RepoNotFound(HubError):
    status, code = 404, "RepoNotFound"


class RevisionNotFound(HubError):
    status, code = 404, "RevisionNotFound"


class EntryNotFound(HubError):
    status, code = 404, "EntryNotFound"


class Conflict(HubError):
    status, code = 409, "Conflict"


class StaleParent(HubError):
    status, code = 412, "PreconditionFailed"


class DamagedFile(HubError):
    """A stored file whose bytes no longer match its commit record (size or sha256), or
    that is missing: the models folder was damaged on disk."""

    status, code = 500, "DamagedFile"


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    blob_id: str  # git blob sha1 of the content, or of the LFS pointer for LFS files
    lfs: bool

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_id

    def pointer(self) -> str:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    date: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files.values()]
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Commit:
        data = json.loads(text)
        files = {f["path"]: FileEntry(**f) for f in data.pop("files")}
        return cls(**data, files=files)


REPO_ID_RULE = "'<namespace>/<name>' (letters, digits, '-', '_', and '.' between them)"


def is_repo_id(text: object) -> bool:
    """The one rule for repo ids, here and in model ids: `<namespace>/<name>`, each part
    letters, digits, '-' and '_' with single '.' between them (no '..', which could climb
    out of a folder), at most 200 characters, not ending in '.git'."""
    return (
        isinstance(text, str)
        and len(text) <= 200
        and REPO_RE.fullmatch(text) is not None
        and not text.endswith(".git")
    )


def check_repo_id(repo_id: str) -> str:
    if not is_repo_id(repo_id):
        raise HubError(f"invalid repo id {repo_id!r}: use {REPO_ID_RULE}")
    return repo_id


def check_branch(branch: str) -> str:
    if not BRANCH_RE.fullmatch(branch or ""):
        raise HubError(f"invalid branch name {branch!r}")
    return branch


def check_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no '.', '..', empty or hidden-git parts."""
    bad = (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or any(ord(c) < 32 or c == "\x7f" for c in path)
    )
    parts = path.split("/") if isinstance(path, str) else []
    if bad or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HubError(f"invalid file path {path!r}")
    return path


class RepoStore:
    """The repos under `root`. Safe for concurrent use by threads and processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths --------------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path:
        return self.root / check_repo_id(repo_id)

    def _existing(self, repo_id: str) -> Path:
        repo = self.repo_dir(repo_id)
        if not (repo / "snapshots").is_dir() and not (repo / "repo.json").is_file():
            raise RepoNotFound(f"repository {repo_id} not found")
        return repo

    def _lock(self, repo: Path) -> FileLock:
        repo.mkdir(parents=True, exist_ok=True)
        return FileLock(repo / ".lock")

    def _inside(self, path: Path) -> Path:
        """`path` resolved, refused unless it stays under the root (symlinks included)."""
        real, root = path.resolve(), self.root.resolve()
        if not real.is_relative_to(root):
            raise EntryNotFound(f"{path.name} resolves outside the models folder")
        return real

    # -- repos --------------------------------------------------------------------------
    def exists(self, repo_id: str) -> bool:
        try:
            self._existing(repo_id)
        except RepoNotFound:
            return False
        return True

    def create_repo(self, repo_id: str, private: bool = False) -> bool:
        """Create an empty repo (no commit yet); False if it already exists."""
        repo = self.repo_dir(repo_id)
        with self._lock(repo):
            if self.exists(repo_id):
                return False
            for sub in ("blobs", "snapshots", "refs", "commits"):
                (repo / sub).mkdir(parents=True, exist_ok=True)
            meta = {"created_at": _now(), "private": bool(private)}
            write_atomic(repo / "repo.json", json.dumps(meta).encode())
        # As on the Hub, a new repo starts with one commit: main exists from the start.
        self.commit(
            repo_id, "main", add=[(".gitattributes", GITATTRIBUTES)], summary="initial commit"
        )
        return True

    def meta(self, repo_id: str) -> dict[str, Any]:
        repo = self._existing(repo_id)
        try:
            return json.loads((repo / "repo.json").read_text())
        except FileNotFoundError:  # a repo copied in by hand: public, dated by its folder
            return {"created_at": _iso(repo.stat().st_mtime), "private": False}

    def repos(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for repo in sorted(self.root.glob("*/*")):
            name = f"{repo.parent.name}/{repo.name}"
            if is_repo_id(name) and (
                (repo / "snapshots").is_dir() or (repo / "repo.json").is_file()
            ):
                found.append(name)
        return found

    def branches(self, repo_id: str) -> dict[str, str]:
        refs = self._existing(repo_id) / "refs"
        if not refs.is_dir():
            return {}
        return {
            p.name: p.read_text().strip()
            for p in sorted(refs.iterdir())
            if BRANCH_RE.fullmatch(p.name)
        }

    # -- reading ------------------------------------------------------------------------
    def resolve_revision(self, repo_id: str, revision: str | None = None) -> str:
        """A branch name, or a commit sha or unique prefix -> the full commit sha."""
        repo = self._existing(repo_id)
        rev = revision or DEFAULT_BRANCH
        branches = self.branches(repo_id)
        if rev in branches:
            return branches[rev]
        if SHA_RE.fullmatch(rev):
            hits = [
                p.name
                for p in (repo / "snapshots").iterdir()
                if p.name.startswith(rev) and SHA_RE.fullmatch(p.name)
            ]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise RevisionNotFound(f"revision {rev} of {repo_id} is ambiguous")
        raise RevisionNotFound(
            f"{repo_id} has no revision {rev!r}"
            + (f" (branches: {', '.join(branches)})" if branches else " (it has no commits yet)")
        )

    def commit_info(self, repo_id: str, oid: str) -> Commit:
        repo = self._existing(repo_id)
        if not SHA_RE.fullmatch(oid):  # checked before it becomes part of a path
            raise RevisionNotFound(f"{repo_id} has no commit {oid!r}")
        record = repo / "commits" / f"{oid}.json"
        if record.is_file():
            return Commit.from_json(record.read_text())
        snapshot = repo / "snapshots" / oid
        if snapshot.is_dir():
            return self._describe_snapshot(snapshot, oid)
        raise RevisionNotFound(f"{repo_id} has no commit {oid}")

    def _describe_snapshot(self, snapshot: Path, oid: str) -> Commit:
        """A commit record for a snapshot written without one (copied in by hand)."""
        files = {}
        for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            rel = path.relative_to(snapshot).as_posix()
            data = self._inside(path).read_bytes()
            files[rel] = _entry(rel, data, lfs=None)
        return Commit(oid, None, "", "", _iso(snapshot.stat().st_mtime), files)

    def open_file(self, repo_id: str, oid: str, path: str) -> tuple[FileEntry, Path]:
        """The entry of `path` at commit `oid` and the blob file holding its bytes."""
        check_path(path)
        commit = self.commit_info(repo_id, oid)
        entry = commit.files.get(path)
        if entry is None:
            raise EntryNotFound(f"{path} not found in {repo_id} at {oid[:12]}")
        blob = self._inside(self._existing(repo_id) / "snapshots" / oid / path)
        return entry, blob

    def has_blob(self, repo_id: str, sha256: str, size: int) -> bool:
        """Whether the object is stored whole: its size, and its bytes hashed (once per
        version of the file). A damaged blob counts as missing, so the LFS batch asks for
        it again and the upload replaces it."""
        if self.blob_size(repo_id, sha256) != size:
            return False
        try:
            return _content_sha256(self._existing(repo_id) / "blobs" / sha256) == sha256
        except FileNotFoundError:  # removed meanwhile (the repo deleted)
            return False

    def blob_size(self, repo_id: str, sha256: str) -> int | None:
        """The size of the object `sha256` stored in this repo; None when it holds none."""
        if SHA256_RE.fullmatch(sha256) is None:  # checked before it becomes part of a path
            return None
        blob = self._existing(repo_id) / "blobs" / sha256
        return blob.stat().st_size if blob.is_file() else None

    # -- writing ------------------------------------------------------------------------
    def put_blob(
        self, repo_id: str, sha256: str, size: int, stream: IO[bytes] | Iterable[bytes]
    ) -> None:
        """Store an LFS object: streamed to a temporary file, its size and sha256 checked,
        then renamed into blobs/. A mismatch stores nothing."""
        if not SHA256_RE.fullmatch(sha256) or size < 0:
            raise HubError(f"invalid LFS object {sha256!r} of size {size}")
        blobs = self._existing(repo_id) / "blobs"
        blobs.mkdir(exist_ok=True)
        digest, written = hashlib.sha256(), 0
        chunks = iter(lambda: stream.read(CHUNK), b"") if hasattr(stream, "read") else stream
        with atomic_write(blobs / sha256) as f:  # an error below leaves blobs/ as it was
            for chunk in chunks:
                written += len(chunk)
                if written > size:
                    raise HubError(
                        f"LFS object {sha256[:12]} is larger than the declared {size} bytes"
                    )
                digest.update(chunk)
                f.write(chunk)
            if written != size or digest.hexdigest() != sha256:
                raise HubError(
                    f"LFS object does not match its declaration: got {written} bytes with sha256 "
                    f"{digest.hexdigest()[:12]}, expected {size} bytes with {sha256[:12]}"
                )

    def create_branch(self, repo_id: str, branch: str, starting_point: str | None = None) -> str:
        repo = self._existing(repo_id)
        check_branch(branch)
        with self._lock(repo):
            if branch in self.branches(repo_id):
                raise Conflict(f"branch {branch} already exists in {repo_id}")
            oid = (
                self.resolve_revision(repo_id, starting_point)
                if (starting_point or self.branches(repo_id))
                else ""
            )
            if not oid:
                raise RevisionNotFound(f"{repo_id} has no commit to branch from")
            write_atomic(repo / "refs" / branch, oid.encode())
        return oid

    def commit(
        self,
        repo_id: str,
        branch: str,
        *,
        add: Iterable[tuple[str, bytes]] = (),
        add_lfs: Iterable[tuple[str, str, int | None]] = (),
        delete: Iterable[str] = (),
        summary: str = "",
        description: str = "",
        parent_commit: str | None = None,
    ) -> str:
        """One atomic commit on `branch` (created when the repo has no commit yet):
        `add` (path, bytes), `add_lfs` (path, sha256, size) of objects already uploaded (a
        size of None takes the stored object's: a copy names the object by its sha256 only),
        `delete` paths (a folder path deletes what is under it). Refused with StaleParent
        when `parent_commit` is not the branch head. Returns the new commit sha."""
        repo = self._existing(repo_id)
        check_branch(branch)
        add, add_lfs, delete = list(add), list(add_lfs), list(delete)
        for path in [p for p, _ in add] + [p for p, _, _ in add_lfs] + delete:
            check_path(path.rstrip("/") if path.endswith("/") else path)
        with self._lock(repo):
            branches = self.branches(repo_id)
            head = branches.get(branch)
            if head is None and branches:
                raise RevisionNotFound(f"{repo_id} has no branch {branch}: create it first")
            if parent_commit and parent_commit != head:
                raise StaleParent(
                    f"parent commit {parent_commit[:12]} is not the head of {branch} "
                    f"({(head or 'none')[:12]}): fetch the new revision and commit again"
                )
            files = dict(self.commit_info(repo_id, head).files) if head else {}
            for path in delete:
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p == path.rstrip("/") or p.startswith(prefix)]
                if not gone:
                    raise EntryNotFound(f"cannot delete {path}: not in {repo_id}@{branch}")
                for p in gone:
                    del files[p]
            _clear_leftovers(repo)
            for path, data in add:
                entry = _entry(path, data, lfs=None)
                _store_blob(repo / "blobs" / entry.sha256, data)
                files[path] = entry
            for path, sha256, declared in add_lfs:
                size = self.blob_size(repo_id, sha256)
                if size is None or declared not in (None, size):
                    said = "" if declared is None else f" ({declared} bytes)"
                    raise HubError(f"{path}: LFS object {sha256[:12]}{said} was not uploaded")
                pointer = FileEntry(path, size, sha256, "", True).pointer().encode()
                files[path] = FileEntry(path, size, sha256, git_blob_sha1(pointer), True)
            self._check_no_file_dir_clash(files)
            oid = _commit_oid(head, branch, files, summary, description)
            record = Commit(oid, head, summary, description, _now(), files)
            self._write_snapshot(repo, record)
            write_atomic(repo / "commits" / f"{oid}.json", record.to_json().encode())
            write_atomic(repo / "refs" / branch, oid.encode())  # the commit exists from here on
        return oid

    @staticmethod
    def _check_no_file_dir_clash(files: dict[str, FileEntry]) -> None:
        dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        clash = sorted(dirs & set(files))
        if clash:
            raise HubError(f"{clash[0]} would be both a file and a folder")

    def _write_snapshot(self, repo: Path, record: Commit) -> None:
        final = repo / "snapshots" / record.oid
        if final.is_dir():
            return
        tmp = Path(tempfile.mkdtemp(dir=repo / "snapshots", prefix=".tmp-"))
        try:
            for entry in record.files.values():
                link = tmp / entry.path
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = entry.path.count("/") + 2  # snapshots/<oid>/<dirs...>/file -> repo/
                link.symlink_to(Path(*[".."] * depth, "blobs", entry.sha256))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def verify_revision(self, repo_id: str, oid: str) -> int:
        """Check each file of commit `oid` against its record: the snapshot's link leads to
        a file inside the root with the recorded size and sha256. Raises DamagedFile for the
        first that does not, naming it and the fix; returns the number of files checked.
        A file's hash is remembered until the file changes, so checking again costs a stat.
        A snapshot copied in by hand has no record to check against: 0."""
        repo = self._existing(repo_id)
        commit = self.commit_info(repo_id, oid)  # checks `oid` before it becomes a path
        if not (repo / "commits" / f"{oid}.json").is_file():
            return 0
        fix = "push the model again (that rewrites it) or restore the models folder from a backup"
        where = f"{repo_id}@{oid[:12]}"
        for entry in sorted(commit.files.values(), key=lambda e: e.path):
            link = repo / "snapshots" / oid / entry.path
            try:
                stored = self._inside(link)
                size = stored.stat().st_size
                got = _content_sha256(stored) if size == entry.size else None
            except (OSError, EntryNotFound):
                raise DamagedFile(
                    f"{where}: {entry.path} is missing from the models folder "
                    f"(no {link.relative_to(self.root)} or no blob where it links): {fix}"
                ) from None
            if got != entry.sha256:
                found = f"sha256 {got[:12]}..." if got else f"{size} bytes"
                raise DamagedFile(
                    f"{where}: {entry.path} does not match its commit record ({entry.size} "
                    f"bytes, sha256 {entry.sha256[:12]}...): the stored file {stored} has "
                    f"{found}; the models folder is damaged: {fix}"
                )
        return len(commit.files)

    def history(self, repo_id: str, oid: str, limit: int) -> tuple[list[Commit], str | None]:
        """Up to `limit` commits from `oid` back along the parents (newest first), and the
        parent of the last one, where the next page starts (None at the first commit)."""
        out: list[Commit] = []
        next_oid: str | None = oid
        while next_oid and len(out) < limit:
            commit = self.commit_info(repo_id, next_oid)
            out.append(commit)
            next_oid = commit.parent
        return out, next_oid

    # -- deleting -----------------------------------------------------------------------
    def delete_branch(self, repo_id: str, branch: str) -> str:
        """Remove `branch`'s ref; its commits stay, reachable by sha. The default branch and
        a repo's last branch are refused. Returns the commit the branch pointed at."""
        repo = self._existing(repo_id)
        check_branch(branch)
        with self._lock(repo):
            branches = self.branches(repo_id)
            if branch not in branches:
                raise RevisionNotFound(
                    f"{repo_id} has no branch {branch!r}"
                    + (f" (branches: {', '.join(branches)})" if branches else "")
                )
            if branch == DEFAULT_BRANCH:
                raise Conflict(f"{branch} is the default branch of {repo_id}: it cannot be deleted")
            if len(branches) == 1:
                raise Conflict(f"{branch} is the last branch of {repo_id}: it cannot be deleted")
            (repo / "refs" / branch).unlink()
        return branches[branch]

    def delete_repo(self, repo_id: str) -> None:
        """Delete a repo whole: under its lock (no commit in flight), its folder is renamed
        into `.trash/` in one step, so a crash leaves it either complete or gone from every
        listing; the files are removed after. Leftovers of an interrupted delete go too."""
        repo = self._existing(repo_id)
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        with self._lock(repo):
            self._existing(repo_id)  # deleted meanwhile: RepoNotFound
            grave = Path(tempfile.mkdtemp(dir=trash, prefix="repo-"))
            os.rename(repo, grave / "repo")  # the delete happens here
        self.empty_trash()
        with contextlib.suppress(OSError):
            repo.parent.rmdir()  # the namespace folder, when that was its last repo

    def empty_trash(self) -> None:
        """Remove what deletes left in `.trash/`. Safe at any time: only repos already gone
        from every listing are there, so two deletes may well clear each other's."""
        trash = self.root / TRASH
        if trash.is_dir():
            for grave in trash.iterdir():
                shutil.rmtree(grave, ignore_errors=True)

    def blob_paths(self, repo_id: str) -> Iterator[Path]:
        yield from (self._existing(repo_id) / "blobs").glob("[0-9a-f]" * 8 + "*")


# -- helpers ------------------------------------------------------------------------------
def _entry(path: str, data: bytes, lfs: bool | None) -> FileEntry:
    sha256 = hashlib.sha256(data).hexdigest()
    if lfs is None:
        lfs = path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
    entry = FileEntry(path, len(data), sha256, git_blob_sha1(data), lfs)
    if lfs:
        entry = FileEntry(path, len(data), sha256, git_blob_sha1(entry.pointer().encode()), True)
    return entry


def _store_blob(path: Path, data: bytes) -> None:
    """Write a blob unless it is there whole: content-addressed, the same name is the same
    bytes, unless the file was damaged on disk, which this write then repairs."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == len(data) and _content_sha256(path) == path.name:
            return
    write_atomic(path, data)


_HASHED: dict[tuple[int, int, int, int, int], str] = {}  # a file's version -> its sha256
_HASHED_MAX = 100_000


def _content_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, remembered for this version of the file (device,
    inode, size, modification and change times): a blob is hashed once per process until
    something writes to it, so verifying a revision again, or the LFS batch asking about
    an object, costs a stat."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _HASHED.get(key)
    if digest is None:
        digest = sha256_file(path)
        if len(_HASHED) >= _HASHED_MAX:
            _HASHED.clear()
        _HASHED[key] = digest
    return digest


def _is_temporary(name: str) -> bool:
    """The names this store's writers give their work in progress: `.tmp-*` snapshot
    folders, `.<name>.<hex>.tmp` files (`atomic_write`)."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))


def _clear_leftovers(repo: Path) -> None:
    """Remove the work in progress of writers that died (a process killed mid-commit).
    Call under the repo's lock: snapshot folders, commit records and refs are only written
    under it, so any temporary of theirs found now is dead. Blob temporaries go only when
    untouched for STALE_UPLOAD_S: an LFS upload writes its own without the lock."""
    now = time.time()
    for sub in ("snapshots", "commits", "refs", "blobs"):
        folder = repo / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not _is_temporary(p.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if sub == "blobs" and now - p.lstat().st_mtime < STALE_UPLOAD_S:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()


def _commit_oid(
    parent: str | None, branch: str, files: dict[str, FileEntry], summary: str, description: str
) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    h.update(json.dumps([parent, branch, summary, description, time.time_ns()]).encode())
    for path in sorted(files):
        h.update(f"{path}\0{files[path].sha256}\0".encode())
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
