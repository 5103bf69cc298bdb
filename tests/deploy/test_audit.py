"""scripts/audit.py: what it audits (the runtime set of a serving install, as installed),
and that it never calls an audit clean when packages went unchecked."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit.py"


def _audit_module():
    spec = importlib.util.spec_from_file_location("audit_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_runtime_set_is_the_serving_install_with_exact_versions() -> None:
    pins = _audit_module().runtime_set()
    # direct dependencies, the onnx extra, and uvicorn[standard]'s own extras
    for name in ("torch", "timm", "fastapi", "starlette", "onnxruntime", "uvloop", "httptools"):
        assert pins[name] == metadata.version(name), name
    # transitive ones, followed through the metadata
    assert pins["pydantic-core"] == metadata.version("pydantic-core")
    # test and plot tools are not in a serving install
    for name in ("pytest", "ruff", "schemathesis", "transformers", "matplotlib", "mae-hub"):
        assert name not in pins, name


def test_the_audit_is_clean_only_when_every_package_was_checked(tmp_path: Path) -> None:
    report = tmp_path / "audit.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode in (0, 1, 3), run.stderr
    if run.returncode == 3:  # unreachable advisories: said plainly, never "clean"
        assert "INCOMPLETE" in run.stderr or "no report" in run.stderr, run.stderr
        return
    import json

    data = json.loads(report.read_text())
    if run.returncode == 0:
        assert not data["skipped"] and not [f for f in data["findings"] if not f["known"]]
    else:
        assert [f for f in data["findings"] if not f["known"]], run.stdout
