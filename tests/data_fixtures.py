"""Real images for the tests: a few hundred CIFAR-10 JPEGs taken from the shared archive."""

from __future__ import annotations

import tarfile
from pathlib import Path


def _archive(name: str) -> Path:
    """Where `mae_core.sources` finds a named source's archive (MAE_SHARED_DATA,
    ../shared/data beside the checkout, or shared/data inside it, as bench/device-prep.sh
    puts it for a lent GPU machine); the first place when none has it."""
    from mae_core.sources import _archive_dirs

    places = [d / name for d in _archive_dirs()]
    return next((p for p in places if p.is_file()), places[0])


CIFAR_ARCHIVE = _archive("cifar10.tar.gz")


def extract_cifar_subset(dest: Path, per_class: int, split: str = "test") -> Path:
    """Extract the first `per_class` JPEGs of each CIFAR-10 class of `split` into
    dest/<class>/; reads the archive as a stream and stops early (the test split is first)."""
    wanted: dict[str, int] = {}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) != 3 or parts[0] != split or not member.isfile():
                if wanted and parts[0] != split:
                    break
                continue
            cls = parts[1]
            if wanted.get(cls, 0) >= per_class:
                continue
            wanted[cls] = wanted.get(cls, 0) + 1
            target = dest / cls / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return dest


def split_two_to_one(folder: Path, dest: Path) -> tuple[Path, Path]:
    """Class folders of `folder` split 2:1 (every third image of a class, sorted by name,
    goes to test) into dest/train and dest/test, as symlinks -> (train, test)."""
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(cls.iterdir())):
            target = dest / ("test" if i % 3 == 2 else "train") / cls.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dest / "train", dest / "test"
