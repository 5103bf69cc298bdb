"""The ONNX Runtime backend: the encoder's ONNX file, run on the CPU.

Where the file comes from, first found: `<repo>/onnx/<file>` beside the served weights
(checked against torch at load, so a stale export is refused), else the ONNX cache,
`<cache>/<sha256 of the weights, 16 hex>-<fp32|int8>/onnx/<file>`, written once by
`export_onnx` (which checks it as it writes) into a temporary folder that is renamed into
place, so several processes starting together never read half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mae_core.export import (
    ONNX_DIR,
    ONNX_FILE,
    QUANTIZED_FILE,
    compare,
    export_onnx,
    probe_images,
    run_tokens,
    session,
)
from mae_core.model import MaskedAutoencoder

from ..engine_errors import ServiceError
from . import pool

log = logging.getLogger("mae.service")


class OnnxBackend:
    fused = False  # ONNX Runtime fuses the graph itself; mae_core.fused is torch's
    packed = False  # and packs its weights itself too

    def __init__(
        self,
        model: MaskedAutoencoder,
        *,
        quantized: bool,
        repo: Path,
        cache: Path,
        weights_sha256: str | None,
        threads: int | None,
    ) -> None:
        self.name = "onnxruntime-int8" if quantized else "onnxruntime"
        self.file = self._find(model, quantized, repo, cache, weights_sha256)
        self.session = session(self.file, threads)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return pool(run_tokens(self.session, batch))

    def _find(
        self,
        model: MaskedAutoencoder,
        quantized: bool,
        repo: Path,
        cache: Path,
        weights_sha256: str | None,
    ) -> Path:
        name = QUANTIZED_FILE if quantized else ONNX_FILE
        shipped = repo / ONNX_DIR / name if repo.is_dir() else None
        if shipped is not None and shipped.is_file():
            check = compare(shipped, model, probe_images(model, 2))
            if not check.passes(quantized):
                raise ServiceError(
                    f"{shipped} does not match the served weights ({check.line()}): export it "
                    "again with mae export"
                )
            log.info("onnxruntime: %s (%s)", shipped, check.line())
            return shipped
        if weights_sha256 is None:
            raise ServiceError("the onnxruntime backend needs weights with a known sha256")
        folder = cache / f"{weights_sha256[:16]}-{'int8' if quantized else 'fp32'}"
        cached = folder / ONNX_DIR / name
        if not cached.is_file():
            self._export(model, quantized, folder)
        log.info("onnxruntime: %s", cached)
        return cached

    @staticmethod
    def _export(model: MaskedAutoencoder, quantized: bool, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        try:
            log.info("onnxruntime: exporting the encoder into %s (once)", folder)
            export_onnx(model, tmp, quantize="int8" if quantized else None)
            with contextlib.suppress(OSError):  # another process got there first: use its
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def default_onnx_cache() -> Path:
    """~/.cache/mae-hub/onnx (under $XDG_CACHE_HOME when it is set)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mae-hub" / "onnx"
