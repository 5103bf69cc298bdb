"""The `mae` command as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_core import MaskedAutoencoder

MAE = shutil.which("mae", path=str(Path(sys.executable).parent)) or "mae"
DEFAULT = "mae/vit-tiny-tinyimagenet"  # the embedded hub's default model (models/)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_subcommands() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert "info" in out.stdout and "usage: mae" in out.stdout
    bare = run()
    assert bare.returncode == 2 and "usage: mae" in bare.stdout
    assert run("--version").stdout.startswith("mae-hub ")
    assert "MODEL is a folder or weights file" in run("info", "--help").stdout


def test_info_on_a_saved_model(tiny_model: MaskedAutoencoder, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    out = run("info", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    sha = hashlib.sha256((tmp_path / "m" / "model.safetensors").read_bytes()).hexdigest()
    assert f"sha256:{sha}" in out.stdout
    assert "32x32 px, patch 8 (4x4 = 16 patches)" in out.stdout
    assert "32-d, 2 blocks, 2 heads" in out.stdout and "16-d, 2 blocks, 2 heads" in out.stdout

    data = json.loads(run("info", str(tmp_path / "m"), "--json").stdout)
    assert data["params"] == tiny_model.num_params()
    assert data["format"] == "mae-hub" and data["decoder"]["embed_dim"] == 16
    assert {w["sha256"] for w in data["weights"]} >= {sha}


def test_info_on_a_variant_name() -> None:
    out = run("info", "mae_vit_base_patch16")
    assert out.returncode == 0, out.stderr
    assert "768-d, 12 blocks, 12 heads: 85.6M parameters" in out.stdout
    assert "random initialisation" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "no/such/dir"), "model 'no/such/dir' not found"),
        (("info", "local:mae/none"), "no repo 'mae/none'"),
        (("info", "local:bad"), "<namespace>/<name>"),
    ],
)
def test_info_errors_are_one_clear_line(args: tuple[str, ...], message: str, tmp_path) -> None:
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("mae: error: ") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_info_on_a_bare_id_of_the_embedded_hub(tmp_path: Path) -> None:
    """`mae info ns/name` reads the embedded hub's repo, as the service's alias does: the
    same weights as `local:ns/name`, from any working folder."""
    outs = [run("info", "--json", mid, cwd=tmp_path) for mid in (f"local:{DEFAULT}", DEFAULT)]
    assert [o.returncode for o in outs] == [0, 0], outs[1].stderr
    local, bare = (json.loads(o.stdout) for o in outs)
    assert bare["weights"] == local["weights"] and bare["variant"] == "mae_vit_tiny_patch8"
    pinned = run("info", "--no-hash", DEFAULT, "--revision", "main", cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (DEFAULT + "x", f"(did you mean local:{DEFAULT}?)"),
        ("local:" + DEFAULT.replace("tiny", "tyni"), f"(did you mean local:{DEFAULT}?)"),
        ("mae_vit_small_patch15", "nor a variant (did you mean mae_vit_small_patch16"),
        ("mae_vit_base", "variants: mae_vit_tiny_patch4, mae_vit_tiny_patch8,"),
    ],
)
def test_info_near_misses_get_did_you_mean(model: str, message: str, tmp_path: Path) -> None:
    out = run("info", model, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("mae: error: ") and message in out.stderr, out.stderr


def test_info_on_a_bad_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"\x80\x02not really a pickle")
    out = run("info", str(tmp_path / "x.pth"))
    assert out.returncode == 2 and "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_info_says_how_a_model_was_trained(tiny_model: MaskedAutoencoder, tmp_path: Path) -> None:
    """The paper's ablation choices a model was trained with are shown, and in --json."""
    from mae_core.targets import fit_pca_target

    cfg = tiny_model.config.replace(
        target="pca", pca_components=8, mask_strategy="block", encoder_mask_tokens=True
    )
    model = MaskedAutoencoder(cfg)
    fit_pca_target(model, [torch.randn(4, 3, cfg.img_size, cfg.img_size)])
    model.save_pretrained(tmp_path / "m")
    out = run("info", "--no-hash", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("loss"))
    assert "the first 8 coefficients of a per-patch PCA basis" in line, line
    assert "block masking" in line and "mask tokens in the encoder" in line, line
    data = json.loads(run("info", "--no-hash", "--json", str(tmp_path / "m")).stdout)
    assert (data["target"], data["mask_strategy"], data["encoder_mask_tokens"]) == (
        "pca",
        "block",
        True,
    )
