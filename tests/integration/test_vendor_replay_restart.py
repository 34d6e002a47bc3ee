"""Job-token replay protection survives a vendor restart (issue #16, defect 10).

The vendor indexes the job tokens of its request chain on start, so a token answered before a
restart is still refused with another request (409 ``job_token_reused``), and the chain keeps one
entry per token. The same request under the same token is refused too once the answer is no
longer in memory (the answer is not kept on disk and is not computed twice).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from secure_infer.chain import verify_chain
from secure_infer.framing import MEDIA_TYPE, encode_frames
from secure_infer.wire import H_CONTEXT, H_JOB, new_job_token
from tests.integration.test_vendor_link import (
    VendorProcess,
    client_for,
    inputs,
    make_pki,
    raw_client,
    write_model_package,
)


def _post(vp: VendorProcess, frames: list[bytes], sha: str, job: str) -> httpx.Response:
    with raw_client(vp, vp.pki.hospital_a) as c:
        return c.post(
            "/v1/models/tiny/infer",
            content=encode_frames(frames),
            headers={H_JOB: job, H_CONTEXT: sha, "Content-Type": MEDIA_TYPE},
        )


def test_job_token_is_refused_after_restart(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tiny = write_model_package(tmp_path / "models", "tiny", side=16, kernel=4, seed=1)
    vp = VendorProcess(tmp_path / "srv", pki, [tiny], max_request_bytes=4 * 1024 * 1024)
    keys = tmp_path / "hospital-keys"
    job = new_job_token()
    vp.start()
    try:
        with client_for(vp, pki.hospital_a, keys) as c:
            c.ensure_context("tiny")
            sess = c.session("tiny")
        sha = sess.context_sha256()
        first = sess.encrypt(inputs(1, 16, seed=16))
        other = sess.encrypt(inputs(1, 16, seed=17))
        assert _post(vp, first, sha, job).status_code == 200
    finally:
        vp.stop()
    vp.start()
    try:
        again = _post(vp, other, sha, job)  # same token, another request, after the restart
        assert again.status_code == 409, (again.status_code, again.text)
        assert again.json()["error"] == "job_token_reused"
        assert "another request" in again.json()["detail"]
        same = _post(vp, first, sha, job)  # same request: its answer is gone with the process
        assert same.status_code == 409, (same.status_code, same.text)
        assert same.json()["error"] == "job_token_reused"
        assert "new job token" in same.json()["detail"]
        fresh = _post(vp, other, sha, new_job_token())  # a new token is served as usual
        assert fresh.status_code == 200
    finally:
        vp.stop()
    chain = vp.state_dir / "chain.jsonl"
    assert verify_chain(chain) == 2
    jobs = [json.loads(line)["job"] for line in chain.read_text().splitlines()]
    assert jobs.count(job) == 1  # one entry per job token
