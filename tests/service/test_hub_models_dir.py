"""The checkout's models/ (the hub's default folder) keeps pushed repos out of git: a copy
of the checkout's tracked models/ in a scratch git repo, real pushes into it, and what
`git status` says after."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mae_core.publish import push
from mae_core.repo_store import RepoStore

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPO = "mae/vit-tiny-tinyimagenet"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _status(checkout: Path) -> list[str]:
    return _git(checkout, "status", "--short", "--untracked-files=all").splitlines()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch git repo holding what the checkout tracks of models/ (and the ignore files),
    committed: what a fresh clone has."""
    tracked = _git(ROOT, "ls-files", "-z", "models", ".gitignore").split("\0")
    files = {p for p in tracked if p} | {"models/.gitignore"}  # new here, maybe not committed
    copy = tmp_path / "checkout"
    for rel in sorted(files):
        src, dst = ROOT / rel, copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # snapshots/ hold relative links into blobs/
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copyfile(src, dst)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "a clone")
    assert _status(copy) == []
    assert RepoStore(copy / "models").repos() == [DEFAULT_REPO]
    return copy


def test_pushes_and_deletes_in_models_stay_out_of_git_status(
    checkout: Path, small_model_dir: Path
) -> None:
    models = checkout / "models"
    push(small_model_dir, "team/typo", to_models_dir=models)
    push(small_model_dir, "mae/other", to_models_dir=models)  # beside the default repo
    store = RepoStore(models)
    assert store.repos() == ["mae/other", DEFAULT_REPO, "team/typo"]
    store.delete_repo("team/typo")  # leaves models/.trash/
    assert (models / ".trash").is_dir()
    assert _status(checkout) == []


def test_a_push_to_the_default_repo_itself_shows(checkout: Path, small_model_dir: Path) -> None:
    result = push(small_model_dir, DEFAULT_REPO, to_models_dir=checkout / "models")
    status = _status(checkout)
    repo = f"models/{DEFAULT_REPO}"
    assert f" M {repo}/refs/main" in status
    assert f"?? {repo}/commits/{result.commit}.json" in status
    assert not [line for line in status if f" {repo}/" not in line], status
