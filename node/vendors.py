"""The node's side of the vendor link: one :class:`~secure_infer.VendorClient` per
configured vendor peer, adapted to the pipeline's :class:`~node.pipeline.InferenceBackend`.

Clients are created on first use (a node that never routes to a vendor never opens a TLS
connection) and reused across jobs, so the public context is uploaded once per hospital key.
At most ``vendors.<name>.max_concurrent_jobs`` jobs use a vendor at a time: each holds one of
that many clients (a client is used by one thread at a time) and the others wait. Creating the
CKKS keys and uploading the context happen under one lock per vendor, so clients sharing a key
directory never race to create the same key files. A vendor paused by an operator
(:class:`node.pauses.Pauses`) holds its jobs back instead.

Each client makes one try per request by default (``max_attempts: 1``): the job runner's
retries are the one retry layer (:mod:`node.runner`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from node.config import NodeConfig
from node.metrics import NodeMetrics
from node.pauses import Pauses
from node.pipeline import InferenceBackend, InferenceOutcome
from secure_infer import Manifest, VendorClient

__all__ = ["ClientBackend", "PooledBackend", "VendorBackends"]

log = logging.getLogger(__name__)


class ClientBackend:
    """:class:`InferenceBackend` over a real mutual-TLS :class:`VendorClient`."""

    def __init__(self, client: VendorClient) -> None:
        self.client = client
        # one user of the client at a time: the warm-up thread and the job runner would
        # otherwise race to create the same CKKS key files
        self._lock = threading.Lock()

    def prepare(self, model: str) -> None:
        """Keys created or loaded and the public context uploaded (once per hospital key)."""
        with self._lock:
            self.client.ensure_context(model)

    def manifest(self, model: str) -> Manifest:
        with self._lock:
            manifest, _ = self.client.model_info(model)
        return manifest

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        with self._lock:
            res = self.client.infer(model, batch)
            _, spec = self.client.model_info(model)
        params = {
            "he.scheme": "CKKS",
            "he.poly_modulus_degree": str(spec.poly_modulus_degree),
            "he.coeff_modulus_bits": "/".join(str(b) for b in spec.coeff_modulus_bits),
            "he.scale_bits": str(spec.scale_bits),
            "he.security": "128-bit (HomomorphicEncryption.org)",
        }
        return InferenceOutcome(
            probabilities=[[float(v) for v in row] for row in np.asarray(res.probabilities)],
            model_version=res.model_version,
            context_sha256=res.context_sha256,
            request_sha256=[e.request_sha256 for e in res.exchanges],
            response_sha256=[e.response_sha256 for e in res.exchanges],
            bytes_up=res.bytes_up + res.context_bytes_uploaded,
            bytes_down=res.bytes_down,
            timings={
                "encrypt": res.timings.get("encrypt", 0.0),
                "vendor": res.timings.get("upload", 0.0)
                + res.timings.get("server", 0.0)
                + res.timings.get("download", 0.0),
                "decrypt": res.timings.get("decrypt", 0.0),
                "total": res.timings.get("total", 0.0),
            },
            parameters=params,
        )


class PooledBackend:
    """:class:`InferenceBackend` over up to ``size`` clients of one vendor (one per job using
    it at a time); clients are made on first need by ``make``."""

    def __init__(self, make: Callable[[], ClientBackend], size: int) -> None:
        self._make = make
        self._free: queue.LifoQueue[ClientBackend] = queue.LifoQueue()
        self._made: list[ClientBackend] = []
        self._size = size
        self._lock = threading.Lock()
        self.keys_lock = threading.Lock()  # key creation + context upload: one at a time

    @contextmanager
    def _client(self) -> Iterator[ClientBackend]:
        with self._lock:
            if self._free.empty() and len(self._made) < self._size:
                self._made.append(self._make())
                self._free.put(self._made[-1])
        backend = self._free.get()  # waits while ``size`` jobs hold every client
        try:
            yield backend
        finally:
            self._free.put(backend)

    @property
    def client(self) -> VendorClient:
        """The first client (made if need be): what tests wrap to watch or fault requests."""
        with self._lock:
            if not self._made:
                self._made.append(self._make())
                self._free.put(self._made[-1])
            return self._made[0].client

    def in_use(self) -> int:
        """Clients held by jobs now."""
        with self._lock:
            return len(self._made) - self._free.qsize()

    def prepare(self, model: str) -> None:
        with self._client() as b, self.keys_lock:
            b.prepare(model)

    def manifest(self, model: str) -> Manifest:
        with self._client() as b:
            return b.manifest(model)

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        with self._client() as b:
            with self.keys_lock:
                b.prepare(model)
            return b.infer(model, batch)

    def close(self) -> None:
        with self._lock:
            for b in self._made:
                b.client.close()
            self._made.clear()


class VendorBackends:
    """``vendor name -> InferenceBackend`` for the pipeline, a pool of clients per vendor."""

    def __init__(
        self,
        cfg: NodeConfig,
        key_dir: Path | None = None,
        metrics: NodeMetrics | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        self.cfg = cfg
        self.key_dir = key_dir or cfg.node.keys / "ckks"
        self.metrics = metrics
        self.pauses = pauses
        self._backends: dict[str, PooledBackend] = {}
        self._lock = threading.Lock()

    def _new_client(self, vendor: str) -> ClientBackend:
        section = self.cfg.vendors[vendor]
        return ClientBackend(
            VendorClient(section.client_settings(), self.key_dir / vendor, on_retry=self._retried)
        )

    def __call__(self, vendor: str) -> InferenceBackend:
        if self.pauses is not None:
            self.pauses.check("vendor", vendor)
        return self.pool(vendor)

    def pool(self, vendor: str) -> PooledBackend:
        with self._lock:
            if vendor not in self._backends:
                size = self.cfg.vendors[vendor].max_concurrent_jobs
                self._backends[vendor] = PooledBackend(
                    lambda: self._new_client(vendor), size
                )
            return self._backends[vendor]

    def _retried(self, reason: str) -> None:
        """The client retries a vendor request: ``blindread_retries_total{step="vendor"}``."""
        if self.metrics is not None:
            self.metrics.retry("vendor")

    def warm_up(self, pairs: Iterable[tuple[str, str]]) -> threading.Thread:
        """In the background: fetch each (vendor, model)'s manifest, create or load the CKKS
        keys and upload the public context if the vendor lacks it.

        Key generation and the one-time context upload (tens of MB of Galois keys) then happen
        when the node starts, not inside the first study's latency. Failures are only logged:
        the pipeline does the same work on demand, with its retries.
        """

        def run() -> None:
            for vendor, model in dict.fromkeys(pairs):
                try:
                    self.pool(vendor).prepare(model)
                    log.info("vendor %s model %s: keys ready, public context uploaded",
                             vendor, model)  # fmt: skip
                except Exception as exc:
                    log.warning("vendor %s model %s: warm-up failed (%s); will retry on demand",
                                vendor, model, type(exc).__name__)  # fmt: skip

        thread = threading.Thread(target=run, name="vendor-warm-up", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
