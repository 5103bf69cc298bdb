"""`/docs` (Swagger UI) and `/redoc` (ReDoc) render in a real Chromium with no network but
127.0.0.1: their assets come from inside the installed package, not from a CDN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.settings import Settings

from .conftest import serve
from .test_page import WAIT_MS, browser  # noqa: F401  (a fixture, shared)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(models_dir=tmp_path_factory.mktemp("models"), hub_only=True)
    yield from serve(settings)


def _offline_page(browser: Any, blocked: list[str]) -> Any:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    return context.new_page()


def test_swagger_ui_renders_offline_with_the_embeddings_body(browser: Any, url: str) -> None:  # noqa: F811
    blocked: list[str] = []
    page = _offline_page(browser, blocked)
    page.goto(f"{url}/docs")
    operation = page.locator("#operations-embeddings-embeddings_v1_embeddings_post")
    operation.wait_for()
    operation.locator(".opblock-summary").click()
    # The request body's schema is in the document, so the page shows it for "Try it out".
    page.get_by_text("application/json", exact=True).first.wait_for()
    assert "encoding_format" in operation.inner_text()
    assert blocked == []
    page.context.close()


def test_redoc_renders_offline(browser: Any, url: str) -> None:  # noqa: F811
    blocked: list[str] = []
    page = _offline_page(browser, blocked)
    page.goto(f"{url}/redoc")
    page.get_by_text("/v1/embeddings/upload").first.wait_for()
    assert "ErrorBody" in page.content() or page.get_by_text("error").count() > 0
    # No script, style or font from elsewhere (fonts are off). ReDoc's bundle still asks
    # for its maker's logo in the sidebar's credit line; blocked, the page is unchanged.
    assert [u for u in blocked if not u.startswith("https://cdn.redoc.ly/")] == []
    page.context.close()


def test_the_pages_reference_only_local_assets(url: str) -> None:
    for path in ("/docs", "/redoc"):
        html = httpx.get(url + path).text
        assert "cdn." not in html and "https://" not in html.replace("https://github", "")
    assert httpx.get(url + "/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_the_package_carries_the_assets() -> None:
    import fastapi_offline

    static = Path(fastapi_offline.__file__).parent / "static"
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= {
        p.name for p in static.iterdir()
    }
