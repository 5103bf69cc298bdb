"""The bench scripts stay runnable: their --help works (imports and options), and the GPU
check (bench/gpu.sh) ends cleanly, its GPU steps skipped, on a machine without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["serve", "backends"])  # the two with the most imports
def test_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the whole check")
def test_the_gpu_check_skips_its_gpu_steps_without_one() -> None:
    out = subprocess.run(
        ["bash", "bench/gpu.sh"],
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "GPU steps skipped" in out.stdout
