"""A fine-tuned classifier through the self-hosted hub: `mae push` with its evaluation,
then timm (`hf-hub:`, in a fresh process), `mae pull` and `mae info` on the other side, all
giving the logits of the folder that was pushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, snapshot_download

from mae_core.finetune import load_classifier
from mae_core.model_card import front_matter
from tests.service.conftest import TOKEN, LiveServer

MAE = str(Path(sys.executable).parent / "mae")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_push_pull_keeps_the_logits_labels_and_card(
    hub: LiveServer, finetuned_run: Path, cifar_splits, tmp_path: Path
) -> None:
    final = finetuned_run / "final"
    _, test = cifar_splits
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home")}
    env.pop("HF_HUB_OFFLINE", None)

    def mae(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([MAE, *args], env=env, capture_output=True, text=True, timeout=300)

    scores = tmp_path / "eval.json"
    done = mae("eval", str(final), "--data", str(test), "--method", "classifier",
               "--output", str(scores), "--num-workers", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    pushed = mae("push", str(final), "team/cls", "--endpoint", hub.url, "--token", TOKEN,
                 "--eval", str(scores))  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "files: README.md, config.json, confusion.png, eval_results.json, model.safetensors" in (
        pushed.stdout
    )
    folder = Path(snapshot_download("team/cls", endpoint=hub.url))
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).read_bytes() == (final / name).read_bytes(), name
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    result = json.loads(scores.read_text())
    assert meta["pipeline_tag"] == "image-classification" and meta["library_name"] == "timm"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == {"type": "accuracy", "name": "top-1", "value": round(result["top1"], 2)}
    assert meta["model-index"][0]["results"][0]["dataset"] == {
        "name": "test",
        "type": "imagefolder",
    }
    assert str(test.parent) not in card  # no folder of this machine in a published card
    origin = json.loads((final / "config.json").read_text())["mae_finetune"]["from"]
    assert origin["revision"] in card and origin["encoder_sha256"] in card
    assert all("/" not in w for w in origin["weights"])  # file names, no local paths
    assert "![confusion matrix](confusion.png)" in card

    # timm in a fresh process, through HF_ENDPOINT: the same logits, the labels in order
    script = (
        "import sys, timm, torch\n"
        "vit = timm.create_model('hf-hub:team/cls', pretrained=True).eval()\n"
        "with torch.no_grad(): logits = vit(torch.load(sys.argv[1]))\n"
        "torch.save({'logits': logits, 'labels': vit.pretrained_cfg['label_names']}, sys.argv[2])\n"
    )
    x = torch.randn(4, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    ran = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "timm.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    ours, config = load_classifier(final)
    with torch.no_grad():
        want = ours(x)
    got = torch.load(tmp_path / "timm.pt")
    torch.testing.assert_close(got["logits"], want, rtol=0, atol=0)
    assert got["labels"] == config["label_names"]

    pulled = mae("pull", "team/cls", "--local-dir", str(tmp_path / "dl"))
    assert pulled.returncode == 0 and "files verified" in pulled.stdout, pulled.stderr
    again, _ = load_classifier(tmp_path / "dl")
    with torch.no_grad():
        torch.testing.assert_close(again(x), want, rtol=0, atol=0)
    info = mae("info", "hf-hub:team/cls", "--no-hash")
    assert info.returncode == 0, info.stderr
    assert "10 classes" in info.stdout and f"@ {origin['revision'][:12]}" in info.stdout
    rescored = mae("eval", "hf-hub:team/cls", "--data", str(test), "--method", "classifier",
                   "--num-workers", "0")  # fmt: skip
    assert rescored.returncode == 0, rescored.stderr
    assert f"| fine-tuned classifier | {result['top1']:.2f} |" in rescored.stdout

    stale = tmp_path / "stale.json"  # an evaluation of other weights (the run went on since)
    stale.write_text(json.dumps({**result, "weights_sha256": "0" * 64}))
    refused = mae("push", str(final), "team/cls", "--endpoint", hub.url, "--token", TOKEN,
                  "--eval", str(stale))  # fmt: skip
    assert refused.returncode == 2 and "scored other weights than" in refused.stderr
    onnx = mae("push", str(final), "team/cls", "--endpoint", hub.url, "--token", TOKEN,
               "--with-onnx")  # fmt: skip
    assert onnx.returncode == 2 and "is a fine-tuned classifier: --with-onnx" in onnx.stderr
