"""The README's Python examples run as written (in order, in a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["emb"].shape == (4, 192)  # type: ignore[attr-defined]
    assert (tmp_path / "my-mae" / "model.safetensors").is_file()


def test_layout_names_every_module() -> None:
    """The Layout section is where a new maintainer starts: it must name every module."""
    text = README.read_text()
    layout = text[text.index("## Layout") :]
    layout = layout[: layout.index("\n## ")]
    root = README.parent

    def named(word: str, where: str) -> bool:  # a whole name: data.py is not device_data.py
        return re.search(rf"(?<![\w.]){re.escape(word)}\b", where) is not None

    missing = [
        f"{package}/{p.name}"
        for package in ("mae_core", "service")
        for p in sorted((root / package).glob("*.py"))
        if p.name != "__init__.py" and not named(p.name, layout)
    ]
    (routes_line,) = [ln for ln in layout.splitlines() if ln.strip().startswith("routes/")]
    missing += [
        f"service/routes/{p.name}"
        for p in sorted((root / "service" / "routes").glob("*.py"))
        if p.name != "__init__.py" and not named(p.stem, routes_line)
    ]
    assert not missing, f"README's Layout does not name {missing}"
