"""Regenerate the demo page's sample photos from scikit-image's bundled pictures.

    .venv/bin/python service/static/samples/make_samples.py

Each photo is resized (Lanczos) to 256 px on its shorter side and saved as a baseline
JPEG at quality 90, then `index.json` (what the page lists) is rewritten. Sources and
licences: CREDITS.md next to this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).parent
SHORT_SIDE = 256
QUALITY = 90
MAX_BYTES = 40_000

# file stem -> (scikit-image loader, what the page says about it)
SAMPLES = {
    "cat": (data.chelsea, "Chelsea the cat"),
    "coffee": (data.coffee, "A cup of coffee"),
    "astronaut": (data.astronaut, "Astronaut Eileen Collins"),
    "rocket": (data.rocket, "A Falcon 9 rocket lifting off"),
}


def make(pixels: np.ndarray, path: Path) -> int:
    """(H, W, 3) uint8 -> a JPEG at `path`, SHORT_SIDE px on its shorter side; returns bytes."""
    image = Image.fromarray(pixels).convert("RGB")
    scale = SHORT_SIDE / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(path, format="JPEG", quality=QUALITY, optimize=True)
    return path.stat().st_size


def main() -> None:
    entries = []
    for stem, (load, alt) in SAMPLES.items():
        path = HERE / f"{stem}.jpg"
        size = make(load(), path)
        if size > MAX_BYTES:
            raise SystemExit(f"{path.name} is {size} bytes, over the {MAX_BYTES}-byte budget")
        entries.append({"file": path.name, "alt": alt})
        print(f"{path.name}: {size} bytes")
    (HERE / "index.json").write_text(json.dumps(entries, indent=2) + "\n")


if __name__ == "__main__":
    main()
