"""API keys and hub tokens never leave the server: not in an error body, not in a header,
not in any log line, whether the key given is right or wrong."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import httpx

from .conftest import model_settings, serve

API_KEY, HUB_TOKEN = "sk-real-api-key-4c1d", "hf-real-write-token-9e7a"
WRONG_KEY, WRONG_TOKEN = "sk-wrong-key-77b2", "hf-wrong-token-31f0"
SECRETS = (API_KEY, HUB_TOKEN, WRONG_KEY, WRONG_TOKEN)


def test_keys_and_tokens_appear_in_no_answer_and_no_log(
    small_model_dir: Path, cifar_folder: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    photo = base64.b64encode(sorted(cifar_folder.rglob("*.jpg"))[0].read_bytes()).decode()
    settings = model_settings(
        small_model_dir, tmp_path / "models", api_keys=[API_KEY], hub_tokens=[HUB_TOKEN]
    )
    answers: list[httpx.Response] = []
    for url in serve(settings, ready=True):
        body = {"input": photo}
        for key in (None, WRONG_KEY, API_KEY):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            answers.append(httpx.post(f"{url}/v1/embeddings", json=body, headers=headers))
            answers.append(httpx.get(f"{url}/v1/models", headers=headers))
        for token in (WRONG_TOKEN, HUB_TOKEN):
            answers.append(
                httpx.post(
                    f"{url}/api/repos/create",
                    json={"name": "secrets", "organization": "team"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            answers.append(
                httpx.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
            )
    statuses = [r.status_code for r in answers]
    assert statuses[:6] == [401, 401, 401, 401, 200, 200], statuses
    assert statuses[6] == 403 and statuses[8] == 200, statuses  # wrong, then right token
    for r in answers:
        seen = r.text + "".join(f"{k}: {v}\n" for k, v in r.headers.items())
        assert not [s for s in SECRETS if s in seen], (r.request.url, seen[:500])
    assert caplog.records, "the server logged nothing: the check below would prove nothing"
    assert not [s for s in SECRETS if s in caplog.text]
