"""Everything one inference job writes back: the SR, plus the summary image when configured."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from node.config.sr import SrSection
from node.sr.builder import AlgorithmParameters, build_result_sr
from node.sr.outputs import ResultOutputs
from node.sr.summary import build_summary_sc
from secure_infer import Manifest

__all__ = ["build_result_objects"]


def build_result_objects(
    manifest: Manifest,
    outputs: ResultOutputs,
    source_datasets: Sequence[Dataset],
    *,
    uid_key: bytes,
    settings: SrSection | None = None,
    algorithm_parameters: AlgorithmParameters | None = None,
    earlier_results: Sequence[Dataset] = (),
) -> list[Dataset]:
    """The result SR, followed by the Secondary Capture summary if ``settings`` asks for it.

    Both are built before either is returned, so a failure leaves nothing half-made to send.
    ``earlier_results`` are the objects written back for this study before (headers suffice):
    with them an amended result supersedes the earlier one (:mod:`node.sr.revisions`), and the
    summary image takes the SR's revision number.
    """
    settings = settings or SrSection()
    sr = build_result_sr(
        manifest,
        outputs,
        source_datasets,
        uid_key=uid_key,
        settings=settings,
        algorithm_parameters=algorithm_parameters,
        earlier_results=earlier_results,
    )
    objects: list[Dataset] = [sr]
    if settings.secondary_capture:
        objects.append(
            build_summary_sc(
                manifest,
                outputs,
                source_datasets,
                uid_key=uid_key,
                settings=settings,
                revision=int(sr.InstanceNumber),
            )
        )
    return objects
