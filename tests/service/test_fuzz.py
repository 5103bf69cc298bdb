"""Every route of the HTTP API fuzzed from its own OpenAPI document (schemathesis): values
the document allows and values it does not, with and without the hub's write token.
No answer may be a 5xx, and every status must be one the document lists for the route.

A bounded run for CI (a few examples per operation); more with MAE_FUZZ_EXAMPLES=200.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

import json  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings it)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402

from .conftest import TOKEN, model_settings, serve  # noqa: E402

EXAMPLES = int(os.environ.get("MAE_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: a failure in CI reproduces here
)


@pytest.fixture(scope="module")
def fuzzed(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server with the small model and a writable hub over an empty models folder."""
    settings_ = model_settings(
        small_model_dir, tmp_path_factory.mktemp("fuzz-models"), hub_tokens=[TOKEN]
    )
    yield from serve(settings_, ready=True)


@pytest.fixture(scope="module")
def api_schema(fuzzed: str):
    return schemathesis.openapi.from_url(f"{fuzzed}/openapi.json")


HEADER = {"key": "header", "value": {"summary": "fuzzed"}}


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    """The hub's commit body: the document gives the schema of one line. An operation line
    goes after a valid header, so that the fuzzing reaches the operation's own checks."""
    lines = [value] if value == HEADER or not isinstance(value, dict) else [HEADER, value]
    if isinstance(value, dict) and value.get("key") == "header":
        lines = [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def fuzz(api_schema, base_url: str, headers: dict[str, str]) -> list[str]:
    """Each operation, in both generation modes (values the document allows, values it
    does not), `EXAMPLES` cases each -> the failures, one line per operation and mode.
    (schemathesis' own pytest hook does not run under pytest 9, so the loop is ours.)"""
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # no value breaks the document (e.g. no parameters at all)
                continue
            except Exception as exc:  # a check's failure, with the case that reproduces it
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    return failures


def test_anonymous_clients_get_no_5xx_and_no_undocumented_status(api_schema, fuzzed: str):
    failures = fuzz(api_schema, fuzzed, {})
    assert not failures, "\n\n".join(failures)


def test_writers_get_no_5xx_and_no_undocumented_status(api_schema, fuzzed: str) -> None:
    failures = fuzz(api_schema, fuzzed, {"Authorization": f"Bearer {TOKEN}"})
    assert not failures, "\n\n".join(failures)
