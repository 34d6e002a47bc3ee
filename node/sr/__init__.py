"""Result Structured Reports: decrypted model outputs -> TID 1500 SR in the original study.

Public API: :func:`build_result_sr` (the SR), :func:`build_summary_sc` (optional Secondary
Capture summary), :func:`read_result_sr` (findings back from an SR), :class:`ResultOutputs` /
:func:`load_outputs` (the outputs structure and its JSON file), :class:`SrError`;
:func:`build_result_objects` makes everything one job writes back.
"""

from __future__ import annotations

from node.sr.builder import AlgorithmParameters, build_result_sr
from node.sr.errors import SrError
from node.sr.files import read_source_dir, write_dataset_atomic
from node.sr.outputs import ResultOutputs, as_outputs, load_outputs
from node.sr.reader import ResultFinding, ResultReport, read_result_sr
from node.sr.results import build_result_objects
from node.sr.summary import build_summary_sc
from node.sr.uids import ResultUids, derive_uid, device_uid

__all__ = [
    "AlgorithmParameters",
    "ResultFinding",
    "ResultOutputs",
    "ResultReport",
    "ResultUids",
    "SrError",
    "as_outputs",
    "build_result_objects",
    "build_result_sr",
    "build_summary_sc",
    "derive_uid",
    "device_uid",
    "load_outputs",
    "read_result_sr",
    "read_source_dir",
    "write_dataset_atomic",
]
