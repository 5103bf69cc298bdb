"""Where training and evaluation images come from: a data source becomes an `ImageIndex`.

`--data SOURCE` is one of
- a folder of images, recursive; class subfolders give labels, a flat folder gives none;
- a `.tar`, `.tar.gz` or `.tgz` archive of images, read in place (an uncompressed archive
  by offset, a compressed one into memory once: unpack very large ones);
- WebDataset shards, `shards-{000000..000099}.tar`: uncompressed tars whose samples share a
  key (`0001.jpg` + `0001.cls`); the label is the integer in the `.cls` member, if any,
  and class names come from the `dataset.json` that `mae shard` writes beside them.
  Read by offset, so samples are addressed by index like any other source;
- `cifar10[:train|:test]` or `tinyimagenet[:train|:val]`: the archives of `shared/data/`,
  unpacked once into `$MAE_DATA_DIR` (default `~/.cache/mae-hub/data`).

An index holds where each image's bytes are and its label, never pixels: turning them into
tensors is `data.py`'s work.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import MAEError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
NAMED_SOURCES = {
    "cifar10": ("cifar10.tar.gz", ("train", "test")),
    "tinyimagenet": ("tinyimagenet200.tar.gz", ("train", "val")),
}


class DataError(MAEError, ValueError):
    """A data source that cannot be used; the message says why and what to do."""


# ---------------------------------------------------------------------------------------
# Indexing: a source becomes a list of records (where the bytes are, which label)
# ---------------------------------------------------------------------------------------
@dataclass
class ImageIndex:
    """Where each image is and its label (-1 when the source has no labels)."""

    name: str
    items: list[Any]  # paths, or (archive member) byte strings
    labels: list[int]
    classes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "images": len(self),
            "classes": len(self.classes),
            "unreadable": len(self.unreadable),
        }


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar, read by offset (no unpacking)."""

    archive: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.archive, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def read_bytes(item: Any) -> bytes:
    """The stored bytes of a path, bytes or TarMember item, as they are (no decoding)."""
    if isinstance(item, TarMember):
        return item.read()
    return bytes(item) if isinstance(item, bytes | bytearray) else Path(item).read_bytes()


def _source(item: Any) -> Any:
    """What Pillow opens: a path as is, stored bytes (in memory or in a tar) as a stream."""
    return io.BytesIO(read_bytes(item)) if isinstance(item, TarMember | bytes | bytearray) else item


def open_rgb(item: Any) -> Image.Image:
    """A path, bytes or TarMember -> RGB PIL image (first frame; palette, alpha, CMYK,
    16-bit and grey -> RGB)."""
    with Image.open(_source(item)) as img:
        img.seek(0)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = img.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
        return img.convert("RGB")


def _readable(item: Any) -> bool:
    """A cheap header check: Pillow can identify the file (no full decode)."""
    try:
        with Image.open(_source(item)) as img:
            return img.size[0] > 0 and img.size[1] > 0
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _finish(
    name: str,
    items: list[Any],
    labels: list[int],
    classes: list[str],
    ids: list[str],
    limit: int | None = None,
    checked: bool = False,
) -> ImageIndex:
    """The index of the readable images among `items` (`checked`: all are known to be)."""
    if limit and limit < len(items):  # subset before the header checks: they cost I/O
        keep = [math.floor(i * len(items) / limit) for i in range(limit)]
        items, labels, ids = ([seq[i] for i in keep] for seq in (items, labels, ids))
        name = f"{name}[:{limit}]"
    good, bad = [], []
    for item, label, ident in zip(items, labels, ids, strict=True):
        (good if checked or _readable(item) else bad).append((item, label, ident))
    if bad:
        log.warning(
            "%s: %d of %d files are not readable images, skipped (first: %s)",
            name,
            len(bad),
            len(items),
            bad[0][2],
        )
    if not good:
        raise DataError(
            f"{name}: none of its {len(items)} files is a readable image"
            if items
            else f"{name}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return ImageIndex(
        name, [g[0] for g in good], [g[1] for g in good], classes, [b[2] for b in bad]
    )


def index_folder(root: str | Path, limit: int | None = None) -> ImageIndex:
    """Images under `root`, recursively; the first folder level names the classes when
    every image sits in one (a flat or mixed folder gives label -1)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    tops = [p.relative_to(root).parts for p in files]
    classes = sorted({t[0] for t in tops}) if tops and all(len(t) > 1 for t in tops) else []
    lookup = {c: i for i, c in enumerate(classes)}
    labels = [lookup[t[0]] if classes else -1 for t in tops]
    return _finish(str(root), files, labels, classes, [str(f) for f in files], limit)


def _tar_entries(path: Path) -> list[tuple[str, Any, bytes | None]]:
    """(member name, image item, .cls bytes or None) for each image in one tar."""
    try:
        with tarfile.open(path) as tar:
            compressed = tar.fileobj is not None and not isinstance(tar.fileobj, io.BufferedReader)
            members = [m for m in tar.getmembers() if m.isfile()]
            by_key = {m.name: m for m in members}
            out = []
            for m in sorted(members, key=lambda m: m.name):
                stem, ext = os.path.splitext(m.name)
                if ext.lower() not in IMAGE_EXTENSIONS:
                    continue
                if compressed:
                    item: Any = tar.extractfile(m).read()  # type: ignore[union-attr]
                else:
                    item = TarMember(str(path), m.offset_data, m.size)
                cls = by_key.get(stem + ".cls")
                label = tar.extractfile(cls).read() if cls else None  # type: ignore[union-attr]
                out.append((m.name, item, label))
            return out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from e


def index_tar(path: str | Path, limit: int | None = None) -> ImageIndex:
    """Images in a tar archive, read in place; class folders as in `index_folder`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"archive {path} does not exist")
    entries = _tar_entries(path)
    parts = [Path(name).parts for name, _, _ in entries]
    classes = sorted({p[-2] for p in parts}) if parts and all(len(p) > 1 for p in parts) else []
    if len(classes) == 1:  # one folder holding everything is no labelling
        classes = []
    lookup = {c: i for i, c in enumerate(classes)}
    labels = [lookup[p[-2]] if classes else -1 for p in parts]
    return _finish(
        str(path), [e[1] for e in entries], labels, classes, [e[0] for e in entries], limit
    )


def index_shards(pattern: str, limit: int | None = None) -> ImageIndex:
    """WebDataset shards (`dir/shard-{000000..000009}.tar`), each read by offset."""
    from braceexpand import braceexpand

    paths = [Path(p).expanduser() for p in braceexpand(pattern)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(paths)} shards of {pattern} are missing (first: {missing[0]})"
        )
    items, labels, ids = [], [], []
    for path in paths:
        for name, item, cls in _tar_entries(path):
            items.append(item)
            ids.append(f"{path.name}:{name}")
            try:
                labels.append(int(cls.decode().strip()) if cls else -1)
            except ValueError as e:
                raise DataError(f"{path}: {name} has a .cls member that is not an integer") from e
    labelled = bool(labels) and -1 not in labels
    if labelled and min(labels) < 0:
        raise DataError(f"{pattern}: a .cls label is negative ({min(labels)})")
    # Label i is class i: without names, "0" .. "max", gaps included.
    classes = [str(c) for c in range(max(labels) + 1)] if labelled else []
    ours = _written_by_mae_shard(paths)
    names = ours.get("classes") if ours else None
    if labelled and isinstance(names, list) and max(labels) < len(names):
        classes = [str(n) for n in names]
    # `mae shard` kept only images that passed the header check: not opening each one
    # again saves every process a full read of the data at start.
    return _finish(pattern, items, labels, classes, ids, limit, checked=ours is not None)


def _written_by_mae_shard(paths: list[Path]) -> dict[str, Any] | None:
    """The `dataset.json` that `mae shard` writes beside its shards, when it lists every
    one of `paths` (shards it wrote); None otherwise."""
    meta = paths[0].parent / "dataset.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    listed = info.get("shard_files") if isinstance(info, dict) else None
    if not isinstance(listed, list):
        return None
    ours = all(p.parent == meta.parent and p.name in listed for p in paths)
    return info if ours else None


# -- named sources ----------------------------------------------------------------------
def data_dir() -> Path:
    return Path(os.environ.get("MAE_DATA_DIR", "~/.cache/mae-hub/data")).expanduser()


def _archive_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    dirs = [Path(os.environ["MAE_SHARED_DATA"])] if os.environ.get("MAE_SHARED_DATA") else []
    dirs += [
        here.parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def unpack_named(name: str) -> Path:
    """The unpacked folder of a named source, unpacking its archive the first time."""
    archive_name, _ = NAMED_SOURCES[name]
    target = data_dir() / name
    if (target / ".complete").is_file():
        return target
    candidates = [d / archive_name for d in _archive_dirs()]
    archive = next((c for c in candidates if c.is_file()), None)
    if archive is None:
        raise DataError(
            f"{name}: archive {archive_name} not found; put it in one of "
            f"{', '.join(str(c.parent) for c in candidates)} (or set MAE_SHARED_DATA to its folder)"
        )
    log.info("unpacking %s into %s (once)", archive, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(str(archive) + "\n")
        if target.exists():  # a partial earlier attempt
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _index_tinyimagenet(root: Path, split: str, limit: int | None) -> ImageIndex:
    base = root / "tiny-imagenet-200"
    wnids = (base / "wnids.txt").read_text().split()
    lookup = {w: i for i, w in enumerate(sorted(wnids))}
    if split == "train":
        files = sorted((base / "train").glob("*/images/*.JPEG"))
        labels = [lookup[f.parent.parent.name] for f in files]
    else:
        ann = dict(
            line.split("\t")[:2]
            for line in (base / "val" / "val_annotations.txt").read_text().splitlines()
            if line.strip()
        )
        files = sorted((base / "val" / "images").glob("*.JPEG"))
        labels = [lookup[ann[f.name]] for f in files]
    return _finish(
        f"tinyimagenet:{split}", files, labels, sorted(wnids), [str(f) for f in files], limit
    )


def index_source(source: str, limit: int | None = None) -> ImageIndex:
    """Index `source` (see the module docstring); `limit` keeps an evenly strided subset."""
    name, _, split = source.partition(":")
    if name in NAMED_SOURCES:
        splits = NAMED_SOURCES[name][1]
        split = {"val": splits[1], "test": splits[1]}.get(split, split) or splits[0]
        if split not in splits:
            raise DataError(f"{name} has splits {' and '.join(splits)}, not {split!r}")
        root = unpack_named(name)
        if name == "tinyimagenet":
            return _index_tinyimagenet(root, split, limit)
        index = index_folder(root / split, limit)
        index.name = index.name.replace(str(root / split), f"{name}:{split}")
        return index
    if "{" in source and ".tar" in source:
        return index_shards(source, limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return index_folder(path, limit)
    if path.is_file() and (path.suffix in (".tar", ".tgz") or path.name.endswith(".tar.gz")):
        return index_tar(path, limit)
    if path.exists():
        raise DataError(f"{source}: not a folder or a .tar/.tar.gz archive of images")
    raise DataError(
        f"data source {source!r} not found: not a folder, an archive, or one of "
        f"{', '.join(NAMED_SOURCES)} (with :train/:test/:val)"
    )


def held_out_source(source: str) -> str | None:
    """The held-out split of a named source (for panels and evaluation), else None."""
    name = source.partition(":")[0]
    return f"{name}:{NAMED_SOURCES[name][1][1]}" if name in NAMED_SOURCES else None


def train_split(source: str) -> str:
    """A named source without a split means its training split (`cifar10` ->
    `cifar10:train`); any other source is returned as given."""
    name, sep, _ = source.partition(":")
    return f"{name}:{NAMED_SOURCES[name][1][0]}" if name in NAMED_SOURCES and not sep else source
