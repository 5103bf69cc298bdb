"""`mae curve RUN`: the training curve PNG of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mae_core.curve import read_metrics
from tests.cli.test_info import run


def _run_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [
        json.dumps({"step": s, "epoch": s / 10, "loss": 1.2 - s / 100, "lr": 1e-3 * s / 40})
        for s in (10, 20, 30, 40)
    ]
    lines.insert(2, json.dumps({"step": 20, "epoch": 2.0, "loss": 0.5, "lr": 5e-4}))  # resumed
    lines.append(json.dumps({"step": 41, "event": "skipped_non_finite", "loss": "nan"}))
    lines.append('{"step": 50, "lo')  # torn by a crash
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.json").write_text(
        json.dumps({"train": {"variant": "mae_vit_tiny_patch8", "img_size": 64}})
    )
    return folder


def test_read_metrics_keeps_the_last_record_of_each_step(tmp_path: Path) -> None:
    records = read_metrics(_run_folder(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[1]["loss"] == 0.5


def test_curve_writes_a_png(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    out = run("curve", str(folder))
    assert out.returncode == 0, out.stderr
    assert f"wrote {folder / 'curve.png'}" in out.stdout
    with Image.open(folder / "curve.png") as img:
        assert img.format == "PNG" and img.size == (800, 450)
        colours = img.convert("RGB").getcolors(1 << 20)
    assert colours is not None and len(colours) > 10  # lines were drawn, not a blank canvas


def test_curve_of_a_folder_that_is_not_a_run_names_the_file(tmp_path: Path) -> None:
    out = run("curve", str(tmp_path))
    assert out.returncode == 2
    assert "metrics.jsonl" in out.stderr and out.stderr.count("\n") == 1
    (tmp_path / "metrics.jsonl").write_text("\n")
    out = run("curve", str(tmp_path))
    assert out.returncode == 2 and "no step records" in out.stderr
