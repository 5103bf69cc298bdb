"""Dynamic micro-batching: requests -> one queue -> one worker that feeds the device.

Every request's images are queued as jobs of at most `max_batch_images` (a larger request
is split and its answers reassembled in order). The worker takes the oldest job, adds the
queued jobs that fit in `max_batch_images`, keeps waiting for more while `max_wait_s` has
not passed since that job arrived (0, the default: no waiting), then runs one forward on
the stacked batch in a device thread and hands each job its rows. Requests that arrive
during a forward form the next batch, so batches grow by themselves when the device is
the bottleneck. Other device work (a reconstruction) runs alone, in turn.

`workers` forwards may run at once, each in its own device thread with `worker_threads`
math threads (on a CPU, two forwards of one thread each cost less CPU per image than one
forward on two threads that wait for each other at every layer; BENCHMARKS.md). The next
batch is gathered only when a worker is free, so it takes everything queued meanwhile. A
reconstruction waits for the forwards in flight and runs alone, on every math thread.

Admission is bounded in images: a request that would push the queue past
`max_queue_images` is refused at once (`QueueFull`, with a retry time from the measured
throughput). A job whose deadline passes before its forward gets `DeadlineExceeded`; one
whose client went away (its future cancelled) is removed from the queue and frees its
slot. CUDA out-of-memory splits the batch in halves and retries; if even one image does
not fit, every request of that forward gets `OutOfMemory` (its images are all the same
size, so they would all fail alone too). No HTTP here: `errors.py` maps these to statuses.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .engine_errors import (
    DeadlineExceeded,
    DeviceFailure,
    InvalidInput,
    NotReady,
    OutOfMemory,
    QueueFull,
    ServiceError,
)
from .metrics import Metrics

log = logging.getLogger("mae.service")


@dataclass(eq=False)
class _Job:
    n: int  # images this job holds (its cost in the queue)
    deadline: float  # time.monotonic()
    # Kept out of repr: printing a batch of pixels (a log line, an exception message)
    # would cost more CPU than the forward.
    future: asyncio.Future = field(repr=False)
    images: torch.Tensor | None = field(default=None, repr=False)  # (n, 3, S, S) for embedding jobs
    call: Callable[[], Any] | None = field(default=None, repr=False)  # exclusive device work
    enqueued: float = field(default_factory=time.monotonic)
    waiting: bool = False  # counted in the queue's images


class Embedder(Protocol):
    """What the batcher needs of an engine: a name for its metrics, and one forward."""

    id: str

    def embed(self, batch: torch.Tensor) -> torch.Tensor: ...


class Batcher:
    def __init__(
        self,
        engine: Embedder,
        *,
        max_batch_images: int,
        max_wait_s: float,
        max_queue_images: int,
        metrics: Metrics | None = None,
        workers: int = 1,
        worker_threads: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.engine = engine
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.worker_threads = worker_threads
        self._label = engine.id
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images of jobs whose forward has not started
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()  # forwards running now, at most `workers`
        self.call_waiting = False  # an exclusive call waits for the forwards in flight
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="mae-device",
            initializer=pool_thread,
            initargs=(worker_threads,),
        )
        self._closing = False
        self._rate = 0.0  # images/s of recent forwards (exponential average), for Retry-After

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name=f"batcher:{self._label}")

    async def warm_up(self, call: Callable[[], Any]) -> None:
        """Run `call` once in each device thread, all at once, before any request: the
        threads are started with their names and math threads, and no request pays a
        thread's cold first forward (its math library's buffers, the allocator's caches)."""
        meet = threading.Barrier(self.workers)  # one call per thread: none takes two

        def once() -> Any:
            meet.wait(timeout=60)  # the threads only have to start
            return call()

        loop = asyncio.get_running_loop()
        try:
            # Every call ends before this returns or raises, so that a failed warm-up
            # leaves no thread busy behind it.
            outcomes = await asyncio.gather(
                *(loop.run_in_executor(self._executor, once) for _ in range(self.workers)),
                return_exceptions=True,
            )
        except BaseException:  # cancelled: a thread may wait at the barrier for a partner
            meet.abort()  # that will never come; it stops waiting now
            raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._worker is not None:
            await self._worker
        # Off the loop: a forward still running (a warm-up cut short) must not stop it.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    @property
    def queued_images(self) -> int:
        return self._queued

    # -- submitting -----------------------------------------------------------------------
    def admit(self, n: int) -> None:
        """Refuse now (QueueFull, NotReady) a request of `n` images that the queue could not
        take: called before the images are decoded, so that a refusal under overload costs
        no decoding and waits behind no one. `embed` checks again when it queues."""
        self._admit(n)

    def _admit(self, n: int) -> None:
        if self._closing:
            raise NotReady("the server is shutting down")
        if self._queued + n > self.max_queue_images:
            self.metrics.rejected.labels(self._label, "queue_full").inc()
            wait = (self._queued + n) / self._rate if self._rate > 0 else 1.0
            retry = max(1, math.ceil(wait))
            raise QueueFull(
                f"the queue holds {self._queued} images (limit {self.max_queue_images}); "
                f"retry in about {retry} s",
                retry_after=retry,
            )

    def _enqueue(self, job: _Job) -> None:
        self._jobs.append(job)
        job.waiting = True
        self._queued += job.n
        self.metrics.queue_images.labels(self._label).set(self._queued)
        assert self._wake is not None, "Batcher.start() was not called"
        self._wake.set()

    def _release(self, job: _Job) -> None:
        """The job no longer waits (its forward starts, or it was dropped): free its images."""
        if job.waiting:
            job.waiting = False
            self._queued -= job.n
            self.metrics.queue_images.labels(self._label).set(self._queued)

    def _withdraw(self, job: _Job) -> None:
        """Take a job out of the queue, or out of the batch being gathered, for good."""
        # Most jobs have left the queue by now (gathered into a batch): look before
        # removing, as deque.remove's ValueError would format the job into its message.
        if job in self._jobs:  # identity (eq=False): cheap
            self._jobs.remove(job)
        self._release(job)

    async def _await(self, jobs: list[_Job], deadline: float) -> list[Any]:
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                return list(await asyncio.gather(*(j.future for j in jobs)))
        except (TimeoutError, DeadlineExceeded) as exc:
            # Counted here only, once per request: the worker may have settled a job as
            # expired (DeadlineExceeded) just as this timer fired.
            self.metrics.rejected.labels(self._label, "deadline").inc()
            if isinstance(exc, DeadlineExceeded):
                raise
            raise DeadlineExceeded(
                "the request's deadline passed before its images were processed"
            ) from None
        finally:
            for job in jobs:  # a timeout, an error or a client that went away
                if not job.future.done():
                    job.future.cancel()
                self._withdraw(job)

    async def embed(self, images: torch.Tensor, deadline: float) -> torch.Tensor:
        """images (n, 3, S, S) -> (n, 2, D) float32 [cls, mean], in input order."""
        n = images.shape[0]
        self._admit(n)
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(chunk.shape[0], deadline, loop.create_future(), images=chunk)
            for chunk in images.split(self.max_batch_images)
        ]
        for job in jobs:
            self._enqueue(job)
        return torch.cat(await self._await(jobs, deadline))

    async def run(self, call: Callable[[], Any], deadline: float) -> Any:
        """Run `call()` on the device thread, in turn with the batches (costs one image)."""
        self._admit(1)
        job = _Job(1, deadline, asyncio.get_running_loop().create_future(), call=call)
        self._enqueue(job)
        return (await self._await([job], deadline))[0]

    # -- the worker -----------------------------------------------------------------------
    async def _next(self, until: float | None) -> _Job | None:
        """The oldest job (left in the queue), waiting until `until` (monotonic) at most."""
        assert self._wake is not None
        while not self._jobs:
            if self._closing:
                return None
            self._wake.clear()
            if until is None:
                await self._wake.wait()
                continue
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return None
        return self._jobs[0]

    def _take(self, job: _Job) -> bool:
        """Pop `job` into the batch being gathered; False (job settled) if it must not run.
        A gathered job still counts as waiting until its forward starts."""
        self._jobs.popleft()
        if job.future.done():  # cancelled: the client went away or gave up
            self._release(job)
            return False
        return self._check_deadline(job)

    def _check_deadline(self, job: _Job) -> bool:
        if time.monotonic() <= job.deadline:
            return True
        self._release(job)  # counted in `_await`, where the request gets its 504
        _settle(job, exc=DeadlineExceeded("the request's deadline passed before its forward"))
        return False

    def _start(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs of a forward about to start that still need it (alive, in time)."""
        now = time.monotonic()
        live = []
        for job in jobs:
            alive = not job.future.done() and self._check_deadline(job)
            self._release(job)
            if not alive:
                continue
            self.metrics.queue_wait_seconds.labels(self._label).observe(now - job.enqueued)
            live.append(job)
        return live

    async def _run(self) -> None:
        try:
            await self._gather_and_launch()
        finally:
            await self._drain(0)

    async def _drain(self, below: int) -> None:
        """Wait until fewer than `below` forwards run (0: none at all)."""
        while self._inflight and len(self._inflight) >= max(below, 1):
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    async def _gather_and_launch(self) -> None:
        while True:
            await self._drain(self.workers)  # a free worker first, then the batch
            first = await self._next(None)
            if first is None:
                return  # closing and drained
            if not self._take(first):
                continue
            if first.call is not None:
                self.call_waiting = True  # for the forwards in flight: it runs alone
                try:
                    await self._drain(0)
                finally:
                    self.call_waiting = False
                await self._run_call(first)
                continue
            batch, n = [first], first.n
            until = first.enqueued + self.max_wait_s
            while n < self.max_batch_images:
                nxt = await self._next(until)
                if nxt is None or nxt.call is not None or n + nxt.n > self.max_batch_images:
                    break
                if self._take(nxt):
                    batch.append(nxt)
                    n += nxt.n
            task = asyncio.create_task(self._run_batch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._forward_done)

    def _forward_done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a forward task failed", exc_info=task.exception())

    async def _run_call(self, job: _Job) -> None:
        if not self._start([job]):
            return
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        call = job.call
        if self.workers > 1 and self.worker_threads:  # alone: every worker's threads
            call = functools.partial(
                _with_threads, self.workers * self.worker_threads, self.worker_threads, call
            )
        try:
            result = await loop.run_in_executor(self._executor, call)
        except Exception as exc:
            _settle(job, exc=_as_service_error(exc))
            return
        self.metrics.forward_seconds.labels(self._label, "reconstruction").observe(
            time.perf_counter() - t0
        )
        self.metrics.images.labels(self._label, "reconstruction").inc()
        _settle(job, result=result)

    async def _run_batch(self, batch: list[_Job]) -> None:
        try:
            await self._embed_batch(batch)
        except Exception as exc:  # a fault around the forward: a 500 for each, never a hang
            error = _as_service_error(exc)
            for job in batch:
                _settle(job, exc=error)

    async def _embed_batch(self, batch: list[_Job]) -> None:
        batch = self._start(batch)
        if not batch:
            return
        n = sum(job.n for job in batch)
        loop = asyncio.get_running_loop()
        stacked = batch[0].images if len(batch) == 1 else torch.cat([j.images for j in batch])
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self._forward, stacked)
        except Exception as exc:
            error = _as_service_error(exc)
            for job in batch:
                _settle(job, exc=error)
            return
        seconds = time.perf_counter() - t0
        m, label = self.metrics, self._label
        m.forward_seconds.labels(label, "embedding").observe(seconds)
        m.batch_images.labels(label).observe(n)
        m.batch_requests.labels(label).observe(len(batch))
        m.images.labels(label, "embedding").inc(n)
        # What the model answers per second at this forward's pace, through every worker
        # (the queue drains through all of them): the gauge and Retry-After's estimate.
        rate = n / max(seconds, 1e-9) * self.workers
        m.images_per_second.labels(label).set(rate)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        start = 0
        for job in batch:
            _settle(job, result=out[start : start + job.n])
            start += job.n

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """engine.embed, halving the batch on CUDA out-of-memory (device thread)."""
        try:
            return self.engine.embed(batch)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch.shape[0] == 1:
                raise
            self.metrics.oom_splits.labels(self._label).inc()
            log.warning("out of device memory at %d images: splitting the batch", batch.shape[0])
            half = batch.shape[0] // 2
            return torch.cat([self._forward(batch[:half]), self._forward(batch[half:])])


def pool_thread(math_threads: int | None) -> None:
    """A thread pool's initializer: the OS knows the thread by its Python name, and its
    torch math threads are pinned to `math_threads` (None: left as they are)."""
    name_os_thread()
    if math_threads:
        pin_math_threads(math_threads)


_prctl: Any = None


def name_os_thread() -> None:
    """Give the calling OS thread its Python thread's name (Linux; 15 bytes at most), so
    that `top -H`, py-spy and `/proc/<pid>/task/*/comm` tell the forwards from the decode
    threads (bench/serve.py sorts its per-thread CPU by these names). Threads it starts
    later inherit the name, such as a forward's helper threads with GNU OpenMP (torch's
    Linux wheels), which gives each calling thread its own helpers."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return
    try:
        if _prctl is None:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        _prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # no prctl in this libc: names are a convenience
        pass


def pin_math_threads(n: int) -> None:
    """This thread's torch math threads, for good: a thread pool's initializer.

    torch keeps the count per calling thread, but a thread takes it from the process-wide
    default at its first torch call, and `set_num_threads` also sets that default: so the
    thread makes its first call first, or another thread's later `set_num_threads` would
    become this thread's count."""
    torch.get_num_threads()
    torch.set_num_threads(n)


def _with_threads(alone: int, usual: int, call: Callable[[], Any]) -> Any:
    torch.set_num_threads(alone)
    try:
        return call()
    finally:
        torch.set_num_threads(usual)


def _settle(job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    if job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)


def _as_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return OutOfMemory("out of device memory even for a single image")
    if isinstance(exc, ValueError):  # the model refused the input (e.g. a mask ratio)
        return InvalidInput(str(exc))
    log.exception("device work failed", exc_info=exc)
    return DeviceFailure(f"internal error: {type(exc).__name__}")


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
