"""The coded concepts and fixed statements shared by the SR writer and reader.

Standard codes only (DCM, SCT, UCUM), so any PACS or viewer can interpret the report without a
private coding scheme.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

__all__ = [
    "ABSENT",
    "COMMENT",
    "ENCRYPTION_STATEMENT",
    "NOT_ENCRYPTED_STATEMENT",
    "NOT_FOR_PRIMARY_DIAGNOSIS",
    "PRESENT",
    "PROBABILITY",
    "PROCEDURE_REPORTED",
    "UNIT_ONE",
    "finding_concept",
]

PRESENT = CodedConcept("52101004", "SCT", "Present")  # CID 240 Present-Absent
ABSENT = CodedConcept("272519000", "SCT", "Absent")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
UNIT_ONE = CodedConcept("1", "UCUM", "no units")  # CID 7181, UCUM unity
COMMENT = CodedConcept("121106", "DCM", "Comment")
PROCEDURE_REPORTED = CodedConcept.from_code(codes.cid100.ImagingProcedure)

ENCRYPTION_STATEMENT = (
    "Result computed under two-party CKKS homomorphic encryption: the algorithm vendor received "
    "only ciphertexts and never saw the images, identifiers or results in clear."
)
NOT_ENCRYPTED_STATEMENT = (
    "Result NOT computed by BlindRead's encrypted inference: the outputs were supplied to "
    "'blindread sr build' by hand and nothing shows how they were computed."
)
NOT_FOR_PRIMARY_DIAGNOSIS = "Not for primary diagnosis."


def finding_concept(scheme: str, value: str, meaning: str) -> CodedConcept:
    """A finding code from the model manifest as a highdicom concept."""
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
