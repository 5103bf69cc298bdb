"""The real `openai` client against a real server: `embeddings.create` in every form the
client sends, `models.list` and `models.retrieve`, and the errors it raises."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import model_settings, serve

openai = pytest.importorskip("openai")

DIM, TOKENS = 192, 17  # the small model: ViT-Ti width, 16 patches + the class token


@pytest.fixture(scope="module")
def client(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = model_settings(small_model_dir, tmp_path_factory.mktemp("models"))
    for url in serve(settings, ready=True):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def photos(cifar_folder: Path) -> list[str]:
    files = sorted(cifar_folder.rglob("*.jpg"))[:3]
    return [base64.b64encode(f.read_bytes()).decode() for f in files]


def test_a_string_and_a_list(client, photos: list[str]) -> None:
    model = client.models.list().data[0].id
    one = client.embeddings.create(model=model, input=photos[0])
    assert len(one.data) == 1 and len(one.data[0].embedding) == DIM
    assert one.usage.prompt_tokens == one.usage.total_tokens == TOKENS
    many = client.embeddings.create(model=model, input=photos)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == many.usage.total_tokens == 3 * TOKENS
    np.testing.assert_allclose(many.data[0].embedding, one.data[0].embedding, atol=1e-6)
    assert sum(r.usage.total_tokens for r in (one, many)) == 4 * TOKENS  # sums, no None


def test_base64_encoding_and_the_default_pooling(client, photos: list[str]) -> None:
    model = client.models.list().data[0].id
    floats = client.embeddings.create(model=model, input=photos, encoding_format="float")
    # The client asks for base64 by default and decodes it itself (numpy installed).
    default = client.embeddings.create(model=model, input=photos)
    for a, b in zip(floats.data, default.data, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    # The default pooling is the mean of the patch tokens: the same as asking for it.
    mean = client.embeddings.create(
        model=model, input=photos, encoding_format="float", extra_body={"pooling": "mean"}
    )
    cls = client.embeddings.create(
        model=model, input=photos, encoding_format="float", extra_body={"pooling": "cls"}
    )
    np.testing.assert_allclose(mean.data[1].embedding, floats.data[1].embedding, atol=1e-6)
    assert not np.allclose(cls.data[1].embedding, floats.data[1].embedding, atol=1e-3)


def test_dimensions_the_models_width_or_a_clear_400(client, photos: list[str]) -> None:
    model = client.models.list().data[0].id
    same = client.embeddings.create(model=model, input=photos[0], dimensions=DIM)
    assert len(same.data[0].embedding) == DIM
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=model, input=photos[0], dimensions=64)
    body = err.value.body
    assert body["code"] == "invalid_dimensions" and f"have {DIM}" in body["message"]


def test_models_list_and_retrieve(client) -> None:
    (card,) = client.models.list().data
    assert card.object == "model" and isinstance(card.created, int) and card.owned_by
    got = client.models.retrieve(card.id)  # the id holds a slash: a path, sent as it is
    assert got.id == card.id and got.model_extra["embed_dim"] == DIM
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert "no-such-model" in err.value.body["message"]


def test_bad_input_is_a_client_error(client) -> None:
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=model, input="@@@", encoding_format="float")
    assert (
        err.value.status_code == 400 and "input[0]: not valid base64" in err.value.body["message"]
    )
    text = base64.b64encode(b"plain text, not an image").decode()
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(model=model, input=text, encoding_format="float")
    assert err.value.status_code == 415 and "not an image" in err.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=model, input=[], encoding_format="float")
