"""`mae ablate`: a two-run sweep on real CIFAR-10 JPEGs, run again (nothing retrained or
re-evaluated), an interrupted run resumed, an edited spec refused, bad specs refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mae_core.ablate import AblationResult, load_spec, parse_spec, run_name, write_results
from mae_core.cli import main
from mae_core.train import train
from tests.cli.test_info import MAE

SPECS = Path(__file__).resolve().parents[2] / "configs" / "ablations"
# Two steps of 8 images per run (16 images, one epoch): the sweep's machinery, not learning.
TINY = {
    "variant": "mae_vit_tiny_patch8",
    "img_size": 32,
    "batch_size": 8,
    "epochs": 1,
    "warmup_epochs": 0,
    "limit": 16,
    "blr": "1e-3",  # as YAML reads it: a string, taken as the float it spells
    "log_every": 1,
    "num_workers": 0,
    "panel_every": 0,
    "threads": 1,  # on a busy 2-core machine, 2 math threads wait for each other
}
ROW_FIELDS = {
    "name",
    "overrides",
    "knn_top1",
    "linear_top1",
    "recon_loss",
    "images_per_s",
    "wall_s",
    "steps",
}


@pytest.fixture
def spec(tmp_path: Path, cifar_folder: Path, cifar_splits: tuple[Path, Path]):
    """-> write(**top-level keys) -> the path of a spec: TINY on the CIFAR folder, mask
    ratio 0.5 and 0.75 (the base's), k-NN on the 2:1 split."""
    train_split, test_split = cifar_splits

    def write(**changes) -> Path:
        doc = {
            "name": "mask-ratio",
            "base": {"data": str(cifar_folder), **TINY},
            "vary": {"mask_ratio": [0.5, 0.75]},
            "eval": {
                "data": str(train_split),
                "test_data": str(test_split),
                "method": "knn",
                "limit": 30,
            },
            **changes,
        }
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))
        return path

    return write


def ablate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAE, "ablate", *args], capture_output=True, text=True, timeout=400)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sweep_writes_tables_and_plot_and_a_second_run_redoes_nothing(
    spec, tmp_path: Path, capsys, caplog
) -> None:
    out = tmp_path / "sweep"
    path = spec()
    doc = yaml.safe_load(path.read_text())
    doc["eval"]["method"] = ["knn", "linear"]
    path.write_text(yaml.safe_dump(doc))
    first = ablate(str(path), "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1/2] mask_ratio=0.5: training" in first.stdout
    assert "[2/2] base: training" in first.stdout  # 0.75 is the base's: the run is "base"
    assert "2 trained, 0 resumed, 0 skipped" in first.stdout

    doc = json.loads((out / "results.json").read_text())
    rows = doc["runs"]
    assert [r["name"] for r in rows] == ["mask_ratio=0.5", "base"]
    assert [r["overrides"] for r in rows] == [{"mask_ratio": 0.5}, {}]
    assert doc["factors"]["mask_ratio"] == {
        "values": [0.5, 0.75],
        "runs": ["mask_ratio=0.5", "base"],
        "base": 0.75,
    }
    for r, ratio in zip(rows, (0.5, 0.75), strict=True):
        assert set(r) >= ROW_FIELDS
        assert 0 <= r["knn_top1"] <= 100 and 0 <= r["linear_top1"] <= 100
        assert math.isfinite(r["recon_loss"]) and r["recon_loss"] > 0
        assert r["recon_mask_ratio"] == ratio  # each run's loss at its own mask ratio
        assert r["recon_images"] == 30
        assert r["steps"] == 2 and r["images_per_s"] > 0 and r["wall_s"] > 0
    # Ordinary run folders, with the base's seed.
    for name, ratio in (("mask_ratio=0.5", 0.5), ("base", 0.75)):
        saved = json.loads((out / "runs" / name / "config.json").read_text())["train"]
        assert (saved["seed"], saved["mask_ratio"], saved["blr"]) == (0, ratio, 1e-3)
        assert (out / "runs" / name / "final" / "model.safetensors").is_file()

    md = (out / "results.md").read_text()
    assert "## mask_ratio" in md and "| **0.75** (base) |" in md and "| 0.5 |" in md
    assert "k-NN top-1 | linear probe top-1 | recon. loss" in md
    png = out / "mask_ratio.png"
    assert png.stat().st_size > 0
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (640, 420)
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 10  # drawn, not blank

    before = mtimes(out / "runs")
    caplog.set_level("INFO")
    assert main(["ablate", str(path), "--output", str(out)]) == 0  # again, in this process
    said = capsys.readouterr().out
    assert said.count("finished, skipped") == 2 and said.count("cached evaluation") == 2
    assert "0 trained, 0 resumed, 2 skipped (finished); 0 evaluated, 2 evaluations" in said
    assert "training mae_vit" not in caplog.text  # the training log's start line
    assert mtimes(out / "runs") == before  # metrics, checkpoints, final/, eval caches
    assert json.loads((out / "results.json").read_text())["runs"] == rows


def test_an_interrupted_run_is_resumed_and_an_edited_spec_refused(
    spec, tmp_path: Path, cifar_folder: Path, capsys
) -> None:
    out = tmp_path / "sweep"
    folder = out / "runs" / "mask_ratio=0.5"
    settings = {**TINY, "blr": 1e-3, "data": str(cifar_folder), "mask_ratio": 0.5}
    assert train({**settings, "output": str(folder), "max_steps": 1}) is not None  # 1 of 2
    ckpt = folder / "checkpoints" / "ckpt-00000001.pt"
    assert ckpt.is_file()
    capsys.readouterr()  # the pretraining's own step lines
    only_half = {"mask_ratio": [0.5]}

    edited = spec(vary=only_half, base={"data": str(cifar_folder), **TINY, "blr": 2e-3})
    assert main(["ablate", str(edited), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mae: error: run mask_ratio=0.5 in ")
    assert "(blr: run 0.001 vs spec 0.002)" in err and "the spec was edited" in err
    # A resume may change the precision, but the runs of one table are trained alike.
    bf16 = spec(vary=only_half, base={"data": str(cifar_folder), **TINY, "precision": "bf16"})
    assert main(["ablate", str(bf16), "--output", str(out)]) == 2
    assert "(precision: run 'auto' vs spec 'bf16')" in capsys.readouterr().err
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "ckpt-00000001.json",
        "ckpt-00000001.pt",
    ]

    assert main(["ablate", str(spec(vary=only_half)), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "[1/1] mask_ratio=0.5: resuming from the checkpoint at step 1" in said
    assert "0 trained, 1 resumed" in said
    steps = [json.loads(ln)["step"] for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert json.loads((out / "results.json").read_text())["runs"][0]["steps"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vary": None}, "no vary: a spec needs base"),
        ({"base": None}, "no base: a spec needs base"),
        ({"varry": {"mask_ratio": [0.5]}}, "unknown key 'varry' (did you mean vary?)"),
        (
            {"vary": {"mask_ration": [0.5]}},
            "unknown setting 'mask_ration' in vary (did you mean mask_ratio?)",
        ),
        ({"base": {"data": "x", "epoch": 2}}, "unknown setting 'epoch' in base (did you mean"),
        ({"vary": {"mask_ratio": []}}, "vary mask_ratio has no values"),
        ({"vary": {"mask_ratio": 0.5}}, "vary mask_ratio must be a list of values"),
        ({"vary": {"seed": [0, 1]}}, "vary seed: seed cannot be swept"),
        ({"vary": {"mask_ratio": [0.5, 1.5]}}, "run mask_ratio=1.5: mask-ratio must be in [0, 1)"),
        ({"vary": {"epochs": ["two"]}}, "vary epochs: expected int, got 'two'"),
        ({"eval": {"method": "knnn"}}, "eval method 'knnn' is not one of knn, linear (did you"),
        ({"eval": {"method": ["knn", "all"]}}, "eval method 'all' is not one of knn, linear"),
        ({"eval": {"limt": 5}}, "unknown eval key 'limt' (did you mean limit?)"),
        ({"base": {"data": "no/such/folder", **TINY}}, "base data: data source 'no/such/folder'"),
        ({"eval": {"data": "no/such/eval", "test_data": "x"}}, "eval data: data source"),
        ({"eval": {"data": "__CIFAR__"}}, "has no held-out split of its own: give eval test_data"),
    ],
)
def test_bad_specs_are_one_line_errors_before_any_training(
    spec, tmp_path: Path, cifar_folder: Path, capsys, change: dict, message: str
) -> None:
    if change.get("eval", {}).get("data") == "__CIFAR__":
        change = {"eval": {"data": str(cifar_folder)}}
    out = tmp_path / "sweep"
    assert main(["ablate", str(spec(**change)), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mae: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_missing_spec_file_and_dry_run(spec, tmp_path: Path, capsys) -> None:
    assert main(["ablate", str(tmp_path / "none.yaml"), "--output", str(tmp_path)]) == 2
    assert "cannot read ablation spec" in capsys.readouterr().err
    out = tmp_path / "sweep"
    assert main(["ablate", str(spec()), "--output", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "[1/2] mask_ratio=0.5: training" in said and "[2/2] base: training" in said
    assert not out.exists()


def test_runs_are_named_by_their_overrides_and_the_base_run_is_shared() -> None:
    s = parse_spec(
        {
            "base": {"data": "d", "blr": "1e-3", "epochs": 2, "warmup_epochs": 1},
            "vary": {"mask_ratio": [0.5, 0.75], "blr": [0.001, 1.5e-4], "clip_grad": [None, 1]},
        }
    )
    assert [r.name for r in s.runs] == ["mask_ratio=0.5", "base", "blr=0.00015", "clip_grad=1"]
    assert [f.runs for f in s.factors] == [
        ["mask_ratio=0.5", "base"],
        ["base", "blr=0.00015"],
        ["base", "clip_grad=1"],
    ]
    assert s.runs[3].settings["clip_grad"] == 1.0 and s.eval.methods == ("knn", "linear")
    assert run_name({"augment": "crop-rand+jitter"}) == "augment=crop-rand+jitter"
    assert run_name({"data": "../a b/c", "norm_pix_loss": False}) == (
        "data=.._a_b_c,norm_pix_loss=false"
    )


SHIPPED = {  # spec -> (the setting it varies, how many values)
    "mask-ratio": ("mask_ratio", 5),
    "mask-strategy": ("mask_strategy", 4),
    "decoder-depth": ("decoder_depth", 4),
    "decoder-width": ("decoder_embed_dim", 3),
    "target": ("target", 3),
    "encoder-mask-tokens": ("encoder_mask_tokens", 2),
    "augment": ("augment", 4),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_are_valid_and_mark_their_base(name: str) -> None:
    s = load_spec(SPECS / f"{name}.yaml")
    assert s.name == name and len(s.factors) == 1 and s.eval.methods == ("knn", "linear")
    (factor,) = s.factors
    assert (factor.key, len(factor.values)) == SHIPPED[name] and factor.base_value in factor.values
    assert "base" in factor.runs and len(s.runs) == len(factor.values)
    assert (s.base["data"], s.eval.data, s.base["seed"]) == ("cifar10", "cifar10", 0)
    assert "paper" in (SPECS / f"{name}.yaml").read_text().lower()


def test_the_shipped_specs_share_one_base_run() -> None:
    """Every shipped spec has the same base and eval, so its `base` run is one training run
    (copy `runs/base` between sweeps rather than train it seven times); a decoder size equal
    to the variant's own (ViT-Ti/4: 4 blocks, 128-d) is that base run, not a copy of it."""
    assert sorted(p.stem for p in SPECS.glob("*.yaml")) == sorted(SHIPPED)
    specs = [load_spec(SPECS / f"{name}.yaml") for name in SHIPPED]
    assert all(s.base == specs[0].base and s.eval == specs[0].eval for s in specs)
    depth = next(s for s in specs if s.name == "decoder-depth").factors[0]
    width = next(s for s in specs if s.name == "decoder-width").factors[0]
    assert (depth.base_value, width.base_value) == (4, 128)
    assert depth.runs == ["decoder_depth=1", "decoder_depth=2", "base", "decoder_depth=8"]
    assert width.runs == ["decoder_embed_dim=64", "base", "decoder_embed_dim=256"]


def _fake_result(tmp_path: Path) -> AblationResult:
    s = parse_spec(
        {
            "name": "target",
            "base": {"data": "d"},
            "vary": {"norm_pix_loss": [True, False]},
            "eval": {"method": ["knn", "linear"]},
        }
    )
    rows = [
        {
            "name": r.name,
            "overrides": r.overrides,
            "knn_top1": 30.0 + i,
            "linear_top1": 40.0 + i,
            "recon_loss": 0.5,
            "recon_mask_ratio": 0.75,
            "images_per_s": 100.0,
            "wall_s": 10.0,
            "steps": 5,
        }
        for i, r in enumerate(s.runs)
    ]
    return AblationResult(s, tmp_path / "out", rows=rows)


def test_a_categorical_factor_gets_bars(tmp_path: Path) -> None:
    result = _fake_result(tmp_path)
    files, note = write_results(result)
    assert note is None and [p.name for p in files][-1] == "norm_pix_loss.png"
    with Image.open(files[-1]) as img:
        assert img.format == "PNG"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| **true** (base) | 30.00 | 40.00 |" in md
    assert "| false | 31.00 | 41.00 |" in md


def test_without_matplotlib_the_tables_are_written_and_the_extra_named(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    files, note = write_results(_fake_result(tmp_path))
    assert [p.name for p in files] == ["results.json", "results.md"]
    assert note is not None and "pip install 'mae-hub[plot]'" in note
    assert not (tmp_path / "out" / "norm_pix_loss.png").exists()
