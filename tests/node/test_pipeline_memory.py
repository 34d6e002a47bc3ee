"""A job's memory does not grow with its study (issue #16 defect 7).

The infer step preprocesses, sends and keeps only the probabilities of at most
``node.max_images_in_memory`` images at a time. The backend here is
``benchmarks/memory.py``'s stand-in: it answers from the images themselves (so chunked and
unchunked runs must agree exactly) and holds 400 KB per image until it answers, as the real
client holds a request's ciphertexts (the real CKKS path is measured by the benchmark).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from benchmarks.memory import ROOT, FakeBackend, make_study, measure
from benchmarks.memory import child as run_pipeline
from node.config import NodeConfig, parse_model
from node.demo.stack import DEMO_MODEL_DIR
from node.jobs import JobError
from node.metrics import NodeMetrics
from node.pipeline import Deidentified, StepContext
from node.pipeline.infer import infer_encrypted
from secure_infer.manifest import load_manifest

UNCHUNKED = 100_000


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("studies")
    return {n: make_study(n, root / f"n{n}", size=64) for n in (20, 150)}


def _run(study: Path, work: Path, chunk: int) -> dict[str, object]:
    work.mkdir()
    args = argparse.Namespace(study=str(study), work=str(work), backend="fake", chunk=chunk)
    return run_pipeline(args)


def test_chunks_reach_the_backend_bounded_and_give_the_unchunked_result(
    tmp_path: Path, studies: dict[int, Path]
) -> None:
    chunked = _run(studies[150], tmp_path / "chunked", chunk=16)
    whole = _run(studies[150], tmp_path / "whole", chunk=UNCHUNKED)
    assert chunked["batches"] == [16] * 9 + [6]  # never more than 16 images at once
    assert whole["batches"] == [150]
    # the same probabilities, row for row, in the same order (the backend is deterministic)
    assert chunked["n"] == 150 and chunked["probabilities"] == whole["probabilities"]
    # one audited intent per request the backend got
    assert chunked["requests_audited"] == 10 and whole["requests_audited"] == 1


def test_peak_memory_growth_with_study_size_is_bounded_by_the_chunk(
    studies: dict[int, Path],
) -> None:
    # each figure is the peak RSS a job added, measured in a child process of its own (run
    # side by side: the peaks of separate processes do not mix)
    runs = [(n, chunk) for chunk in (UNCHUNKED, 16) for n in (20, 150)]
    with ThreadPoolExecutor(len(runs)) as pool:
        done = dict(zip(runs, pool.map(
            lambda run: measure(ROOT, studies[run[0]], chunk=run[1], backend="fake"), runs
        ), strict=True))  # fmt: skip
    assert max(done[150, 16]["batches"]) == 16 and done[150, UNCHUNKED]["batches"] == [150]

    def growth(chunk: int) -> int:
        return int(done[150, chunk]["peak"]) - int(done[20, chunk]["peak"])

    unchunked, chunked = growth(UNCHUNKED), growth(16)
    # 130 more images hold ~50 MiB of stand-in ciphertexts at once when sent as one batch
    assert unchunked > 30 * 2**20
    assert chunked < 0.6 * unchunked, (chunked / 2**20, unchunked / 2**20)


def test_a_model_version_change_between_chunks_fails_the_attempt(tmp_path: Path) -> None:
    # one result comes from one model: the runner retries the job, which redoes the step
    manifest = load_manifest(DEMO_MODEL_DIR / "manifest.yaml").public()
    names = [p.name for p in make_study(3, tmp_path / "deid", size=64).glob("*.dcm")]

    class Updated(FakeBackend):
        def infer(self, model: str, batch: Any) -> Any:
            outcome = super().infer(model, batch)
            if len(self.batches) > 1:  # the vendor deployed a new version after chunk 1
                outcome = type(outcome)(**{**vars(outcome), "model_version": "2.0.0"})
            return outcome

    cfg = parse_model({"node": {"max_images_in_memory": 2}}, NodeConfig)
    ctx: Any = StepContext(cfg, None, None, None, b"", NodeMetrics())  # type: ignore[arg-type]
    deid = Deidentified(files=tuple(sorted(names)), sources=(), study_pseudonym="s")
    job: Any = type("J", (), {"study": "s"})()
    with pytest.raises(JobError, match="model version changed"):
        infer_encrypted(ctx, job, Updated(manifest), "m", manifest, tmp_path / "deid", deid)
    backend = FakeBackend(manifest)
    inferred = infer_encrypted(ctx, job, backend, "m", manifest, tmp_path / "deid", deid)
    assert backend.batches == [2, 1] and len(inferred.probabilities) == 3
