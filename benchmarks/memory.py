"""Peak memory of the inference pipeline against study size (issue #16 defect 7).

Each measurement runs in a child process of its own (so peaks never mix): the child stores a
synthetic study of N CR images (``node.demo.phantom_study``) in a spool, claims its job, resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``) once the backend is set up, runs the
whole pipeline (rules, de-id + vault, preprocessing, encrypted inference, SR, delivery to a
stub sender) and reports ``VmHWM`` minus the RSS before the job: what the job itself added.

The backend is ``tests.support.local_backend.LocalBackend``'s real CKKS session and in-process
vendor evaluator, driven as ``secure_infer.VendorClient`` drives them (the batch encrypted at
once, sent in requests of at most the plan's ``max_ciphertexts``; ~0.16 s and ~400 KB of
ciphertext per image for the demo model), or with ``--backend fake`` a stand-in that holds
400 KB per image until it answers, as the real client holds a batch's ciphertexts (fast; used
by tests/node/test_pipeline_memory.py).

The child imports ``node`` from ``PYTHONPATH``, so the same script measures another tree:

    python benchmarks/memory.py [--sizes 50 200 800] [--before /tmp/main-copy]

``--before DIR`` (e.g. ``git archive main | tar -x -C DIR``) adds that tree's figures as the
"before" column; the "after" column is this tree with its default ``node.max_images_in_memory``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CIPHERTEXT_BYTES = 400_000  # what one demo-model image costs as a CKKS ciphertext


def _status(field: str) -> int:
    """``field`` of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class _PeakRss:
    """The RSS before the block and its peak during it: the kernel's VmHWM after resetting it
    (``/proc/self/clear_refs``), or, where that is not allowed, VmRSS sampled every 2 ms."""

    def __enter__(self) -> _PeakRss:
        import threading

        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            self._sampled = 0
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.before = _status("VmRSS")
        if self._sampler is not None:
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled = max(self._sampled, _status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        if self._sampler is None:
            self.peak = _status("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self._sampled, _status("VmRSS"))


class FakeBackend:
    """Answers from the images themselves (deterministic, so chunked and unchunked runs agree
    exactly) and holds ``CIPHERTEXT_BYTES`` of touched memory per image until it answers, as the
    real client holds the ciphertexts of a request. Records the batch sizes it was given."""

    def __init__(self, manifest: Any) -> None:
        self._manifest = manifest
        self.batches: list[int] = []

    def manifest(self, model: str) -> Any:
        return self._manifest

    def infer(self, model: str, batch: Any) -> Any:
        import hashlib

        import numpy as np

        from node.pipeline import InferenceOutcome

        self.batches.append(len(batch))
        frames = [np.full(CIPHERTEXT_BYTES, i % 251, dtype=np.uint8) for i in range(len(batch))]
        flat = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        probs = [[float(row.mean()), float(row.std())] for row in flat]
        digest = hashlib.sha256(b"".join(f[:16].tobytes() for f in frames)).hexdigest()
        return InferenceOutcome(
            probabilities=probs, model_version=self._manifest.version, context_sha256="0" * 64,
            request_sha256=[digest], response_sha256=[digest],
            bytes_up=sum(f.size for f in frames), bytes_down=16 * len(batch),
            timings={}, parameters={"he.scheme": "fake"},
        )  # fmt: skip


class ClientLikeBackend:
    """``LocalBackend``'s CKKS session and vendor evaluator, used the way
    ``secure_infer.VendorClient.infer`` uses them: the whole batch is encrypted at once, then
    sent as requests of at most the plan's ``max_ciphertexts`` (each one framed into a request
    body and answered with framed outputs), decrypted request by request."""

    def __init__(self, manifest_path: Path, key_dir: Path) -> None:
        from tests.support.local_backend import LocalBackend

        self.local = LocalBackend(manifest_path, key_dir)
        self.batches: list[int] = []

    def manifest(self, model: str) -> Any:
        return self.local.manifest(model)

    def infer(self, model: str, batch: Any) -> Any:
        import numpy as np

        from node.pipeline import InferenceOutcome
        from secure_infer.framing import decode_frames, encode_frames, frames_sha256
        from secure_infer.hospital.client import apply_activations

        self.batches.append(len(batch))
        local, spec = self.local, self.local.vendor.spec
        frames = local.session.encrypt(np.asarray(batch, dtype=np.float64))
        step, per = spec.max_ciphertexts, spec.images_per_ciphertext
        logits, sent, answered, up, down = [], [], [], 0, 0
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            body = encode_frames(chunk)
            outs = encode_frames(local.vendor.evaluate(local.context, decode_frames(body)))
            k = min(len(chunk) * per, len(batch) - start * per)
            logits.append(np.asarray(local.session.decrypt(decode_frames(outs), k)))
            sent.append(frames_sha256(body))
            answered.append(frames_sha256(outs))
            up, down = up + len(body), down + len(outs)
        probs = apply_activations(local.vendor.manifest, np.concatenate(logits, axis=0))
        return InferenceOutcome(
            probabilities=probs.tolist(), model_version=local.vendor.manifest.version,
            context_sha256=local.session.context_sha256(), request_sha256=sent,
            response_sha256=answered, bytes_up=up, bytes_down=down, timings={},
            parameters={"he.scheme": "CKKS"},
        )  # fmt: skip


class StubSender:
    """Accepts every delivery (the PACS is not what is measured)."""

    def send(self, dest: Any, items: Any) -> Any:
        from scp import SendReport

        return SendReport(destination=str(dest), sent=len(items))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one pipeline over the study in ``args.study``; figures as a JSON-able dict."""
    import gc

    from node.audit import AuditLedger
    from node.config import NodeConfig, parse_model
    from node.deid import DeidKeys
    from node.demo.stack import DEMO_MODEL_DIR
    from node.intake import Intake
    from node.jobs import JobStore
    from node.metrics import NodeMetrics
    from node.pipeline import Inferred, Pipeline, StepStore
    from node.pseudonym import Pseudonymizer
    from node.vault import IdentifierVault
    from scp import Spool

    key = b"k" * 32
    tmp = Path(args.work)
    node: dict[str, Any] = {"state_dir": str(tmp / "state")}
    if args.chunk is not None:
        node["max_images_in_memory"] = args.chunk
    cfg = parse_model(
        {
            "node": node,
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
            "vendors": {
                "v": {
                    "url": "https://127.0.0.1:1",
                    "client_cert": "/x",
                    "client_key": "/x",
                    "ca": "/x",
                    "models": ["demo-lesion"],
                }
            },
            "routes": [
                {
                    "name": "cxr",
                    "match": {"attribute": "Modality", "equals": "CR"},
                    "action": {
                        "infer": {"vendor": "v", "model": "demo-lesion", "destinations": ["pacs"]}
                    },
                }
            ],
        },
        NodeConfig,
    )
    spool = Spool(tmp / "spool", Pseudonymizer(key).study, fsync=False)
    store = JobStore(tmp / "jobs.sqlite")
    intake = Intake(spool, store, tmp / "jobs", tmp / "quarantine")
    study_uid = ""
    for path in sorted(Path(args.study).glob("*.dcm")):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        spool.store(study_uid, str(ds.SOPInstanceUID), path.read_bytes())
    job = intake.claim(spool.study_key(study_uid))
    assert job is not None
    backend: Any
    if args.backend == "local":
        backend = ClientLikeBackend(DEMO_MODEL_DIR / "manifest.yaml", tmp / "ckks")
    else:
        from secure_infer.manifest import load_manifest

        backend = FakeBackend(load_manifest(DEMO_MODEL_DIR / "manifest.yaml").public())
    ledger = AuditLedger.open(tmp / "audit.jsonl", tmp / "audit.key", fsync=False)
    pipeline = Pipeline(
        cfg,
        pseudonyms=Pseudonymizer(key),
        deid_keys=DeidKeys(key, b"d" * 32),
        vault=IdentifierVault(tmp / "vault.sqlite", b"v" * 32),
        sender=StubSender(),  # type: ignore[arg-type]
        backends=lambda name: backend,
        uid_key=key,
        jobs=store,
        audit=ledger,
        metrics=NodeMetrics(),
    )
    # a one-image job first: the code a job imports lazily is loaded before the measurement
    pipeline(_warm_up_job(spool, intake, Path(args.study)))
    backend.batches.clear()
    gc.collect()
    with _PeakRss() as rss:
        t0 = time.perf_counter()
        pipeline(job)
        seconds = time.perf_counter() - t0
    before, peak = rss.before, rss.peak
    inferred = StepStore(job.dir / "steps").get(Inferred, "r0")
    ledger_kinds = [json.loads(line)["kind"] for line in (tmp / "audit.jsonl").open()]
    assert inferred is not None
    return {
        "n": len(inferred.probabilities),
        "rss_before": before,
        "peak": peak,
        "growth": peak - before,
        "seconds": seconds,
        "batches": backend.batches,
        "requests_audited": ledger_kinds.count("inference_requested") - 1,  # minus warm-up
        "probabilities": [list(p) for p in inferred.probabilities],
    }


def _warm_up_job(spool: Any, intake: Any, study: Path) -> Any:
    """A job of one copy of the study's first image, in a study of its own."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(sorted(study.glob("*.dcm"))[0])
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    spool.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), buf.getvalue())
    return intake.claim(spool.study_key(str(ds.StudyInstanceUID)))


def make_study(n: int, folder: Path, size: int) -> Path:
    """``n`` phantom CR images (every other one with a lesion) as files in ``folder``."""
    sys.path.insert(0, str(ROOT))
    from node.demo.phantom_study import phantom_cr_study, write_study_files

    write_study_files(phantom_cr_study([i % 2 == 0 for i in range(n)], size=size), folder)
    return folder


def measure(
    tree: Path, study: Path, *, chunk: int | None, backend: str = "local"
) -> dict[str, Any]:
    """Run :func:`child` for ``study`` with the code of ``tree`` in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="blindread-mem-") as work:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--study", str(study),
               "--work", work, "--backend", backend]  # fmt: skip
        if chunk is not None:
            cmd += ["--chunk", str(chunk)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"measurement child failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--size", type=int, default=256, help="image rows/columns")
    ap.add_argument("--before", type=Path, help="a copy of the tree to compare with (main)")
    ap.add_argument("--backend", choices=["local", "fake"], default="local")
    ap.add_argument("--chunk", type=int, help="node.max_images_in_memory for 'after'")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--study", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    mib = 1024 * 1024
    rows = []
    with tempfile.TemporaryDirectory(prefix="blindread-study-") as studies:
        for n in args.sizes:
            study = make_study(n, Path(studies) / f"n{n}", args.size)
            row: dict[str, Any] = {"n": n}
            if args.before is not None:
                row["before"] = measure(args.before, study, chunk=None, backend=args.backend)
            row["after"] = measure(ROOT, study, chunk=args.chunk, backend=args.backend)
            rows.append(row)
            print(f"  measured N={n}", file=sys.stderr, flush=True)
    print(f"peak RSS added by one job ({args.backend} backend, {args.size}x{args.size} CR)")
    head = f"{'images':>7} | "
    if args.before is not None:
        head += f"{'before MiB':>10} {'calls':>8} {'s':>6} | "
    print(head + f"{'after MiB':>9} {'calls':>8} {'largest':>7} {'s':>6}")
    for row in rows:
        line = f"{row['n']:>7} | "
        if "before" in row:
            b = row["before"]
            line += f"{b['growth'] / mib:>10.1f} {len(b['batches']):>8} {b['seconds']:>6.1f} | "
        a = row["after"]
        print(line + f"{a['growth'] / mib:>9.1f} {len(a['batches']):>8} "
              f"{max(a['batches']):>7} {a['seconds']:>6.1f}")  # fmt: skip
        if "before" in row:
            diff = max(
                abs(x - y)
                for p, q in zip(row["before"]["probabilities"], a["probabilities"], strict=True)
                for x, y in zip(p, q, strict=True)
            )
            print(f"{'':>7}   largest probability difference before/after: {diff:.2e}")


if __name__ == "__main__":
    main()
