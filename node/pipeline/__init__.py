"""The job action of a hospital node: what happens to a completed study (see
:mod:`node.pipeline.orchestrate`)."""

from __future__ import annotations

from node.pipeline.orchestrate import InferenceBackend, InferenceOutcome, Pipeline, StepStore

__all__ = ["InferenceBackend", "InferenceOutcome", "Pipeline", "StepStore"]
