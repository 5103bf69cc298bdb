"""What the image runs, without the image: the built wheel, installed by the image's own
install step, serving the default model from a read-only models folder with the
entrypoint's command.

The Dockerfile builds the wheel (`pip wheel --no-deps .`), installs it with
`scripts/install.sh /opt/mae /wheels/*.whl` and runs `mae serve --host 0.0.0.0 --port 8000`
with MAE_MODELS_DIR=/models mounted read-only. Here the same two commands build the wheel
and install it into a fresh virtual environment (the exact torch pins, about a minute
and 5.6 GB from this machine's disk; removed afterwards), the working directory is outside
the checkout, and the models folder is a read-only bind mount of the checkout's models/
(in a private mount namespace, `unshare -m`). The image's HEALTHCHECK command runs
against it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "local:mae/vit-tiny-tinyimagenet"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(out),
            ".",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = out.glob("mae_hub-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment, installed the way the Dockerfile's venv stages do."""
    path = tmp_path_factory.mktemp("image") / "mae"
    env = dict(os.environ, PIP_NO_CACHE_DIR="1")
    env.pop("VIRTUAL_ENV", None)
    try:
        install = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install.sh"), str(path), str(wheel)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
        assert "installed into" in install.stdout and "torch 2.14.1" in install.stdout
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # 5.6 GB: not kept with pytest's tmp dirs


def test_wheel_holds_both_packages_the_page_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("mae_core/cli.py", "mae_core/model.py", "service/app.py", "service/batcher.py"):
        assert module in names
    assert "service/static/index.html" in names
    assert any(n.startswith("service/static/samples/") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "models/", "bench/"))]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mae = mae_core.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _healthcheck_command(port: int, python: Path) -> list[str]:
    """The image's HEALTHCHECK CMD, aimed at `port` instead of 8000."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    (check,) = [i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK"]
    exec_form = re.search(r"CMD (\[.*\])$", check)
    assert exec_form, check
    cmd = json.loads(exec_form.group(1).replace(":8000/", f":{port}/"))
    assert cmd[0] == "python"
    return [str(python), *cmd[1:]]


def _read_only_mount_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / /mnt && mount -o remount,bind,ro /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_installed_wheel_serves_the_default_model_from_a_read_only_folder(
    venv: Path, tmp_path: Path, cifar_folder: Path
) -> None:
    from tests.service.conftest import _free_port

    python = venv / "bin" / "python"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    port = _free_port()
    env = dict(os.environ, MAE_MODELS_DIR=str(models), OMP_NUM_THREADS="1")
    for key in ("MAE_MODEL", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(key, None)
    probe = "import mae_core, service; print(mae_core.__file__, service.__file__)"
    where = subprocess.run(
        [python, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True
    )
    site = str(venv / "lib")
    assert where.stdout.split() and all(p.startswith(site) for p in where.stdout.split())

    # The entrypoint's command line, the default model, models/ bound read-only.
    serve = f"{venv / 'bin' / 'mae'} serve {DEFAULT_MODEL} --host 0.0.0.0 --port {port}"
    read_only = _read_only_mount_works()
    if read_only:
        script = (
            f"mount --bind {ROOT / 'models'} {models} && mount -o remount,bind,ro {models} && "
            f"touch {models}/probe 2>/dev/null && exit 3; exec {serve} --log-level warning"
        )
        cmd = ["unshare", "-m", "sh", "-c", script]
    else:  # no mount namespaces here: the same run over a copy, writable
        shutil.copytree(ROOT / "models", models, symlinks=True, dirs_exist_ok=True)
        cmd = [*serve.split(), "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    health = _healthcheck_command(port, python)
    try:
        assert subprocess.run(health, capture_output=True).returncode != 0  # nothing yet
        deadline = time.monotonic() + 120
        while subprocess.run(health, capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the installed wheel never became ready"
            time.sleep(0.5)
        photo = sorted(cifar_folder.rglob("*.jpg"))[0]
        with photo.open("rb") as f:
            r = httpx.post(f"{url}/v1/embeddings/upload", files={"file": f}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 192  # ViT-Tiny width
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        files = httpx.get(f"{url}/api/models/mae/vit-tiny-tinyimagenet", timeout=10)
        assert files.status_code == 200  # the hub reads work over a read-only folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    assert proc.returncode != 3, "the models folder was writable"
    if not read_only:
        pytest.xfail(f"served, but over a writable copy: no mount namespace here\n{output}")
