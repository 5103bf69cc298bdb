"""torchrun across nodes: two agents on 127.0.0.1 as two nodes, a worker killed mid-run.

The restart must resume from the newest checkpoint by itself and lose nothing: the
per-step losses equal those of one uninterrupted process with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mae_core.config import TrainConfig
from mae_core.distributed import shared_store_warning
from mae_core.resume import (
    check_global_batch,
    check_same_step,
    checkpoint_global_batch,
    load_checkpoint,
)
from mae_core.train import Trainer, TrainingError, train
from tests.mae_core.test_train import FAST, _fast_flags, metrics, run_cfg
from tests.service.conftest import _free_port

STEPS = 27  # 3 of the 4 epochs (9 steps each): the rest is left for a one-process resume


def _flags(data: Path, out: Path, max_steps: int = STEPS) -> list[str]:
    """FAST on two processes of batch 16, a checkpoint every 2 steps."""
    return [
        *_fast_flags(data, out),
        *("--blr", str(FAST["blr"]), "--batch-size", "16", "--epochs", "4"),
        *("--max-steps", str(max_steps), "--checkpoint-every", "2"),
    ]


# TORCH_DISABLE_SHARE_RDZV_TCP_STORE: without it torch 2.14's restarted workers connect to
# the dead workers' addresses (pytorch/pytorch#135712); see shared_store_warning.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _node(port: int, job: str, max_restarts: int, trainer_flags: list[str]) -> list[str]:
    """One node's torchrun agent: one worker, c10d rendezvous with the other node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        job,
        "--max-restarts",
        str(max_restarts),
        "-m",
        "mae_core.cli",
        *trainer_flags,
    ]


@contextlib.contextmanager
def _agents(cmds: list[list[str]], logs: list[Path]) -> Iterator[list[subprocess.Popen]]:
    """Start the agents, each in its own session; kill whatever is left of them on exit."""
    procs: list[subprocess.Popen] = []
    try:
        for cmd, log in zip(cmds, logs, strict=True):
            with open(log, "w") as f:
                # torchrun keeps its log folders (torchelastic_*) in the temporary folder
                # and never removes them: point it at the test's own folder.
                env = {**ENV, "TMPDIR": str(log.parent)}
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                )
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the agent's workers too
            p.wait()


def _wait_until(done, procs: list[subprocess.Popen], logs: list[Path], what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not done():
        exited = [p.returncode for p in procs if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            tails = "\n".join(log.read_text()[-2000:] for log in logs)
            pytest.fail(f"no {what} after {timeout} s (agents exited: {exited})\n{tails}")
        time.sleep(0.02)


def _workers_of(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@dataclass
class ElasticRun:
    out: Path
    log: str
    job: str
    killed: int


@pytest.fixture(scope="module")
def reference(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One process, global batch 32, uninterrupted: all 36 steps of the 4 epochs."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(run_cfg(cifar_folder, out, epochs=4, checkpoint_every=100))
    return metrics(out)


@pytest.fixture(scope="module")
def elastic_run(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> ElasticRun:
    """Two nodes x 1 process x batch 16; node 1's worker SIGKILLed once the second
    checkpoint exists; both agents must then finish the run."""
    tmp = tmp_path_factory.mktemp("elastic")
    out, job, port = tmp / "run", "mae-multinode-test", _free_port()
    flags = _flags(cifar_folder, out)
    logs = [tmp / "node0.log", tmp / "node1.log"]
    with _agents([_node(port, job, 2, flags)] * 2, logs) as agents:
        second = out / "checkpoints" / "ckpt-00000004.pt"
        _wait_until(second.exists, agents, logs, second.name, timeout=240)
        workers = _workers_of(agents[1].pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        for agent in agents:
            agent.wait(timeout=240)
        text = "\n".join(log.read_text() for log in logs)
        assert [a.returncode for a in agents] == [0, 0], text[-4000:]
    return ElasticRun(out, text, job, workers[0])


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes_exactly(elastic_run: ElasticRun, reference) -> None:
    out, log = elastic_run.out, elastic_run.log
    assert "exitcode: -9" in log and f"(pid: {elastic_run.killed})" in log
    assert re.search(
        r"elastic restart \d: resuming from the newest checkpoint in \S+ \(no --resume", log
    )
    resumed = re.search(r"resumed from \S+ckpt-(\d+)\.pt at step (\d+)", log)
    assert resumed and 4 <= int(resumed[2]) < STEPS, log[-4000:]
    assert (out / "final").is_dir()
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # redone steps logged once
    for a, b in zip(reference[:STEPS], rows, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    newest = load_checkpoint(out / "checkpoints" / f"ckpt-{STEPS:08d}.pt")
    assert newest["world_size"] == 2 and newest["elastic_run_id"] == elastic_run.job
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["effective_batch"] == 32


@pytest.mark.slow
def test_one_process_resumes_a_two_process_run_with_the_same_global_batch(
    elastic_run: ElasticRun, reference, cifar_folder: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mae_core.train")
    out = tmp_path / "run"
    shutil.copytree(elastic_run.out, out)
    given = {"data": str(cifar_folder), "output": str(out), "resume": "auto", "batch_size": 32}
    train(given)
    assert "written by 2 process(es), now 1: the same global batch 32" in caplog.text
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 37))
    for a, b in zip(reference[STEPS:], rows[STEPS:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [None, 8])
def test_another_global_batch_is_refused(elastic_run: ElasticRun, cifar_folder, batch) -> None:
    given = {"data": str(cifar_folder), "output": str(elastic_run.out), "resume": "auto"}
    if batch:
        given["batch_size"] = batch
    now = batch or 16  # the checkpoint's batch per process, on 1 process now
    with pytest.raises(TrainingError) as e:
        Trainer(given)
    assert f"the checkpoint was trained with 32, now it would be {now}" in str(e.value)
    assert "--batch-size 32 keeps it" in str(e.value)


@pytest.mark.slow
def test_a_restart_resumes_only_this_jobs_run(
    elastic_run: ElasticRun, cifar_folder: Path, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mae_core.train")
    given = {"data": str(cifar_folder), "output": str(elastic_run.out), "batch_size": 32}
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(given)  # the first attempt: no --resume
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-job")
    with pytest.raises(TrainingError, match="torchrun job 'another-job' did not write"):
        Trainer(given)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", elastic_run.job)
    assert Trainer(given).step == STEPS
    assert "elastic restart 1: resuming from the newest checkpoint" in caplog.text


@pytest.mark.slow
def test_nodes_that_see_different_checkpoints_are_refused(
    elastic_run: ElasticRun, cifar_folder: Path, tmp_path: Path
) -> None:
    """--output on node-local disks: node 0's folder holds the run, node 1's is empty.
    Whichever node gets rank 0 (the rendezvous decides), the run is refused: rank 0 sees
    the run and the other rank cannot read its checkpoint, or rank 0 sees nothing and the
    other rank sees a newer checkpoint."""
    shutil.copytree(elastic_run.out, tmp_path / "node0")
    port, logs = _free_port(), [tmp_path / "node0.log", tmp_path / "node1.log"]
    cmds = [
        _node(
            port,
            "mae-multinode-local-disks",
            0,
            [*_flags(cifar_folder, tmp_path / f"node{i}", STEPS + 2), "--resume", "auto"],
        )
        for i in range(2)
    ]
    with _agents(cmds, logs) as agents:
        codes = [a.wait(timeout=240) for a in agents]
    text = "\n".join(log.read_text() for log in logs)
    assert codes[0] != 0 and codes[1] != 0, text[-4000:]
    steps = re.search(r"would start from different steps \(rank 0: step (\d+), rank 1", text)
    newer = re.search(
        rf"rank 0 would start from step 0, but other processes see newer .*rank 1: step {STEPS}",
        text,
    )
    assert (steps and int(steps[1]) == STEPS) or newer, text[-4000:]
    assert "must be a folder every node shares" in text
    assert not (tmp_path / "node1" / "checkpoints").exists()


def test_global_batch_rules() -> None:
    saved = {"train_config": {"batch_size": 16, "accum_iter": 2, "blr": 1e-3}}
    assert checkpoint_global_batch({**saved, "world_size": 4}) == 128
    # Older checkpoints hold no world size: read it back from the schedule's base lr.
    assert checkpoint_global_batch({**saved, "schedule": {"base_lr": 1e-3 * 96 / 256}}) == 96
    assert checkpoint_global_batch(saved) == 32  # no schedule either: one process
    cfg = TrainConfig(data="d", output="o", batch_size=16, accum_iter=2)
    check_global_batch(96, cfg, 3)
    with pytest.raises(TrainingError, match="--batch-size 24 keeps it"):
        check_global_batch(96, cfg, 2)
    with pytest.raises(TrainingError, match=r"no --batch-size keeps it with 5 process\(es\)"):
        check_global_batch(96, cfg, 5)


def test_same_step_check_and_shared_store_warning() -> None:
    check_same_step([7, 7, 7], Path("/runs/x"), newest=[7, 7, 5])  # a stale listing: fine
    check_same_step([5, 5], Path("/runs/x"), newest=[7, 7])  # 7 is corrupt: 5 for all
    with pytest.raises(
        TrainingError, match=r"rank 0 would start from step 0, but .*rank 1: step 9"
    ):
        check_same_step([0, 0], Path("/runs/x"), newest=[0, 9])
    with pytest.raises(TrainingError, match=r"rank 0: step 7, rank 1: step 0\)") as e:
        check_same_step([7, 0], Path("/runs/x"))
    assert "--output /runs/x must be a folder every node shares" in str(e.value)
    shared = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "3"}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in shared_store_warning(shared)
    assert shared_store_warning({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert shared_store_warning({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None
