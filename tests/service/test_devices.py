"""The service on every device: the CPU here, and a CUDA device where there is one (those
cases are marked `gpu`; `bench/gpu.sh` runs them). The default model (real weights) embeds
and reconstructs real photos on the device as it does on the CPU in float32, in each dtype
the device serves, and a real server on the device answers, refuses a bad image with its
4xx and keeps serving."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.engine import Engine
from service.imaging import ImageLimits
from service.settings import Settings

from .conftest import serve

DEFAULT = "local:mae/vit-tiny-tinyimagenet"
MODELS = Path(__file__).resolve().parents[2] / "models"
LIMITS = ImageLimits(max_bytes=20 << 20, max_pixels=40_000_000)
# (device, dtype) and the smallest cosine of an embedding to the CPU's float32 one.
DTYPES = [
    ("cpu", "float32", 0.99999),
    ("cpu", "bfloat16", 0.99),
    pytest.param("cuda", "float32", 0.9999, marks=pytest.mark.gpu),  # TF32 convolutions
    pytest.param("cuda", "bfloat16", 0.99, marks=pytest.mark.gpu),
    pytest.param("cuda", "float16", 0.999, marks=pytest.mark.gpu),
]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """scikit-image's sample photos (300-640 px) as JPEGs."""
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def reference() -> Engine:
    """The default model on the CPU in float32: what every device is held to."""
    return Engine(DEFAULT, device="cpu", dtype="float32", models_dir=MODELS)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.mark.parametrize(("device", "dtype", "min_cosine"), DTYPES)
def test_the_engine_embeds_and_reconstructs_as_on_the_cpu(
    reference: Engine, photos: list[bytes], device: str, dtype: str, min_cosine: float
) -> None:
    engine = Engine(DEFAULT, device=device, dtype=dtype, models_dir=MODELS)
    assert engine.info.device.startswith(device) and engine.info.dtype == dtype
    batch = torch.stack([reference.prepare(p, LIMITS) for p in photos])
    want, got = reference.embed(batch), engine.embed(batch)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == want.shape
    worst = _cosines(got, want).min().item()  # both poolings, every photo
    assert worst > min_cosine, worst
    # The same mask on any device (drawn on the CPU from the seed), the loss close.
    a = reference.reconstruct(batch[0], 0.75, seed=5)
    b = engine.reconstruct(batch[0], 0.75, seed=5)
    assert np.array_equal(a.mask, b.mask) and np.isfinite(b.patch_error).all()
    assert b.loss == pytest.approx(a.loss, rel=1e-3 if dtype == "float32" else 5e-2)
    assert b.reconstruction.shape == a.reconstruction.shape


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_server_on_the_device(reference: Engine, photos: list[bytes], device: str) -> None:
    """`mae serve --device DEVICE` with its default dtype (float32 on a CPU; bfloat16 on a
    GPU that has it): embeddings close to the CPU's float32 ones, a reconstruction, and a
    non-image refused with 415 while the server keeps answering."""
    settings = Settings(model=[DEFAULT], models_dir=MODELS, device=device, max_batch_wait_ms=2.0)
    for url in serve(settings, ready=True):
        (card,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert card["device"].startswith(device)
        assert card["fused_layers"] == (device == "cpu")
        images = [base64.b64encode(p).decode() for p in photos]
        body = {"input": images, "pooling": "mean", "normalize": False}
        r = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = torch.tensor([d["embedding"] for d in r.json()["data"]])
        batch = torch.stack([reference.prepare(p, LIMITS) for p in photos])
        want = reference.embed(batch)[:, 1]  # the patch tokens' mean
        assert _cosines(got, want).min().item() > (0.99999 if card["dtype"] == "float32" else 0.99)
        r = httpx.post(
            f"{url}/v1/reconstructions",
            files={"file": ("cat.jpg", photos[1], "image/jpeg")},
            data={"seed": "1"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert np.isfinite(r.json()["loss"])
        bad = {"input": [base64.b64encode(b"not an image at all").decode()]}
        r = httpx.post(f"{url}/v1/embeddings", json=bad, timeout=60)
        assert r.status_code == 415 and "input[0]" in r.json()["error"]["message"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
