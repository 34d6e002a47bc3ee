"""Hospital client and vendor server in separate processes over real mutual TLS on loopback.

The vendor runs as ``python -m node vendor serve --config ...`` on a free port. Models are small
ONNX networks built here with onnx.helper (same layer types as the demo model); encrypted results
are compared with onnxruntime on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from node.demo.localpacs import stop_process
from secure_infer.chain import verify_chain
from secure_infer.framing import MEDIA_TYPE, encode_frames
from secure_infer.hospital.client import ClientSettings, VendorClient, VendorUnavailableError
from secure_infer.vendor import certs
from secure_infer.wire import H_CONTEXT, H_JOB, new_job_token
from tests.support.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-3


# ------------------------------------------------------------------ models
def save_model(path: Path, name: str, nodes: list[Any], inits: list[Any], side: int) -> None:
    """One image input ``[N, 1, side, side]``, one output ``prob``; checked, opset 13."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, side, side])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_model(path: Path, side: int, kernel: int, channels: int, hidden: int, seed: int) -> None:
    """Conv(k, stride k) -> x*x -> Flatten -> Gemm -> x*x -> Gemm(->1) -> Sigmoid."""
    rng = np.random.default_rng(seed)
    cells = (side // kernel) ** 2 * channels
    w1 = rng.normal(0, 0.5 / kernel, (channels, 1, kernel, kernel)).astype(np.float32)
    b1 = rng.normal(0, 0.1, channels).astype(np.float32)
    w2 = rng.normal(0, 1.0 / np.sqrt(cells), (hidden, cells)).astype(np.float32)
    b2 = rng.normal(0, 0.1, hidden).astype(np.float32)
    w3 = rng.normal(0, 1.0 / np.sqrt(hidden), (1, hidden)).astype(np.float32)
    b3 = rng.normal(0, 0.1, 1).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "w1", "b1"],
            ["c"],
            kernel_shape=[kernel, kernel],
            strides=[kernel, kernel],
            name="conv",
        ),
        helper.make_node("Mul", ["c", "c"], ["c2"], name="sq1"),
        helper.make_node("Flatten", ["c2"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["h"], transB=1, name="fc1"),
        helper.make_node("Mul", ["h", "h"], ["h2"], name="sq2"),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["z"], transB=1, name="fc2"),
        helper.make_node("Sigmoid", ["z"], ["prob"], name="sig"),
    ]
    save_model(path, "tiny", nodes, inits, side)


def build_mlp(path: Path, side: int, hidden: int, seed: int) -> None:
    """Flatten -> Gemm -> x*x -> Gemm(->1) -> Sigmoid (one level shallower than build_model)."""
    rng = np.random.default_rng(seed)
    n = side * side
    w1 = rng.normal(0, 1.0 / np.sqrt(n), (hidden, n)).astype(np.float32)
    b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
    w2 = rng.normal(0, 1.0 / np.sqrt(hidden), (1, hidden)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 1).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, k) for a, k in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
    ]
    nodes = [
        helper.make_node("Flatten", ["image"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Mul", ["h", "h"], ["h2"], name="sq"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["z"], transB=1, name="fc2"),
        helper.make_node("Sigmoid", ["z"], ["prob"], name="sig"),
    ]
    save_model(path, "mlp", nodes, inits, side)


def write_model_package(
    root: Path, name: str, side: int, kernel: int, seed: int, mlp: bool = False
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if mlp:
        build_mlp(d / "model.onnx", side, hidden=4, seed=seed)
    else:
        build_model(d / "model.onnx", side, kernel, channels=2, hidden=8, seed=seed)
    manifest = {
        "name": name,
        "version": "0.1.0",
        "manufacturer": "BlindRead tests",
        "model_name": f"{name} (test model, non-clinical)",
        "intended_use": "tests only",
        "input": {"shape": [1, side, side], "range": [0.0, 1.0]},
        "outputs": [
            {
                "name": "lesion",
                "index": 0,
                "activation": "sigmoid",
                "finding": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
                "threshold": 0.5,
            }
        ],
        "onnx": "model.onnx",
    }
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return d / "manifest.yaml"


def onnx_reference(manifest: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(manifest.parent / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(sess.run(None, {"image": x.astype(np.float32)})[0], dtype=np.float64)


# ------------------------------------------------------------------ PKI
@dataclass(frozen=True)
class Pki:
    ca: Path
    server: certs.CertPair
    hospital_a: certs.CertPair
    hospital_b: certs.CertPair
    rogue: certs.CertPair
    rogue_ca: Path


def make_pki(root: Path) -> Pki:
    ca_dir, out = root / "ca", root / "tls"
    certs.create_ca(ca_dir)
    rogue_dir = root / "rogue-ca"
    certs.create_ca(rogue_dir, cn="Someone else's CA")
    return Pki(
        ca=ca_dir / "ca.crt",
        server=certs.issue_server_cert(ca_dir, out),
        hospital_a=certs.issue_client_cert(ca_dir, out, "hospital-a"),
        hospital_b=certs.issue_client_cert(ca_dir, out, "hospital-b"),
        rogue=certs.issue_client_cert(rogue_dir, root / "rogue", "hospital-a"),
        rogue_ca=rogue_dir / "ca.crt",
    )


# ------------------------------------------------------------------ server process
class VendorProcess:
    """``python -m node vendor serve`` in a subprocess; always torn down."""

    def __init__(self, workdir: Path, pki: Pki, manifests: list[Path], **limits: Any) -> None:
        self.workdir = workdir
        self.pki = pki
        self.port = free_port()
        self.state_dir = workdir / "state"
        self.config = workdir / "vendor.yaml"
        cfg = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "tls": {
                "cert": str(pki.server.cert),
                "key": str(pki.server.key),
                "client_ca": str(pki.ca),
            },
            "models": [str(m) for m in manifests],
            "state_dir": str(self.state_dir),
            "limits": {"workers": 1, "queue_size": 0, **limits},
            "log_level": "INFO",
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.workdir / "vendor.log").read_text(errors="replace")

    def start(self) -> VendorProcess:
        self._log = open(self.workdir / "vendor.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "secure_infer.vendor", "serve", "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
        )
        deadline = time.monotonic() + 120
        with raw_client(self, self.pki.hospital_a) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"vendor exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                    )
                try:
                    if c.get("/v1/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"vendor did not become healthy:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None
        self._log.close()


def raw_client(
    vp: VendorProcess, pair: certs.CertPair | None, ca: Path | None = None, timeout: float = 60
) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(ca or vp.pki.ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return httpx.Client(base_url=vp.url, verify=ctx, timeout=timeout)


def client_for(vp: VendorProcess, pair: certs.CertPair, key_dir: Path, **kw: Any) -> VendorClient:
    settings = ClientSettings(
        url=vp.url, client_cert=pair.cert, client_key=pair.key, ca=vp.pki.ca, **kw
    )
    return VendorClient(settings, key_dir)


# ------------------------------------------------------------------ fixtures
@dataclass
class Env:
    vendor: VendorProcess
    pki: Pki
    tiny: Path
    other: Path
    keys: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("vendor")
    pki = make_pki(root)
    tiny = write_model_package(root / "models", "tiny", side=16, kernel=4, seed=1)
    other = write_model_package(root / "models", "other", side=8, kernel=2, seed=2, mlp=True)
    vp = VendorProcess(
        root / "srv", pki, [tiny, other], max_request_bytes=4 * 1024 * 1024, read_timeout_seconds=2
    )
    vp.start()
    try:
        yield Env(vp, pki, tiny, other, root / "hospital-keys")
    finally:
        vp.stop()


def inputs(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, side, side))


def assert_healthy(env: Env) -> None:
    with raw_client(env.vendor, env.pki.hospital_a) as c:
        r = c.get("/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


# ------------------------------------------------------------------ TLS
def test_client_without_certificate_is_refused_at_tls(env: Env) -> None:
    with raw_client(env.vendor, None) as c, pytest.raises(httpx.TransportError):
        c.get("/v1/health")
    assert_healthy(env)


def test_client_with_certificate_from_another_ca_is_refused_at_tls(env: Env) -> None:
    with raw_client(env.vendor, env.pki.rogue) as c, pytest.raises(httpx.TransportError):
        c.get("/v1/health")
    assert_healthy(env)


def test_client_pins_the_vendor_ca(env: Env, tmp_path: Path) -> None:
    settings = ClientSettings(
        url=env.vendor.url,
        client_cert=env.pki.hospital_a.cert,
        client_key=env.pki.hospital_a.key,
        ca=env.pki.rogue_ca,  # trusts another CA only: the vendor's cert must fail
    )
    with VendorClient(settings, tmp_path) as c, pytest.raises(VendorUnavailableError, match="cert"):
        c.health()


# ------------------------------------------------------------------ public endpoints
def test_models_and_public_manifest(env: Env) -> None:
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        names = {m["name"] for m in c.models()}
        assert names == {"tiny", "other"}
    with raw_client(env.vendor, env.pki.hospital_a) as rc:
        r = rc.get("/v1/models/tiny/manifest")
    assert r.status_code == 200
    doc = r.json()
    assert doc["manifest"]["onnx"] is None and "model.onnx" not in r.text
    assert isinstance(doc["spec"], dict)
    # no weight of the model appears in what the hospital receives
    model = onnx.load(str(env.tiny.parent / "model.onnx"))
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    for v in w2.ravel()[:20]:
        assert f"{v:.5f}" not in r.text


# ------------------------------------------------------------------ end to end
def test_encrypted_inference_matches_onnxruntime(env: Env) -> None:
    x = inputs(3, 16, seed=10)
    ref = onnx_reference(env.tiny, x)
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        res = c.infer("tiny", x)
        again = c.infer("tiny", inputs(1, 16, seed=11))
    assert res.probabilities.shape == (3, 1)
    assert np.max(np.abs(res.probabilities - ref)) <= TOL, (res.probabilities, ref)
    assert np.all((res.probabilities > 0.5) == (ref > 0.5))
    assert res.context_bytes_uploaded > 0 and again.context_bytes_uploaded == 0
    assert res.bytes_up > 0 and res.bytes_down > 0
    assert set(res.timings) >= {"encrypt", "upload", "evaluate", "download", "decrypt", "total"}
    assert res.model_version == "0.1.0"
    # the hospital's secret key file is 0600
    key_files = [p for p in (env.keys / "tiny").rglob("*") if p.is_file()]
    assert key_files
    for p in key_files:
        if "secret" in p.name or p.suffix == ".key":
            assert p.stat().st_mode & 0o077 == 0, p
    # the vendor's hash chain holds exactly what the hospital can compute, and nothing else
    chain = env.vendor.state_dir / "chain.jsonl"
    assert verify_chain(chain) >= 2
    entries = [json.loads(line) for line in chain.read_text().splitlines()]
    mine = next(e for e in entries if e["job"] == res.job)
    assert mine["request_sha256"] == res.request_sha256
    assert mine["response_sha256"] == res.response_sha256
    assert mine["context_sha256"] == res.context_sha256
    assert mine["entry_hash"] == res.chain_entry
    # the hospital appears as a keyed hash only, never by its certificate's name
    assert "hospital-a" not in chain.read_text()
    assert len(mine["hospital"]) == 32 and mine["signature"]
    assert set(mine) == {
        "v",
        "seq",
        "prev_hash",
        "time",
        "job",
        "hospital",
        "signature",
        "model",
        "model_version",
        "context_sha256",
        "request_sha256",
        "response_sha256",
        "entry_hash",
    }


def test_large_batch_is_split_into_requests(env: Env) -> None:
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        _, spec = c.model_info("tiny")
        per = spec.images_per_ciphertext
        x = inputs(2 * per + 1, 16, seed=13)  # three ciphertexts
        frame = len(c.session("tiny").encrypt(x[:1])[0])
        assert c.health()["limits"]["max_request_bytes"] == 4 * 1024 * 1024
        c._limits = {"max_request_bytes": int(2.5 * (frame + 4))}  # as if the vendor allowed two
        res = c.infer("tiny", x)
    assert [e.images for e in res.exchanges] == [2 * per, 1]
    assert len({e.job for e in res.exchanges}) == 2
    assert res.probabilities.shape == (2 * per + 1, 1)
    assert np.max(np.abs(res.probabilities - onnx_reference(env.tiny, x))) <= TOL
    chain = [
        json.loads(line) for line in (env.vendor.state_dir / "chain.jsonl").read_text().splitlines()
    ]
    by_job = {e["job"]: e for e in chain}
    for ex in res.exchanges:
        assert by_job[ex.job]["request_sha256"] == ex.request_sha256


def test_retried_job_is_replayed_not_reevaluated(env: Env) -> None:
    sess = _session(env)
    sha = sess.context_sha256()
    frames = sess.encrypt(inputs(1, 16, seed=16))
    job = new_job_token()
    first = _infer_raw(env, frames, sha, job=job)
    again = _infer_raw(env, frames, sha, job=job)  # e.g. the first answer was lost
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    chain = (env.vendor.state_dir / "chain.jsonl").read_text()
    assert chain.count(job) == 1  # one evaluation, one chain entry
    other = sess.encrypt(inputs(1, 16, seed=17))
    _expect(env, _infer_raw(env, other, sha, job=job), 409, "job_token_reused")


def test_concurrent_retries_of_one_job_token_are_evaluated_once(env: Env) -> None:
    """A client that retries a slow request sends the same token while the first is still
    being evaluated: that request is told to come back (503 busy), never evaluated and
    chained a second time (found in review)."""
    import threading

    sess = _session(env)
    sha = sess.context_sha256()
    frames = sess.encrypt(inputs(1, 16, seed=18))
    job = new_job_token()
    start = threading.Barrier(4)
    got: list[httpx.Response] = []

    def send() -> None:
        start.wait()
        got.append(_infer_raw(env, frames, sha, job=job))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in got)
    assert len(statuses) == 4 and set(statuses) <= {200, 503} and 200 in statuses, statuses
    for r in got:
        if r.status_code == 503:
            assert r.json()["error"] == "busy" and r.headers["retry-after"]
    chain = (env.vendor.state_dir / "chain.jsonl").read_text()
    assert chain.count(job) == 1  # one evaluation, one chain entry
    again = _infer_raw(env, frames, sha, job=job)  # the retry after Retry-After: replayed
    assert again.status_code == 200 and again.content == next(
        r.content for r in got if r.status_code == 200
    )


def test_context_uploaded_once_per_hospital_key(env: Env) -> None:
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        sha, _sent = c.ensure_context("tiny")
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c2:  # new process, same key
        assert c2.ensure_context("tiny") == (sha, 0)
    # another hospital neither sees nor can use hospital A's context
    with raw_client(env.vendor, env.pki.hospital_b) as rb:
        assert rb.head(f"/v1/contexts/{sha}").status_code == 404
        r = rb.post(
            "/v1/models/tiny/infer",
            content=encode_frames([b"x"]),
            headers={H_JOB: new_job_token(), H_CONTEXT: sha, "Content-Type": MEDIA_TYPE},
        )
        assert r.status_code == 400 and r.json()["error"] == "unknown_context"
    with raw_client(env.vendor, env.pki.hospital_a) as ra:
        assert ra.head(f"/v1/contexts/{sha}").status_code == 200
        assert ra.get(f"/v1/contexts/{sha}").json()["sha256"] == sha


# ------------------------------------------------------------------ bad inputs
def _session(env: Env, model: str = "tiny") -> Any:
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        c.ensure_context(model)
        return c.session(model)


def _put_context(env: Env, data: bytes, model: str = "tiny") -> httpx.Response:
    with raw_client(env.vendor, env.pki.hospital_a) as c:
        return c.put("/v1/contexts", params={"model": model}, content=data)


def _infer_raw(
    env: Env, frames: list[bytes] | bytes, sha: str, model: str = "tiny", job: str | None = None
) -> httpx.Response:
    body = frames if isinstance(frames, bytes) else encode_frames(frames)
    with raw_client(env.vendor, env.pki.hospital_a) as c:
        return c.post(
            f"/v1/models/{model}/infer",
            content=body,
            headers={H_JOB: job or new_job_token(), H_CONTEXT: sha, "Content-Type": MEDIA_TYPE},
        )


def _expect(env: Env, resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert_healthy(env)


def _stored_files(env: Env) -> set[str]:
    return {p.name for p in (env.vendor.state_dir / "contexts").rglob("*.ctx")}


def _sections(env: Env) -> dict[str, bytes]:
    from secure_infer._ckks import unpack_sections

    return unpack_sections(_session(env).public_context_bytes())


def _parms(scheme: Any, n: int, bits: list[int]) -> bytes:
    import tenseal.sealapi as seal

    from secure_infer.seal_io import save_bytes

    p = seal.EncryptionParameters(scheme)
    p.set_poly_modulus_degree(n)
    p.set_coeff_modulus(seal.CoeffModulus.Create(n, bits))
    if scheme == seal.SCHEME_TYPE.BFV:
        p.set_plain_modulus(seal.PlainModulus.Batching(n, 20))
    return save_bytes(p)


def test_context_with_secret_key_is_refused_and_not_stored(env: Env) -> None:
    import tenseal as ts

    from secure_infer._ckks import pack_sections
    from secure_infer.seal_io import save_bytes

    sess = _session(env)
    sec = _sections(env)
    sec["secret_key"] = save_bytes(sess._sk)
    data = pack_sections(sec)
    before = _stored_files(env)
    _expect(env, _put_context(env, data), 400, "secret_key_present")
    # a plain TenSEAL context with its secret key is recognised too
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    _expect(env, _put_context(env, ctx.serialize(save_secret_key=True)), 400, "secret_key_present")
    assert _stored_files(env) == before
    assert hashlib.sha256(data).hexdigest() + ".ctx" not in _stored_files(env)


def test_context_with_weak_parameters_is_refused(env: Env) -> None:
    import tenseal.sealapi as seal

    from secure_infer._ckks import pack_sections

    sec = _sections(env)
    # N=8192 allows 218 bits of modulus for 128-bit security; this has 220
    sec["parms"] = _parms(seal.SCHEME_TYPE.CKKS, 8192, [60, 50, 50, 60])
    _expect(env, _put_context(env, pack_sections(sec)), 400, "weak_parameters")


def test_context_with_wrong_scheme_is_refused(env: Env) -> None:
    import tenseal.sealapi as seal

    from secure_infer._ckks import pack_sections

    sec = _sections(env)
    sec["parms"] = _parms(seal.SCHEME_TYPE.BFV, 8192, [43, 43, 44, 44, 44])
    _expect(env, _put_context(env, pack_sections(sec)), 400, "wrong_scheme")


def test_garbage_context_is_refused(env: Env) -> None:
    good = _session(env).public_context_bytes()
    _expect(env, _put_context(env, os.urandom(5000)), 400, "malformed_context")
    _expect(env, _put_context(env, b""), 400, "malformed_context")
    _expect(env, _put_context(env, good[: len(good) // 2]), 400, "malformed_context")


def test_context_for_another_model_is_refused(env: Env) -> None:
    data = _session(env, "other").public_context_bytes()
    _expect(env, _put_context(env, data, model="tiny"), 400, "parameter_mismatch")


def test_truncated_and_tampered_ciphertexts_are_refused(env: Env) -> None:
    sess = _session(env)
    sha = sess.context_sha256()
    frames = sess.encrypt(inputs(1, 16, seed=3))
    truncated = [f[: len(f) // 2] for f in frames]
    _expect(env, _infer_raw(env, truncated, sha), 400, "malformed_ciphertext")
    # tampered so that it is no longer a valid ciphertext: a 16-byte run of 0xFF in the
    # coefficient data holds an aligned word >= every prime of the modulus chain
    tampered = []
    for f in frames:
        b = bytearray(f)
        mid = len(b) // 2
        b[mid : mid + 16] = b"\xff" * 16
        tampered.append(bytes(b))
    _expect(env, _infer_raw(env, tampered, sha), 400, "malformed_ciphertext")
    # tampered SEAL header
    header = [f[:36] + bytes([f[36] ^ 0xFF]) + f[37:] for f in frames]
    _expect(env, _infer_raw(env, header, sha), 400, "malformed_ciphertext")
    # (a tampering that keeps every coefficient below its prime is a valid ciphertext of
    # something else and cannot be detected by anyone without the secret key: IND-CPA; in
    # transit, TLS protects integrity; see docs/threat-model.md)


def test_ciphertext_for_the_wrong_context_is_refused(env: Env) -> None:
    tiny_sha = _session(env, "tiny").context_sha256()
    other = _session(env, "other")
    frames = other.encrypt(inputs(1, 8, seed=4))
    _expect(env, _infer_raw(env, frames, tiny_sha), 400, "wrong_context")
    # same parameters, another hospital key: bound to its own context hash, refused as well
    from secure_infer import HospitalSession

    stranger = HospitalSession.create(_session(env).spec, env.keys.parent / "stranger-keys")
    frames = stranger.encrypt(inputs(1, 16, seed=4))
    _expect(env, _infer_raw(env, frames, tiny_sha), 400, "wrong_context")


def test_wrong_ciphertext_count_is_refused(env: Env) -> None:
    sess = _session(env)
    too_many = sess.spec.max_ciphertexts + 1
    _expect(env, _infer_raw(env, [b"x"] * too_many, sess.context_sha256()), 400, "wrong_count")


def test_framing_token_and_model_errors(env: Env) -> None:
    sha = _session(env).context_sha256()
    _expect(env, _infer_raw(env, b"BRF1\x00\x00\x00\x02\x00", sha), 400, "malformed_request")
    _expect(env, _infer_raw(env, [], sha), 400, "bad_request")
    _expect(env, _infer_raw(env, [b"x"], sha, job="1.2.826.0.1.3680043"), 400, "bad_request")
    _expect(env, _infer_raw(env, [b"x"], "0" * 64), 400, "unknown_context")
    _expect(env, _infer_raw(env, [b"x"], sha, model="cxr-v3"), 404, "unknown_model")
    with raw_client(env.vendor, env.pki.hospital_a) as c:
        _expect(env, c.get("/v1/models/cxr-v3/manifest"), 404, "unknown_model")
        _expect(env, c.put("/v1/contexts", content=b"x"), 400, "bad_request")
        _expect(env, c.get("/v1/nothing"), 404, "not_found")


def test_oversize_request_gets_413(env: Env) -> None:
    sha = _session(env).context_sha256()
    _expect(env, _infer_raw(env, [os.urandom(5 * 1024 * 1024)], sha), 413, "request_too_large")
    # far beyond the limit: refused from Content-Length without reading the body
    resp = _infer_raw(env, b"\x00" * (20 * 1024 * 1024), sha)
    _expect(env, resp, 413, "request_too_large")


def test_slow_body_times_out(env: Env) -> None:
    """A client that stops sending its body (slowloris) gets 503 timeout after read_timeout."""
    import socket

    ctx = ssl.create_default_context(cafile=str(env.pki.ca))
    ctx.load_cert_chain(str(env.pki.hospital_a.cert), str(env.pki.hospital_a.key))
    head = (
        "POST /v1/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        f"{H_JOB}: {new_job_token()}\r\n{H_CONTEXT}: {'a' * 64}\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", env.vendor.port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(head + b"BRF1")
        data = b""
        while b"}" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 503"), data[:200]
    assert b'"error":"timeout"' in data
    assert 1.5 <= elapsed < 20
    assert_healthy(env)


# ------------------------------------------------------------------ saturation
def test_saturated_server_answers_503_with_retry_after(env: Env) -> None:
    sess = _session(env)
    sha = sess.context_sha256()
    slow = sess.encrypt(inputs(3 * sess.spec.images_per_ciphertext, 16, seed=6))  # 3 ciphertexts
    quick = sess.encrypt(inputs(1, 16, seed=7))
    first: dict[str, Any] = {}

    def run_slow() -> None:
        first["resp"] = _infer_raw(env, slow, sha)

    t = threading.Thread(target=run_slow)
    t.start()
    try:
        with raw_client(env.vendor, env.pki.hospital_a) as c:
            deadline = time.monotonic() + 30
            while c.get("/v1/health").json()["in_flight"] < 1:
                assert time.monotonic() < deadline, "slow request never started"
                time.sleep(0.005)
            busy = c.post(
                "/v1/models/tiny/infer",
                content=encode_frames(quick),
                headers={H_JOB: new_job_token(), H_CONTEXT: sha, "Content-Type": MEDIA_TYPE},
            )
            assert busy.status_code == 503, busy.text
            assert busy.json()["error"] == "busy"
            assert int(busy.headers["Retry-After"]) >= 1
            # the health endpoint keeps answering while the worker is busy
            assert c.get("/v1/health").status_code == 200
    finally:
        t.join(timeout=120)
    assert first["resp"].status_code == 200, first["resp"].text


def test_client_retries_after_503(env: Env) -> None:
    sess = _session(env)
    sha = sess.context_sha256()
    slow = sess.encrypt(inputs(3 * sess.spec.images_per_ciphertext, 16, seed=8))
    t = threading.Thread(target=lambda: _infer_raw(env, slow, sha))
    t.start()
    try:
        with raw_client(env.vendor, env.pki.hospital_a) as c:
            while c.get("/v1/health").json()["in_flight"] < 1:
                time.sleep(0.005)
        x = inputs(1, 16, seed=9)
        with client_for(env.vendor, env.pki.hospital_a, env.keys, initial_backoff=0.05) as cl:
            res = cl.infer("tiny", x)
        assert np.max(np.abs(res.probabilities - onnx_reference(env.tiny, x))) <= TOL
    finally:
        t.join(timeout=120)


# ------------------------------------------------------------------ worker crash
def _worker_pids(vp: VendorProcess) -> list[int]:
    assert vp.proc is not None
    out = []
    children = Path(f"/proc/{vp.proc.pid}/task/{vp.proc.pid}/children").read_text().split()
    for pid in children:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmd:
            out.append(int(pid))
    return out


def test_worker_crash_fails_one_request_and_the_server_recovers(env: Env) -> None:
    import signal

    sess = _session(env)
    sha = sess.context_sha256()
    slow = sess.encrypt(inputs(3 * sess.spec.images_per_ciphertext, 16, seed=14))
    got: dict[str, Any] = {}
    t = threading.Thread(target=lambda: got.setdefault("resp", _infer_raw(env, slow, sha)))
    t.start()
    try:
        with raw_client(env.vendor, env.pki.hospital_a) as c:
            while c.get("/v1/health").json()["in_flight"] < 1:
                time.sleep(0.005)
        pids = _worker_pids(env.vendor)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # a native crash in SEAL would look the same
    finally:
        t.join(timeout=120)
    _expect(env, got["resp"], 500, "worker_crashed")
    # the pool was rebuilt: the next request is evaluated normally
    x = inputs(1, 16, seed=15)
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as cl:
        res = cl.infer("tiny", x)
    assert np.max(np.abs(res.probabilities - onnx_reference(env.tiny, x))) <= TOL
    # a worker that dies while idle is replaced too
    for pid in _worker_pids(env.vendor):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as cl:
        res = cl.infer("tiny", x)
    assert np.max(np.abs(res.probabilities - onnx_reference(env.tiny, x))) <= TOL


# ------------------------------------------------------------------ restart + demo model
DEMO = ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml"


def test_demo_model_and_context_survive_restart(tmp_path: Path) -> None:
    """The shipped demo model end to end on phantoms; its context is still there after a restart."""
    from secure_infer.demo.phantoms import labelled_set

    pki = make_pki(tmp_path)
    # two workers: a batch of several ciphertexts is split across them
    vp = VendorProcess(
        tmp_path / "srv", pki, [DEMO], max_request_bytes=8 * 1024 * 1024, workers=2, queue_size=2
    )
    keys = tmp_path / "keys"
    x, labels = labelled_set(seed=2024, n=4)
    ref = onnx_reference(DEMO, x)
    vp.start()
    try:
        with client_for(vp, pki.hospital_a, keys) as c:
            first = c.infer("demo-lesion", x)
    finally:
        vp.stop()
    assert first.context_bytes_uploaded > 0
    assert np.max(np.abs(first.probabilities - ref)) <= TOL, (first.probabilities, ref)
    assert np.array_equal(first.probabilities > 0.5, ref > 0.5)
    vp.start()
    try:
        with client_for(vp, pki.hospital_a, keys) as c:
            second = c.infer("demo-lesion", x[:1])
    finally:
        vp.stop()
    assert second.context_bytes_uploaded == 0  # the vendor still had it after the restart
    assert second.context_sha256 == first.context_sha256
    assert np.max(np.abs(second.probabilities - ref[:1])) <= TOL
    assert verify_chain(vp.state_dir / "chain.jsonl") == len(first.exchanges) + 1
    # logs carry job tokens and hashes only
    log = vp.log()
    assert first.job in log and second.job in log
    assert labels.shape == (4,)


# ------------------------------------------------------------------ observability
def test_vendor_metrics_and_healthz(env: Env) -> None:
    with client_for(env.vendor, env.pki.hospital_a, env.keys) as c:
        c.infer("tiny", inputs(1, 16, seed=7))
    with raw_client(env.vendor, env.pki.hospital_a) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        scrape = c.get("/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line and not line.startswith("#")
    }
    infer_ok = 'blindread_vendor_requests_total{route="/v1/models/{name}/infer",status="200"}'
    assert values[infer_ok] >= 1
    assert values['blindread_vendor_ciphertext_bytes_total{direction="received"}'] > 0
    assert values["blindread_vendor_evaluate_seconds_count"] >= 1
    # route labels are templates; models appear only as the model label of the per-model
    # series, hospitals only as keyed hashes; no hashes or job tokens
    assert "/v1/models/tiny" not in scrape and "/contexts/" + "0" * 4 not in scrape
    assert "hospital-a" not in scrape
    assert any(k.startswith('blindread_vendor_model_requests_total{hospital="') and
               'model="tiny"' in k and 'outcome="ok"' in k for k in values)
    with raw_client(env.vendor, None) as c, pytest.raises(httpx.TransportError):
        c.get("/metrics")  # same mutual TLS as the API
