"""Unit tests: file meta encoder, association policy, spool, completion timers, job store and
claim recovery at every crash point, backoff, config section -> settings."""

from __future__ import annotations

import os
from io import BytesIO
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble

from node.config import ConfigError, NodeConfig, parse_model
from node.intake import Intake
from node.jobs import JobStore
from node.netsettings import destination_settings, scp_settings, sender_settings
from scp import AssociationPolicy, CompletionMonitor, CompletionSettings, SenderSettings, Spool
from scp._filemeta import file_meta_bytes
from scp.errors import SpoolFullError
from tests.support.synthetic import synthetic_ct_study

UIDS = st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,8}){1,8}", fullmatch=True)


@settings(max_examples=50, deadline=None)
@given(
    UIDS,
    UIDS,
    st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"]),
    st.from_regex(r"[A-Z0-9_]{0,16}", fullmatch=True),
)
def test_file_meta_matches_pydicom(sop_class: str, sop: str, ts: str, ae: str) -> None:
    raw = file_meta_bytes(sop_class, sop, ts, ae)
    fp = BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    assert meta.MediaStorageSOPClassUID == sop_class
    assert meta.MediaStorageSOPInstanceUID == sop
    assert meta.TransferSyntaxUID == ts
    assert meta.FileMetaInformationGroupLength == len(raw) - 132 - 12
    assert meta.get("SourceApplicationEntityTitle", "").strip() == ae.strip()


def test_policy_order_and_reasons() -> None:
    p = AssociationPolicy("BLINDREAD", ("CT1",), (ip_network("10.0.0.0/8"),))
    assert p.check("CT1", "BLINDREAD", "10.1.2.3") is None
    assert p.check("CT1", "BLINDREAD", "::ffff:10.1.2.3") is None
    r = p.check("XX", "BLINDREAD", "192.168.1.1")
    assert r is not None and r.diagnostic == 0x01  # address checked first
    r = p.check("XX", "BLINDREAD", "10.0.0.1")
    assert r is not None and (r.result, r.source, r.diagnostic) == (1, 1, 3)
    r = p.check("CT1", "OTHER", "10.0.0.1")
    assert r is not None and r.diagnostic == 0x07
    assert p.check("CT1", "BLINDREAD", "not-an-ip") is not None


def _spool(tmp_path: Path, **kw: int) -> Spool:
    return Spool(tmp_path / "spool", lambda uid: f"k{abs(hash(uid)) % 10**12}", **kw)


def test_spool_store_replace_and_watermark(tmp_path: Path) -> None:
    sp = _spool(tmp_path)
    a = sp.store("1.2", "1.2.3", b"first")
    b = sp.store("1.2", "1.2.3", b"second")
    assert a.path == b.path and b.replaced and b.path.read_bytes() == b"second"
    assert [s.count for s in sp.studies()] == [1]
    full = _spool(tmp_path, min_free_bytes=10**18)
    with pytest.raises(SpoolFullError):
        full.store("1.2", "1.2.4", b"x")
    assert not list((tmp_path / "spool" / ".tmp").iterdir())
    (tmp_path / "spool" / ".tmp" / "x.part").write_bytes(b"partial")
    assert sp.clean_partial() == 1


def test_completion_quiet_and_max_age() -> None:
    now = [1000.0]
    done: list[str] = []
    m = CompletionMonitor(CompletionSettings(10, 100), done.append, clock=lambda: now[0])
    m.touch("a")
    now[0] += 5
    m.touch("b")
    assert m.tick() == 0
    now[0] += 6  # a quiet for 11 s, b for 6 s
    assert m.tick() == 1 and done == ["a"]
    for _ in range(12):  # b keeps receiving: max age completes it anyway
        now[0] += 9
        m.touch("b")
    m.tick()
    assert done == ["a", "b"]


def test_backoff_doubles_and_caps() -> None:
    s = SenderSettings(max_attempts=9, initial_backoff_seconds=2, max_backoff_seconds=10)
    assert [s.backoff(i) for i in (1, 2, 3, 4)] == [2, 4, 8, 10]


def _intake(tmp_path: Path) -> tuple[Spool, JobStore, Intake]:
    sp = _spool(tmp_path)
    store = JobStore(tmp_path / "jobs.sqlite")
    return sp, store, Intake(sp, store, tmp_path / "jobs", tmp_path / "quarantine")


def test_claim_is_exactly_once(tmp_path: Path) -> None:
    sp, _store, intake = _intake(tmp_path)
    for i in range(3):
        sp.store("1.2", f"1.2.{i}", b"x")
    key = sp.study_key("1.2")
    job = intake.claim(key)
    assert job is not None and job.state == "queued" and len(job.files) == 3
    assert intake.claim(key) is None  # nothing left to claim
    sp.store("1.2", "1.2.9", b"late")  # a late instance starts a new batch
    late = intake.claim(key)
    assert late is not None and len(late.files) == 1 and late.id != job.id


@pytest.mark.parametrize("crash_after", ["begin", "rename"])
def test_claim_recovered_after_crash(tmp_path: Path, crash_after: str) -> None:
    sp, store, _ = _intake(tmp_path)
    for i in range(4):
        sp.store("1.2", f"1.2.{i}", b"x")
    key = sp.study_key("1.2")
    dest = tmp_path / "jobs" / "tok"
    job_id = store.begin_claim(key, "tok", dest)
    if crash_after == "rename":
        sp.take_study(key, dest)
    # "restart": a new store and intake over the same files
    store.close()
    sp2, store2, intake2 = _intake(tmp_path)
    intake2.recover()
    jobs = store2.list()
    assert [(j.id, j.state, len(j.files)) for j in jobs] == [(job_id, "queued", 4)]
    assert sp2.studies() == []


def test_running_job_requeued_and_done_is_final(tmp_path: Path) -> None:
    sp, store, intake = _intake(tmp_path)
    sp.store("1.2", "1.2.1", b"x")
    job = intake.claim(sp.study_key("1.2"))
    assert job is not None
    running = store.next_due()
    assert running is not None and running.state == "running"
    assert store.next_due() is None  # nobody else can take it
    intake.recover()  # crash while running -> queued again
    assert store.get(job.id).state == "queued"  # type: ignore[union-attr]
    store.next_due()
    assert store.mark_done(job.id)
    assert not store.mark_done(job.id)  # done only once
    assert store.next_due() is None


def test_failed_job_quarantine_move_recovered(tmp_path: Path) -> None:
    sp, store, intake = _intake(tmp_path)
    sp.store("1.2", "1.2.1", b"x")
    job = intake.claim(sp.study_key("1.2"))
    assert job is not None
    store.next_due()
    failed = store.mark_attempt_failed(
        job.id, "SendError: x", 1, lambda n: 1.0, intake.quarantine_dir / job.token
    )
    assert failed.state == "failed"
    # crash before the directory moved: recovery moves it
    assert not failed.dir.exists()
    intake.recover()
    assert failed.dir.is_dir() and len(list(failed.dir.iterdir())) == 1
    again = intake.retry(job.id)
    assert again is not None and again.state == "queued" and again.dir.is_dir()
    assert not failed.dir.exists()


def test_scp_config_section_to_settings(tmp_path: Path) -> None:
    cfg = parse_model(
        {
            "node": {"state_dir": str(tmp_path)},
            "scp": {
                "ae_title": "NODE1",
                "allowed_networks": ["10.0.0.0/8", "::1/128"],
                "allowed_calling_ae_titles": ["CT1"],
            },
            "destinations": {"pacs": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104}},
            "sender": {"max_attempts": 3},
        },
        NodeConfig,
    )
    s = scp_settings(cfg)
    assert s.ae_title == "NODE1" and s.spool_dir == tmp_path / "spool"
    assert s.allowed_networks == (ip_network("10.0.0.0/8"), ip_network("::1/128"))
    d = destination_settings(cfg, "pacs")
    assert d.calling_ae_title == "NODE1" and d.port == 104
    assert sender_settings(cfg).max_attempts == 3
    with pytest.raises(KeyError, match="known: pacs"):
        destination_settings(cfg, "nope")


def test_scp_config_errors_name_paths() -> None:
    with pytest.raises(ConfigError) as info:
        parse_model(
            {
                "scp": {"allowed_networks": ["10.0.0.300/8"], "min_free_bytes": -1},
                "destinations": {"pacs": {"ae_title": "PACS", "host": "h", "port": 0}},
                "sender": {"max_attempts": 0},
                "completion": {"poll_seconds": 0},
            },
            NodeConfig,
        )
    text = "\n".join(info.value.problems)
    for path in (
        "scp.allowed_networks[0]",
        "scp.min_free_bytes",
        "destinations.pacs.port",
        "sender.max_attempts",
        "completion.poll_seconds",
    ):
        assert path in text, (path, text)


def test_synthetic_study_distinct_uids() -> None:
    study = synthetic_ct_study(3, size=8)
    assert len({str(d.SOPInstanceUID) for d in study}) == 3
    assert len({str(d.StudyInstanceUID) for d in study}) == 1
    buf = BytesIO()
    study[0].save_as(buf, enforce_file_format=True)
    assert dcmread(BytesIO(buf.getvalue())).Rows == 8
    assert os.environ.get("NEVER_SET_BY_TESTS") is None

