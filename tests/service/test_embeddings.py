"""The embedding and model routes through a real server: answers, order, concurrency, and
batching that really merges requests (read back from /metrics)."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from mae_core.data import eval_transform
from mae_core.files import sha256_file
from mae_core.hub import load_model
from service.imaging import center_square, decode

from .conftest import SMALL_MODEL, model_settings, serve


def _photos(cifar_folder: Path, n: int) -> list[bytes]:
    files = sorted(cifar_folder.rglob("*.jpg"))[:n]
    assert len(files) == n
    return [f.read_bytes() for f in files]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _embed(url: str, images: list[bytes], **options: object) -> np.ndarray:
    body = {"input": [_b64(d) for d in images], **options}
    r = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [d["index"] for d in answer["data"]] == list(range(len(images)))
    return np.array([d["embedding"] for d in answer["data"]], dtype=np.float64)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_models_reports_the_served_model(model_server, small_model_dir: Path) -> None:
    r = httpx.get(f"{model_server.url}/v1/models", timeout=10)
    assert r.status_code == 200
    (card,) = r.json()["data"]
    assert card["id"] == str(small_model_dir)
    assert card["sha256"] == sha256_file(small_model_dir / "model.safetensors")
    assert card["image_size"] == SMALL_MODEL["img_size"]
    assert (card["patch_size"], card["embed_dim"]) == (8, 192)
    assert card["heads"] == ["encoder", "decoder"]
    assert card["device"] == "cpu" and card["dtype"] == "float32"
    assert card["parameters"]["decoder"] > 0


def test_embeddings_match_the_model_itself(model_server, small_model_dir, cifar_folder) -> None:
    """The served vector is the model's own embedding of the preprocessed image."""
    photos = _photos(cifar_folder, 3)
    model = load_model(small_model_dir)
    for pooling in ("cls", "mean"):
        served = _embed(model_server.url, photos, pooling=pooling, normalize=False)
        imgs = torch.stack(
            [
                eval_transform(
                    center_square(decode(p, max_bytes=1 << 24, max_pixels=1 << 26)), model.config
                )
                for p in photos
            ]
        )
        with torch.inference_mode():
            expected = model.embed(imgs, pooling=pooling).double().numpy()
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    normalised = _embed(model_server.url, photos)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-6)


def test_answer_shape_is_openai_style(model_server, cifar_folder) -> None:
    photo = _photos(cifar_folder, 1)[0]
    r = httpx.post(
        f"{model_server.url}/v1/embeddings",
        json={"input": [f"data:image/jpeg;base64,{_b64(photo)}"], "encoding_format": "base64"},
        timeout=30,
    )
    answer = r.json()
    # One 32 px image in 8 px patches: 16 patch tokens and the class token.
    usage = {"images": 1, "prompt_tokens": 17, "total_tokens": 17}
    assert answer["object"] == "list" and answer["usage"] == usage
    item = answer["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert vector.shape == (192,) and np.isfinite(vector).all()


def test_request_bigger_than_a_batch_is_split_and_kept_in_order(
    small_model_dir, cifar_folder, tmp_path
) -> None:
    photos = _photos(cifar_folder, 11)
    settings = model_settings(small_model_dir, tmp_path, max_batch_images=4)
    for url in serve(settings, ready=True):
        together = _embed(url, photos, normalize=False)
        alone = np.concatenate([_embed(url, [p], normalize=False) for p in photos])
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
        # 11 images in forwards of at most 4: the histogram never saw a batch over 4.
        assert metric(url, "mae_batch_images_bucket", le="4.0") == metric(
            url, "mae_batch_images_count"
        )


def test_64_concurrent_requests_equal_their_solo_answers_and_are_merged(
    small_model_dir, cifar_folder, tmp_path
) -> None:
    photos = _photos(cifar_folder, 40)
    rng = random.Random(0)
    requests = [rng.sample(range(len(photos)), rng.randint(1, 3)) for _ in range(64)]
    settings = model_settings(small_model_dir, tmp_path, max_batch_wait_ms=50.0)
    for url in serve(settings, ready=True):
        solo = {i: _embed(url, [photos[i]], pooling="mean")[0] for i in range(len(photos))}
        batches_before = metric(url, "mae_batch_images_count")
        forwards_before = metric(url, "mae_batch_requests_sum")

        async def one(client: httpx.AsyncClient, picks: list[int]) -> list[list[float]]:
            body = {"input": [_b64(photos[i]) for i in picks], "pooling": "mean"}
            r = await client.post("/v1/embeddings", json=body)
            assert r.status_code == 200, r.text
            return [d["embedding"] for d in r.json()["data"]]

        async def burst(url: str) -> list[list[list[float]]]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
                return await asyncio.gather(*(one(client, picks) for picks in requests))

        answers = asyncio.run(burst(url))
        for picks, vectors in zip(requests, answers, strict=True):
            assert len(vectors) == len(picks)
            for i, v in zip(picks, vectors, strict=True):
                np.testing.assert_allclose(v, solo[i], rtol=1e-4, atol=1e-5)
        forwards = metric(url, "mae_batch_images_count") - batches_before
        merged = metric(url, "mae_batch_requests_sum") - forwards_before
        assert merged == 64
        assert forwards < 64, "no two requests shared a forward"


def test_upload_route_answers_like_the_json_route(model_server, cifar_folder) -> None:
    photos = _photos(cifar_folder, 2)
    files = [("file", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
    r = httpx.post(
        f"{model_server.url}/v1/embeddings/upload",
        files=files,
        data={"pooling": "mean", "normalize": "false"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    uploaded = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(
        uploaded, _embed(model_server.url, photos, pooling="mean", normalize=False), atol=1e-6
    )


def test_metrics_count_requests_by_route_and_status(model_server, cifar_folder) -> None:
    labels = {"route": "/v1/embeddings", "status": "415"}
    before = metric(model_server.url, "mae_requests_total", **labels)
    httpx.post(f"{model_server.url}/v1/embeddings", content=b"x", timeout=10)
    after = metric(model_server.url, "mae_requests_total", **labels)
    assert after == before + 1
    assert metric(model_server.url, "mae_ready") == 1


@pytest.mark.parametrize("reconstruction", [True, False])
def test_decoder_is_loaded_only_for_reconstructions(
    small_model_dir, tmp_path, reconstruction: bool
) -> None:
    settings = model_settings(small_model_dir, tmp_path, reconstruction=reconstruction)
    for url in serve(settings, ready=True):
        (card,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        if reconstruction:
            assert card["heads"] == ["encoder", "decoder"]
        else:
            assert card["heads"] == ["encoder"] and card["parameters"]["decoder"] == 0


def test_a_hub_only_server_says_it_serves_no_models(hub) -> None:
    """`mae serve --hub-only`: every /v1 route answers our JSON 404 (never a 5xx), and
    /ready and /metrics agree that the server is ready."""
    calls = [
        ("GET", "/v1/models", {}),
        ("GET", "/v1/models/mae/vit", {}),
        ("POST", "/v1/embeddings", {"json": {"input": "aGVsbG8="}}),
        ("POST", "/v1/embeddings/upload", {"files": {"file": ("a.png", b"x")}}),
        ("POST", "/v1/reconstructions", {"json": {"image": "aGVsbG8="}}),
    ]
    for method, path, kw in calls:
        r = httpx.request(method, hub.url + path, timeout=10, **kw)
        assert r.status_code == 404, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and "serves no models" in error["message"]
    assert httpx.get(hub.url + "/ready").status_code == 200
    assert metric(hub.url, "mae_ready") == 1


def test_bfloat16_on_the_cpu_answers_close_to_float32(
    small_model_dir: Path, cifar_folder: Path, tmp_path: Path
) -> None:
    """MAE_DTYPE=bfloat16 on a CPU: the forward runs in bf16 (the fused layers; natively on a
    CPU with AVX512-BF16 or AMX), the embeddings stay close to fp32's but are not fp32's, the card
    says the dtype, and a reconstruction works in it too."""
    photos = _photos(cifar_folder, 6)
    answers = {}
    for dtype in ("float32", "bfloat16"):
        for url in serve(model_settings(small_model_dir, tmp_path, dtype=dtype), ready=True):
            answers[dtype] = _embed(url, photos, pooling="mean")
            (card,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
            assert card["dtype"] == dtype and card["device"] == "cpu"
            r = httpx.post(
                f"{url}/v1/reconstructions",
                files={"file": ("a.jpg", photos[0], "image/jpeg")},
                timeout=60,
            )
            assert r.status_code == 200, r.text
    a, b = answers["float32"], answers["bfloat16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.995, cosine
    assert not np.allclose(a, b, rtol=0, atol=1e-6)  # bf16 did run
