"""Bounded pool of worker processes for the CPU-heavy CKKS work of the vendor server.

Why processes and not threads: TenSEAL/SEAL hold the GIL while they compute (measured: a thread
ticking every millisecond got 4 ticks in 1.25 s of ``CKKSVector.matmul``), so evaluating in a
thread would freeze the event loop, health checks and every other hospital for the whole
evaluation. Worker processes also isolate the server from a native crash on a hostile input: a
dead worker fails that one request and the pool is rebuilt.

Admission control is explicit: at most ``workers + queue_size`` jobs are admitted; beyond that
:class:`~secure_infer.wire.ServerBusyError` (503) carries a Retry-After estimated from the
recent evaluation time. Each worker loads every model once (``initializer``) and keeps a small
LRU cache of deserialized public contexts, so a hospital's Galois keys are parsed once, not per
request.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from secure_infer.errors import ContextError, InferenceError, ModelNotFoundError
from secure_infer.vendor._store import ContextStore
from secure_infer.wire import ServerBusyError, ServerTimeoutError

__all__ = ["EvalPool", "RemoteError"]

log = logging.getLogger(__name__)


class RemoteError(InferenceError):
    """An :class:`InferenceError` raised in a worker, re-created with its code and HTTP status.

    (Exceptions cross the process boundary by pickling their ``args``, which would lose ``code``.)
    """

    def __init__(self, message: str, code: str, http_status: int) -> None:
        super().__init__(message, code)
        self.http_status = http_status


# ---------------------------------------------------------------- worker-process side
_models: dict[str, Any] = {}
_store: ContextStore | None = None
_cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_cache_size = 8


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM this worker when the server process dies, however it
    dies (uvicorn re-raises SIGTERM after its graceful shutdown, which skips the interpreter's
    exit hooks that would otherwise stop the pool; SIGKILL skips everything)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl: rely on shutdown()
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


def _init_worker(manifests: Sequence[str], store_root: str, cache_size: int) -> None:
    global _store, _cache_size
    from secure_infer.vendor.model import VendorModel

    _die_with_parent()

    for m in manifests:
        vm = VendorModel.load(Path(m))
        _models[f"{vm.manifest.name}@{vm.manifest.version}"] = vm  # the registry's key
    _store = ContextStore(Path(store_root))
    _cache_size = cache_size


def _model(name: str) -> Any:
    try:
        return _models[name]
    except KeyError:
        raise ModelNotFoundError(
            f"model '{name}' is not served; known: {sorted(_models)}"
        ) from None


def _context(model: str, namespace: str, sha: str) -> Any:
    key = (namespace, sha, model)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    assert _store is not None
    data = _store.get(namespace, sha)
    if data is None:
        raise ContextError(
            f"context {sha[:12]}.. was not uploaded by this hospital; PUT /v1/contexts first",
            code="unknown_context",
        )
    ctx = _model(model).load_context(data)
    _cache[key] = ctx
    while len(_cache) > _cache_size:
        _cache.popitem(last=False)
    return ctx


def _wrap(fn: Any, *args: Any) -> tuple[str, Any, float]:
    start = time.monotonic()
    try:
        return "ok", fn(*args), start
    except InferenceError as exc:
        return "error", (str(exc), exc.code, exc.http_status), start


def _do_ping() -> int:
    return len(_models)


def _do_upload(model: str, namespace: str, data: bytes) -> tuple[str, bool]:
    ctx = _model(model).load_context(data)  # raises ContextError before anything is stored
    assert _store is not None
    sha, created = _store.put(namespace, data)
    _cache[(namespace, sha, model)] = ctx
    while len(_cache) > _cache_size:
        _cache.popitem(last=False)
    return sha, created


def _do_evaluate(
    model: str, namespace: str, sha: str, inputs: list[bytes]
) -> tuple[list[bytes], float]:
    ctx = _context(model, namespace, sha)
    t0 = time.monotonic()
    out = list(_model(model).evaluate(ctx, inputs))
    return out, time.monotonic() - t0


_TASKS = {"ping": _do_ping, "upload": _do_upload, "evaluate": _do_evaluate}


def _run_task(name: str, *args: Any) -> tuple[str, Any, float]:
    return _wrap(_TASKS[name], *args)


# ---------------------------------------------------------------- server side
class EvalPool:
    """Admission-controlled process pool; use :meth:`submit` from the event loop only."""

    def __init__(
        self,
        manifests: Sequence[Path],
        store_root: Path,
        workers: int,
        queue_size: int,
        context_cache: int = 8,
    ) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self.in_flight = 0
        self._args = ([str(m) for m in manifests], str(store_root), context_cache)
        self._ewma: float | None = None
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=self._args,
        )

    async def start(self) -> None:
        """Start every worker now (loading the models) so the first request is not the slow one."""
        loop = asyncio.get_running_loop()
        futs = [
            loop.run_in_executor(self._executor, _run_task, "ping") for _ in range(self.workers)
        ]
        for status, value, _ in await asyncio.gather(*futs):
            if status != "ok":
                raise RuntimeError(f"worker failed to start: {value}")

    def shutdown(self) -> None:
        """Stop taking work and stop the workers now (an evaluation in progress is abandoned:
        its client gets no answer and retries, which the job-token replay makes harmless)."""
        processes = list(getattr(self._executor, "_processes", {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=5)

    def retry_after(self) -> int:
        """Seconds a client should wait: the queue ahead of it at the recent evaluation time."""
        per_job = self._ewma if self._ewma is not None else 1.0
        return max(1, min(120, math.ceil(per_job * max(1, self.in_flight) / self.workers)))

    async def submit(self, task: str, *args: Any, timeout: float) -> tuple[Any, float]:
        """Run ``task`` in a worker; returns ``(result, queue_seconds)``.

        Raises ServerBusyError when full, ServerTimeoutError after ``timeout`` (the job still
        occupies its slot until the worker finishes it), RemoteError for the worker's own errors.
        """
        if self.in_flight >= self.capacity:
            raise ServerBusyError(
                f"all {self.workers} worker(s) busy and the queue of"
                f" {self.capacity - self.workers} is full",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        submitted = time.monotonic()
        self.in_flight += 1
        executor = self._executor
        try:
            try:
                fut = loop.run_in_executor(executor, _run_task, task, *args)
            except BrokenProcessPool:
                # a worker died while idle: start a fresh pool and submit there
                log.error("worker pool broken (a worker died); restarting it")
                self._executor = executor = self._new_executor()
                fut = loop.run_in_executor(executor, _run_task, task, *args)
        except BaseException:
            self.in_flight -= 1
            raise
        fut.add_done_callback(self._done)
        try:
            status, value, started = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ServerTimeoutError(
                f"{task} did not finish within {timeout:g} s", retry_after=self.retry_after()
            ) from None
        except BrokenProcessPool:
            log.error("a worker process died during %s; restarting the pool", task)
            if self._executor is executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise RemoteError(
                "the worker evaluating this request crashed; the input was rejected",
                "worker_crashed",
                500,
            ) from None
        if status == "error":
            message, code, http_status = value
            raise RemoteError(message, code, http_status)
        elapsed = time.monotonic() - started
        if task == "evaluate":
            self._ewma = elapsed if self._ewma is None else 0.7 * self._ewma + 0.3 * elapsed
        return value, max(0.0, started - submitted)

    @property
    def free_slots(self) -> int:
        """Jobs that can be admitted right now."""
        return max(0, self.capacity - self.in_flight)

    def _done(self, _fut: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
