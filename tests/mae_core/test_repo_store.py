"""The embedded hub's RepoStore on real files: concurrent commits from threads and
processes, stale parents, crashes part-way through a commit, an upload or a delete, the
repo-id and path rules, revision lookup, history, and deleting branches and repos. The HTTP
view of the same store is tests/service/test_hub.py (and test_hub_manage.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mae_core.repo_store as repo_store
from mae_core.hub import parse_model_id
from mae_core.repo_store import (
    Conflict,
    DamagedFile,
    EntryNotFound,
    FileEntry,
    HubError,
    RepoNotFound,
    RepoStore,
    RevisionNotFound,
    StaleParent,
    check_repo_id,
    is_repo_id,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "team/store"

# A committer in another process: imports only the store (no torch, ~0.1 s), says it is
# ready, waits for the shared start signal, commits `n` distinct files, prints the shas.
WORKER = """
import json, sys, time
from pathlib import Path
from mae_core.repo_store import RepoStore
root, name, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
(go.parent / f"ready-{name}").touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.001)
store = RepoStore(root)
print(json.dumps([
    store.commit("team/store", "main", add=[(f"{name}/{i}.txt", f"{name} {i}".encode())],
                 summary=f"{name} {i}")
    for i in range(n)
]))
"""


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    """A store with one repo holding only its initial commit on main."""
    s = RepoStore(tmp_path / "models")
    assert s.create_repo(REPO)
    return s


def listing(folder: Path) -> set[str]:
    """Every name under `folder`, hidden temporaries included."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def history(store: RepoStore, head: str) -> list[str]:
    """The commits from `head` back to the root, following parent links."""
    chain, oid = [], head
    while oid is not None:
        assert oid not in chain, f"{oid} is its own ancestor"
        chain.append(oid)
        oid = store.commit_info(REPO, oid).parent
    return chain


def snapshot_bytes(store: RepoStore, oid: str) -> dict[str, bytes]:
    snap = store.repo_dir(REPO) / "snapshots" / oid
    return {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}


def check_snapshot_loadable(store: RepoStore, oid: str) -> None:
    """Each file of the snapshot is a symlink into blobs/ whose bytes hash to the sha256
    its commit records, and the snapshot holds exactly the commit's files."""
    repo = store.repo_dir(REPO)
    snap, blobs = repo / "snapshots" / oid, (repo / "blobs").resolve()
    record = store.commit_info(REPO, oid)
    found = set()
    for link in snap.rglob("*"):
        if link.is_dir() and not link.is_symlink():
            continue
        rel = link.relative_to(snap).as_posix()
        found.add(rel)
        assert link.is_symlink(), f"{oid[:8]}/{rel} is not a symlink"
        target = link.resolve()
        assert target.parent == blobs, f"{oid[:8]}/{rel} points at {target}"
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert digest == target.name == record.files[rel].sha256, f"{oid[:8]}/{rel}"
    assert found == set(record.files), oid


def temporaries(repo: Path) -> list[str]:
    """Hidden temporary files or folders left in blobs/, snapshots/, refs/ or commits/."""
    return [
        p.relative_to(repo).as_posix()
        for sub in ("blobs", "snapshots", "refs", "commits")
        for p in (repo / sub).iterdir()
        if p.name.startswith(".")
    ]


# -- concurrency ----------------------------------------------------------------------------
def test_concurrent_commits_from_threads_and_processes_form_one_chain(
    store: RepoStore, tmp_path: Path
) -> None:
    initial = store.resolve_revision(REPO, "main")
    go = tmp_path / "go"
    per_worker = 3
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", WORKER, str(store.root), name, str(per_worker), str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("proc0", "proc1")
    }
    try:
        # Start everyone together, so the processes really race the threads.
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready-{n}").exists() for n in procs):
            assert time.monotonic() < deadline, "worker processes did not start"
            assert all(p.poll() is None for p in procs.values()), "a worker process died"
            time.sleep(0.005)
        start = threading.Event()
        results: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def commit_from_thread(name: str) -> None:
            start.wait()
            try:
                results[name] = [
                    store.commit(
                        REPO, "main", add=[(f"{name}/{i}.txt", f"{name} {i}".encode())],
                        summary=f"{name} {i}", parent_commit=None,
                    )
                    for i in range(per_worker)
                ]  # fmt: skip
            except BaseException as e:  # reported below, in the test's own thread
                errors.append(e)

        threads = [
            threading.Thread(target=commit_from_thread, args=(f"thread{i}",)) for i in range(3)
        ]
        for t in threads:
            t.start()
        go.touch()
        start.set()
        for t in threads:
            t.join(timeout=60)
        for name, p in procs.items():
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, f"{name}: {err}"
            results[name] = json.loads(out)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert not errors, errors
    assert sorted(results) == ["proc0", "proc1", "thread0", "thread1", "thread2"]

    returned = [oid for shas in results.values() for oid in shas]
    assert len(returned) == 5 * per_worker and len(set(returned)) == len(returned)
    head = store.resolve_revision(REPO, "main")
    chain = history(store, head)
    # One chain back to the initial commit, holding every returned commit exactly once.
    assert chain[-1] == initial
    assert sorted(chain[:-1]) == sorted(returned)
    order = {oid: i for i, oid in enumerate(reversed(chain))}
    for name, shas in results.items():  # each worker's commits land in the order it made them
        assert [order[o] for o in shas] == sorted(order[o] for o in shas), name
    # No lost update: each commit is its parent plus exactly the one file it added.
    for oid in chain[:-1]:
        record = store.commit_info(REPO, oid)
        added = set(record.files) - set(store.commit_info(REPO, record.parent).files)
        assert len(added) == 1 and len(record.files) == order[oid] + 1, oid
    expected = {
        f"{name}/{i}.txt": f"{name} {i}".encode() for name in results for i in range(per_worker)
    }
    head_files = snapshot_bytes(store, head)
    assert set(head_files) == {*expected, ".gitattributes"}
    assert {k: v for k, v in head_files.items() if k in expected} == expected
    snapshots = store.repo_dir(REPO) / "snapshots"
    assert {p.name for p in snapshots.iterdir()} == set(chain)
    for oid in chain:
        check_snapshot_loadable(store, oid)
    assert temporaries(store.repo_dir(REPO)) == []


# -- stale parent ----------------------------------------------------------------------------
def test_a_stale_parent_is_refused_and_changes_nothing(store: RepoStore) -> None:
    repo = store.repo_dir(REPO)
    before_a = store.resolve_revision(REPO, "main")
    a = store.commit(REPO, "main", add=[("a.txt", b"a")], parent_commit=before_a)
    assert store.commit_info(REPO, a).parent == before_a
    state = {sub: listing(repo / sub) for sub in ("blobs", "snapshots", "refs", "commits")}

    with pytest.raises(StaleParent) as refused:
        store.commit(REPO, "main", add=[("b.txt", b"b")], parent_commit=before_a)
    assert refused.value.status == 412 and refused.value.code == "PreconditionFailed"
    assert before_a[:12] in refused.value.message and a[:12] in refused.value.message
    assert store.resolve_revision(REPO, "main") == a
    assert {sub: listing(repo / sub) for sub in state} == state
    # The same commit against the real head goes through.
    b = store.commit(REPO, "main", add=[("b.txt", b"b")], parent_commit=a)
    assert store.commit_info(REPO, b).parent == a and store.resolve_revision(REPO, "main") == b


# -- crashes ---------------------------------------------------------------------------------
def test_a_crash_before_the_ref_moves_keeps_the_previous_revision(
    store: RepoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = store.repo_dir(REPO)
    old = store.commit(REPO, "main", add=[("weights.bin", b"\x00" * 64), ("cfg/a.json", b"{}")])
    old_files = snapshot_bytes(store, old)
    old_record = (repo / "commits" / f"{old}.json").read_bytes()
    real_write = repo_store.write_atomic

    def crash_on_ref(path: str | os.PathLike[str], data: bytes | str) -> None:
        if Path(path).parent.name == "refs":  # the last step: snapshot and record are written
            raise OSError(errno.EIO, "simulated crash before the ref moved", str(path))
        real_write(path, data)

    with monkeypatch.context() as m:
        m.setattr(repo_store, "write_atomic", crash_on_ref)
        with pytest.raises(OSError, match="simulated crash"):
            store.commit(REPO, "main", add=[("lost.txt", b"never published")])
    orphans = {p.name for p in (repo / "snapshots").iterdir()} - set(history(store, old))
    assert len(orphans) == 1  # the crash really happened after the snapshot was written

    assert store.resolve_revision(REPO, "main") == old
    assert snapshot_bytes(store, old) == old_files
    assert (repo / "commits" / f"{old}.json").read_bytes() == old_record
    check_snapshot_loadable(store, old)
    fresh = RepoStore(store.root)
    assert fresh.resolve_revision(REPO, "main") == old and fresh.branches(REPO) == {"main": old}
    assert temporaries(repo) == []

    # No clean-up needed: the next commit builds on the old head, without the lost file.
    new = store.commit(REPO, "main", add=[("next.txt", b"next")])
    assert store.commit_info(REPO, new).parent == old
    assert store.resolve_revision(REPO, "main") == new
    assert set(snapshot_bytes(store, new)) == {*old_files, "next.txt"}
    assert orphans.isdisjoint(history(store, new))
    check_snapshot_loadable(store, new)


def test_a_crash_while_writing_a_blob_leaves_no_partial_file(
    store: RepoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = store.repo_dir(REPO)
    head = store.resolve_revision(REPO, "main")
    state = {sub: listing(repo / sub) for sub in ("blobs", "snapshots", "refs", "commits")}
    seen_mid_write: list[str] = []

    def disk_full(fd: int) -> None:
        # The bytes are in the temporary file; the fsync before its rename fails.
        seen_mid_write.extend(sorted(listing(repo / "blobs") - state["blobs"]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            store.commit(REPO, "main", add=[("big.bin", b"x" * 4096)])
    sha = hashlib.sha256(b"x" * 4096).hexdigest()
    assert len(seen_mid_write) == 1 and seen_mid_write[0].startswith(f".{sha}.")
    assert {sub: listing(repo / sub) for sub in state} == state
    assert store.resolve_revision(REPO, "main") == head

    # An upload whose stream breaks after its first chunk: the same, through put_blob.
    payload = os.urandom(3000)
    sha = hashlib.sha256(payload).hexdigest()

    def dropped() -> Iterator[bytes]:
        yield payload[:1000]
        seen_mid_write.extend(sorted(listing(repo / "blobs") - state["blobs"]))
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_blob(REPO, sha, len(payload), dropped())
    assert len(seen_mid_write) == 2 and seen_mid_write[1].startswith(f".{sha}.")
    assert listing(repo / "blobs") == state["blobs"]
    assert not store.has_blob(REPO, sha, len(payload))


# -- uploads ---------------------------------------------------------------------------------
PAYLOAD = b"lfs object " * 300
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.mark.parametrize(
    ("sha256", "size", "message"),
    [
        (PAYLOAD_SHA, len(PAYLOAD) + 1, r"got 3300 bytes .* expected 3301 bytes"),
        (PAYLOAD_SHA, len(PAYLOAD) - 1, "larger than the declared 3299 bytes"),
        (hashlib.sha256(b"other").hexdigest(), len(PAYLOAD), "does not match its declaration"),
        ("NOT-A-SHA", len(PAYLOAD), "invalid LFS object"),
    ],
    ids=["too-short", "too-long", "wrong-sha", "malformed-sha"],
)
def test_put_blob_with_a_wrong_declaration_stores_nothing(
    store: RepoStore, sha256: str, size: int, message: str
) -> None:
    blobs = store.repo_dir(REPO) / "blobs"
    before = listing(blobs)
    with pytest.raises(HubError, match=message) as refused:
        store.put_blob(REPO, sha256, size, [PAYLOAD[:1000], PAYLOAD[1000:]])
    assert refused.value.status == 400
    assert listing(blobs) == before
    assert not store.has_blob(REPO, PAYLOAD_SHA, len(PAYLOAD))
    # The right declaration of the same bytes is stored, from a file-like stream too.
    with (blobs.parent / "upload").open("wb+") as f:
        f.write(PAYLOAD)
        f.seek(0)
        store.put_blob(REPO, PAYLOAD_SHA, len(PAYLOAD), f)
    assert listing(blobs) == before | {PAYLOAD_SHA}
    assert (blobs / PAYLOAD_SHA).read_bytes() == PAYLOAD


def test_an_lfs_file_without_a_size_takes_the_stored_objects(store: RepoStore) -> None:
    """A copy names the object by its sha256 only: it must be in the repo already."""
    store.put_blob(REPO, PAYLOAD_SHA, len(PAYLOAD), [PAYLOAD])
    first = store.commit(REPO, "main", add_lfs=[("w.bin", PAYLOAD_SHA, len(PAYLOAD))])
    copy = store.commit(REPO, "main", add_lfs=[("copy/w.bin", PAYLOAD_SHA, None)])
    files = store.commit_info(REPO, copy).files
    assert files["copy/w.bin"] == FileEntry(
        "copy/w.bin", len(PAYLOAD), PAYLOAD_SHA, files["w.bin"].blob_id, True
    )
    entry, blob = store.open_file(REPO, copy, "copy/w.bin")
    assert blob.read_bytes() == PAYLOAD and entry.size == len(PAYLOAD)
    check_snapshot_loadable(store, copy)
    # an object the repo does not hold, with or without a size, or a size that is not the
    # stored one: refused, and main stays where it was
    other = hashlib.sha256(b"never uploaded").hexdigest()
    for sha256, size, said in (
        (other, None, f"LFS object {other[:12]} was not uploaded"),
        (other, 14, f"LFS object {other[:12]} (14 bytes) was not uploaded"),
        (PAYLOAD_SHA, len(PAYLOAD) + 1, f"({len(PAYLOAD) + 1} bytes) was not uploaded"),
        ("../../x", None, "was not uploaded"),
    ):
        with pytest.raises(HubError, match=re.escape(said)):
            store.commit(REPO, "main", add_lfs=[("x.bin", sha256, size)])
    assert store.resolve_revision(REPO, "main") == copy
    assert store.commit_info(REPO, copy).parent == first


# -- damage on disk --------------------------------------------------------------------------
@pytest.mark.parametrize("harm", ["flipped", "truncated", "missing"])
def test_a_damaged_blob_is_named_by_verify_revision_and_a_new_upload_repairs_it(
    store: RepoStore, harm: str
) -> None:
    weights = os.urandom(4096)
    oid = store.commit(REPO, "main", add=[("model.safetensors", weights), ("config.json", b"{}")])
    assert store.verify_revision(REPO, oid) == 3
    blob = store.repo_dir(REPO) / "blobs" / hashlib.sha256(weights).hexdigest()
    assert store.has_blob(REPO, blob.name, len(weights))
    if harm == "flipped":  # same size, one bit: only the hash tells
        blob.write_bytes(weights[:100] + bytes([weights[100] ^ 1]) + weights[101:])
    elif harm == "truncated":
        blob.write_bytes(weights[:-1])
    else:
        blob.unlink()
    with pytest.raises(DamagedFile) as found:
        store.verify_revision(REPO, oid)
    message = found.value.message
    said = "is missing from the models folder" if harm == "missing" else "does not match its commit"
    assert message.startswith(f"{REPO}@{oid[:12]}: model.safetensors {said}"), message
    assert "push the model again" in message and "\n" not in message
    # The LFS batch counts the object as not stored, so a client sends it again; that
    # upload (or an inline commit of the same bytes) rewrites the blob, and every revision
    # linking to it is whole again.
    assert not store.has_blob(REPO, blob.name, len(weights))
    if harm == "truncated":
        store.put_blob(REPO, blob.name, len(weights), [weights])
    else:
        store.commit(REPO, "main", add=[("model.safetensors", weights)], summary="again")
    assert blob.read_bytes() == weights and store.verify_revision(REPO, oid) == 3
    assert store.has_blob(REPO, blob.name, len(weights))


def test_verify_revision_refuses_a_snapshot_link_out_of_the_root(
    store: RepoStore, tmp_path: Path
) -> None:
    oid = store.commit(REPO, "main", add=[("model.safetensors", b"w" * 64)])
    (tmp_path / "outside").write_bytes(b"w" * 64)  # the right bytes, in the wrong place
    link = store.repo_dir(REPO) / "snapshots" / oid / "model.safetensors"
    link.unlink()
    link.symlink_to(tmp_path / "outside")
    with pytest.raises(DamagedFile, match=r"model\.safetensors is missing from the models folder"):
        store.verify_revision(REPO, oid)


# -- names -----------------------------------------------------------------------------------
REFUSED_IDS = ["a..b/c", "a/b..c", "../x", "a/b.git", "a", "a/b/c", "a/b\n", "a/" + "b" * 199]
ACCEPTED_IDS = ["a.b/c-d_e", "ns/name.v2", "a/" + "b" * 198]


@pytest.mark.parametrize(
    "repo_id", REFUSED_IDS, ids=lambda s: repr(s) if len(s) < 20 else "201-chars"
)
def test_bad_repo_ids_are_refused_by_the_store_and_model_ids(repo_id: str, tmp_path: Path) -> None:
    assert not is_repo_id(repo_id)
    with pytest.raises(HubError, match="invalid repo id"):
        check_repo_id(repo_id)
    with pytest.raises(ValueError, match="<namespace>/<name>"):
        parse_model_id(f"local:{repo_id}")
    # Refused before anything touches the disk: no folder is made, inside the root or out.
    root = tmp_path / "root" / "models"
    root.mkdir(parents=True)
    with pytest.raises(HubError, match="invalid repo id"):
        RepoStore(root).create_repo(repo_id)
    assert listing(tmp_path) == {"root", "root/models"}


@pytest.mark.parametrize("repo_id", ACCEPTED_IDS, ids=lambda s: s if len(s) < 20 else "200-chars")
def test_good_repo_ids_are_accepted_by_the_store_and_model_ids(
    repo_id: str, tmp_path: Path
) -> None:
    assert is_repo_id(repo_id) and check_repo_id(repo_id) == repo_id
    mid = parse_model_id(f"local:{repo_id}@main")
    assert (mid.scheme, mid.name, mid.revision) == ("local", repo_id, "main")
    store = RepoStore(tmp_path)
    assert store.create_repo(repo_id) and store.repos() == [repo_id]


# -- reading ---------------------------------------------------------------------------------
def test_resolve_revision_by_unique_prefix_only(store: RepoStore) -> None:
    head = store.commit(REPO, "main", add=[("a.txt", b"a")])
    assert store.resolve_revision(REPO, head) == head
    assert store.resolve_revision(REPO, head[:7]) == head
    with pytest.raises(RevisionNotFound):
        store.resolve_revision(REPO, head[:6])  # shorter than a sha may be
    unknown = next(c * 7 for c in "0123456789abcdef" if not head.startswith(c))
    with pytest.raises(RevisionNotFound, match="no revision"):
        store.resolve_revision(REPO, unknown)
    with pytest.raises(RevisionNotFound, match="no revision 'nope'"):
        store.resolve_revision(REPO, "nope")

    # A snapshot copied in by hand whose name shares the head's first 10 characters.
    snapshots = store.repo_dir(REPO) / "snapshots"
    twin = head[:10] + ("0" if head[10] != "0" else "1") + head[11:]
    shutil.copytree(snapshots / head, snapshots / twin, symlinks=True)
    with pytest.raises(RevisionNotFound, match="ambiguous"):
        store.resolve_revision(REPO, head[:10])
    assert store.resolve_revision(REPO, head[:11]) == head
    assert store.resolve_revision(REPO, twin[:11]) == twin
    assert set(store.commit_info(REPO, twin).files) == {".gitattributes", "a.txt"}


@pytest.mark.parametrize("path", ["../x", "/abs", "a//b", ".git/config", "a/../../x", "a\\b"])
def test_open_file_refuses_paths_that_leave_the_repo(store: RepoStore, path: str) -> None:
    head = store.commit(REPO, "main", add=[("a/b", b"inside")])
    entry, blob = store.open_file(REPO, head, "a/b")  # the rule lets a plain path through
    assert entry.size == 6 and blob.read_bytes() == b"inside"
    with pytest.raises(HubError, match="invalid file path") as refused:
        store.open_file(REPO, head, path)
    assert refused.value.status == 400


def test_open_file_refuses_a_symlink_out_of_the_root(store: RepoStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the models folder")
    snap = store.repo_dir(REPO) / "snapshots" / ("f" * 40)  # copied in by hand, no record
    snap.mkdir()
    (snap / "leak.txt").symlink_to(secret)
    with pytest.raises(EntryNotFound, match="outside the models folder"):
        store.open_file(REPO, "f" * 40, "leak.txt")
    head = store.resolve_revision(REPO, "main")
    with pytest.raises(EntryNotFound, match=r"leak\.txt not found"):
        store.open_file(REPO, head, "leak.txt")


def test_commit_info_refuses_an_oid_that_climbs_out_of_the_root(
    store: RepoStore, tmp_path: Path
) -> None:
    record = {"oid": "x", "parent": None, "summary": "outside", "description": "", "date": ""}
    (tmp_path / "outside.json").write_text(json.dumps({**record, "files": []}))
    with pytest.raises(RevisionNotFound):
        store.commit_info(REPO, "../../../../outside")  # root is tmp_path/models


# -- history and deleting ---------------------------------------------------------------------
def test_history_pages_back_to_the_first_commit(store: RepoStore) -> None:
    shas = [store.commit(REPO, "main", add=[(f"{i}.txt", b"%d" % i)]) for i in range(3)]
    page, after = store.history(REPO, shas[-1], 2)
    assert [c.oid for c in page] == shas[:0:-1] and after == shas[0]
    rest, end = store.history(REPO, after, 10)
    assert [c.oid for c in rest] == history(store, shas[0]) and end is None
    assert rest[-1].summary == "initial commit"


def test_delete_branch_keeps_its_commits_and_refuses_main_and_the_last(
    store: RepoStore,
) -> None:
    store.create_branch(REPO, "dev")
    dev = store.commit(REPO, "dev", add=[("dev.txt", b"dev")])
    assert store.delete_branch(REPO, "dev") == dev
    assert store.branches(REPO).keys() == {"main"}
    assert store.resolve_revision(REPO, dev[:10]) == dev  # still there by sha
    assert "dev.txt" in store.commit_info(REPO, dev).files
    with pytest.raises(RevisionNotFound, match="has no branch 'dev'"):
        store.delete_branch(REPO, "dev")
    with pytest.raises(Conflict, match="default branch"):
        store.delete_branch(REPO, "main")
    with pytest.raises(HubError, match="invalid branch name"):
        store.delete_branch(REPO, "../main")
    # a repo copied in by hand with one branch, not main: that branch is its last
    store.create_branch(REPO, "only")
    (store.repo_dir(REPO) / "refs" / "main").unlink()
    with pytest.raises(Conflict, match="last branch"):
        store.delete_branch(REPO, "only")
    assert store.branches(REPO).keys() == {"only"}


def test_delete_repo_removes_it_and_frees_the_name(store: RepoStore) -> None:
    store.commit(REPO, "main", add=[("w.bin", b"\x01" * 100)])
    store.create_repo("team/other")
    store.delete_repo(REPO)
    assert not store.exists(REPO) and store.repos() == ["team/other"]
    assert listing(store.root) == {"team", "team/other", ".trash"} | {
        f"team/other/{p}" for p in listing(store.repo_dir("team/other"))
    }
    with pytest.raises(RepoNotFound):
        store.delete_repo(REPO)
    assert store.create_repo(REPO)  # a fresh repo under the old name
    assert [c.summary for c in store.history(REPO, store.resolve_revision(REPO), 10)[0]] == [
        "initial commit"
    ]
    store.delete_repo(REPO)
    store.delete_repo("team/other")
    assert listing(store.root) == {".trash"}  # the namespace folder went with its last repo


def test_a_crash_before_the_rename_leaves_the_repo_whole(
    store: RepoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = store.commit(REPO, "main", add=[("w.bin", b"\x02" * 100)])
    before = listing(store.repo_dir(REPO))

    def crash(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "simulated crash before the rename")

    with monkeypatch.context() as m:
        m.setattr(os, "rename", crash)
        with pytest.raises(OSError, match="simulated crash"):
            store.delete_repo(REPO)
    fresh = RepoStore(store.root)
    assert fresh.repos() == [REPO] and fresh.resolve_revision(REPO) == head
    assert listing(store.repo_dir(REPO)) == before
    check_snapshot_loadable(fresh, head)


def test_a_crash_while_removing_leaves_no_repo_and_the_next_delete_clears_it(
    store: RepoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit(REPO, "main", add=[(f"f{i}.txt", b"%d" % i) for i in range(20)])
    store.create_repo("team/next")

    def crash_half_way(path: str | os.PathLike[str], ignore_errors: bool = False) -> None:
        blobs = sorted(Path(path).rglob("blobs/*"))
        for blob in blobs[: len(blobs) // 2]:
            blob.unlink()
        raise KeyboardInterrupt  # the process dies here, half the files removed

    with monkeypatch.context() as m:
        m.setattr(repo_store.shutil, "rmtree", crash_half_way)
        with pytest.raises(KeyboardInterrupt):
            store.delete_repo(REPO)
    fresh = RepoStore(store.root)
    assert not fresh.exists(REPO) and fresh.repos() == ["team/next"]
    with pytest.raises(RepoNotFound):
        fresh.resolve_revision(REPO)
    (grave,) = (store.root / ".trash").iterdir()  # the half-removed files, out of sight
    assert any(grave.rglob("f*.txt"))
    fresh.delete_repo("team/next")
    assert list((store.root / ".trash").iterdir()) == []


def test_delete_repo_waits_for_a_commit_in_flight(store: RepoStore) -> None:
    from filelock import FileLock

    done = threading.Event()
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            store.delete_repo(REPO)
        except BaseException as e:
            errors.append(e)
        done.set()

    with FileLock(store.repo_dir(REPO) / ".lock"):  # as a commit holds it
        worker = threading.Thread(target=delete)
        worker.start()
        assert not done.wait(0.3)  # blocked behind the "commit"
        assert store.exists(REPO)
    worker.join(10)
    assert done.is_set() and errors == [] and not store.exists(REPO)
    with pytest.raises(RepoNotFound):  # a commit that comes after finds nothing
        store.commit(REPO, "main", add=[("late.txt", b"late")])
