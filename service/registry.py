"""The served models: each an `Engine` and its `Batcher`, loaded by the app's lifespan.

`Registry.load()` loads, warms up and starts every model of `MAE_MODEL` in turn; `ready`
turns true only when all of them are, and a failure is kept in `error` (for /health and
/ready). `get(name)` finds a served model by id or alias. `Served.images()` turns a
request's image bytes into one batch, decoding and preprocessing each image in a worker
thread. No HTTP here: lookups raise `engine_errors.py`'s errors.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from anyio import to_thread

from .batcher import Batcher, pool_thread
from .engine import Engine
from .engine_errors import NotReady, UnknownModel
from .imaging import ImageLimits
from .metrics import Metrics
from .settings import Settings, Threads

log = logging.getLogger("mae.service")


@dataclass
class Served:
    engine: Engine
    batcher: Batcher
    limits: ImageLimits
    decoders: ThreadPoolExecutor  # shared by the served models

    async def images(
        self, blobs: list[bytes], names: list[str], reconstruction: bool = False
    ) -> torch.Tensor:
        """Every image checked, decoded and preprocessed in the decode threads (one task
        per image, so a request's images decode in parallel) -> (n, 3, S, S). `names` say
        which image a problem is with (input[2], file[0] (cat.jpg), ...)."""
        loop = asyncio.get_running_loop()
        prepare = self.engine.prepare
        tensors = await asyncio.gather(
            *(
                loop.run_in_executor(self.decoders, prepare, b, self.limits, n, reconstruction)
                for b, n in zip(blobs, names, strict=True)
            )
        )
        return torch.stack(tensors)


@dataclass
class Registry:
    settings: Settings
    metrics: Metrics
    models: dict[str, Served] = field(default_factory=dict)  # id -> served, in MAE_MODEL order
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> id
    ready: bool = False
    error: str | None = None  # why loading failed
    decoders: ThreadPoolExecutor | None = None
    threads: Threads | None = None  # chosen in load()

    async def load(self) -> None:
        """Load, warm up and start every model; `ready` turns true only at the end."""
        self.threads = layout = self.settings.threads()
        torch.set_num_threads(layout.math_threads)  # loading, warm-up, the ONNX session
        self.decoders = ThreadPoolExecutor(  # one math thread each: the forward has the rest
            layout.decode,
            thread_name_prefix="mae-decode",
            initializer=pool_thread,
            initargs=(1,),
        )
        log.info(layout.describe())
        try:
            for model_id in self.settings.model:
                await self._load(model_id)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the model(s): %s", self.error)
            return
        # What was loaded lives as long as the process: out of the collector's way, so
        # that its full passes (every few hundred requests) do not walk it each time.
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)

    async def _load(self, model_id: str) -> None:
        s = self.settings
        t0 = time.perf_counter()
        engine = await to_thread.run_sync(
            functools.partial(
                Engine,
                model_id,
                device=s.device,
                dtype=s.dtype,
                with_decoder=s.reconstruction,
                models_dir=s.models_dir,
                backend=s.backend,
                threads=self.threads.math_threads,
                onnx_cache=s.onnx_cache,
                fused_layers=s.fused_layers,
                pack_weights=s.pack_weights,
            )
        )
        batcher = Batcher(
            engine,
            max_batch_images=s.max_batch_images,
            max_wait_s=s.max_batch_wait_ms / 1000.0,
            max_queue_images=s.max_queue_images,
            metrics=self.metrics,
            workers=self.threads.forward_workers,
            worker_threads=self.threads.forward_threads,
        )
        if s.warmup:  # in the device threads, where the forwards will run
            try:
                await batcher.warm_up(functools.partial(engine.warmup, s.max_batch_images))
            except BaseException:
                await batcher.close()  # its threads end with it (each warm-up has ended)
                raise
        batcher.start()
        limits = ImageLimits(max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)
        assert self.decoders is not None
        self.models[engine.id] = Served(engine, batcher, limits, self.decoders)
        for alias in [model_id, *engine.info.aliases]:
            self.aliases.setdefault(alias, engine.id)
        log.info(
            "serving %s (%s, %s, heads: %s) ready in %.1f s",
            engine.id,
            engine.info.device,
            engine.info.dtype,
            "+".join(engine.info.heads),
            time.perf_counter() - t0,
        )

    async def close(self) -> None:
        """Stop taking work; each batcher finishes what is queued."""
        self.ready = False
        self.metrics.ready.set(0)
        await asyncio.gather(*(served.batcher.close() for served in self.models.values()))
        if self.decoders is not None:
            self.decoders.shutdown(wait=False, cancel_futures=True)

    def get(self, name: str | None) -> Served:
        """The model served as `name` (an id or alias; None: the first one)."""
        if self.settings.hub_only:
            raise UnknownModel("this server serves no models: it runs the hub only (MAE_HUB_ONLY)")
        if not self.ready:
            raise NotReady(
                f"the model failed to load: {self.error}" if self.error else "models are loading"
            )
        if name is None:
            return next(iter(self.models.values()))
        model_id = self.aliases.get(name, name)
        if model_id not in self.models:
            raise UnknownModel(
                f"model {name!r} is not served here; served: {', '.join(self.models)}"
            )
        return self.models[model_id]
