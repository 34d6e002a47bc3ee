"""The job action of a hospital node: what happens to a completed study.

:class:`Pipeline` (:mod:`node.pipeline.orchestrate`) evaluates the routing rules and runs the
matched actions' steps, one module each (``deid``, ``infer``, ``sr``, ``deliver``,
``forward``); every step's typed result is kept by the :class:`StepStore`, so a crashed job
resumes at its first unfinished step. :func:`preprocess_file` is the one DICOM-to-model-input
conversion, shared with local validation.
"""

from __future__ import annotations

from node.pipeline.context import StepContext
from node.pipeline.deid import Deidentified
from node.pipeline.deliver import Delivered
from node.pipeline.forward import Forwarded
from node.pipeline.infer import InferenceBackend, InferenceOutcome, Inferred
from node.pipeline.orchestrate import Discarded, Pipeline, Received, RuleMatched
from node.pipeline.pixels import first_frame, preprocess_file
from node.pipeline.sr import SrBuilt
from node.pipeline.store import StepResult, StepStore

__all__ = [
    "Deidentified",
    "Delivered",
    "Discarded",
    "Forwarded",
    "InferenceBackend",
    "InferenceOutcome",
    "Inferred",
    "Pipeline",
    "Received",
    "RuleMatched",
    "SrBuilt",
    "StepContext",
    "StepResult",
    "StepStore",
    "first_frame",
    "preprocess_file",
]
