"""`service.batcher.Batcher` driven directly, with a fake engine and no HTTP: merging of
queued requests into one forward, splitting of a large request, admission (QueueFull),
deadlines, clients that go away, halving on out-of-memory, engine errors, draining on
close, and exclusive device work (`run`) taking its turn with the batches.

Every image is filled with its own number, and the fake engine answers each row filled
with the number it read, so an answer tells which images it came from and in which order,
and the fake's record tells what each forward held. The fake's forward can be held on a
`threading.Event` (it runs in the batcher's device thread, not on the event loop), so a
test builds a queue state behind a forward in progress and waits for states by polling
what the batcher and the fake expose; no test sleeps a guessed time or measures one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from service.batcher import Batcher
from service.engine_errors import (
    DeadlineExceeded,
    DeviceFailure,
    InvalidInput,
    NoDecoder,
    NotReady,
    OutOfMemory,
    QueueFull,
    ServiceError,
)
from service.metrics import Metrics

# A hang (a batcher that never answers) fails the test instead of blocking the suite.
pytestmark = pytest.mark.timeout(120)

MODEL = "fake"
SIZE = 4  # image side: the fake reads one pixel per image
DIM = 3  # embedding width of the fake
HANG_S = 30.0  # only a guard against hanging forever: no test depends on how long it waits


class FakeEngine:
    """An engine whose forward records its batch, can be held, and can fail on demand."""

    id = MODEL

    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # the image numbers of each embed() call, in order
        self.timeline: list[object] = []  # those calls, and what `run` calls add, in order
        self.threads: set[str] = set()  # the threads embed() ran on
        self.math_threads: list[int] = []  # torch's thread count in each embed() call
        self.most_active = 0  # the most forwards ever in progress at once
        self.active = 0  # forwards in progress, held ones included
        self.oom_above: int | None = None  # OutOfMemoryError for batches larger than this
        self.fail: Exception | None = None  # raise this from every forward
        self._gate = threading.Event()
        self._gate.set()  # open: forwards run straight through
        self._count = threading.Lock()  # `active`, from more than one device thread
        self._own_gates: dict[int, threading.Event] = {}  # first image -> its forward's gate

    def hold(self) -> None:
        """Forwards that start from now on wait inside embed() until `release()`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()
        for gate in self._own_gates.values():
            gate.set()

    def hold_batch(self, first: int) -> None:
        """The forward whose first image is `first` waits until `release_batch(first)`
        (or `release()`), whatever the shared gate says."""
        self._own_gates[first] = threading.Event()

    def release_batch(self, first: int) -> None:
        self._own_gates[first].set()

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        # Recorded on entry, before the gate: a test polls `calls` to know that a forward
        # has started (and is held), and OOM attempts show up in the halving sequence.
        ids = [int(v) for v in batch[:, 0, 0, 0].tolist()]
        self.calls.append(ids)
        self.timeline.append(ids)
        self.threads.add(threading.current_thread().name)
        self.math_threads.append(torch.get_num_threads())
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if not self._own_gates.get(ids[0], self._gate).wait(HANG_S):
                raise RuntimeError("the test never released the held forward")
            if self.fail is not None:
                raise self.fail
            if self.oom_above is not None and len(ids) > self.oom_above:
                raise torch.OutOfMemoryError(f"fake: no room for {len(ids)} images")
            return torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, DIM).clone()
        finally:
            with self._count:
                self.active -= 1


def images(*ids: int) -> torch.Tensor:
    """One (3, SIZE, SIZE) image per number, every pixel set to that number."""
    column = torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1)
    return column.expand(-1, 3, SIZE, SIZE).contiguous()


def numbers(out: torch.Tensor) -> list[int]:
    """The image numbers an answer's rows came from, checking each row is one whole row
    of the fake's output (the right shape, a single number throughout)."""
    assert out.dtype == torch.float32
    assert out.shape[1:] == (2, DIM)
    first = out[:, 0, 0]
    assert torch.equal(out, first.view(-1, 1, 1).expand_as(out))
    return [int(v) for v in first.tolist()]


def far() -> float:
    """A deadline no test reaches."""
    return time.monotonic() + 3600


def sample(batcher: Batcher, name: str, **labels: str) -> float:
    value = batcher.metrics.registry.get_sample_value(name, {"model": MODEL, **labels})
    return 0.0 if value is None else value  # a label set never touched has no sample yet


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll an observable state; the limit only turns a hang into a failure."""
    limit = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def submit(
    batcher: Batcher, *ids: int, deadline: float | None = None
) -> asyncio.Task[torch.Tensor]:
    """Start an embedding request as its own task (as a route would) and let it run up to
    its first suspension: by then it is admitted and queued, or has been refused."""
    task = asyncio.create_task(batcher.embed(images(*ids), far() if deadline is None else deadline))
    await asyncio.sleep(0)  # the new task's first step runs before this one resumes
    return task


async def hold_device(
    batcher: Batcher, fake: FakeEngine, blocker: int = 999
) -> asyncio.Task[torch.Tensor]:
    """A one-image forward that stays in progress until `fake.release()`."""
    fake.hold()
    task = await submit(batcher, blocker)
    await wait_for(lambda: len(fake.calls) == 1, "the held forward to start")
    assert batcher.queued_images == 0  # a job whose forward started no longer counts
    return task


def recording_call(fake: FakeEngine, seen: dict[str, Any]) -> Callable[[], str]:
    """Exclusive device work (a reconstruction, for the batcher) that notes in the fake's
    timeline when it ran, and in `seen` the forwards then in progress, its thread and its
    math threads."""

    def reconstruct() -> str:
        fake.timeline.append("reconstruction")
        seen["forwards_in_progress"] = fake.active
        seen["thread"] = threading.current_thread().name
        seen["math_threads"] = torch.get_num_threads()
        return "reconstructed"

    return reconstruct


@contextlib.asynccontextmanager
async def serving(fake: FakeEngine, **limits: Any) -> AsyncIterator[Batcher]:
    settings: dict[str, Any] = dict(max_batch_images=8, max_wait_s=0.0, max_queue_images=64)
    batcher = Batcher(fake, metrics=Metrics(), **(settings | limits))
    batcher.start()
    try:
        yield batcher
    finally:
        fake.release()  # a failed test must not leave the device thread held
        await batcher.close()


# -- merging and splitting ----------------------------------------------------------------
def test_requests_queued_behind_a_forward_merge_into_the_next_one() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=8) as batcher:
            blocker = await hold_device(batcher, fake)
            # Numbers out of order, so that "its own rows in its order" can fail.
            b = await submit(batcher, 12, 11)
            c = await submit(batcher, 23, 21, 22)
            d = await submit(batcher, 31)
            assert batcher.queued_images == 6
            assert not (b.done() or c.done() or d.done())  # nothing ran behind the held one
            fake.release()
            results = await asyncio.gather(blocker, b, c, d)
            assert batcher.queued_images == 0
        assert [numbers(r) for r in results] == [[999], [12, 11], [23, 21, 22], [31]]
        assert fake.calls == [[999], [12, 11, 23, 21, 22, 31]]  # one forward for the three
        assert sample(batcher, "mae_batch_requests_sum") == 1 + 3
        assert sample(batcher, "mae_images_total", kind="embedding") == 7

    asyncio.run(scenario())


def test_request_larger_than_a_batch_is_split_and_reassembled_in_order() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        ids = [9, 3, 7, 1, 8, 2, 6, 0, 5, 4]
        async with serving(fake, max_batch_images=4) as batcher:
            out = await (await submit(batcher, *ids))
        assert numbers(out) == ids
        assert fake.calls == [ids[0:4], ids[4:8], ids[8:10]]

    asyncio.run(scenario())


def test_tail_of_a_split_request_merges_with_the_next_request() -> None:
    # 10 images in chunks of 4, 4, 2: the 2-image tail leaves room for a 2-image request.
    async def scenario() -> None:
        fake = FakeEngine()
        ids = [19, 13, 17, 11, 18, 12, 16, 10, 15, 14]
        async with serving(fake, max_batch_images=4) as batcher:
            blocker = await hold_device(batcher, fake)
            big = await submit(batcher, *ids)
            small = await submit(batcher, 42, 41)
            assert batcher.queued_images == 12
            fake.release()
            await blocker
            assert numbers(await big) == ids
            assert numbers(await small) == [42, 41]
        assert fake.calls == [[999], ids[0:4], ids[4:8], [*ids[8:10], 42, 41]]

    asyncio.run(scenario())


# -- admission ----------------------------------------------------------------------------
def test_full_queue_refuses_at_once_and_a_request_that_fits_is_admitted() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=8, max_queue_images=8) as batcher:
            blocker = await hold_device(batcher, fake)
            b = await submit(batcher, 1, 2)
            c = await submit(batcher, 3, 4, 5, 6)
            assert batcher.queued_images == 6
            # Refused at once, while the device is still held: it waited for no forward.
            refused = await submit(batcher, 7, 8, 9)  # 6 + 3 > 8
            assert refused.done()
            with pytest.raises(QueueFull) as info:
                refused.result()
            assert info.value.retry_after >= 1
            assert isinstance(info.value.retry_after, int)  # it becomes a Retry-After header
            assert batcher.queued_images == 6  # the refused images took no place
            assert sample(batcher, "mae_rejected_total", reason="queue_full") == 1
            fits = await submit(batcher, 10, 11)  # 6 + 2 == 8: the limit itself is allowed
            assert not fits.done()
            assert batcher.queued_images == 8
            fake.release()
            await blocker
            assert numbers(await b) == [1, 2]
            assert numbers(await c) == [3, 4, 5, 6]
            assert numbers(await fits) == [10, 11]
        assert fake.calls == [[999], [1, 2, 3, 4, 5, 6, 10, 11]]
        assert sample(batcher, "mae_rejected_total", reason="queue_full") == 1

    asyncio.run(scenario())


# -- deadlines and clients that go away ---------------------------------------------------
def test_deadline_passing_in_the_queue_fails_the_request_and_frees_its_place() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=4) as batcher:
            blocker = await hold_device(batcher, fake)
            # 6 images: two jobs (4 + 2), to check the request is still counted once.
            late = await submit(batcher, 1, 2, 3, 4, 5, 6, deadline=time.monotonic() + 0.2)
            after = await submit(batcher, 7, 8)
            assert batcher.queued_images == 8
            # The device stays held until `late` has failed, so its forward cannot start
            # in time however loaded the machine is.
            with pytest.raises(DeadlineExceeded):
                await late
            assert batcher.queued_images == 2  # only `after` still waits
            assert sample(batcher, "mae_queue_images") == 2
            assert sample(batcher, "mae_rejected_total", reason="deadline") == 1
            fake.release()
            await blocker
            assert numbers(await after) == [7, 8]
        assert fake.calls == [[999], [7, 8]]  # the expired images never reached the engine
        assert sample(batcher, "mae_rejected_total", reason="deadline") == 1

    asyncio.run(scenario())


def test_request_already_past_its_deadline_never_reaches_the_engine() -> None:
    # The idle worker may drop the expired jobs itself, or the request's timer may fire
    # first: either way one DeadlineExceeded, counted once, and no forward.
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=4) as batcher:
            expired = await submit(batcher, *range(10), deadline=time.monotonic() - 1)
            with pytest.raises(DeadlineExceeded):
                await expired
            assert batcher.queued_images == 0
            assert sample(batcher, "mae_rejected_total", reason="deadline") == 1
            assert numbers(await (await submit(batcher, 50, 51))) == [50, 51]  # still serving
        assert fake.calls == [[50, 51]]

    asyncio.run(scenario())


def test_cancelled_request_frees_its_place_and_never_reaches_the_engine() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake) as batcher:
            blocker = await hold_device(batcher, fake)
            gone = await submit(batcher, 1, 2, 3)
            stays = await submit(batcher, 4, 5)
            assert batcher.queued_images == 5
            gone.cancel()  # what the server does when the client disconnects
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert batcher.queued_images == 2
            assert sample(batcher, "mae_queue_images") == 2
            fake.release()
            await blocker
            assert numbers(await stays) == [4, 5]
        assert fake.calls == [[999], [4, 5]]
        assert sample(batcher, "mae_rejected_total", reason="deadline") == 0  # not a timeout

    asyncio.run(scenario())


def test_request_cancelled_while_its_batch_is_being_gathered_is_left_out() -> None:
    # A long max_wait_s keeps the first job in the batch being gathered (out of the queue
    # proper, still counted in it) until the batch is full.
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=4, max_wait_s=3600.0) as batcher:
            gone = await submit(batcher, 1)
            # Private state, read only to know the worker has taken the job into its batch.
            await wait_for(lambda: not batcher._jobs, "the worker to gather the job")
            assert batcher.queued_images == 1
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert batcher.queued_images == 0
            # A full batch's worth: the gathering ends without waiting max_wait_s.
            assert numbers(await (await submit(batcher, 5, 6, 7, 8))) == [5, 6, 7, 8]
        assert fake.calls == [[5, 6, 7, 8]]

    asyncio.run(scenario())


# -- out of memory and engine errors ------------------------------------------------------
def test_out_of_memory_halves_the_batch_until_it_fits() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        fake.oom_above = 2
        ids = [76, 70, 74, 71, 75, 73, 72]
        async with serving(fake, max_batch_images=8) as batcher:
            out = await (await submit(batcher, *ids))
        assert numbers(out) == ids
        assert (
            fake.calls
            == [
                ids,  # 7: too many
                ids[:3],  # 3: too many
                ids[:1],
                ids[1:3],
                ids[3:],  # 4: too many
                ids[3:5],
                ids[5:],
            ]
        )
        assert sample(batcher, "mae_oom_splits_total") == 3
        assert sample(batcher, "mae_batch_images_count") == 1  # still one batch of 7
        assert sample(batcher, "mae_batch_images_sum") == 7

    asyncio.run(scenario())


def test_out_of_memory_for_a_single_image_fails_the_request_and_the_batcher_goes_on() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        fake.oom_above = 0  # not even one image fits
        async with serving(fake) as batcher:
            with pytest.raises(OutOfMemory):
                await (await submit(batcher, 1))
            assert sample(batcher, "mae_oom_splits_total") == 0  # nothing left to split
            with pytest.raises(OutOfMemory):
                await (await submit(batcher, 2, 3, 4))
            assert sample(batcher, "mae_oom_splits_total") == 1  # 3 -> 1 + 2, and 1 fails
            assert batcher.queued_images == 0
            fake.oom_above = None
            assert numbers(await (await submit(batcher, 5, 6))) == [5, 6]
        assert fake.calls == [[1], [2, 3, 4], [2], [5, 6]]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ValueError("mask_ratio must be in [0, 1)"), InvalidInput),
        (RuntimeError("CUDA error: device-side assert triggered"), DeviceFailure),
        (KeyError("blocks.3"), DeviceFailure),
        (NoDecoder("served without its decoder"), NoDecoder),  # already a service error
    ],
    ids=["ValueError", "RuntimeError", "KeyError", "ServiceError"],
)
def test_engine_errors_map_to_service_errors_and_the_batcher_goes_on(
    raised: Exception, expected: type[ServiceError]
) -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        fake.fail = raised
        async with serving(fake) as batcher:
            with pytest.raises(expected) as info:
                await (await submit(batcher, 1, 2))
            assert type(info.value) is expected
            if expected is InvalidInput:
                assert info.value.message == str(raised)  # the client learns what was wrong
            if expected is DeviceFailure:
                # An internal failure names its type, not its details (they go to the log).
                assert type(raised).__name__ in info.value.message
                assert str(raised) not in info.value.message
            assert batcher.queued_images == 0
            fake.fail = None
            assert numbers(await (await submit(batcher, 3, 4))) == [3, 4]
        assert fake.calls == [[1, 2], [3, 4]]

    asyncio.run(scenario())


# -- closing ------------------------------------------------------------------------------
def test_close_finishes_queued_work_then_refuses_new_requests() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake) as batcher:
            blocker = await hold_device(batcher, fake)
            b = await submit(batcher, 1, 2)
            c = await submit(batcher, 3)
            closing = asyncio.create_task(batcher.close())
            await asyncio.sleep(0)
            refused = await submit(batcher, 4)  # while closing
            assert refused.done()
            with pytest.raises(NotReady):
                refused.result()
            with pytest.raises(NotReady):
                await batcher.run(lambda: None, far())
            assert not closing.done()  # the held forward and the queued work are not done
            fake.release()
            await closing
            # The queued requests got their answers, not a cancellation.
            assert numbers(await blocker) == [999]
            assert numbers(await b) == [1, 2]
            assert numbers(await c) == [3]
            refused = await submit(batcher, 5)  # after close
            assert refused.done()
            with pytest.raises(NotReady):
                refused.result()
        assert fake.calls == [[999], [1, 2, 3]]

    asyncio.run(scenario())


# -- exclusive device work ----------------------------------------------------------------
def test_run_takes_its_turn_on_the_device_thread_between_batches() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        seen: dict[str, Any] = {}
        reconstruct = recording_call(fake, seen)

        async with serving(fake) as batcher:
            blocker = await hold_device(batcher, fake)
            before = await submit(batcher, 1, 2)
            call = asyncio.create_task(batcher.run(reconstruct, far()))
            await asyncio.sleep(0)
            after = await submit(batcher, 3, 4)
            assert batcher.queued_images == 2 + 1 + 2  # a call costs one image
            assert "thread" not in seen  # not while the held forward is in progress
            fake.release()
            assert await call == "reconstructed"
            await blocker
            assert numbers(await before) == [1, 2]
            assert numbers(await after) == [3, 4]
        # In queue order, and the call splits the batches: [1, 2] and [3, 4] not merged.
        assert fake.timeline == [[999], [1, 2], "reconstruction", [3, 4]]
        assert seen["forwards_in_progress"] == 0
        assert fake.threads == {seen["thread"]}  # the one device thread, not the loop's
        assert seen["thread"] != threading.current_thread().name
        assert sample(batcher, "mae_images_total", kind="reconstruction") == 1

    asyncio.run(scenario())


def test_run_passes_back_errors_and_the_batcher_goes_on() -> None:
    def bad_value() -> None:
        raise ValueError("mask_ratio must be in [0, 1)")

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    def no_room() -> None:
        raise torch.OutOfMemoryError("fake: no room")

    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake) as batcher:
            with pytest.raises(InvalidInput):
                await batcher.run(bad_value, far())
            with pytest.raises(DeviceFailure):
                await batcher.run(broken, far())
            with pytest.raises(OutOfMemory):
                await batcher.run(no_room, far())
            assert await batcher.run(lambda: 42, far()) == 42
            assert numbers(await (await submit(batcher, 1))) == [1]
            assert batcher.queued_images == 0

    asyncio.run(scenario())


# -- more than one forward at once (MAE_FORWARD_WORKERS) ----------------------------------
def test_two_workers_run_two_forwards_at_once_each_on_its_own_math_threads() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        main_threads = torch.get_num_threads()
        async with serving(fake, max_batch_images=2, workers=2, worker_threads=1) as batcher:
            first = await hold_device(batcher, fake, blocker=900)
            # A worker is free: the next request starts its own forward beside the held one.
            second = await submit(batcher, 1, 2)
            await wait_for(lambda: fake.active == 2, "the second forward to be in progress")
            assert len(fake.calls) == 2
            # Both are busy now: this one waits in the queue, and so does the next.
            third = await submit(batcher, 3)
            fourth = await submit(batcher, 4)
            assert batcher.queued_images == 2
            assert len(fake.calls) == 2
            fake.release()
            results = await asyncio.gather(first, second, third, fourth)
        assert [numbers(r) for r in results] == [[900], [1, 2], [3], [4]]
        # The two that waited were gathered into one batch when a worker came free.
        assert fake.calls == [[900], [1, 2], [3, 4]]
        assert fake.most_active == 2
        assert len(fake.threads) == 2  # two device threads
        assert set(fake.math_threads) == {1}  # each forward on its worker's thread count
        assert torch.get_num_threads() == main_threads  # the loop's own count untouched

    asyncio.run(scenario())


def test_with_two_workers_run_waits_for_every_forward_and_runs_on_all_their_threads() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        seen: dict[str, Any] = {}
        reconstruct = recording_call(fake, seen)

        async with serving(fake, max_batch_images=2, workers=2, worker_threads=1) as batcher:
            fake.hold_batch(999)
            fake.hold_batch(1)
            blocker = await submit(batcher, 999)
            beside = await submit(batcher, 1, 2)  # the second worker's forward
            await wait_for(lambda: fake.active == 2, "both forwards to be in progress")
            call = asyncio.create_task(batcher.run(reconstruct, far()))
            await asyncio.sleep(0)
            after = await submit(batcher, 3)
            fake.release_batch(1)  # one forward ends: a worker is free, the other still runs
            assert numbers(await beside) == [1, 2]
            await wait_for(
                lambda: batcher.call_waiting or "reconstruction" in fake.timeline,
                "the call to be taken from the queue",
            )
            assert "reconstruction" not in fake.timeline  # not beside the held forward
            assert not after.done()  # nor does the request behind it overtake it
            fake.release_batch(999)
            assert await call == "reconstructed"
            assert numbers(await blocker) == [999]
            assert numbers(await after) == [3]
            # The workers' threads are back to their own count after the call.
            assert numbers(await (await submit(batcher, 4, 5))) == [4, 5]
            assert numbers(await (await submit(batcher, 6))) == [6]
        assert seen["forwards_in_progress"] == 0
        assert seen["math_threads"] == 2  # every worker's threads: it runs alone
        assert fake.timeline[2:] == ["reconstruction", [3], [4, 5], [6]]
        assert set(fake.math_threads) == {1}

    asyncio.run(scenario())


def test_with_two_workers_close_waits_for_every_forward_in_flight() -> None:
    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, max_batch_images=2, workers=2, worker_threads=1) as batcher:
            fake.hold_batch(999)
            fake.hold_batch(1)
            first = await submit(batcher, 999)
            second = await submit(batcher, 1, 2)
            await wait_for(lambda: fake.active == 2, "both forwards to be in progress")
            queued = await submit(batcher, 3)
            closing = asyncio.create_task(batcher.close())
            await asyncio.sleep(0)
            fake.release_batch(1)
            assert numbers(await second) == [1, 2]
            assert numbers(await queued) == [3]  # queued work is done, on the free worker
            assert not closing.done() and not first.done()  # the held forward still runs
            fake.release_batch(999)
            await closing
            assert fake.active == 0
            assert numbers(await first) == [999]

    asyncio.run(scenario())


def test_a_fault_around_the_forward_fails_its_requests_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Something breaks after the forward (here the metrics): with several forwards at
    once, each request of that batch gets a 500-class error, and the next batch runs."""

    async def scenario() -> None:
        fake = FakeEngine()
        async with serving(fake, workers=2, worker_threads=1) as batcher:
            histogram = batcher.metrics.forward_seconds.labels(MODEL, "embedding")
            monkeypatch.setattr(
                type(histogram), "observe", lambda self, v: (_ for _ in ()).throw(KeyError(v))
            )
            with pytest.raises(DeviceFailure):
                await (await submit(batcher, 1, 2))
            monkeypatch.undo()
            assert numbers(await (await submit(batcher, 3))) == [3]

    asyncio.run(scenario())


def test_workers_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        Batcher(FakeEngine(), max_batch_images=8, max_wait_s=0.0, max_queue_images=64, workers=0)


def _os_name() -> str:
    """The calling thread's name as the OS knows it (what top -H and /proc show)."""
    return Path("/proc/thread-self/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names from /proc")
def test_warm_up_runs_once_in_each_device_thread_named_for_the_os() -> None:
    seen: list[tuple[str, str, int, str]] = []
    lock = threading.Lock()

    def call() -> None:
        # A thread the device thread starts (as OpenMP starts its helpers) has its name too;
        # from Python 3.14 a Python thread gets its own name from Python instead.
        child: list[str] = []
        helper = threading.Thread(target=lambda: child.append(_os_name()))
        helper.start()
        helper.join()
        if sys.version_info >= (3, 14):
            child[0] = threading.current_thread().name
        with lock:
            seen.append(
                (threading.current_thread().name, _os_name(), torch.get_num_threads(), child[0])
            )

    async def scenario() -> None:
        async with serving(FakeEngine(), workers=2, worker_threads=1) as batcher:
            await batcher.warm_up(call)
            await batcher.warm_up(call)  # again: the same two threads, once each

    asyncio.run(scenario())
    assert sorted(seen) == [
        ("mae-device_0", "mae-device_0", 1, "mae-device_0"),
        ("mae-device_0", "mae-device_0", 1, "mae-device_0"),
        ("mae-device_1", "mae-device_1", 1, "mae-device_1"),
        ("mae-device_1", "mae-device_1", 1, "mae-device_1"),
    ]


def test_a_failed_warm_up_raises_once_every_thread_has_ended() -> None:
    ended: list[str] = []

    def call() -> None:
        if threading.current_thread().name.endswith("_0"):
            raise RuntimeError("warm-up failed")
        time.sleep(0.3)  # the other thread is still busy when the first one fails
        ended.append(threading.current_thread().name)

    async def scenario() -> None:
        async with serving(FakeEngine(), workers=2, worker_threads=1) as batcher:
            with pytest.raises(RuntimeError, match="warm-up failed"):
                await batcher.warm_up(call)
            assert ended == ["mae-device_1"]  # nothing left running behind the error

    asyncio.run(scenario())
