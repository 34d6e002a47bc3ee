"""The synthetic PHI corpus, de-identified under several option sets, scores 100%."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.deid import (
    BurnedInPolicy,
    BurnedInRule,
    Deidentifier,
    DeidKeys,
    DeviceMask,
    SafePrivateAllowList,
    SafePrivateTag,
)
from node.deid.batch import deidentify_tree
from tests.support.phi_corpus import DOSE_MASK, SAFE_CREATOR, Manifest, generate
from tests.support.phi_scorer import failures, score

OPTION_SETS = [
    (),
    ("clean_structured_content",),
    (
        "retain_long_modified_dates",
        "clean_descriptors",
        "clean_structured_content",
        "clean_graphics",
        "retain_patient_characteristics",
        "retain_safe_private",
    ),
    (
        "retain_uids",
        "retain_device_identity",
        "retain_institution_identity",
        "retain_long_full_dates",
        "retain_patient_characteristics",
    ),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("corpus")
    return root, generate(root, seed=20261123, n_patients=3)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
@pytest.mark.parametrize("mask", [False, True], ids=["block", "mask"])
def test_corpus_scores_100_percent(
    corpus: tuple[Path, Manifest], tmp_path: Path, options: tuple[str, ...], mask: bool
) -> None:
    in_dir, manifest = corpus
    policy = (
        BurnedInPolicy(
            BurnedInRule.MASK,
            (DeviceMask(DOSE_MASK["manufacturer"], DOSE_MASK["model"], 16, 16, ((0, 0, 16, 4),)),),
        )
        if mask
        else BurnedInPolicy()
    )
    deid = Deidentifier(
        options,
        DeidKeys.ephemeral(),
        burned_in=policy,
        safe_private=SafePrivateAllowList([SafePrivateTag(SAFE_CREATOR, 0x10, 0x0019)]),
    )
    summary = deidentify_tree(in_dir, tmp_path / "out", deid, fsync=False)
    assert summary.errors == 0 and summary.skipped == 0
    assert summary.blocked == (3 if mask else 6)
    checks = score(manifest, in_dir, tmp_path / "out", options, mask_configured=mask)
    assert len(checks) > 500
    assert failures(checks) == []


def test_scorer_catches_a_leak(corpus: tuple[Path, Manifest], tmp_path: Path) -> None:
    """The scorer is not vacuous: an engine that forgets Patient's Name fails it."""
    in_dir, manifest = corpus
    deid = Deidentifier((), DeidKeys.ephemeral())
    summary = deidentify_tree(in_dir, tmp_path / "out", deid, fsync=False)
    assert summary.written
    import pydicom

    victim = next((tmp_path / "out").rglob("ct_0.dcm"))
    ds = pydicom.dcmread(victim)
    ds.StudyDescription = f"for {manifest.patients[0].name_parts[0]}"
    ds.save_as(victim)
    failed = failures(score(manifest, in_dir, tmp_path / "out", ()))
    assert failed and all("absent" in f for f in failed)
