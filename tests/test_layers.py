"""The layering the design promises, checked on the import statements themselves:
the library knows no web framework, and the service's engine side (imaging, engine,
batcher, registry, its errors) knows no HTTP: `errors.py` alone maps its errors to
statuses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ("fastapi", "starlette", "uvicorn")
ENGINE_SIDE = ("imaging", "engine", "batcher", "registry", "engine_errors", "metrics", "settings")
HTTP_SIDE = ("service.errors", "service.web", "service.routes", "service.app")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports made absolute (service.x)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _uses(found: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in found if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", sorted((ROOT / "mae_core").glob("*.py")), ids=lambda p: p.name)
def test_the_library_imports_no_web_framework(path: Path) -> None:
    assert not _uses(imports(path), WEB)


@pytest.mark.parametrize("name", ENGINE_SIDE)
def test_the_engine_side_imports_nothing_of_http(name: str) -> None:
    found = imports(ROOT / "service" / f"{name}.py")
    assert not _uses(found, WEB + HTTP_SIDE), f"service/{name}.py"


def test_the_check_sees_relative_imports() -> None:
    """The checker itself: routes/hub_write.py's `from .hub import ...` is service.routes.hub."""
    assert "service.routes.hub" in imports(ROOT / "service" / "routes" / "hub_write.py")
    assert "service.errors" in imports(ROOT / "service" / "web.py")
