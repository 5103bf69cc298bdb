"""Model ids: parsing, and `local:` repos of the embedded hub in the huggingface_hub layout."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_core import MaskedAutoencoder, ModelNotFoundError, load_model, parse_model_id
from mae_core.hub import models_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_revision(root: Path, repo_id: str, files: Path, branch: str = "main") -> str:
    """A revision written the way huggingface_hub's cache stores one: blobs by sha256,
    the snapshot as relative symlinks, the branch ref holding the commit sha."""
    repo = root / repo_id
    digest = hashlib.sha1()
    for f in sorted(files.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    commit = digest.hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in files.iterdir():
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        (repo / "blobs" / blob).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../..") / "blobs" / blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit


def test_parse_model_id() -> None:
    assert parse_model_id("local:mae/tiny").revision is None
    mid = parse_model_id("local:mae/tiny@v1")
    assert (mid.scheme, mid.name, mid.revision, str(mid)) == (
        "local",
        "mae/tiny",
        "v1",
        "local:mae/tiny@v1",
    )
    assert parse_model_id("hf-hub:org/m", revision="abc").revision == "abc"
    assert parse_model_id("/some/dir").scheme == "path"
    for bad, msg in [
        ("local:tiny", "<namespace>/<name>"),
        ("local:a/b@", "malformed revision"),
        ("hf-hub:a/b/c", "<namespace>/<name>"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_model_id(bad)
    with pytest.raises(ValueError, match="names revision 'x' but revision='y'"):
        parse_model_id("local:a/b@x", revision="y")


def test_local_repo_by_branch_and_commit(
    tiny_model: MaskedAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hub"
    tiny_model.save_pretrained(tmp_path / "v1")
    first = write_revision(root, "mae/tiny", tmp_path / "v1")
    monkeypatch.setenv("MAE_MODELS_DIR", str(root))
    monkeypatch.chdir(tmp_path)  # any working directory
    x = torch.randn(1, 3, 32, 32)
    expect = tiny_model.embed(x)
    assert torch.equal(load_model("local:mae/tiny").embed(x), expect)
    assert torch.equal(load_model("local:mae/tiny@main").embed(x), expect)
    assert torch.equal(load_model(f"local:mae/tiny@{first[:8]}").embed(x), expect)
    assert load_model("local:mae/tiny").source_info["model_id"] == "local:mae/tiny"

    # A second revision on main; the first stays loadable by its sha.
    with torch.no_grad():
        tiny_model.norm.bias.add_(1.0)
    tiny_model.save_pretrained(tmp_path / "v2")
    second = write_revision(root, "mae/tiny", tmp_path / "v2")
    assert second != first
    assert torch.equal(load_model("local:mae/tiny").embed(x), tiny_model.embed(x))
    assert torch.equal(load_model("local:mae/tiny", revision=first).embed(x), expect)


def test_local_errors_name_what_exists(
    tiny_model: MaskedAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hub"
    tiny_model.save_pretrained(tmp_path / "v1")
    write_revision(root, "mae/tiny", tmp_path / "v1")
    monkeypatch.setenv("MAE_MODELS_DIR", str(root))
    with pytest.raises(ModelNotFoundError, match=r"no repo 'mae/other'.*it has: mae/tiny"):
        load_model("local:mae/other")
    with pytest.raises(ModelNotFoundError, match=r"has no revision 'dev' \(branches: main\)"):
        load_model("local:mae/tiny@dev")
    with pytest.raises(ModelNotFoundError, match="not found: not a file or folder"):
        load_model(str(tmp_path / "missing"))


def test_default_models_dir_is_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("MAE_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert models_dir() == REPO_ROOT / "models"
    code = "from mae_core.hub import models_dir; print(models_dir())"
    env = {k: v for k, v in os.environ.items() if k != "MAE_MODELS_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()) == REPO_ROOT / "models"


def test_public_names_resolve_and_import_is_light() -> None:
    import mae_core

    assert set(mae_core.__all__) - {"__version__"} == set(mae_core._EXPORTS)
    for name in mae_core._EXPORTS:
        assert getattr(mae_core, name) is not None
    code = "import sys, mae_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_bare_repo_id_is_the_embedded_hubs(
    tiny_model: MaskedAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ns/name[@rev]` that is no folder but a repo of the embedded hub is `local:ns/name`,
    decided once in `parse_model_id`, so every loader (and the service) agrees; a folder of
    that name still wins, and the hub given as `models_root` is the one consulted."""
    root = tmp_path / "hub"
    tiny_model.save_pretrained(tmp_path / "v1")
    commit = write_revision(root, "mae/tiny", tmp_path / "v1")
    monkeypatch.setenv("MAE_MODELS_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    assert parse_model_id("mae/tiny") == parse_model_id("local:mae/tiny")
    assert str(parse_model_id("mae/tiny@main")) == "local:mae/tiny@main"
    assert str(parse_model_id("mae/tiny", revision=commit[:8])) == f"local:mae/tiny@{commit[:8]}"
    assert parse_model_id("mae/other").scheme == "path"  # not in the hub: a path, as before
    x = torch.randn(1, 3, 32, 32)
    model = load_model("mae/tiny")
    assert model.source_info["model_id"] == "local:mae/tiny"
    assert torch.equal(model.embed(x), tiny_model.embed(x))

    elsewhere = tmp_path / "elsewhere"
    write_revision(elsewhere, "team/enc", tmp_path / "v1")
    assert parse_model_id("team/enc").scheme == "path"
    assert str(parse_model_id("team/enc", models_root=elsewhere)) == "local:team/enc"

    (tmp_path / "mae" / "tiny").mkdir(parents=True)  # a folder of the same name wins
    assert parse_model_id("mae/tiny") == parse_model_id(str(Path("mae") / "tiny"))
    assert parse_model_id("mae/tiny").scheme == "path"


def test_a_near_miss_gets_did_you_mean(
    tiny_model: MaskedAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hub"
    tiny_model.save_pretrained(tmp_path / "v1")
    write_revision(root, "mae/vit-tiny-cifar", tmp_path / "v1")
    monkeypatch.setenv("MAE_MODELS_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    hint = r"\(did you mean local:mae/vit-tiny-cifar\?\)"
    with pytest.raises(ModelNotFoundError, match=rf"not a file or folder, nor a repo .*{hint}"):
        load_model("mae/vit-tiny-cifra")
    with pytest.raises(ModelNotFoundError, match=rf"no repo 'mae/vit-tiny-cfar' .*{hint}"):
        load_model("local:mae/vit-tiny-cfar")
    # A repo id far from every repo here: perhaps one on a hub.
    with pytest.raises(ModelNotFoundError, match=r"write hf-hub:facebook/vit-mae-base$"):
        load_model("facebook/vit-mae-base")
    # A misspelt variant: the nearest ones, then every variant.
    with pytest.raises(ModelNotFoundError) as err:
        load_model("mae_vit_tiny_patch7")
    message = str(err.value)
    assert "nor a variant (did you mean mae_vit_tiny_patch8 or " in message
    assert "variants: mae_vit_tiny_patch4, mae_vit_tiny_patch8," in message
    assert message.endswith("mae_vit_huge_patch16")
    # A real variant has no weights to load; the message says what to do instead.
    with pytest.raises(ModelNotFoundError, match="'mae_vit_base_patch16' is a variant name"):
        load_model("mae_vit_base_patch16")
