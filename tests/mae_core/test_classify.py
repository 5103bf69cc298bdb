"""A fine-tuned classifier after `mae finetune`: `mae eval --method classifier` (top-1,
top-5, per class, confusion matrix PNG), `mae info` of its head and labels, and `mae curve`
with the held-out accuracy per epoch; on real CIFAR-10 JPEGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from mae_core.classify import confusion_percent
from mae_core.files import sha256_file
from tests.mae_core.test_finetune import DEFAULT

MAE = str(Path(sys.executable).parent / "mae")


def mae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAE, *args], capture_output=True, text=True, timeout=300)


def test_eval_scores_the_classifier_as_fine_tuning_did(
    finetuned_run: Path, cifar_splits, tmp_path: Path
) -> None:
    """Scored on the 100 images fine-tuning held out, `mae eval` gives the accuracy the run
    recorded for its final weights, and a confusion matrix that adds up."""
    _, test = cifar_splits
    final = finetuned_run / "final"
    out, png = tmp_path / "eval.json", tmp_path / "confusion.png"
    done = mae("eval", str(final), "--data", str(test), "--method", "classifier",
               "--confusion", str(png), "--output", str(out), "--num-workers", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = json.loads((final / "config.json").read_text())["mae_finetune"]["accuracy"]
    result = json.loads(out.read_text())
    assert result["method"] == "classifier" and result["test_size"] == recorded["images"] == 100
    assert abs(result["top1"] - 100 * recorded["top1"]) < 1e-9
    assert abs(result["top5"] - 100 * recorded["top5"]) < 1e-9
    confusion = result["confusion"]
    assert len(confusion) == 10 and all(sum(row) == 10 for row in confusion)
    assert sum(confusion[i][i] for i in range(10)) == round(result["top1"])  # 100 images
    assert [c["label"] for c in result["per_class"]] == sorted(p.name for p in test.iterdir())
    assert f"| fine-tuned classifier | {result['top1']:.2f} | {result['top5']:.2f} |" in done.stdout
    assert "per class (top-1 %): airplane" in done.stdout
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width >= 400
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 10


def test_eval_on_a_subset_of_the_classes_and_bad_input(
    finetuned_run: Path, cifar_splits, tmp_path: Path
) -> None:
    _, test = cifar_splits
    final = finetuned_run / "final"
    some = tmp_path / "three"
    for cls in ("cat", "dog", "ship"):
        (some / cls).mkdir(parents=True)
        for f in (test / cls).iterdir():
            (some / cls / f.name).symlink_to(f.resolve())
    out = tmp_path / "three.json"
    done = mae("eval", str(final), "--data", str(some), "--method", "classifier",
               "--output", str(out), "--num-workers", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["num_classes"] == 10 and result["test_size"] == 30
    assert [c["label"] for c in result["per_class"]] == ["cat", "dog", "ship"]
    labels = result["label_names"]
    seen = [labels.index(c) for c in ("cat", "dog", "ship")]
    assert [sum(row) for row in result["confusion"]] == [10 if i in seen else 0 for i in range(10)]
    # The picture's numbers: each row in % of its class's images, so the diagonal is the
    # class's top-1 even when most predictions went to the 7 classes not scored here.
    names, pct = confusion_percent(result)
    assert names == ["cat", "dog", "ship"] and pct.shape == (3, 3)
    for i, c in enumerate(result["per_class"]):
        assert abs(float(pct[i, i]) - c["top1"]) < 1e-9
    assert result["on_training_data"] is False
    assert result["weights_sha256"] == sha256_file(final / "model.safetensors")

    train, _ = cifar_splits
    seen_before = mae("eval", str(final), "--data", str(train), "--method", "classifier",
                      "--num-workers", "0")  # fmt: skip
    assert seen_before.returncode == 0, seen_before.stderr
    assert "is the data the classifier was fine-tuned on" in seen_before.stderr
    assert "(the fine-tuning data itself, not held out)" in seen_before.stdout

    (tmp_path / "odd" / "zebra").mkdir(parents=True)
    (tmp_path / "odd" / "zebra" / "a.jpg").symlink_to(next((test / "cat").iterdir()))
    for args, message in (
        ((str(final), "--data", str(tmp_path / "odd"), "--method", "classifier"),
         "has classes the classifier does not know: zebra"),
        ((DEFAULT, "--data", str(test), "--method", "classifier"),
         "is not a fine-tuned classifier"),
        ((str(final), "--data", str(test), "--test-data", str(test)),
         "is a fine-tuned classifier: k-NN and the linear probe"),
        ((str(final), "--data", str(test), "--confusion", str(tmp_path / "c.png")),
         "--confusion draws a classifier's confusion matrix"),
    ):  # fmt: skip
        bad = mae("eval", *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1, bad.stderr


def test_info_shows_the_head_labels_and_origin(finetuned_run: Path) -> None:
    final = finetuned_run / "final"
    done = mae("info", str(final))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "fine-tuned ViT classifier" in text and "10 classes, global avg pooling" in text
    assert "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck" in text
    origin = json.loads((final / "config.json").read_text())["mae_finetune"]["from"]
    assert origin["model"] == DEFAULT and len(origin["revision"]) == 40
    assert len(origin["encoder_sha256"]) == 64
    assert f"fine-tuned from  {DEFAULT} @ {origin['revision'][:12]}" in text
    assert "held-out         top-1" in text and "on 100 images" in text
    d = json.loads(mae("info", str(final), "--json", "--no-hash").stdout)
    assert d["kind"] == "classifier" and d["head"]["num_classes"] == 10
    assert d["params"]["head"] == 192 * 10 + 10 + 2 * 192  # head and fc_norm


def test_curve_has_the_held_out_accuracy_panel(finetuned_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    done = mae("curve", str(finetuned_run), "--output", str(png))
    assert done.returncode == 0, done.stderr
    with Image.open(png) as img:
        assert img.size == (800, 700)  # two panels: loss and lr above, accuracy below
        below = img.convert("RGB").crop((0, 420, 800, 700))
        colours = {rgb for _, rgb in below.getcolors(1 << 20) or []}
    assert (44, 160, 44) in colours  # matplotlib's tab:green: the top-1 line is drawn
