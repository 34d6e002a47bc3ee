"""The vendor's CKKS evaluation on a Ray cluster: :class:`RayEvalPool`, beside the local pool.

Same interface as :class:`secure_infer.vendor._pool.EvalPool` (``start``, ``submit``,
``shutdown``, ``retry_after``, ``workers``, ``capacity``, ``in_flight``, ``free_slots``), chosen
by ``scale.backend: ray`` in the vendor config; ``ray`` is imported only when this pool starts
(the ``scale`` extra), so a vendor on one machine never needs it.

Why Ray actors and not Ray Serve: the front end (the mutual-TLS HTTP server) must stay the
place that sees the client certificate, reads the body within its limits and appends to the
chain; Serve would add its own HTTP proxy in front of that. Actors are the part we need: a
long-lived process per worker slot, on any machine of the cluster, that loads every model
once and keeps deserialized contexts in memory.

Contexts (public CKKS contexts, ~50 MB each) are content-addressed by SHA-256. The front end's
:class:`~secure_infer.vendor._store.ContextStore` stays the durable copy; the first time the
front end needs a context it ``ray.put`` s the bytes once and keeps the ``ObjectRef``. A
task carries only that reference, wrapped in a list so Ray does not move the bytes with every
call: a worker reads the bytes only on a miss of its in-memory LRU *and* of its machine's
cache directory (``<node_cache_dir>/<node id>/<hospital>/<sha>.ctx``, written with
:func:`durable_io.atomic_write`, re-hashed on read). A per-context ``flock`` on that machine
makes the second worker wait for the first one's copy instead of fetching its own, so each
machine receives a hospital's context once (the upload itself counts as that machine's one).
Every transfer appends a line to ``<node dir>/transfers.log`` (hospital hash, context hash,
bytes, seconds; no identifier), which is what the load test counts.

A worker (its process, or its whole machine) lost during a call fails that call with
:class:`WorkerLostError` (503 ``worker_lost`` + Retry-After), never with a partial answer; the
front end has not appended to the chain yet, so nothing is chained, and the hospital client's
retry (same job token) is sent to another live worker. The lost actor is replaced in the
background (Ray places it wherever the cluster has a free CPU) and takes work again only once
it answers a ping. No Ray task is retried by Ray itself (``max_task_retries=0``): a retry is the
client's decision, under its job token, so an evaluation is chained at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import math
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_io import atomic_write
from secure_infer.errors import ContextError, InferenceError, ModelNotFoundError
from secure_infer.vendor._pool import RemoteError
from secure_infer.vendor._store import ContextStore
from secure_infer.wire import ServerBusyError, ServerTimeoutError

__all__ = ["RayEvalPool", "RaySettings", "WorkerLostError", "read_transfer_logs"]

log = logging.getLogger(__name__)

TRANSFER_LOG = "transfers.log"


class WorkerLostError(ServerBusyError):
    """The Ray worker evaluating this request died (its process or its machine); retry."""

    code = "worker_lost"


@dataclass(frozen=True)
class RaySettings:
    """How the front end joins the cluster and what each worker actor asks of it."""

    address: str = "auto"
    namespace: str = "blindread-vendor"
    worker_cpus: float = 1.0
    node_cache_dir: Path | None = None
    """Per-machine context cache root on every worker machine; None: ``<tmp>/blindread-ctx``."""
    context_refs: int = 64
    """Contexts the front end keeps ``ray.put`` (object store) at once, least recently used out."""
    start_timeout: float = 300.0


# ------------------------------------------------------------------ worker (actor) side
class _EvalWorker:
    """One evaluation slot: models loaded once, an in-memory LRU of contexts, the machine cache.

    A plain class made a Ray actor by :meth:`RayEvalPool.start` (``ray.remote(_EvalWorker)``),
    so importing this module does not import ray.
    """

    def __init__(self, manifests: Sequence[str], cache_root: str | None, cache_size: int) -> None:
        import ray

        from secure_infer.vendor.model import VendorModel

        self._models: dict[str, Any] = {}
        for m in manifests:
            vm = VendorModel.load(Path(m))
            self._models[f"{vm.manifest.name}@{vm.manifest.version}"] = vm  # the registry's key
        self.node_id = ray.get_runtime_context().get_node_id()
        root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "blindread-ctx"
        self._dir = root / self.node_id[:16]
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._cache_size = cache_size

    # -- helpers
    def _model(self, name: str) -> Any:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(
                f"model '{name}' is not served; known: {sorted(self._models)}"
            ) from None

    def _remember(self, key: tuple[str, str, str], ctx: Any) -> None:
        self._cache[key] = ctx
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _path(self, namespace: str, sha: str) -> Path:
        return self._dir / namespace / f"{sha}.ctx"

    def _read_cached(self, namespace: str, sha: str) -> bytes | None:
        path = self._path(namespace, sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            log.error("cached context %s.. is damaged; fetching it again", sha[:12])
            path.unlink(missing_ok=True)
            return None
        return data

    def _log_transfer(self, kind: str, namespace: str, sha: str, n: int, seconds: float) -> None:
        line = f"{kind} {namespace} {sha} {n} {seconds:.6f}\n"
        with open(self._dir / TRANSFER_LOG, "a", encoding="ascii") as f:
            f.write(line)

    def _machine_copy(self, namespace: str, sha: str, ref_box: list[Any] | None) -> bytes:
        """The context's bytes from this machine's cache, fetched once (under a flock)."""
        import ray

        folder = self._dir / namespace
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(folder / f"{sha}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker here waits for the first's copy
            data = self._read_cached(namespace, sha)
            if data is not None:
                return data
            if not ref_box:
                raise ContextError(
                    f"context {sha[:12]}.. was not uploaded by this hospital; PUT /v1/contexts"
                    " first",
                    code="unknown_context",
                )
            t0 = time.monotonic()
            data = bytes(ray.get(ref_box[0]))
            if hashlib.sha256(data).hexdigest() != sha:
                raise ContextError(f"context {sha[:12]}.. arrived damaged", code="bad_context")
            atomic_write(self._path(namespace, sha), data, mode=0o600)
            self._log_transfer("fetch", namespace, sha, len(data), time.monotonic() - t0)
            return data

    # -- tasks: each returns ("ok", value, busy_seconds) or ("error", (msg, code, status), ..)
    def _run(self, fn: Any, *args: Any) -> tuple[str, Any, float]:
        t0 = time.monotonic()
        try:
            value = fn(*args)
        except InferenceError as exc:
            return "error", (str(exc), exc.code, exc.http_status), time.monotonic() - t0
        return "ok", value, time.monotonic() - t0

    def ping(self) -> str:
        """The node id this worker runs on (also: the actor is up and its models are loaded)."""
        return str(self.node_id)

    def upload(self, model: str, namespace: str, ref_box: list[Any]) -> tuple[str, Any, float]:
        """Check a new context against ``model`` (raises ContextError before anything is kept)
        and keep it in this machine's cache: the upload is this machine's one transfer."""

        def work() -> str:
            import ray

            t0 = time.monotonic()
            data = bytes(ray.get(ref_box[0]))
            seconds = time.monotonic() - t0
            ctx = self._model(model).load_context(data)
            sha = hashlib.sha256(data).hexdigest()
            self._remember((namespace, sha, model), ctx)
            folder = self._dir / namespace
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(folder / f"{sha}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self._read_cached(namespace, sha) is None:
                    atomic_write(self._path(namespace, sha), data, mode=0o600)
                    self._log_transfer("upload", namespace, sha, len(data), seconds)
            return sha

        return self._run(work)

    def evaluate(
        self, model: str, namespace: str, sha: str, ref_box: list[Any], inputs: list[bytes]
    ) -> tuple[str, Any, float]:
        """Evaluate ``inputs`` under the hospital's context; value: (outputs, eval seconds)."""

        def work() -> tuple[list[bytes], float]:
            key = (namespace, sha, model)
            ctx = self._cache.get(key)
            if ctx is None:
                ctx = self._model(model).load_context(self._machine_copy(namespace, sha, ref_box))
            self._remember(key, ctx)
            t0 = time.monotonic()
            out = list(self._model(model).evaluate(ctx, inputs))
            return out, time.monotonic() - t0

        return self._run(work)


# ------------------------------------------------------------------ front-end side
@dataclass(eq=False)
class _Slot:
    handle: Any
    node_id: str = ""
    busy: int = 0
    alive: bool = True
    served: int = 0
    tasks: set[Any] = field(default_factory=set)


class RayEvalPool:
    """Admission-controlled pool of Ray actors; use :meth:`submit` from the event loop only."""

    def __init__(
        self,
        manifests: Sequence[Path],
        store_root: Path,
        workers: int,
        queue_size: int,
        context_cache: int = 8,
        ray_settings: RaySettings | None = None,
    ) -> None:
        self.settings = ray_settings or RaySettings()
        self.configured = workers
        self.capacity = workers + queue_size
        self.in_flight = 0
        self._manifests = [str(m) for m in manifests]
        self._store = ContextStore(store_root)
        self._context_cache = context_cache
        self._slots: list[_Slot] = []
        self._refs: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._ewma: float | None = None
        self._rr = 0
        self._ray: Any = None
        self._actor_cls: Any = None
        self._respawning: set[asyncio.Task[None]] = set()

    # -- lifecycle
    def _connect(self) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - the scale extra is missing
            raise InferenceError(
                "scale.backend 'ray' needs the 'scale' extra (pip install 'blindread[scale]')",
                code="ray_missing",
            ) from exc
        self._ray = ray
        if not ray.is_initialized():
            ray.init(
                address=self.settings.address,
                namespace=self.settings.namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        self._actor_cls = ray.remote(_EvalWorker)

    def _spawn(self) -> _Slot:
        handle = self._actor_cls.options(
            num_cpus=self.settings.worker_cpus,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(
            self._manifests,
            None if self.settings.node_cache_dir is None else str(self.settings.node_cache_dir),
            self._context_cache,
        )
        return _Slot(handle)

    async def start(self) -> None:
        """Join the cluster and start every worker actor (models loaded) before serving."""
        await asyncio.to_thread(self._connect)
        log.info("joined the Ray cluster; starting %d worker actor(s)", self.configured)
        slots = [self._spawn() for _ in range(self.configured)]
        try:
            async with asyncio.timeout(self.settings.start_timeout):
                nodes = await asyncio.gather(*(s.handle.ping.remote() for s in slots))
        except TimeoutError:
            raise RuntimeError(
                f"{self.configured} Ray worker(s) not up within {self.settings.start_timeout:g} s"
                " (does the cluster have enough CPUs?)"
            ) from None
        for s, node in zip(slots, nodes, strict=True):
            s.node_id = node
        self._slots = slots
        log.info(
            "Ray pool ready: %d worker(s) on %d node(s)", len(slots), len(set(nodes))
        )

    def shutdown(self) -> None:
        """Stop the worker actors (an evaluation in progress is abandoned; the client retries)."""
        for task in self._respawning:
            task.cancel()
        if self._ray is None:
            return
        for s in self._slots:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(s.handle)
        self._slots = []
        self._refs.clear()

    # -- state
    @property
    def workers(self) -> int:
        """Live workers (at least 1, so a split of a batch never divides by zero)."""
        return max(1, sum(1 for s in self._slots if s.alive))

    @property
    def free_slots(self) -> int:
        """Jobs that can be admitted right now."""
        return max(0, self.capacity - self.in_flight)

    def nodes(self) -> dict[str, int]:
        """Requests served per node id (for logs and the load test)."""
        out: dict[str, int] = {}
        for s in self._slots:
            out[s.node_id] = out.get(s.node_id, 0) + s.served
        return out

    def retry_after(self) -> int:
        """Seconds a client should wait: the queue ahead of it at the recent evaluation time."""
        per_job = self._ewma if self._ewma is not None else 1.0
        return max(1, min(120, math.ceil(per_job * max(1, self.in_flight) / self.workers)))

    # -- scheduling
    def _pick(self) -> _Slot:
        live = [s for s in self._slots if s.alive]
        if not live:
            raise WorkerLostError("no Ray worker is alive right now", retry_after=5)
        least = min(s.busy for s in live)
        ties = [s for s in live if s.busy == least]
        self._rr += 1
        return ties[self._rr % len(ties)]

    def _lost(self, slot: _Slot) -> None:
        if not slot.alive:
            return
        slot.alive = False
        log.error("Ray worker on node %s.. lost; starting a replacement", slot.node_id[:12])
        task = asyncio.get_running_loop().create_task(self._replace(slot))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _replace(self, dead: _Slot) -> None:
        """Start a new actor wherever Ray finds a CPU; it takes work once it answers a ping."""
        while True:
            slot = self._spawn()
            try:
                slot.node_id = await slot.handle.ping.remote()
            except asyncio.CancelledError:
                self._ray.kill(slot.handle)
                raise
            except Exception:  # the new one died too (its node is going away): try again
                await asyncio.sleep(1.0)
                continue
            self._slots = [s for s in self._slots if s is not dead] + [slot]
            log.info("replacement Ray worker up on node %s..", slot.node_id[:12])
            return

    async def _ref(self, namespace: str, sha: str) -> list[Any]:
        """``[ObjectRef]`` of the context bytes, put once; ``[]`` when the store lacks it."""
        key = (namespace, sha)
        ref = self._refs.get(key)
        if ref is None:
            data = await asyncio.to_thread(self._store.get, namespace, sha)
            if data is None:
                return []
            ref = self._refs.get(key)  # another request may have put it meanwhile
            if ref is None:
                ref = await asyncio.to_thread(self._ray.put, data)
                self._refs[key] = ref
        self._refs.move_to_end(key)
        while len(self._refs) > self.settings.context_refs:
            self._refs.popitem(last=False)
        return [ref]

    async def _call(self, task: str, args: tuple[Any, ...]) -> tuple[_Slot, Any]:
        if task == "ping":
            slot = self._pick()
            return slot, slot.handle.ping.remote()
        if task == "upload":
            model, namespace, data = args
            sha = hashlib.sha256(data).hexdigest()
            ref = await asyncio.to_thread(self._ray.put, data)
            self._refs[(namespace, sha)] = ref
            slot = self._pick()
            return slot, slot.handle.upload.remote(model, namespace, [ref])
        if task == "evaluate":
            model, namespace, sha, inputs = args
            box = await self._ref(namespace, sha)
            if not box:
                raise ContextError(
                    f"context {sha[:12]}.. was not uploaded by this hospital; PUT /v1/contexts"
                    " first",
                    code="unknown_context",
                )
            slot = self._pick()
            return slot, slot.handle.evaluate.remote(model, namespace, sha, box, inputs)
        raise ValueError(f"unknown task {task!r}")

    async def submit(self, task: str, *args: Any, timeout: float) -> tuple[Any, float]:
        """Run ``task`` on a worker actor; returns ``(result, queue_seconds)``.

        ``queue_seconds`` is the wall time of the call minus the worker's busy time: waiting
        for the actor plus the cost of coordination (scheduling, argument and result transfer).
        Raises ServerBusyError when full, ServerTimeoutError after ``timeout``,
        WorkerLostError when the worker died, RemoteError for the worker's own errors.
        """
        if self.in_flight >= self.capacity:
            raise ServerBusyError(
                f"all {self.workers} worker(s) busy and the queue of"
                f" {self.capacity - self.configured} is full",
                retry_after=self.retry_after(),
            )
        self.in_flight += 1
        submitted = time.monotonic()
        try:
            slot, ref = await self._call(task, args)
        except BaseException:
            self.in_flight -= 1
            raise
        slot.busy += 1
        fut = asyncio.wrap_future(ref.future())

        def done(_f: asyncio.Future[Any]) -> None:
            self.in_flight -= 1
            slot.busy -= 1

        fut.add_done_callback(done)
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ServerTimeoutError(
                f"{task} did not finish within {timeout:g} s", retry_after=self.retry_after()
            ) from None
        except self._ray.exceptions.RayError as exc:
            if isinstance(exc, self._ray.exceptions.RayTaskError):
                raise  # a bug in the worker code, not a lost worker: a logged 500
            self._lost(slot)
            raise WorkerLostError(
                f"the worker evaluating this {task} was lost ({type(exc).__name__}); nothing"
                " was recorded, send the request again",
                retry_after=1,
            ) from None
        wall = time.monotonic() - submitted
        if task == "ping":
            return result, 0.0
        status, value, busy = result
        slot.served += 1
        if status == "error":
            message, code, http_status = value
            raise RemoteError(message, code, http_status)
        if task == "upload":
            sha = value
            _, created = await asyncio.to_thread(self._store.put, args[1], args[2])
            value = (sha, created)
        elif task == "evaluate":
            self._ewma = busy if self._ewma is None else 0.7 * self._ewma + 0.3 * busy
        return value, max(0.0, wall - busy)


def read_transfer_logs(cache_root: Path) -> list[tuple[str, str, str, str, int]]:
    """Every context transfer recorded under ``cache_root``: ``(node, kind, hospital, sha,
    bytes)``, one per line of each machine's ``transfers.log``."""
    rows: list[tuple[str, str, str, str, int]] = []
    for f in sorted(cache_root.glob(f"*/{TRANSFER_LOG}")):
        for line in f.read_text(encoding="ascii").splitlines():
            kind, ns, sha, n, _ = line.split()
            rows.append((f.parent.name, kind, ns, sha, int(n)))
    return rows
