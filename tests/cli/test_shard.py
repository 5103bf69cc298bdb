"""`mae shard SOURCE OUTPUT_DIR`: WebDataset shards of 300 real CIFAR-10 JPEGs, read back
by our reader, by the `webdataset` library and by a short training run."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mae_core import cli
from mae_core.shard import parse_size, write_shards
from mae_core.sources import index_source, read_bytes

MAE = str(Path(sys.executable).parent / "mae")
SHARDS = [f"train-{i:06d}.tar" for i in range(5)]  # 300 images, 64 a shard


def mae(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAE, *args], capture_output=True, text=True, timeout=120)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def sharded(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The fixture folder through the real CLI: shuffled, 64 images a shard."""
    out = tmp_path_factory.mktemp("shards") / "cifar"
    proc = mae("shard", str(cifar_folder), str(out), "--max-images", "64")
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.fixture(scope="module")
def source_files(cifar_folder: Path) -> dict[str, tuple[str, str]]:
    """sha256 of each source JPEG -> (class name, file)."""
    return {sha(f.read_bytes()): (f.parent.name, str(f)) for f in cifar_folder.rglob("*.jpg")}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def classes_per_shard(folder: Path) -> list[set[bytes]]:
    out = []
    for p in sorted(folder.glob("train-*.tar")):
        with tarfile.open(p) as tar:
            out.append({tar.extractfile(m).read() for m in tar if m.name.endswith(".cls")})
    return out


def test_cli_writes_shards_that_hold_every_image_unchanged(sharded, source_files) -> None:
    out, proc = sharded
    pattern = f"{out}/train-{{000000..000004}}.tar"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", *SHARDS]  # no temp files
    assert "wrote 300 images (shuffled with seed 0) into 5 shards" in proc.stdout
    assert "10 classes" in proc.stdout and "0 unreadable" in proc.stdout
    assert f"mae train --data '{pattern}' --output DIR" in proc.stdout
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["pattern"] == pattern and meta["images"] == 300 and meta["shards"] == 5
    assert meta["shard_images"] == [64, 64, 64, 64, 44] and meta["unreadable"] == 0
    assert meta["classes"][:2] == ["airplane", "automobile"] and len(meta["classes"]) == 10
    assert meta["shuffle"] is True and meta["seed"] == 0
    assert meta["total_bytes"] == sum(len(b) for b in shard_bytes(out).values())

    with tarfile.open(out / SHARDS[1]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["000000064.jpg", "000000064.cls", "000000065.jpg", "000000065.cls"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}

    idx = index_source(pattern)  # our reader: labels and class names come back
    assert len(idx) == 300 and idx.classes == meta["classes"]
    seen = [source_files[sha(read_bytes(item))] for item in idx.items]
    assert len({file for _, file in seen}) == 300  # each source image exactly once
    assert [name for name, _ in seen] == [idx.classes[label] for label in idx.labels]


def test_shuffle_mixes_classes_and_no_shuffle_keeps_the_order(
    sharded, cifar_folder: Path, tmp_path: Path
) -> None:
    out, _ = sharded
    assert all(len(c) >= 8 for c in classes_per_shard(out))  # 64 random of 10 classes
    labels = index_source(f"{out}/train-{{000000..000004}}.tar").labels
    assert labels != sorted(labels)

    s = write_shards(cifar_folder, tmp_path, max_images=64, shuffle=False, progress=False)
    assert [len(c) for c in classes_per_shard(tmp_path)] == [3, 3, 3, 3, 2]
    labels = index_source(s.pattern).labels
    assert labels == sorted(labels) and s.shuffle is False
    assert json.loads((tmp_path / "dataset.json").read_text())["shuffle"] is False


def test_same_input_same_bytes(sharded, cifar_folder: Path, tmp_path: Path) -> None:
    out, _ = sharded
    write_shards(cifar_folder, tmp_path / "again", max_images=64, progress=False)
    assert shard_bytes(tmp_path / "again") == shard_bytes(out)
    write_shards(cifar_folder, tmp_path / "seed1", max_images=64, seed=1, progress=False)
    assert shard_bytes(tmp_path / "seed1") != shard_bytes(out)
    # Our shards are a source too: resharded in order, they come back byte for byte.
    s = write_shards(
        f"{out}/train-{{000000..000004}}.tar",
        tmp_path / "re",
        max_images=64,
        shuffle=False,
        progress=False,
    )
    assert shard_bytes(tmp_path / "re") == shard_bytes(out)
    assert s.classes == json.loads((out / "dataset.json").read_text())["classes"]


def test_max_size_bounds_every_shard(cifar_folder: Path, tmp_path: Path) -> None:
    assert parse_size("60KB") == 60_000 and parse_size("2 GB") == 2 * 10**9
    assert parse_size("1GiB") == 2**30 and parse_size("1.5m") == 1_500_000
    s = write_shards(cifar_folder, tmp_path, max_bytes=60_000, progress=False)
    sizes = [p.stat().st_size for p in s.shards]
    assert len(sizes) > 10 and max(sizes) <= 60_000 and sum(s.shard_images) == 300
    assert len(index_source(s.pattern)) == 300


def test_a_crash_leaves_the_folder_as_it_was(
    cifar_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards are renamed into place only when the whole set is written: a crash part-way
    leaves no file of the new set, and an --overwrite that fails keeps the old set whole."""
    import mae_core.shard as shard

    first = tmp_path / "first"
    write_shards(cifar_folder, first, max_images=100, progress=False)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    calls = []

    def dying_read(item):
        calls.append(item)
        if len(calls) % 1000 == 100:  # in the middle of the second shard
            raise KeyboardInterrupt
        return read_bytes(item)

    monkeypatch.setattr(shard, "read_bytes", dying_read)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        write_shards(cifar_folder, fresh, max_images=64, progress=False)
    assert list(fresh.iterdir()) == []  # no shard, no temp file, no dataset.json
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_shards(cifar_folder, first, max_images=64, seed=1, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_refuses_existing_shards_and_replaces_them_with_overwrite(
    cifar_folder: Path, tmp_path: Path
) -> None:
    write_shards(cifar_folder, tmp_path, max_images=30, progress=False)  # 10 shards
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "val-000000.tar").write_bytes(b"another prefix")
    before = shard_bytes(tmp_path)

    refused = mae("shard", str(cifar_folder), str(tmp_path), "--max-images", "100")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"mae: error: {tmp_path} already holds 10 train-*.tar shards: pass --overwrite to "
        "replace them, or choose another folder"
    ]
    assert shard_bytes(tmp_path) == before

    done = mae("shard", str(cifar_folder), str(tmp_path), "--max-images", "100", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dataset.json",
        "notes.txt",
        *SHARDS[:3],
        "val-000000.tar",
    ]
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["shards"] == 3 and meta["max_images"] == 100
    assert len(index_source(meta["pattern"])) == 300


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "{out}"], "data source"),
        (["{src}", "{file}"], "is a file, not a folder"),
        (["{src}", "{out}", "--max-images", "0"], "--max-images must be at least 1"),
        (["{src}", "{out}", "--max-size", "big"], "--max-size: not a size"),
        (["{src}", "{out}", "--limit", "0"], "--limit must be at least 1"),
        (["{src}", "{out}", "--prefix", "a/b"], "prefix 'a/b'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, cifar_folder: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "file").write_text("x")
    paths = {"missing": tmp_path / "missing", "out": tmp_path / "out", "src": cifar_folder}
    paths["file"] = tmp_path / "file"
    argv = ["shard", *(a.format(**paths) for a in args)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("mae: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written


def test_reader_without_dataset_json_numbers_the_classes(sharded, tmp_path: Path) -> None:
    out, _ = sharded
    for name in SHARDS:
        shutil.copy(out / name, tmp_path / name)
    idx = index_source(f"{tmp_path}/train-{{000000..000004}}.tar")
    assert idx.classes == [str(i) for i in range(10)] and len(idx) == 300


def test_our_shards_are_not_opened_again_at_start(sharded, tmp_path, monkeypatch) -> None:
    """`mae shard` checked every image: indexing its shards reads tar headers only, while
    shards it did not write (no dataset.json) still get each image's header checked."""
    from mae_core import sources

    out, _ = sharded
    opened: list[object] = []
    monkeypatch.setattr(sources, "_readable", lambda item: opened.append(item) or True)
    assert len(index_source(f"{out}/train-{{000000..000004}}.tar")) == 300
    assert opened == []
    for name in SHARDS[:2]:
        shutil.copy(out / name, tmp_path / name)
    assert len(index_source(f"{tmp_path}/train-{{000000..000001}}.tar")) == 128
    assert len(opened) == 128


def test_labels_with_gaps_keep_their_numbers(sharded, tmp_path: Path) -> None:
    """Without dataset.json, label i is class "i" even when some labels never occur."""
    out, _ = sharded
    gap = tmp_path / "gap-000000.tar"
    with tarfile.open(out / SHARDS[0]) as src, tarfile.open(gap, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith(".cls"):
                data = b"7" if int(data) > 4 else b"2"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    idx = index_source(f"{tmp_path}/gap-{{000000..000000}}.tar")
    assert set(idx.labels) == {2, 7}
    assert idx.classes == [str(i) for i in range(8)]


def test_the_webdataset_library_reads_our_shards(sharded) -> None:
    wds = pytest.importorskip("webdataset")
    out, _ = sharded
    pattern = f"{out}/train-{{000000..000004}}.tar"
    ours = index_source(pattern)
    samples = list(wds.WebDataset(pattern, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(300)]
    assert [int(s["cls"]) for s in samples] == ours.labels
    assert [s["jpg"] for s in samples] == [read_bytes(item) for item in ours.items]


def test_train_reads_the_shards(sharded, tmp_path: Path) -> None:
    out, _ = sharded
    proc = subprocess.run(
        [
            MAE,
            *("train", "--data", f"{out}/train-{{000000..000004}}.tar"),
            *("--variant", "mae_vit_tiny_patch8", "--img-size", "32", "--batch-size", "32"),
            *("--epochs", "1", "--warmup-epochs", "0", "--max-steps", "2"),
            *("--num-workers", "0", "--panel-every", "0", "--output", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "final").is_dir()
