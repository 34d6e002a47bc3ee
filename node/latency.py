"""End-to-end latencies of a study, read from its spooled files: ``receive``, ``completion``
and ``total`` in ``blindread_step_seconds``.

The Storage SCP writes each instance once and the claim moves the batch by rename (same file
system, checked at start-up), so a job's files keep the modification times of their arrival:
the oldest is the study's first instance, the newest its last. Hence, without any extra state:

- ``receive``: first to last instance of the batch;
- ``completion``: last instance to the claim (the quiet period the completion monitor waited);
- ``total``: first instance to the job's end (done).
"""

from __future__ import annotations

import os
import time

from node.jobs import Job
from node.metrics import NodeMetrics

__all__ = ["arrival_span", "observe_claimed", "observe_finished"]


def arrival_span(job: Job) -> tuple[float, float] | None:
    """Oldest and newest modification time of the job's files (``None`` if none is left)."""
    times: list[float] = []
    for path in job.paths:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    return (min(times), max(times)) if times else None


def observe_claimed(metrics: NodeMetrics, job: Job) -> None:
    """A study's batch became ``job``: its ``receive`` and ``completion`` latencies."""
    span = arrival_span(job)
    if span is None:
        return
    first, last = span
    metrics.observe_step("receive", max(0.0, last - first))
    metrics.observe_step("completion", max(0.0, job.created_at - last))


def observe_finished(metrics: NodeMetrics, job: Job, now: float | None = None) -> None:
    """``job`` is done: its ``total`` latency, first instance received to now (the claim's time
    when no file is left to date the first instance)."""
    span = arrival_span(job)
    first = span[0] if span is not None else job.created_at
    end = time.time() if now is None else now
    metrics.observe_step("total", max(0.0, end - first))
