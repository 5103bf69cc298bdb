"""The encoder as ONNX, for ONNX Runtime (and any other ONNX tool), verified against torch.

    result = export_onnx(model, "out")                 # out/onnx/model.onnx
    result = export_onnx(model, "out", quantize="int8")  # + out/onnx/model_quantized.onnx

The graph has the layout optimum gives ViT encoders, so the files can sit beside the
safetensors of a hub repo and other tools read them: input `pixel_values` (N, 3, S, S)
float32, normalised as the model's `pretrained_cfg` says; output `last_hidden_state`
(N, 1+L, D), every token after the final norm, patch order kept (`forward_features`).
The batch axis is dynamic. `--quantize int8` adds ONNX Runtime's dynamic quantisation
(int8 weights of the matrix products, activations quantised per call).

Every export is checked at once: the file is run by ONNX Runtime on the given images and
compared with torch. fp32 must agree to `FP32_MAX_ABS` on `last_hidden_state`, int8 to a
cosine of `INT8_MIN_COSINE` per image; anything worse is an `ExportError`, not a warning.
Needs the `onnx` extra: pip install 'mae-hub[onnx]'.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MAEError, MissingDependency
from .files import sha256_file
from .model import MaskedAutoencoder

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
RECORD_FILE = "export.json"
log = logging.getLogger("mae.export")
INPUT, OUTPUT = "pixel_values", "last_hidden_state"
OPSET = 18
FP32_MAX_ABS = 1e-4
INT8_MIN_COSINE = 0.99
QUANTIZATIONS = ("int8",)
# Who runs the encoder's forward: torch itself, or its ONNX export by ONNX Runtime (CPU).
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


class ExportError(MAEError, RuntimeError):
    """An export that could not be written, or that does not match the torch model."""


@dataclass(frozen=True)
class Check:
    """How the exported file's output compares with torch's on the check images."""

    file: str
    images: int
    max_abs: float  # over every element of last_hidden_state
    min_cosine: float  # per image, over its flattened last_hidden_state

    def passes(self, quantized: bool) -> bool:
        """fp32 within FP32_MAX_ABS of torch everywhere; int8 within INT8_MIN_COSINE."""
        return self.min_cosine >= INT8_MIN_COSINE if quantized else self.max_abs <= FP32_MAX_ABS

    def line(self) -> str:
        return (
            f"{self.file}: {self.images} images, max |onnx - torch| {self.max_abs:.2e}, "
            f"cosine >= {self.min_cosine:.6f}"
        )


@dataclass(frozen=True)
class ExportResult:
    folder: Path  # DIR/onnx
    files: tuple[str, ...]
    checks: tuple[Check, ...]


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency(
            "ONNX export and the onnxruntime backend need the onnx extra: "
            "pip install 'mae-hub[onnx]'"
        ) from None
    return onnxruntime


class _Encoder(torch.nn.Module):
    """pixel_values (N, 3, S, S) -> last_hidden_state (N, 1+L, D)."""

    def __init__(self, model: MaskedAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)


def session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for `path`, with `threads` math threads (None: its own
    default) and no inter-op pool (one graph, run by one caller at a time)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No spinning between calls: in a server the idle math threads would take the cores
    # that decode the next batch (and in a loop of calls it costs nothing measurable).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """`model.forward_features` by ONNX Runtime: the encoder is exported (and checked, as
    every export is) into a temporary folder that lives as long as this object.

        forward = OnnxEncoder(model, quantize="int8")
        tokens = forward(pixel_values)  # (N, 1+L, D) float32, CPU
    """

    def __init__(
        self,
        model: MaskedAutoencoder,
        *,
        quantize: str | None = None,
        threads: int | None = None,
        images: torch.Tensor | None = None,
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="mae-onnx-")
        result = export_onnx(model, self._folder.name, images=images, quantize=quantize)
        self.checks = result.checks
        self.session = session(result.folder / (QUANTIZED_FILE if quantize else ONNX_FILE), threads)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return run_tokens(self.session, pixel_values)


def run_tokens(onnx_session: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """pixel_values (N, 3, S, S) -> last_hidden_state (N, 1+L, D) float32 on the CPU, by an
    ONNX Runtime session of an export."""
    tokens = onnx_session.run([OUTPUT], {INPUT: pixel_values.float().cpu().numpy()})[0]
    return torch.from_numpy(tokens)


def encoder_forward(
    model: MaskedAutoencoder,
    backend: str = "torch",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixel_values -> last_hidden_state, run by `backend` (one of BACKENDS): for torch the
    model's own forward, with fused encoder layers where `mae_core.fused` covers the model
    on its device in `dtype` (the compute dtype it will run under), an `OnnxEncoder` (CPU)
    for the others."""
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "torch":
        from .fused import inference_forward

        return inference_forward(model, next(model.parameters()).device, dtype, log)
    if next(model.parameters()).device.type != "cpu":
        raise ExportError(f"the {backend} backend runs on the CPU: use --device cpu")
    return OnnxEncoder(
        model, quantize="int8" if backend.endswith("-int8") else None, threads=threads
    )


def probe_images(model: MaskedAutoencoder, n: int = 4) -> torch.Tensor:
    """`n` seeded random images (N, 3, S, S): the check when no photos are at hand."""
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def compare(path: Path, model: MaskedAutoencoder, images: torch.Tensor) -> Check:
    """Run `path` and the torch model on `images` (N, 3, S, S) and compare the outputs."""
    with torch.inference_mode():
        want = model.forward_features(images.float()).float().numpy()
    got = session(path).run([OUTPUT], {INPUT: images.float().numpy()})[0]
    if got.shape != want.shape:
        raise ExportError(f"{path.name} answers shape {got.shape}, torch {want.shape}")
    a, b = got.reshape(len(got), -1).astype(np.float64), want.reshape(len(want), -1)
    cosine = (a * b).sum(1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30
    )
    return Check(path.name, len(images), float(np.abs(got - want).max()), float(cosine.min()))


def export_onnx(
    model: MaskedAutoencoder,
    output: str | os.PathLike[str],
    *,
    images: torch.Tensor | None = None,
    quantize: str | None = None,
    source: str | None = None,
) -> ExportResult:
    """Write `output`/onnx/model.onnx (and model_quantized.onnx with quantize="int8") for
    `model`'s encoder, check each against torch on `images` ((N, 3, S, S) normalised; by
    default 4 seeded random images), and record the checks in onnx/export.json.
    `source` (a model id) is recorded with them."""
    require_onnxruntime()
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"unknown quantisation {quantize!r}; choose from {QUANTIZATIONS}")
    cfg = model.config
    if images is None:
        images = probe_images(model)
    folder = Path(output) / ONNX_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write the export into {folder}: {e}") from None
    model = model.float().eval()
    fp32 = folder / ONNX_FILE
    _export(model, fp32, cfg.img_size)
    checks = [compare(fp32, model, images)]
    if not checks[0].passes(quantized=False):
        raise ExportError(
            f"the export does not match torch: {checks[0].line()} (at most {FP32_MAX_ABS} "
            "allowed); please report it with `mae info` of the model"
        )
    files = [ONNX_FILE]
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = folder / QUANTIZED_FILE
        root = logging.getLogger()  # quantize_dynamic advises "pre-processing" on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(quantized), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        checks.append(compare(quantized, model, images))
        if not checks[-1].passes(quantized=True):
            raise ExportError(
                f"int8 quantisation loses too much: {checks[-1].line()} (at least "
                f"{INT8_MIN_COSINE} needed); use the fp32 file"
            )
        files.append(QUANTIZED_FILE)
    record = {
        "format": "onnx",
        "opset": OPSET,
        "input": {"name": INPUT, "shape": ["batch", cfg.in_chans, cfg.img_size, cfg.img_size]},
        "output": {"name": OUTPUT, "shape": ["batch", 1 + cfg.num_patches, cfg.embed_dim]},
        "files": {name: sha256_file(folder / name) for name in files},
        "checks": [asdict(c) for c in checks],
        "source": source,
        "torch": torch.__version__,
        "onnxruntime": require_onnxruntime().__version__,
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return ExportResult(folder, (*files, RECORD_FILE), tuple(checks))


def _export(model: MaskedAutoencoder, path: Path, size: int) -> None:
    import warnings

    example = torch.zeros(2, model.config.in_chans, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter reports its progress on stdout, its internals as warnings, and its
    # graph passes (onnx_ir, onnxscript) at INFO, which `mae eval`'s log would show.
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Encoder(model).eval(),
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
            program.save(str(path))
    except ImportError as e:  # onnxscript, which the exporter needs
        raise MissingDependency(
            f"ONNX export needs the onnx extra ({e}): pip install 'mae-hub[onnx]'"
        ) from None
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def check_images(paths: list[str | os.PathLike[str]], model: MaskedAutoencoder) -> torch.Tensor:
    """Image files -> (N, 3, S, S) as the model's `pretrained_cfg` preprocesses them."""
    from PIL import Image, UnidentifiedImageError

    from .data import eval_transform

    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(eval_transform(img.convert("RGB"), model.config))
        except (OSError, UnidentifiedImageError) as e:
            raise ExportError(f"cannot read check image {path}: {e}") from None
    return torch.stack(out)


def photo_batch(
    model: MaskedAutoencoder, paths: list[str | os.PathLike[str]] | None = None
) -> torch.Tensor | None:
    """The images to check an export on: `paths`, else the sample photos, preprocessed;
    None when there are neither (export_onnx then uses `probe_images`)."""
    paths = paths or sample_photos()
    return check_images(paths, model) if paths else None


def sample_photos() -> list[Path]:
    """The demo page's sample photos, when the service is installed beside the library
    (real photos make a better check than noise)."""
    folder = Path(__file__).resolve().parent.parent / "service" / "static" / "samples"
    return sorted(folder.glob("*.jpg"))


def export_model(
    model_id: str,
    output: str | os.PathLike[str],
    *,
    quantize: str | None = None,
    revision: str | None = None,
    images: list[str | os.PathLike[str]] | None = None,
) -> ExportResult:
    """`mae export`: load `model_id`'s encoder and `export_onnx` it, checked on `images`
    (files; by default the sample photos, else seeded noise)."""
    from .hub import load_model

    require_onnxruntime()
    model = load_model(model_id, revision, with_decoder=False)
    batch = photo_batch(model, images)
    source = model_id if revision is None else f"{model_id}@{revision}"
    return export_onnx(model, output, images=batch, quantize=quantize, source=source)
