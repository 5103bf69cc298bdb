"""The bench scripts stay runnable: their --help works (imports and options), and the GPU
check (bench/gpu.sh) ends cleanly, its GPU steps skipped, on a machine without one."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from service.batcher import pool_thread

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run bench/SCRIPT.py with ARGS from the checkout; it must end cleanly."""
    out = subprocess.run(
        [sys.executable, f"bench/{script}.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize(
    "script",
    [
        *("serve", "backends", "train_threads", "decode", "pretrain", "features", "shards"),
        *("load", "forward_workers", "finetune"),
    ],
)
def test_help(script: str) -> None:
    assert "usage:" in _bench(script, "--help", timeout=120).stdout


def test_backends_times_the_fused_forward_beside_the_others(tmp_path: Path) -> None:
    """bench/backends.py: torch eager against the fused forward and both ONNX Runtime files,
    one short round, the fused column with its ratio."""
    pytest.importorskip("onnxruntime")
    out = _bench(
        *("backends", "--batches", "2", "--rounds", "1", "--calls", "1", "--threads", "1"),
        *("--json", str(tmp_path / "b.json")),
        timeout=600,  # it exports and quantises the model first
    )
    assert "torch-fused ms (x)" in out.stdout and "onnxruntime-int8 ms (x)" in out.stdout
    assert "torch-fused-kernel ms (x)" in out.stdout  # the other fused way beside it
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["batch"] == 2 and row["torch-fused_ms"] > 0 and row["torch-fused_speedup"] > 0
    assert row["torch_fused_impl"] == "onednn" and row["torch-fused-kernel_ms"] > 0


@pytest.mark.parametrize("forward", ["plain", "fused", "fused-unpacked"])
def test_serve_s_bare_encoder_runs_the_forward_asked(forward: str) -> None:
    """bench/serve.py's peer process (--bare-worker, as the script starts it): the plain
    forward a user runs by hand, or the fused one the server runs (--peer-forward), on
    packed weights unless the server's are not (MAE_PACK_WEIGHTS=false: --peer-unpacked)."""
    from mae_core.onednn import packed_weight

    args = ["--bare-worker", "--model", "local:mae/vit-tiny-tinyimagenet", "--device", "cpu"]
    args += ["--dtype", "float32", "--threads", "1", "--peer-forward", forward.split("-")[0]]
    args += ["--peer-unpacked"] if forward == "fused-unpacked" else []
    asks = "{}\n" + json.dumps({"batch": 2, "calls": 3}) + "\n"
    out = subprocess.run(
        [sys.executable, "bench/serve.py", *args],
        cwd=ROOT,
        input=asks,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ready, answer = (json.loads(line) for line in out.stdout.splitlines())
    assert ready == {} and answer["bare_batch"] == 2
    assert answer["bare_img_s"] > 0 and answer["bare_cpu_ms_per_img"] > 0
    packs = packed_weight(torch.ones(1, 1)) is not None
    fused = "fused (onednn, packed)" if packs else "fused (onednn)"
    assert (
        answer["bare_forward"]
        == {
            "plain": "plain",
            "fused": fused,
            "fused-unpacked": "fused (onednn)",
        }[forward]
    )


def test_pretrain_compares_both_in_the_precision_asked(tmp_path: Path) -> None:
    """One interleaved step of ours and of transformers', both in bf16 autocast on the CPU."""
    out = _bench(
        *("pretrain", "--variant", "mae_vit_tiny_patch8"),
        *("--batch", "4", "--steps", "1", "--warmup", "1", "--dtype", "bf16"),
        *("--device", "cpu", "--json", str(tmp_path / "p.json")),
    )
    assert "CPU, " in out.stdout and "bf16 autocast" in out.stdout
    assert "| mae_core |" in out.stdout and "| transformers ViTMAEForPreTraining |" in out.stdout
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["args"]["dtype"] == "bf16" and result["img_s"]["ours"] > 0


def test_finetune_compares_ours_with_both_peers(tmp_path: Path) -> None:
    """One interleaved fine-tuning step of ours, timm's as the official repo runs it and
    transformers', from the default model's encoder, in fp32 on the CPU (ours: oneDNN's
    linears where torch has oneDNN)."""
    out = _bench(
        *("finetune", "--model", "local:mae/vit-tiny-tinyimagenet", "--classes", "5"),
        *("--batch", "4", "--steps", "1", "--warmup", "1", "--device", "cpu"),
        *("--json", str(tmp_path / "f.json")),
    )
    assert "CPU, " in out.stdout and ", fp32," in out.stdout
    assert ("oneDNN linears" in out.stdout) == torch.backends.mkldnn.is_available()
    rows = ["mae_core (mae finetune's step)", "timm, as main_finetune.py"]
    rows.append("transformers ViTForImageClassification")
    assert all(f"| {row} |" in out.stdout for row in rows)
    result = json.loads((tmp_path / "f.json").read_text())
    assert set(result["img_s"]) == set(rows) and all(v > 0 for v in result["img_s"].values())
    assert set(result["over_ours"]) == set(rows[1:])


def test_train_threads_runs_real_training_per_layout(cifar_folder: Path, tmp_path: Path) -> None:
    out = _bench(
        *("train_threads", "--data", str(cifar_folder), "--limit", "128"),
        *("--variant", "mae_vit_tiny_patch8", "--batch", "16", "--steps", "10"),
        *("--layouts", "1:0,1:1:passive:bf16", "--rounds", "1", "--json", str(tmp_path / "t.json")),
    )
    assert "| 1:0 |" in out.stdout and "| 1:1:passive:bf16 |" in out.stdout
    rates = json.loads((tmp_path / "t.json").read_text())["rates"]
    assert set(rates) == {"1:0", "1:1:passive:bf16"} and all(r[0] > 0 for r in rates.values())


def test_decode_compares_the_server_path_with_torchvision(tmp_path: Path) -> None:
    """On the CPU: the server's Pillow path and torchvision's decode_jpeg, on the same real
    JPEGs, give close input tensors (the decoders and resizes differ, not the content)."""
    out = _bench(
        *("decode", "--batch", "4", "--rounds", "1", "--device", "cpu"),
        *("--json", str(tmp_path / "d.json")),
        timeout=120,
    )
    rows = {r["path"]: r for r in json.loads((tmp_path / "d.json").read_text())["rows"]}
    assert set(rows) == {"server", "torchvision-cpu"}
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert (
        rows["torchvision-cpu"]["mean_abs_diff"] < 0.05 and "| torchvision-cpu | 4 |" in out.stdout
    )


def test_forward_workers_times_both_layouts_on_the_same_calls(tmp_path: Path) -> None:
    """One loop on 2 threads against 2 loops on 1 each, the default model, real forwards."""
    out = _bench(
        *("forward_workers", "--batches", "2", "--rounds", "1", "--calls", "3"),
        *("--threads", "2", "--json", str(tmp_path / "w.json")),
    )
    (row,) = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert row["batch"] == 2
    assert row["one_cpu_ms_per_img"] > 0 and row["w_cpu_ms_per_img"] > 0
    assert row["w_img_s"] > 0 and "2 loops on 1 each" in out.stdout
    bad = subprocess.run(
        [sys.executable, "bench/forward_workers.py", "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--workers must be 2 or more" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the whole check")
def test_the_gpu_check_skips_its_gpu_steps_without_one() -> None:
    out = subprocess.run(
        ["bash", "bench/gpu.sh"],
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "GPU steps skipped" in out.stdout


def test_the_gpu_check_runs_every_gpu_marked_test() -> None:
    """gpu.sh runs pytest on the files that hold gpu-marked tests only (a device image lacks
    the suite's test-only packages): its own file search must find every file pytest
    selects with -m gpu. device-prep.sh, which readies a lent machine, parses."""
    script = (ROOT / "bench" / "gpu.sh").read_text()
    (search,) = re.findall(r"^mapfile -t gpu_tests < <\((.+)\)$", script, re.MULTILINE)
    found = subprocess.run(
        ["bash", "-c", search], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    selected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert selected and set(found) == selected, (found, out.stdout[-2000:])
    assert {"tests/mae_core/test_devices.py", "tests/service/test_devices.py"} <= selected
    prep = subprocess.run(["bash", "-n", "bench/device-prep.sh"], cwd=ROOT, capture_output=True)
    assert prep.returncode == 0, prep.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU from /proc")
def test_serve_sorts_the_server_cpu_by_thread() -> None:
    """bench/serve.py's per-thread table: CPU of a thread named as the server names its
    device threads counts as the forwards', the main thread's as the event loop's."""
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)

    def burn() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.3:
            pass

    pid = os.getpid()
    with ThreadPoolExecutor(
        1, thread_name_prefix="mae-device", initializer=pool_thread, initargs=(None,)
    ) as pool:
        pool.submit(int).result()  # the thread is started and named
        before = serve.thread_cpu(pid)
        pool.submit(burn).result()
        after = serve.thread_cpu(pid)
    spent = serve.cpu_by_role(before, after, images=10)
    assert set(spent) == {f"{role} cpu_ms_per_img" for role in serve.ROLES}
    assert spent["forwards cpu_ms_per_img"] >= 20  # 300 ms over 10 images, in clock ticks
    assert spent["decode cpu_ms_per_img"] == 0
    assert spent["event loop cpu_ms_per_img"] < spent["forwards cpu_ms_per_img"]
