"""`mae export` / `export_onnx`: the encoder as ONNX that ONNX Runtime runs as torch does,
checked as it is written, and every bad input a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mae_core.export as export
from mae_core import MaskedAutoencoder
from mae_core.cli import main
from mae_core.export import ExportError, export_onnx, session
from tests.cli.test_info import run
from tests.reference import TINY, perturb_

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return perturb_(MaskedAutoencoder(TINY)).eval()


@pytest.fixture(scope="module")
def exported(tiny: MaskedAutoencoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_onnx(tiny, out, quantize="int8", source="tiny")
    return out / "onnx"


def test_the_files_onnxruntime_runs_as_torch(tiny: MaskedAutoencoder, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "export.json",
        "model.onnx",
        "model_quantized.onnx",
    ]
    sess = session(exported / "model.onnx")
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("pixel_values", "last_hidden_state")
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    with torch.inference_mode():
        want = tiny.forward_features(x).numpy()  # (5, 1 + 16, 32)
    got = sess.run(None, {"pixel_values": x.numpy()})[0]
    assert got.shape == want.shape == (5, 17, 32)
    assert np.abs(got - want).max() < 1e-4
    q = session(exported / "model_quantized.onnx").run(None, {"pixel_values": x.numpy()})[0]
    a, b = q.reshape(5, -1), want.reshape(5, -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99 and np.abs(q - want).max() > 1e-4  # close, and really quantised


def test_the_record_says_what_was_checked(exported: Path) -> None:
    record = json.loads((exported / "export.json").read_text())
    assert record["input"]["name"] == "pixel_values" and record["source"] == "tiny"
    assert record["output"]["shape"] == ["batch", 17, 32]
    fp32, int8 = record["checks"]
    assert fp32["file"] == "model.onnx" and fp32["max_abs"] < 1e-4
    assert int8["file"] == "model_quantized.onnx" and int8["min_cosine"] > 0.99
    assert set(record["files"]) == {"model.onnx", "model_quantized.onnx"}


def test_a_mismatch_is_an_error_not_a_warning(
    tiny: MaskedAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "FP32_MAX_ABS", 0.0)  # nothing can match that
    with pytest.raises(ExportError, match="does not match torch"):
        export_onnx(tiny, tmp_path)
    monkeypatch.setattr(export, "FP32_MAX_ABS", 1e-4)
    monkeypatch.setattr(export, "INT8_MIN_COSINE", 1.1)
    with pytest.raises(ExportError, match="int8 quantisation loses too much"):
        export_onnx(tiny, tmp_path, quantize="int8")


def test_mae_export_as_a_user_runs_it(tiny: MaskedAutoencoder, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "model")
    out = run("export", str(tmp_path / "model"), "--output", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "wrote model.onnx, export.json" in out.stdout
    assert "checked against torch: model.onnx: 4 images" in out.stdout  # the sample photos
    assert (tmp_path / "out" / "onnx" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["{model}", "--output", "{tmp}/o", "--format", "tflite"], "invalid choice: 'tflite'"),
        (["{tmp}/empty", "--output", "{tmp}/o"], "is not a model folder"),
        (["mae_vit_tiny_patch8", "--output", "{tmp}/o"], "is a variant name: it has no weights"),
        (["{model}", "--output", "{tmp}/file/o"], "cannot write the export into"),
        (["{model}", "--output", "{tmp}/o", "--check-images", "{tmp}/file"], "cannot read check"),
    ],
)
def test_bad_export_input_is_one_clear_line(
    tiny: MaskedAutoencoder, tmp_path: Path, extra: list[str], message: str, capsys
) -> None:
    """In this process (`main` is what the `mae` script calls; test_mae_export_as_a_user_
    runs_it runs the script itself): the same exit status and stderr, without paying
    torch's import for every case."""
    tiny.save_pretrained(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a folder, not an image")
    args = [a.format(model=tmp_path / "model", tmp=tmp_path) for a in extra]
    try:
        status = main(["export", *args])
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err, err
