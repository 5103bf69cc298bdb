"""The README's two commands, read with `make -n` (nothing runs, nothing is installed):
`make serve` installs what serving needs and passes PORT / HOST on, `make test` adds the
dev extra to the same venv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The commands `make -n ARGS` would run for a fresh venv under `tmp_path`."""
    import os

    # Run under `make test` (CI), the outer make's MAKEFLAGS/MAKELEVEL would turn this into
    # a sub-make that prints "Entering/Leaving directory" lines: a make of its own instead.
    # The Makefile's own variables too: `make test PYTEST_ARGS=...` exports them.
    outer = ("HOST", "PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    outer += ("PYTEST_ARGS", "VENV", "PYTHON", "DEFAULT_MODEL", "BIN")
    base = {k: v for k, v in os.environ.items() if k not in outer}
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", f"VENV={tmp_path / 'venv'}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=True,
    )
    return out.stdout.splitlines()


def test_serve_installs_the_runtime_and_onnx_only(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "serve")
    installs = [ln for ln in lines if "scripts/install.sh" in ln]
    assert installs == [f"PYTHON=python3.11 scripts/install.sh {tmp_path / 'venv'} -e '.[onnx]'"]
    assert lines[-1] == f"{tmp_path / 'venv'}/bin/mae serve local:mae/vit-tiny-tinyimagenet"


def test_test_adds_the_dev_extra_to_the_same_venv(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "test")
    installs = [ln.split("install.sh ", 1)[1] for ln in lines if "scripts/install.sh" in ln]
    venv = tmp_path / "venv"
    assert installs == [f"{venv} -e '.[onnx]'", f"{venv} -e '.[dev]'"]
    assert any(ln.rstrip().endswith("-m pytest") for ln in lines)


def test_serve_passes_port_and_host_from_the_command_line_only(tmp_path: Path) -> None:
    given = dry_run(tmp_path, "serve", "PORT=8013", "HOST=0.0.0.0")[-1]
    assert given.endswith("mae serve local:mae/vit-tiny-tinyimagenet --host 0.0.0.0 --port 8013")
    # HOST and PORT in the environment belong to shells, CI and PaaS: mae serve reads
    # MAE_HOST / MAE_PORT instead.
    inherited = dry_run(tmp_path, "serve", env={"HOST": "buildbox", "PORT": "3000"})[-1]
    assert inherited.endswith("mae serve local:mae/vit-tiny-tinyimagenet")
