"""Faults while training (issue 16): processes killed at random points, checkpoints
damaged after they were written, a disk that fills up. Each ends in a run that goes on
exactly, or in one clear line with the last good checkpoint intact."""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mae_core import load_model
from mae_core.checkpoint import safe_torch_load
from mae_core.model import MaskedAutoencoder
from mae_core.resume import checkpoint_paths, record_path, verify_checkpoint
from mae_core.train import Trainer, TrainingError, train
from tests.mae_core.test_train import MAE, _fast_flags, metrics, run_cfg

EPOCHS = 1  # 300 images // 32 = 9 steps


def _flags(data: Path, out: Path, *extra: str) -> list[str]:
    return [*_fast_flags(data, out), "--epochs", str(EPOCHS), "--resume", "auto", *extra]


def _losses(out: Path) -> list[tuple[int, float, float, float]]:
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in metrics(out)]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _no_leftovers(out: Path) -> None:
    folder = out / "checkpoints"
    assert not list(folder.glob(".*.tmp")), sorted(folder.iterdir())
    ckpts = {p.stem for p in folder.glob("ckpt-*.pt")}
    assert {p.stem for p in folder.glob("ckpt-*.json")} == ckpts  # one record each, no orphans
    assert all(verify_checkpoint(p) for p in checkpoint_paths(out))


@pytest.fixture(scope="module")
def reference(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, through the same command line as the killed ones."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run([MAE, *_flags(cifar_folder, out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(metrics(out)) == 9 * EPOCHS
    return out


def test_sigkill_at_random_points_then_resume_reproduces_the_run(
    cifar_folder: Path, tmp_path: Path, reference: Path
) -> None:
    """SIGKILL (no chance to clean up) at random moments: in a step, while logging, while a
    checkpoint is written. Each time `--resume auto` goes on from the newest good
    checkpoint, and the finished run's losses and weights equal the uninterrupted run's."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "run"
    # A checkpoint every step, so a random kill often lands in the middle of writing one.
    cmd = [MAE, *_flags(cifar_folder, out, "--checkpoint-every", "1", "--keep-checkpoints", "2")]
    kills: list[tuple[int, float]] = []
    while len(kills) < 3:
        before = len(metrics(out)) if (out / "metrics.jsonl").exists() else 0
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        target = before + rng.randint(1, 2)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            m = out / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) >= target:
                break
            time.sleep(0.02)
        delay = rng.uniform(0.0, 0.3)
        time.sleep(delay)
        if proc.poll() is not None:  # finished before the kill: start over in a new folder
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()  # type: ignore[union-attr]
        kills.append((target, round(delay, 3)))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"seed {seed}, kills {kills}: {done.stderr}"
    assert len(kills) == 3, f"the run finished before it was killed (seed {seed})"
    assert _losses(out) == _losses(reference), f"seed {seed}, kills {kills}"
    _same_weights(out / "final", reference / "final")
    _no_leftovers(out)


_KILL_WHILE_WRITING = """
import os, signal, sys
from mae_core import resume
from mae_core.cli import main

when, step = sys.argv[1], int(sys.argv[2])
if when == "mid-write":  # part of the checkpoint's bytes written, then killed
    save, write, writing = resume.save_checkpoint, resume._Counted.write, []
    def noting_save(path, payload):
        writing[:] = [path.name]
        return save(path, payload)
    def dying_write(self, data):
        n = write(self, data)
        if writing == [f"ckpt-{step:08d}.pt"] and self.size > 1_000_000:
            os.kill(os.getpid(), signal.SIGKILL)
        return n
    resume.save_checkpoint, resume._Counted.write = noting_save, dying_write
else:  # its record written, the checkpoint itself not yet renamed into place
    replace = os.replace
    def dying_replace(src, dst):
        if str(dst).endswith(f"ckpt-{step:08d}.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)
    os.replace = dying_replace
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("when", ["mid-write", "before-rename"])
def test_sigkill_while_writing_a_checkpoint(
    cifar_folder: Path, tmp_path: Path, reference: Path, when: str
) -> None:
    """Killed in the middle of writing checkpoint 5 (bytes half out, or the record out and
    the file not yet renamed): the older checkpoints are whole, the next run resumes from
    step 4, removes what the dead writer left, and finishes as the uninterrupted run."""
    out = tmp_path / "run"
    flags = _flags(cifar_folder, out, "--checkpoint-every", "1", "--keep-checkpoints", "2")
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_WHILE_WRITING, when, "5", *flags],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = out / "checkpoints"
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000004.pt", "ckpt-00000003.pt"]
    left = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if when == "mid-write":
        assert any(n.startswith(".ckpt-00000005.pt.") for n in left), left
    else:
        assert (folder / "ckpt-00000005.json").is_file()  # a record without its checkpoint
    done = subprocess.run([MAE, *flags], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr and "ckpt-00000004.pt" in done.stderr
    assert _losses(out) == _losses(reference)
    _same_weights(out / "final", reference / "final")
    _no_leftovers(out)


def _flip_one_bit(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_name_and_auto_goes_back(
    cifar_folder: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "run"
    train(run_cfg(cifar_folder, out, epochs=2, max_steps=6, checkpoint_every=3))
    newest = out / "checkpoints" / "ckpt-00000006.pt"
    record = json.loads(record_path(newest).read_text())
    assert record["size"] == newest.stat().st_size and len(record["sha256"]) == 64
    _flip_one_bit(newest)
    # torch reads the flipped file without a word: only the record shows the damage.
    assert safe_torch_load(newest)["step"] == 6
    with pytest.raises(TrainingError, match=r"ckpt-00000006\.pt does not match the sha256"):
        Trainer({"data": str(cifar_folder), "output": str(out), "resume": str(newest)})
    trainer = Trainer({"data": str(cifar_folder), "output": str(out), "resume": "auto"})
    assert trainer.step == 3
    assert "skipping unreadable checkpoint" in caplog.text
    assert "ckpt-00000006.pt does not match the sha256 recorded" in caplog.text

    # Cut short: the size tells at once.
    older = out / "checkpoints" / "ckpt-00000003.pt"
    older.write_bytes(older.read_bytes()[:-4096])
    with pytest.raises(TrainingError, match=r"ckpt-00000003.pt is \d+ bytes, but \d+ were written"):
        Trainer({"data": str(cifar_folder), "output": str(out), "resume": str(older)})


def test_a_checkpoint_without_a_record_still_loads_with_a_warning(
    cifar_folder: Path, tmp_path: Path, caplog
) -> None:
    """Runs from before records were kept go on; the log says the check was not made."""
    out = tmp_path / "run"
    train(run_cfg(cifar_folder, out, epochs=2, max_steps=3, checkpoint_every=3))
    path = out / "checkpoints" / "ckpt-00000003.pt"
    record_path(path).unlink()
    trainer = Trainer({"data": str(cifar_folder), "output": str(out), "resume": "auto"})
    assert trainer.step == 3
    assert f"{path} has no record to check it against" in caplog.text


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` fail with EFBIG, not a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_checkpointing_keeps_the_last_good_one(
    cifar_folder: Path, tmp_path: Path
) -> None:
    """No room for checkpoint 6 (a file-size limit: the same write error a full disk or a
    quota gives): the run stops with one line naming the file, the cause and the intact
    checkpoint 3, leaves no part of checkpoint 6, and, given room, goes on exactly."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    train(run_cfg(cifar_folder, ref, epochs=EPOCHS, max_steps=6, checkpoint_every=3))
    train(run_cfg(cifar_folder, out, epochs=EPOCHS, max_steps=3, checkpoint_every=3))
    flags = [*_flags(cifar_folder, out), "--max-steps", "6"]
    full = subprocess.run(
        [MAE, *flags],
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(8 << 20),  # a checkpoint is about 75 MB
    )
    assert full.returncode == 2, full.stderr
    line = full.stderr.strip().splitlines()[-1]
    ckpts = out / "checkpoints"
    assert f"could not write {ckpts / 'ckpt-00000006.pt'}: File too large" in line, line
    assert f"the last good checkpoint, {ckpts / 'ckpt-00000003.pt'}, is intact" in line, line
    assert "ulimit -f" in line and "--resume auto" in line and "Traceback" not in full.stderr
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000003.pt"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-00000003.json", "ckpt-00000003.pt"]
    assert verify_checkpoint(ckpts / "ckpt-00000003.pt")

    again = subprocess.run([MAE, *flags], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert _losses(out) == _losses(ref)
    _same_weights(out / "final", ref / "final")


def test_a_full_disk_while_writing_the_final_model(
    cifar_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """final/ is written beside and renamed: a failed write leaves no half folder, says how
    to write it again, and `--resume auto` then writes it from the last checkpoint."""
    out = tmp_path / "run"
    save = MaskedAutoencoder.save_pretrained

    def no_room(self, directory, **kw):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text("{}")  # part written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(directory) / "x"))

    monkeypatch.setattr(MaskedAutoencoder, "save_pretrained", no_room)
    with pytest.raises(
        TrainingError, match=r"could not write the final model to .*final: No space"
    ):
        train(run_cfg(cifar_folder, out, epochs=1))
    assert not (out / "final").exists() and not (out / ".final.partial").exists()
    monkeypatch.setattr(MaskedAutoencoder, "save_pretrained", save)
    final = train({"data": str(cifar_folder), "output": str(out), "resume": "auto"})
    assert final == out / "final" and load_model(final) is not None
