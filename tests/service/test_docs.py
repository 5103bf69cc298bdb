"""docs/service.md against the code: its settings table names every `Settings` field with
the code's default, and no other `MAE_*` variable; its metrics table, every metric of
`Metrics`; its errors table, every error code the service answers; its headings, every
operator and `/v1` route with its method. No server is started."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_origin

import pytest
from pydantic import TypeAdapter

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "service.md"
SERVICE = ROOT / "service"
# The hub routes answer in the Hub's own error shape (`X-Error-Code`), see docs/hub.md.
NOT_API_ERRORS = {SERVICE / "routes" / "hub.py"}
PREFIX = Settings.model_config["env_prefix"]
# A default cell starting with one of these stands for "no value" (None or an empty list).
EMPTY = ("(empty", "(unset", "(none")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_rows(text: str, first: re.Pattern[str]) -> list[list[str]]:
    """Rows of every Markdown table whose first cell matches `first` (backticks kept)."""
    rows = []
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            cells = _cells(line)
            if first.fullmatch(cells[0]):
                rows.append(cells)
    return rows


def _unquote(cell: str) -> str:
    return cell.strip().strip("`").strip()


# -- (a), (b): settings -------------------------------------------------------------------
def _settings_rows() -> dict[str, str]:
    """`MAE_X` -> its default cell, from the settings table (one row per variable)."""
    rows = _table_rows(_text(), re.compile(rf"`{PREFIX}[A-Z0-9_]+`"))
    names = [_unquote(r[0]) for r in rows]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f"docs/service.md: settings listed twice: {duplicated}"
    assert all(len(r) >= 3 for r in rows), "settings rows need: variable | default | meaning"
    return {_unquote(r[0]): r[1] for r in rows}


def _env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def test_settings_table_lists_every_field_and_nothing_else() -> None:
    fields = {_env_name(f) for f in Settings.model_fields}
    table = set(_settings_rows())
    assert not fields - table, f"Settings fields missing from the table: {sorted(fields - table)}"
    assert not table - fields, f"the table lists unknown settings: {sorted(table - fields)}"
    mentioned = set(re.findall(rf"\b{PREFIX}[A-Z][A-Z0-9_]*", _text()))
    assert not mentioned - fields, (
        f"docs/service.md names unknown settings: {sorted(mentioned - fields)}"
    )


def _doc_default(cell: str, annotation: Any) -> Any:
    """The value a default cell stands for: the first `code span` of the cell (or the
    whole cell), read as the field's type the way an environment variable is."""
    if cell.lower().startswith(EMPTY):
        return None
    span = re.search(r"`([^`]*)`", cell)
    raw = (span.group(1) if span else cell).strip()
    if get_origin(annotation) is list:
        return [t.strip() for t in raw.split(",") if t.strip()]
    return TypeAdapter(annotation).validate_python(raw, strict=False)


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_settings_table_defaults_are_the_code_defaults(field: str) -> None:
    info = Settings.model_fields[field]
    cell = _settings_rows().get(_env_name(field))
    assert cell is not None, f"{_env_name(field)} is not in the settings table"
    expected = info.get_default(call_default_factory=True)
    try:
        documented = _doc_default(cell, info.annotation)
    except ValueError as exc:  # pydantic's ValidationError is one
        pytest.fail(f"{_env_name(field)}: default {cell!r} is not a valid value: {exc}")
    if documented is None:
        assert expected in (None, []), (
            f"{_env_name(field)}: documented as empty, code has {expected!r}"
        )
    else:
        assert documented == expected and type(documented) is type(expected), (
            f"{_env_name(field)}: documented default {cell!r}, code default {expected!r}"
        )


# -- (c): metrics -------------------------------------------------------------------------
def _metric_names() -> set[str]:
    """Family names as registered (a Counter's without `_total`)."""
    return {family.name for family in Metrics().registry.collect()}


def test_metrics_table_lists_every_metric() -> None:
    names = _metric_names()
    assert names, "Metrics() registered nothing"
    rows = _table_rows(_text(), re.compile(r"`mae_[a-z0-9_]+`"))
    table = {re.sub(r"_total$", "", _unquote(r[0])) for r in rows}
    assert not names - table, f"metrics missing from docs/service.md: {sorted(names - table)}"
    assert not table - names, f"docs/service.md lists unknown metrics: {sorted(table - names)}"


def test_counters_are_documented_with_their_total_suffix() -> None:
    text = _text()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            assert f"`{family.name}_total`" in text, (
                f"{family.name}: write it as {family.name}_total"
            )


# -- (d): error codes ---------------------------------------------------------------------
def _strings(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def _names(target: ast.AST) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return {n for elt in target.elts for n in _names(elt)}
    return set()


def _error_codes(source: str) -> set[str]:
    """String literals given as an error code: assigned to `code` (the `APIError` classes'
    `status, code = 415, "..."`, or a mapping to codes), passed as `code=`, or the second
    argument of `error_response(status, code, message)`."""
    codes: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any("code" in _names(t) for t in targets):
                codes.update(_strings(node.value))
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "code":
                    codes.update(_strings(kw.value))
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "error_response" and len(node.args) >= 2:
                codes.update(_strings(node.args[1]))
    return {c for c in codes if re.fullmatch(r"[a-z]+(_[a-z]+)*", c)}


def _service_error_codes() -> set[str]:
    codes: set[str] = set()
    for path in sorted(SERVICE.rglob("*.py")):
        if path not in NOT_API_ERRORS:
            codes |= _error_codes(path.read_text(encoding="utf-8"))
    return codes


def test_error_code_scan_finds_the_known_kinds() -> None:
    """The scanner itself: class attributes, `code=` keywords, `error_response` and the
    status mapping of the HTTP error handler are all seen."""
    codes = _service_error_codes()
    assert {"queue_full", "model_not_found", "load_failed", "method_not_allowed"} <= codes


def test_errors_table_lists_every_error_code() -> None:
    codes = _service_error_codes()
    rows = _table_rows(_text(), re.compile(r"`[a-z]+(_[a-z]+)*`"))
    table = {_unquote(r[0]) for r in rows if len(r) >= 3 and re.match(r"\d{3}|other", r[1])}
    assert not codes - table, f"error codes missing from docs/service.md: {sorted(codes - table)}"
    assert not table - codes, f"docs/service.md lists unknown error codes: {sorted(table - codes)}"


# -- (e): routes --------------------------------------------------------------------------
def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers (flat or nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.120 keeps routers
        if inner is not None:
            yield from _routes(inner.routes, prefix + route.include_context.prefix)
        elif getattr(route, "methods", None):
            # {name:path} is the router's converter; the docs write {name}, as OpenAPI does
            yield re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path), set(route.methods)


def _served_routes(tmp_path: Path) -> dict[str, set[str]]:
    settings = Settings(_env_file=None, model=["local:doc/check"], models_dir=tmp_path)
    app = create_app(settings)  # the lifespan (model loading) never runs
    return {
        path: methods - {"HEAD"}
        for path, methods in _routes(app.routes)
        if path.startswith("/v1/") or path in ("/health", "/ready", "/metrics")
    }


def test_every_route_has_a_heading(tmp_path: Path) -> None:
    routes = _served_routes(tmp_path)
    assert {"/health", "/ready", "/metrics", "/v1/embeddings"} <= set(routes)
    headings = [line for line in _text().splitlines() if line.startswith("#")]
    for path, methods in sorted(routes.items()):
        for method in sorted(methods):
            wanted = re.compile(rf"\b{method} {re.escape(path)}(?![\w/-])")
            assert any(wanted.search(h) for h in headings), (
                f"docs/service.md has no heading for {method} {path}"
            )
