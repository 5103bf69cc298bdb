"""The embedding forward behind one interface: torch and ONNX Runtime (fp32, int8) give the
same engine the same answers, on real photos; the ONNX file comes from the repo (checked
against the weights) or from a cache it is exported into once; a real server answers with
the backend it says it uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from mae_core import create_model, load_model
from mae_core.export import ONNX_DIR, ONNX_FILE, export_onnx
from mae_core.fused import FusedEncoder, describe
from mae_core.onednn import packed_weight
from service.backends import BACKENDS
from service.engine import Engine
from service.engine_errors import ServiceError
from service.imaging import ImageLimits
from tests.torch_calls import CountCalls, fused_calls_per_forward

from .conftest import SMALL_MODEL, model_settings, serve
from .test_embeddings import _embed, _photos

pytest.importorskip("onnxruntime")
LIMITS = ImageLimits(max_bytes=1 << 24, max_pixels=40_000_000)
SMALL_MODEL_DIM = 192  # mae_vit_tiny_patch8


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: each variant is exported once."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def batch(small_model_dir: Path, cifar_folder: Path, onnx_cache: Path) -> torch.Tensor:
    """12 real CIFAR photos, decoded and preprocessed by the engine itself."""
    engine = Engine(str(small_model_dir), device="cpu", with_decoder=False)
    return torch.stack([engine.prepare(b, LIMITS) for b in _photos(cifar_folder, 12)])


def _engine(model_dir: Path, backend: str, cache: Path) -> Engine:
    return Engine(
        str(model_dir), device="cpu", with_decoder=False, backend=backend, onnx_cache=cache
    )


def _packs() -> bool:
    """Whether this torch packs weights for oneDNN's linears (MAE_PACK_WEIGHTS's default)."""
    return torch.backends.mkldnn.is_available() and packed_weight(torch.ones(1, 1)) is not None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_answers_as_torch_does(
    small_model_dir: Path, onnx_cache: Path, batch: torch.Tensor, backend: str
) -> None:
    want = _engine(small_model_dir, "torch", onnx_cache).embed(batch).numpy()
    engine = _engine(small_model_dir, backend, onnx_cache)
    got = engine.embed(batch).numpy()
    assert engine.info.backend == backend
    assert got.shape == want.shape == (12, 2, SMALL_MODEL_DIM) and got.dtype == np.float32
    # batches of another size, one by one: the batch axis is dynamic
    single = np.concatenate([engine.embed(batch[i : i + 1]).numpy() for i in range(3)])
    if backend == "onnxruntime-int8":
        # Dynamic quantisation scales the activations of the whole batch at once, so an
        # image's vector moves a little with its batch-mates (docs/service.md says so).
        assert _cosine(single, got[:3]) > 0.99 and not np.allclose(single, got[:3])
        assert _cosine(got, want) > 0.99
    else:
        np.testing.assert_allclose(single, got[:3], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert _cosine(got, want) > 0.9999


def test_the_torch_backend_s_fused_layers_answer_as_the_plain_forward(
    small_model_dir: Path, batch: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    """On the CPU in float32 the torch backend runs the blocks with oneDNN's linears
    (`mae_core.fused`, MAE_FUSED_LAYERS), in bfloat16 each as one fused kernel: the same
    vectors as the plain forward."""
    with caplog.at_level("INFO", logger="mae.service"):
        fused = Engine(str(small_model_dir), device="cpu", with_decoder=False)
    assert "fused encoder layers on: checked against the plain forward" in caplog.text
    plain = Engine(str(small_model_dir), device="cpu", with_decoder=False, fused_layers=False)
    assert fused.info.fused_layers and not plain.info.fused_layers
    assert fused.info.backend == plain.info.backend == "torch"
    assert isinstance(fused.backend.forward, FusedEncoder)
    impl = fused.backend.forward.impl
    if torch.backends.mkldnn.is_available():  # float32's way where torch has oneDNN
        assert impl == "onednn" and "(oneDNN linears)" in caplog.text
        # the server's weights never change: it reads packed copies where torch makes them
        packs = _packs()
        assert fused.backend.forward.packed == packs
        assert (", weights packed" in caplog.text) == packs
        assert fused.info.packed_weights == packs
        # MAE_PACK_WEIGHTS=false: oneDNN's way on the model's own weights, the same vectors
        own = Engine(str(small_model_dir), device="cpu", with_decoder=False, pack_weights=False)
        assert own.info.fused_layers and not own.info.packed_weights
        assert own.backend.forward.impl == "onednn" and not own.backend.forward.packed
        torch.testing.assert_close(own.embed(batch), fused.embed(batch), rtol=1e-6, atol=1e-6)
        # what a record (mae eval's `forward`) calls each
        said = "fused layers (oneDNN linears, packed weights), float32"
        assert describe(fused.backend.forward, torch.float32) == (
            said if packs else said.replace(", packed weights", "")
        )
        assert describe(own.backend.forward, torch.float32) == said.replace(", packed weights", "")
    assert not plain.info.packed_weights
    calls = {}
    for name, engine in (("fused", fused), ("plain", plain)):
        with CountCalls() as mode:
            out = engine.embed(batch)
        calls[name] = mode.fused_calls(impl)
        torch.testing.assert_close(out, plain.embed(batch), rtol=1e-5, atol=2e-5)
    depth = len(fused.model.blocks)
    # the embed path really runs the fused op
    assert calls == {"fused": fused_calls_per_forward(impl, depth), "plain": 0}
    # bf16: the fused forward on a bf16 copy of the encoder, close to bf16 autocast's
    caplog.clear()
    with caplog.at_level("INFO", logger="mae.service"):
        bf16 = Engine(str(small_model_dir), device="cpu", with_decoder=False, dtype="bfloat16")
    assert bf16.info.fused_layers and bf16.info.dtype == "bfloat16"
    assert "fused encoder layers on: bfloat16, checked against the float32 forward" in caplog.text
    autocast = Engine(
        str(small_model_dir), device="cpu", with_decoder=False, dtype="bfloat16", fused_layers=False
    )
    with CountCalls() as mode:
        got = bf16.embed(batch)
    assert mode.kernel == depth
    assert _cosine(got.numpy(), autocast.embed(batch).numpy()) > 0.999
    assert _cosine(got.numpy(), plain.embed(batch).numpy()) > 0.999
    # float16 on the CPU: the plain forward under autocast, and why
    caplog.clear()
    with caplog.at_level("INFO", logger="mae.service"):
        fp16 = Engine(str(small_model_dir), device="cpu", with_decoder=False, dtype="float16")
    assert not fp16.info.fused_layers
    assert "fused encoder layers off: the forward runs in float16" in caplog.text


def test_the_export_is_made_once_into_the_cache(
    small_model_dir: Path, tmp_path: Path, batch: torch.Tensor
) -> None:
    cache = tmp_path / "cache"
    first = _engine(small_model_dir, "onnxruntime", cache)
    (folder,) = cache.iterdir()  # <weights sha256>-fp32
    assert folder.name == f"{first.info.sha256[:16]}-fp32"
    made = (folder / ONNX_DIR / ONNX_FILE).stat().st_mtime_ns
    again = _engine(small_model_dir, "onnxruntime", cache)
    assert (folder / ONNX_DIR / ONNX_FILE).stat().st_mtime_ns == made  # reused, not redone
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary left
    torch.testing.assert_close(again.embed(batch), first.embed(batch))


def test_a_repo_s_own_onnx_file_is_used_and_a_stale_one_refused(
    small_model_dir: Path, tmp_path: Path, batch: torch.Tensor
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(small_model_dir, repo)
    export_onnx(load_model(repo, with_decoder=False), repo)  # repo/onnx/model.onnx
    cache = tmp_path / "cache"
    engine = _engine(repo, "onnxruntime", cache)
    assert not cache.exists()  # nothing exported: the repo's own file serves
    want = _engine(repo, "torch", cache).embed(batch)
    torch.testing.assert_close(engine.embed(batch), want, rtol=1e-4, atol=1e-4)
    # Weights changed after the export: the file no longer matches them and is refused.
    torch.manual_seed(1)
    create_model("mae_vit_tiny_patch8", **SMALL_MODEL).save_pretrained(repo)
    with pytest.raises(ServiceError, match="does not match the served weights"):
        _engine(repo, "onnxruntime", cache)


def test_onnxruntime_on_cuda_is_refused_in_one_line(small_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs on the CPU here"):
        Engine(str(small_model_dir), device="cuda", backend="onnxruntime", onnx_cache=tmp_path)


def test_a_served_onnxruntime_backend_answers_like_torch(
    small_model_dir: Path, cifar_folder: Path, onnx_cache: Path, tmp_path: Path
) -> None:
    photos = _photos(cifar_folder, 5)
    answers = {}
    for backend in ("torch", "onnxruntime"):
        settings = model_settings(small_model_dir, tmp_path, backend=backend, onnx_cache=onnx_cache)
        for url in serve(settings, ready=True):
            answers[backend] = _embed(url, photos, pooling="mean")
            (card,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
            assert card["backend"] == backend
            assert card["fused_layers"] is (backend == "torch")  # MAE_FUSED_LAYERS, on by default
            assert card["packed_weights"] is (backend == "torch" and _packs())  # MAE_PACK_WEIGHTS
    assert _cosine(answers["onnxruntime"], answers["torch"]) > 0.9999


def test_mae_pack_weights_false_serves_the_same_vectors_from_the_model_s_own_weights(
    small_model_dir: Path, cifar_folder: Path, tmp_path: Path
) -> None:
    """MAE_PACK_WEIGHTS reaches the torch backend through the settings: off, oneDNN's
    linears read the model's own weights, /v1/models says so, and the vectors are the
    packed server's."""
    photos = _photos(cifar_folder, 4)
    packs = _packs()
    answers = {}
    for pack in (True, False):
        for url in serve(model_settings(small_model_dir, tmp_path, pack_weights=pack), ready=True):
            answers[pack] = _embed(url, photos, pooling="mean")
            (card,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
            assert card["fused_layers"] and card["packed_weights"] is (pack and packs)
    np.testing.assert_allclose(answers[False], answers[True], rtol=1e-6, atol=1e-6)


def test_a_repo_pushed_with_onnx_serves_without_exporting(
    small_model_dir: Path, tmp_path: Path, batch: torch.Tensor
) -> None:
    from mae_core.publish import push

    models = tmp_path / "models"
    result = push(small_model_dir, "team/small", to_models_dir=models, with_onnx=True)
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/export.json"} <= set(result.files)
    cache = tmp_path / "cache"
    engine = Engine(
        "local:team/small",
        device="cpu",
        with_decoder=False,
        backend="onnxruntime-int8",
        models_dir=models,
        onnx_cache=cache,
    )
    assert not cache.exists() and engine.info.backend == "onnxruntime-int8"
    card = (models / "team" / "small" / "snapshots" / result.commit / "README.md").read_text()
    assert "## ONNX" in card and "--backend onnxruntime" in card
    want = _engine(small_model_dir, "torch", cache).embed(batch).numpy()
    assert _cosine(engine.embed(batch).numpy(), want) > 0.99
