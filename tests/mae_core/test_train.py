"""Pretraining on real CIFAR-10 JPEGs: the loss falls, resume is exact, signals, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from mae_core import load_model
from mae_core.config import TrainConfig
from mae_core.schedule import adamw_options, learning_rate, param_groups
from mae_core.train import Trainer, TrainingError, train

MAE = str(Path(sys.executable).parent / "mae")
# 16 patches of 8 px at 32 px: small enough for a few steps a second on 2 cores.
FAST = {
    "variant": "mae_vit_tiny_patch8",
    "img_size": 32,
    "batch_size": 32,
    "epochs": 3,
    "warmup_epochs": 1,
    "log_every": 1,
    "num_workers": 0,
    "panel_every": 0,
    "blr": 1e-3,
}


def run_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(out), **{**FAST, **kw})


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]


def test_schedule_and_weight_decay_groups() -> None:
    lrs = [learning_rate(s, 1.0, 0.1, 10, 100) for s in range(101)]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    model = torch.nn.ModuleDict({"lin": torch.nn.Linear(4, 4), "ln": torch.nn.LayerNorm(4)})
    no_decay, decay = param_groups(model, 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    from mae_core import create_model

    names = {id(p): n for n, p in create_model("mae_vit_tiny_patch8").named_parameters()}
    groups = param_groups(create_model("mae_vit_tiny_patch8"), 0.05)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(names)


def test_adamw_is_the_fused_one_on_a_cpu(cifar_folder: Path, tmp_path: Path) -> None:
    """`mae train` and `mae finetune` build the fused AdamW on a CPU (it measured faster)
    and torch's default elsewhere. Its update is the for-loop one to float32 rounding, and
    a checkpoint written with the other implementation resumes with the one it recorded."""
    assert adamw_options(torch.device("cpu")) == {"fused": True}
    assert adamw_options(torch.device("cuda")) == {}
    trainer = Trainer(run_cfg(cifar_folder, tmp_path / "run", device="cpu"))
    assert [g["fused"] for g in trainer.optimizer.param_groups] == [True, True]
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 4, generator=g), torch.randn(4, generator=g)]
    grads = [torch.randn(p.shape, generator=g) for p in params]
    stepped = []
    for options in ({"foreach": False}, adamw_options(torch.device("cpu"))):
        copies = [p.clone().requires_grad_() for p in params]
        opt = torch.optim.AdamW(copies, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, **options)
        for _ in range(3):
            for c, grad in zip(copies, grads, strict=True):
                c.grad = grad.clone()
            opt.step()
        stepped.append([c.detach() for c in copies])
        state = opt.state_dict()
    for a, b in zip(*stepped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, params[0] if a.dim() == 2 else params[1])
    loop = torch.optim.AdamW([p.clone().requires_grad_() for p in params], foreach=False)
    loop.load_state_dict(state)  # the fused run's checkpoint, into a for-loop optimiser
    assert loop.param_groups[0]["fused"] is True


def test_short_run_learns_and_writes_a_loadable_model(cifar_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(run_cfg(cifar_folder, out, epochs=6))
    rows = metrics(out)
    assert len(rows) == 6 * 9  # 300 images // 32 = 9 steps per epoch
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert {"step", "epoch", "loss", "lr", "images_per_s", "grad_norm"} <= set(rows[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["effective_batch"] == 32 and cfg["data"]["images"] == 300
    assert cfg["base_lr"] == pytest.approx(1e-3 * 32 / 256)
    # final/: loads with ours and timm, and carries the training summary.
    model = load_model(final)
    summary = json.loads((final / "mae_config.json").read_text())["training"]
    assert summary["steps"] == 54 and summary["schedule_complete"] is True
    vit = timm.create_model(f"local-dir:{final}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), model.forward_features(x))
    assert len(list((out / "checkpoints").glob("ckpt-*.pt"))) == 3  # last 3 kept


def test_bf16_precision_on_the_cpu_trains_in_bf16(cifar_folder: Path, tmp_path: Path, caplog):
    """--precision bf16 runs the step's matrix products in bf16 autocast on the CPU too;
    the weights stay fp32, the setting is recorded, the start line says it."""
    caplog.set_level("INFO", logger="mae_core.train")
    out = tmp_path / "run"
    trainer = Trainer(run_cfg(cifar_folder, out, epochs=6, precision="bf16"))
    seen = set()
    qkv = trainer.model.blocks[0].attn.qkv
    qkv.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    final = trainer.run()
    assert seen == {torch.bfloat16}
    rows = metrics(out)
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert "device cpu (bf16 autocast)" in caplog.text
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in load_model(final).parameters())


def test_stop_and_resume_equals_the_uninterrupted_run(cifar_folder: Path, tmp_path: Path):
    train(run_cfg(cifar_folder, tmp_path / "full", epochs=2))
    train(run_cfg(cifar_folder, tmp_path / "split", epochs=2, max_steps=7, checkpoint_every=100))
    # Resume with only the per-invocation settings given; the rest come from the checkpoint.
    train({"data": str(cifar_folder), "output": str(tmp_path / "split"), "resume": "auto"})
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 19))
    for a, b in zip(full, split, strict=True):
        assert (a["loss"], a["lr"], a["grad_norm"]) == (b["loss"], b["lr"], b["grad_norm"])
    wa = load_model(tmp_path / "full" / "final").state_dict()
    wb = load_model(tmp_path / "split" / "final").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corrupt_newest_checkpoint_is_skipped(cifar_folder: Path, tmp_path: Path, caplog):
    out = tmp_path / "run"
    train(run_cfg(cifar_folder, out, epochs=2, max_steps=6, checkpoint_every=3))
    newest = sorted((out / "checkpoints").glob("*.pt"))[-1]
    assert newest.name == "ckpt-00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    trainer = Trainer({"data": str(cifar_folder), "output": str(out), "resume": "auto"})
    assert trainer.step == 3
    assert "skipping unreadable checkpoint" in caplog.text and "ckpt-00000006.pt" in caplog.text


def test_thread_counts_are_chosen_and_said(
    cifar_folder: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    from mae_core.config import available_cores
    from mae_core.distributed import math_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = available_cores()
    assert math_threads() == (cores, f"{cores} cores / 1 process(es) on this machine")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores
    assert math_threads()[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert math_threads() == (3, "OMP_NUM_THREADS")
    assert math_threads(5) == (5, "--threads")

    caplog.set_level("INFO", logger="mae_core.train")
    before = torch.get_num_threads()
    seen = []
    trainer = Trainer(run_cfg(cifar_folder, tmp_path / "run", max_steps=1, threads=1))
    step = trainer._step
    trainer._step = lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1]
    trainer.run()
    assert seen == [1] and torch.get_num_threads() == before  # set for the run, given back
    said = "threads: 1 math thread(s) per training process (--threads), the data loaded in"
    assert said in caplog.text
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        run_cfg(cifar_folder, tmp_path / "bad", threads=0)


def test_resume_with_changed_settings_is_refused(cifar_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(run_cfg(cifar_folder, out, max_steps=2))
    with pytest.raises(TrainingError, match=r"cannot resume with different settings \(blr"):
        Trainer(run_cfg(cifar_folder, out, resume="auto", blr=0.5))
    # The same with only that setting given (the checkpoint supplies the others).
    given = {"data": str(cifar_folder), "output": str(out), "resume": "auto", "blr": 0.5}
    with pytest.raises(TrainingError, match=r"cannot resume with different settings \(blr"):
        Trainer(given)
    with pytest.raises(ValueError, match=r"unknown training setting.*: blrr"):
        Trainer({**given, "blrr": 0.5})


def test_resume_repeating_the_original_settings(cifar_folder: Path, tmp_path: Path) -> None:
    """A resume that repeats what the run was started with (`--epochs 3`, not the 400 of
    the default) is checked against the checkpoint's other settings (warmup 1), never
    against defaults the run did not use (warmup 40 > 3); a real conflict names the
    setting with both values; with no checkpoint yet the message says why the defaults
    apply."""
    out = tmp_path / "run"
    first = _cli(*_fast_flags(cifar_folder, out), "--epochs", "3", "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    base = ["train", "--data", str(cifar_folder), "--output", str(out), "--resume", "auto"]
    again = _cli(*base, "--epochs", "3", "--max-steps", "3")
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "ckpt-00000002.pt" in again.stderr
    # The same from Python, with a TrainConfig that holds only what is given again.
    trainer = Trainer(TrainConfig(data=str(cifar_folder), output=str(out), resume="auto", epochs=3))
    assert trainer.step == 3 and trainer.cfg.warmup_epochs == 1 and trainer.cfg.epochs == 3

    conflict = _cli(*base, "--epochs", "4")
    assert conflict.returncode == 2 and "Traceback" not in conflict.stderr
    assert "cannot resume with different settings (epochs: checkpoint 3 vs now 4)" in (
        conflict.stderr
    )
    fresh = _cli(*base[:4], str(tmp_path / "new"), *base[5:], "--epochs", "3")
    assert fresh.returncode == 2, fresh.stderr
    assert "warmup-epochs must be in [0, epochs=3], got 40 (the default" in fresh.stderr
    assert f"no checkpoint to resume from in {tmp_path / 'new'}" in fresh.stderr


def test_non_finite_steps_are_skipped_then_stop(cifar_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(run_cfg(cifar_folder, out, max_bad_steps=3))
    with torch.no_grad():
        trainer.model.decoder_pred.bias.fill_(float("nan"))
    before = trainer.model.norm.weight.clone()
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row at step 3"):
        trainer.run()
    events = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["skipped_non_finite"] * 3
    assert torch.equal(trainer.model.norm.weight, before)  # no update was applied


def _cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAE, *args], capture_output=True, text=True, timeout=300, **kw)


def _fast_flags(data: Path, out: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--output",
        str(out),
        "--variant",
        "mae_vit_tiny_patch8",
        "--img-size",
        "32",
        "--batch-size",
        "32",
        "--log-every",
        "1",
        "--num-workers",
        "0",
        "--panel-every",
        "0",
        "--warmup-epochs",
        "1",
    ]


def test_sigterm_leaves_a_resumable_checkpoint(cifar_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Two loader workers, and the signal sent to the whole process group, as `timeout`,
    # Slurm and systemd do: the workers must leave it to the main process.
    proc = subprocess.Popen(
        [MAE, *_fast_flags(cifar_folder, out), "--epochs", "50", "--num-workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "--resume auto" in err
    assert err.count("received SIGTERM") == 1  # the main process only
    ckpts = sorted((out / "checkpoints").glob("*.pt"))
    assert ckpts and not (out / "final").exists()
    stopped_at = int(ckpts[-1].stem.split("-")[1])
    assert stopped_at == len(metrics(out))
    done = _cli(
        *_fast_flags(cifar_folder, out),
        "--epochs",
        "50",
        "--resume",
        "auto",
        "--max-steps",
        str(stopped_at + 2),
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed from {ckpts[-1]}" in done.stderr
    assert len(metrics(out)) == stopped_at + 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/no/such/folder"], "data source '/no/such/folder' not found"),
        (["--variant", "mae_vit_giant_patch16"], "unknown variant 'mae_vit_giant_patch16'"),
        (["--variant", "mae_vit_tiny_patch9"], "(did you mean mae_vit_tiny_patch8 or "),
        (["--blr=-1e-3"], "blr (base learning rate) must be positive"),
        (["--batch-size", "512"], "batch larger than the data: 300 images"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--precision", "fp16"], "precision must be one of auto, fp32, bf16, got 'fp16'"),
        (["--output", "{file}"], "is a file, not a folder"),
        (["--output", "{run}"], "already holds a run (1 checkpoints, newest ckpt-00000009.pt)"),
    ],
)
def test_bad_training_input_is_one_clear_line(cifar_folder, tmp_path, extra, message) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "ckpt-00000009.pt").write_bytes(b"")
    extra = [a.format(file=tmp_path / "file", run=tmp_path / "old") for a in extra]
    out = _cli(*_fast_flags(cifar_folder, tmp_path / "run"), *extra)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_folder_without_images_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = _cli(*_fast_flags(tmp_path / "empty", tmp_path / "run"))
    assert out.returncode == 2 and "no images found" in out.stderr


def test_two_process_ddp_matches_one_process(cifar_folder: Path, tmp_path: Path) -> None:
    common = ["--epochs", "1", "--max-steps", "4", "--checkpoint-every", "100"]
    single = _cli(*_fast_flags(cifar_folder, tmp_path / "one"), *common)
    assert single.returncode == 0, single.stderr
    # TMPDIR: torchrun's log folders (torchelastic_*) stay in the test's folder, not in /tmp.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "mae_core.cli",
            *_fast_flags(cifar_folder, tmp_path / "two"),
            "--batch-size",
            "16",
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 4
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["effective_batch"] == 32
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
