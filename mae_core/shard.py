"""Write WebDataset shards: any data source -> uncompressed tars of `KEY.ext` + `KEY.cls`.

Each readable image of the source (see `data.index_source`) is stored with its original
bytes, never re-encoded, as `KEY.ext`, plus `KEY.cls` (the label as ASCII digits) when the
source has labels. KEY is the sample's number in the output, `000001234`, so members sort
in writing order. The extension is the file name's, lowercased, for files in a folder, and
the image format's (`.jpg`, `.png`, ...) for archive members, whose names the index does not
keep. A shard is closed before it would pass `max_images` images or `max_bytes` bytes on
disk (a single larger image gets a shard of its own).

Reproducible: the order is the source's, or a permutation seeded by `seed`; tar headers
carry no time, owner or host, so the same source and settings give byte-identical shards.
Each shard is written under a hidden temporary name in the output folder and synced; once
every shard is written they are renamed into place, so a failure part-way leaves the
folder as it was. `dataset.json`,
written last, describes the set (pattern for `mae train --data`, class names, counts).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import __version__
from .errors import MAEValueError
from .files import write_atomic
from .sources import IMAGE_EXTENSIONS, DataError, TarMember, index_source, read_bytes

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 10_000
DEFAULT_MAX_BYTES = 1_000_000_000  # 1 GB: WebDataset advises shards of 100s of MB to a few GB
METADATA = "dataset.json"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS |= {f"{u}i": 1 << (10 * i) for i, u in enumerate("kmgt", start=1)}
# Pillow's name of a format -> the extension readers (ours, webdataset's decoders) expect.
_FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "DIB": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
}


@dataclass
class ShardSummary:
    """What `write_shards` wrote; `to_json()` is the content of `dataset.json`."""

    source: str
    output_dir: Path
    prefix: str
    pattern: str  # absolute brace pattern for `mae train --data`
    shard_files: list[str]
    shard_images: list[int]
    images: int
    total_bytes: int
    classes: list[str]
    unreadable: int
    shuffle: bool
    seed: int
    max_images: int
    max_bytes: int
    created_by: str = field(default=f"mae-hub {__version__}")

    @property
    def shards(self) -> list[Path]:
        return [self.output_dir / name for name in self.shard_files]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return {"format": "webdataset", "shards": len(self.shard_files), **d}


def parse_size(text: str) -> int:
    """`500MB`, `2GB`, `1.5G`, `512MiB`, `100000` -> bytes (K/M/G/T are powers of 1000,
    Ki/Mi/Gi/Ti of 1024; the B is optional)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise MAEValueError(f"not a size: {text!r} (try 500MB, 2GB or a number of bytes)")
    size = int(float(m[1]) * _UNITS[m[2] or ""])
    if size <= 0:
        raise MAEValueError(f"a size must be positive, got {text!r}")
    return size


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def existing_shards(output_dir: Path, prefix: str) -> list[Path]:
    """The `<prefix>-NNNNNN.tar` files in `output_dir` (ours; nothing else matches)."""
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar")
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def _tar_size(payload: int) -> int:
    """Bytes on disk of a tar whose members take `payload` bytes: tarfile ends it with two
    zero blocks and pads it to a whole record."""
    record = tarfile.RECORDSIZE
    return -(-(payload + 2 * tarfile.BLOCKSIZE) // record) * record


def _member_size(size: int) -> int:
    """A member's header block plus its data padded to whole blocks."""
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _extension(item: Any, data: bytes) -> str | None:
    """The extension to store an image under; None for a format no reader would pick up."""
    if not isinstance(item, TarMember | bytes | bytearray):
        ext = Path(item).suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            return ext
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _FORMAT_EXTENSIONS.get(img.format or "")
    except (OSError, ValueError):
        return None


class _ShardWriter:
    """One shard being written under a hidden temporary name, renamed when complete."""

    def __init__(self, path: Path) -> None:
        self.path, self.images, self.payload = path, 0, 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        self.file = os.fdopen(fd, "wb")
        self.tar = tarfile.TarFile(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)

    def size_with(self, cost: int) -> int:
        return _tar_size(self.payload + cost)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))
        self.payload += _member_size(len(data))

    def finish(self) -> int:
        """Complete and sync the temporary file (renamed into place by `publish`)."""
        self.tar.close()  # end-of-archive blocks; the file stays open
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.tmp.stat().st_size

    def publish(self) -> None:
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def _check_output(output_dir: Path, prefix: str, overwrite: bool) -> list[Path]:
    """Refuse an output that is a file or already holds a dataset; -> the old shards."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise DataError(f"prefix {prefix!r}: use letters, digits, '.', '_' and '-' only")
    if any(c in str(output_dir.resolve()) for c in "{}"):
        raise DataError(f"{output_dir}: a folder name with {{ or }} breaks brace patterns")
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"output {output_dir} is a file, not a folder")
    old = existing_shards(output_dir, prefix)
    if (old or (output_dir / METADATA).exists()) and not overwrite:
        what = f"{len(old)} {prefix}-*.tar shards" if old else METADATA
        raise DataError(
            f"{output_dir} already holds {what}: pass --overwrite to replace them, "
            "or choose another folder"
        )
    return old


def write_shards(
    source: str | Path,
    output_dir: str | Path,
    *,
    prefix: str = "train",
    max_images: int = DEFAULT_MAX_IMAGES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    shuffle: bool = True,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardSummary:
    """Write the images of `source` as WebDataset shards `<prefix>-NNNNNN.tar` in
    `output_dir`, and `dataset.json` beside them.

    Nothing is written or removed until the source is indexed. Every shard is written under
    a temporary name first; only when all are complete are they renamed into place (then
    the extra old shards removed, then dataset.json written), so a failure part-way leaves
    the folder as it was. With `overwrite`, old `<prefix>-*.tar` shards are replaced; no
    other file is touched. Do not overwrite shards a running job reads: it reads them by
    offset.
    """
    if max_images < 1:
        raise DataError(f"--max-images must be at least 1, got {max_images}")
    if max_bytes < 1:
        raise DataError(f"--max-size must be positive, got {max_bytes}")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    out = Path(output_dir).expanduser()
    old = _check_output(out, prefix, overwrite)
    path = Path(source).expanduser()
    index = index_source(str(path.resolve()) if path.exists() else str(source), limit)
    reading = {i.archive for i in index.items if isinstance(i, TarMember)}
    if {Path(a).resolve() for a in reading} & {p.resolve() for p in old}:
        raise DataError(f"{source} reads the very shards it would replace: write to another folder")
    log.info("%s: %d images, %d classes -> %s", index.name, len(index), len(index.classes), out)
    order = list(range(len(index)))
    if shuffle:
        random.Random(seed).shuffle(order)

    out.mkdir(parents=True, exist_ok=True)
    done: list[_ShardWriter] = []  # complete, under their temporary names
    names: list[str] = []
    counts: list[int] = []
    total = written = unreadable = 0
    writer: _ShardWriter | None = None
    bar = _progress(len(order), progress)
    try:
        for i in order:
            sample = _sample(index.items[i])
            if sample is None:
                unreadable += 1
                continue
            data, ext = sample
            cls = str(index.labels[i]).encode() if index.labels[i] >= 0 else None
            cost = _member_size(len(data)) + (_member_size(len(cls)) if cls else 0)
            if writer and (writer.images >= max_images or writer.size_with(cost) > max_bytes):
                total += _close(writer, counts, bar)
                done.append(writer)
                writer = None
            if writer is None:
                names.append(shard_name(prefix, len(names)))
                writer = _ShardWriter(out / names[-1])
            key = f"{written:09d}"
            writer.add(f"{key}{ext}", data)
            if cls:
                writer.add(f"{key}.cls", cls)
            writer.images += 1
            written += 1
            bar.update(1)
        if writer:
            total += _close(writer, counts, bar)
            done.append(writer)
            writer = None
        if not names:
            raise DataError(f"{index.name}: none of its {len(index)} images could be read")
    except BaseException:
        for w in [*done, *([writer] if writer else [])]:
            w.abort()
        raise
    finally:
        bar.close()

    (out / METADATA).unlink(missing_ok=True)  # never describes a half-replaced set
    for w in done:
        w.publish()
    for stale in old:
        if stale.name not in names:
            stale.unlink()
    summary = ShardSummary(
        source=index.name,
        output_dir=out.resolve(),
        prefix=prefix,
        pattern=str(out.resolve() / f"{prefix}-{{000000..{len(names) - 1:06d}}}.tar"),
        shard_files=names,
        shard_images=counts,
        images=written,
        total_bytes=total,
        classes=list(index.classes),
        unreadable=len(index.unreadable) + unreadable,
        shuffle=shuffle,
        seed=seed,
        max_images=max_images,
        max_bytes=max_bytes,
    )
    # last: its presence says the set is complete
    write_atomic(out / METADATA, json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _sample(item: Any) -> tuple[bytes, str] | None:
    """(bytes, extension) of one image; None, with a warning, when it cannot be stored."""
    try:
        data = read_bytes(item)
    except OSError as e:
        log.warning("cannot read %s (%s); skipped", item, e)
        return None
    ext = _extension(item, data)
    if ext is None:
        log.warning("%s: not a JPEG/PNG/WebP/BMP/GIF/TIFF image; skipped", item)
    return None if ext is None else (data, ext)


def _close(writer: _ShardWriter, counts: list[int], bar: Any) -> int:
    size = writer.finish()
    counts.append(writer.images)
    if bar.disable:  # no bar to watch: a line per shard instead
        log.info("wrote %s: %d images, %d bytes", writer.path.name, writer.images, size)
    else:
        bar.set_postfix(shards=len(counts))
    return size


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )
