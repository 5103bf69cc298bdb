"""`mae eval` and `mae reconstruct` as a user runs them, on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_core import MaskedAutoencoder
from tests.cli.test_info import run


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (32 px, patch 8) saved with and without its decoder."""
    import torch

    from tests.reference import TINY, perturb_

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("saved")
    model = perturb_(MaskedAutoencoder(TINY))
    model.save_pretrained(root / "full")
    model.save_pretrained(root / "encoder", encoder_only=True)
    return root


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=92)
    return path


def test_eval_writes_a_table_and_json(saved: Path, cifar_splits, tmp_path: Path) -> None:
    train, test = cifar_splits
    out = run(
        "eval", str(saved / "encoder"), "--data", str(train), "--test-data", str(test),
        "--output", str(tmp_path / "r" / "eval.json"), "--num-workers", "0",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "200 train / 100 test images, 10 classes" in out.stdout
    assert "| k-NN (k=20) | cls |" in out.stdout and "| linear probe | cls |" in out.stdout
    result = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert result["model_id"] == str(saved / "encoder")
    assert [r["method"] for r in result["results"]] == ["knn", "linear"]
    assert all(r["baseline_top1"] is not None for r in result["results"])
    assert result["train_data"] == str(train) and result["test_data"] == str(test)


def test_eval_reports_the_reconstruction_loss_of_a_full_model(
    saved: Path, cifar_splits, tmp_path: Path
) -> None:
    train, test = cifar_splits
    out = run(
        "eval", str(saved / "full"), "--data", str(train), "--test-data", str(test),
        "--method", "knn", "--output", str(tmp_path / "eval.json"), "--num-workers", "0",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "eval.json").read_text())["reconstruction"]
    assert rec["images"] == 100 and rec["mask_ratio"] == 0.75
    assert rec["loss"] > 0 and rec["baseline_loss"] > 0
    assert f"reconstruction loss on the 100 test images at mask ratio 0.75: {rec['loss']:.4f}" in (
        out.stdout
    )
    skipped = run(
        "eval", str(saved / "full"), "--data", str(train), "--test-data", str(test),
        "--method", "knn", "--no-reconstruction", "--num-workers", "0",
    )  # fmt: skip
    assert skipped.returncode == 0 and "reconstruction loss" not in skipped.stdout


def test_eval_by_onnxruntime_matches_torch(saved: Path, cifar_splits, tmp_path: Path) -> None:
    """`--backend onnxruntime[-int8]`: the same evaluation with the encoder run by ONNX
    Runtime. fp32 gives torch's features, so torch's accuracies to rounding; int8 stays
    close (the tiny random model's k-NN on 100 test images moves by a few images at most)."""
    pytest.importorskip("onnxruntime")
    train, test = cifar_splits
    results = {}
    for backend in ("torch", "onnxruntime", "onnxruntime-int8"):
        out = run(
            "eval", str(saved / "encoder"), "--data", str(train), "--test-data", str(test),
            "--method", "knn", "--pooling", "both", "--backend", backend, "--num-workers", "0",
            "--output", str(tmp_path / f"{backend}.json"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (f"; features by {backend}" in out.stdout) == (backend != "torch")
        results[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
        assert results[backend]["backend"] == backend
        forward = results[backend]["forward"]
        assert results[backend]["baseline_forward"] == forward
        assert forward == backend if backend != "torch" else forward.endswith(", float32")
    rows = {b: r["results"] for b, r in results.items()}
    for torch_row, fp32_row, int8_row in zip(*rows.values(), strict=True):
        for key in ("top1", "top5", "baseline_top1"):
            assert abs(fp32_row[key] - torch_row[key]) <= 1.0  # one test image in 100
            assert abs(int8_row[key] - torch_row[key]) <= 5.0
    assert len(list(tmp_path.iterdir())) == 3  # the exports lived in temporary folders


def test_eval_in_bf16_says_so(saved: Path, cifar_splits, tmp_path: Path) -> None:
    """`--precision bf16`: the same evaluation with the torch forward in bf16 autocast on the
    CPU, said in the table and recorded in the JSON, accuracies close to fp32's."""
    train, test = cifar_splits
    results = {}
    for precision in ("fp32", "bf16"):
        out = run(
            "eval", str(saved / "encoder"), "--data", str(train), "--test-data", str(test),
            "--method", "knn", "--precision", precision, "--num-workers", "0",
            "--output", str(tmp_path / f"{precision}.json"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        results[precision] = json.loads((tmp_path / f"{precision}.json").read_text())
        assert results[precision]["precision"] == precision
        # The forward that ran, said in the table and recorded: in bf16 the fused layers in
        # bfloat16 where this CPU runs them, else bf16 autocast; fp32 stays float32.
        forward = results[precision]["forward"]
        assert f"; torch forward: {forward}" in out.stdout
        assert forward.endswith(("bfloat16", "bf16 autocast") if precision == "bf16" else "float32")
    a, b = results["fp32"]["results"][0], results["bf16"]["results"][0]
    assert abs(a["top1"] - b["top1"]) <= 5.0  # the tiny random model, 100 test images


def test_eval_help() -> None:
    out = run("eval", "--help")
    assert out.returncode == 0 and "--test-data" in out.stdout and "random" in out.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{train}"], "has no held-out split of its own: give one with --test-data"),
        (["--data", "{flat}", "--test-data", "{test}"], "has no labels"),
        (
            ["--data", "{train}", "--test-data", "{few}"],
            "train and test classes differ (10 vs 2; e.g. ",
        ),
        (["--data", "{train}", "--test-data", "{tmp}/missing"], "missing"),
        (["--data", "{train}", "--method", "svm"], "invalid choice: 'svm'"),
        (["--data", "cifar10:test"], "is the held-out split itself"),
        (["--data", "{train}", "--backend", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["--data", "{train}", "--precision", "fp16"], "invalid choice: 'fp16'"),
        (
            [
                *("--data", "{train}", "--test-data", "{test}"),
                *("--backend", "onnxruntime", "--precision", "bf16"),
            ],
            "the onnxruntime backend has its own",
        ),
        (
            [
                "--data",
                "{train}",
                "--test-data",
                "{test}",
                "--backend",
                "onnxruntime",
                "--device",
                "cuda",
            ],
            "the onnxruntime backend runs on the CPU: use --device cpu",
        ),
    ],
)
def test_eval_bad_inputs(
    saved: Path, cifar_splits, tmp_path: Path, extra: list[str], message: str
) -> None:
    train, test = cifar_splits
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((train / "cat").iterdir())[:3]:
        (flat / f.name).symlink_to(f.resolve())
    few = tmp_path / "few"
    for cls in ("cat", "dog"):
        (few / cls).mkdir(parents=True)
        (few / cls / "a.jpg").symlink_to(next((test / cls).iterdir()).resolve())
    subst = {"train": train, "test": test, "flat": flat, "few": few, "tmp": tmp_path}
    out = run("eval", str(saved / "encoder"), *[a.format(**subst) for a in extra])
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("usage:") or out.stderr.startswith("mae: error: "), out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_reconstruct_a_real_photo(saved: Path, photo: Path, tmp_path: Path) -> None:
    out = run(
        "reconstruct",
        str(photo),
        "--model",
        str(saved / "full"),
        "--output",
        str(tmp_path / "a.png"),
    )
    assert out.returncode == 0, out.stderr
    assert "12/16 patches hidden" in out.stdout and "wrote" in out.stdout
    with Image.open(tmp_path / "a.png") as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # four 256 px panels (32 px upscaled 8x) and five 8 px gaps
        assert img.width == 4 * 256 + 5 * 8
        pic = np.asarray(img)
    # the masked panel (second) shows grey hidden patches: 12 of 16 cells of 64x64 px
    masked = pic[28 : 28 + 256, 8 + 256 + 8 : 8 + 2 * 256 + 8]
    grey = (masked == 128).all(axis=-1).reshape(4, 64, 4, 64).all(axis=(1, 3))
    assert grey.sum() == 12

    again = run(
        "reconstruct",
        str(photo),
        "--model",
        str(saved / "full"),
        "--output",
        str(tmp_path / "b.png"),
    )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other = run(
        "reconstruct", str(photo), "--model", str(saved / "full"), "--output", str(tmp_path / "c.png"),
        "--seed", "1", "--mask-ratio", "0.5",
    )  # fmt: skip
    assert again.returncode == other.returncode == 0 and "8/16 patches hidden" in other.stdout
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a.png").read_bytes()


def test_reconstruct_by_a_mask_strategy(saved: Path, photo: Path, tmp_path: Path) -> None:
    """`--mask-strategy block` writes a PNG whose masked panel hides the patches block
    masking hides for that seed (not random masking's), and says so; grid keeps one patch
    of every 2x2 cell of the 4 x 4 grid."""
    import torch

    from mae_core.masking import sample_mask

    def hidden(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            assert img.format == "PNG"
            pic = np.asarray(img)
        masked = pic[28 : 28 + 256, 8 + 256 + 8 : 8 + 2 * 256 + 8]
        return (masked == 128).all(axis=-1).reshape(4, 64, 4, 64).all(axis=(1, 3))

    def library(strategy: str, seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        masking = sample_mask(torch.zeros(1, 16, 1), 0.75, strategy, generator=generator)
        return masking.mask[0].reshape(4, 4).bool().numpy()

    for strategy in ("block", "grid"):
        out = run(
            "reconstruct", str(photo), "--model", str(saved / "full"),
            "--output", str(tmp_path / f"{strategy}.png"), "--mask-strategy", strategy,
            "--seed", "3",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"12/16 patches hidden ({strategy} masking, mask ratio 0.75, seed 3)" in out.stdout
        assert np.array_equal(hidden(tmp_path / f"{strategy}.png"), library(strategy, 3))
    assert not np.array_equal(library("block", 3), library("random", 3))
    cells = (~hidden(tmp_path / "grid.png")).reshape(2, 2, 2, 2).transpose(0, 2, 1, 3)
    assert (cells.sum(axis=(2, 3)) == 1).all()
    assert "--mask-strategy" in run("reconstruct", "--help").stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask-strategy", "blocks"], "unknown mask strategy 'blocks'"),
        (["--mask-strategy", "grid", "--mask-ratio", "0.5"], "grid masking keeps one patch"),
    ],
)
def test_reconstruct_refuses_a_bad_mask_strategy(
    saved: Path, photo: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    """One line naming the choices (or the ratio grid needs), status 2, nothing written."""
    out = run(
        "reconstruct", str(photo), "--model", str(saved / "full"),
        "--output", str(tmp_path / "x.png"), *extra,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("mae: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    if "blocks" in extra:
        assert "random, block, grid, centre" in out.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("image", "model", "extra", "message"),
    [
        ("{photo}", "encoder", [], "reconstructions need a full checkpoint with the decoder"),
        ("{tmp}/none.jpg", "full", [], "no such image"),
        ("{tmp}/text.jpg", "full", [], "cannot read"),
        ("{photo}", "full", ["--mask-ratio", "1.5"], "mask_ratio"),
        ("{photo}", "full", ["--mask-ratio", "0.99"], "leaves no visible patch"),
    ],
)
def test_reconstruct_bad_inputs(
    saved: Path, photo: Path, tmp_path: Path, image: str, model: str, extra: list[str], message: str
) -> None:
    (tmp_path / "text.jpg").write_text("not a picture")
    image = image.format(photo=photo, tmp=tmp_path)
    out = run(
        "reconstruct",
        image,
        "--model",
        str(saved / model),
        "--output",
        str(tmp_path / "x.png"),
        *extra,
    )
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("mae: error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x.png").exists()


def test_reconstruct_writes_the_format_its_extension_names(
    saved: Path, photo: Path, tmp_path: Path
) -> None:
    """`--output x.jpg` holds JPEG bytes, `.webp` WebP (lossless: the PNG's pixels), in
    any case of the extension."""
    outputs = {"a.png": "PNG", "b.jpg": "JPEG", "c.JPEG": "JPEG", "d.webp": "WEBP"}
    pixels = {}
    for name, fmt in outputs.items():
        out = run(
            "reconstruct", str(photo), "--model", str(saved / "full"),
            "--output", str(tmp_path / name),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"wrote {tmp_path / name}" in out.stdout
        with Image.open(tmp_path / name) as img:
            assert img.format == fmt, name
            pixels[name] = np.asarray(img.convert("RGB")).astype(np.int16)
    assert np.array_equal(pixels["d.webp"], pixels["a.png"])
    assert pixels["b.jpg"].shape == pixels["a.png"].shape
    assert np.abs(pixels["b.jpg"] - pixels["a.png"]).mean() < 3  # quality 95


@pytest.mark.parametrize("name", ["x.gif", "x.tiff", "x"])
def test_reconstruct_refuses_an_output_it_cannot_name(tmp_path: Path, photo: Path, name) -> None:
    """Another extension is one line naming the accepted ones, before the model is even
    looked up (the model given here does not exist)."""
    out = run(
        "reconstruct", str(photo), "--model", str(tmp_path / "no-model"),
        "--output", str(tmp_path / name),
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("mae: error: ") and out.stderr.count("\n") == 1
    assert ".png, .jpg, .jpeg or .webp" in out.stderr and "no-model" not in out.stderr
    assert not (tmp_path / name).exists()
