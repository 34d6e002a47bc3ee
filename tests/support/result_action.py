"""Test job action: send a small result object (Basic Text SR) for the study.

Lets the SCP/SCU/job-runner tests exercise delivery, retry and quarantine without the
inference pipeline, which plugs into :class:`node.runner.JobRunner` the same way. It is
idempotent: the result's UIDs are derived from the study UID and the job token with the node's
secret key, so a re-run after a crash replaces the same instance instead of adding another.
"""

from __future__ import annotations

import datetime as dt
import logging

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.jobs import Job, JobError
from scp import DestinationSettings, StorageSender

__all__ = ["BASIC_TEXT_SR", "SendResultAction", "build_result"]

log = logging.getLogger(__name__)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def build_result(
    source: Dataset, n_instances: int, key: bytes, token: str, series_number: int = 9901
) -> Dataset:
    """A Basic Text SR in the source's study saying how many instances were received."""
    study_uid = str(source.StudyInstanceUID)
    seed = [key.hex(), study_uid, token]
    ds = Dataset()
    for kw in _COPIED:
        if kw in source:
            setattr(ds, kw, source.data_element(kw).value)  # type: ignore[union-attr]
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        if kw not in ds:
            setattr(ds, kw, "")
    now = dt.datetime.now(dt.UTC)
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[*seed, "instance"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*seed, "series"])
    ds.Modality = "SR"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = "BlindRead"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = Sequence([_code("18782-3", "LN", "Radiology Study observation")])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    item.TextValue = f"BlindRead received {n_instances} instance(s) of this study."
    ds.ContentSequence = Sequence([item])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


class SendResultAction:
    """Job action: build the result for the job's study and C-STORE it to ``destination``."""

    def __init__(
        self,
        sender: StorageSender,
        destination: DestinationSettings | None,
        key: bytes,
        series_number: int = 9901,
    ) -> None:
        self.sender = sender
        self.destination = destination
        self.key = key
        self.series_number = series_number

    def __call__(self, job: Job) -> None:
        if not job.files:
            raise JobError("job has no instance files")
        if self.destination is None:
            log.info("job %d: no destination configured; nothing sent", job.id)
            return
        source = dcmread(job.paths[0], stop_before_pixels=True)
        result = build_result(source, len(job.files), self.key, job.token, self.series_number)
        self.sender.send(self.destination, [result])
