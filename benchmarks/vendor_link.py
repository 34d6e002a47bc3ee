"""Encrypted inference through the real vendor link: hospital client -> mTLS -> vendor server.

Starts ``python -m secure_infer.vendor serve`` on a free loopback port (fresh CA and
certificates in a temp dir), then measures with
:class:`secure_infer.hospital.client.VendorClient`: the one-time key generation + public-context
upload, per-image latency split into encrypt / upload / queue / evaluate / download / decrypt,
bytes up/down, a batch of 64 images, and the max abs difference to onnxruntime on the same
inputs.

    python benchmarks/vendor_link.py [--manifest secure_infer/models/demo-lesion/manifest.yaml]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from secure_infer import (  # noqa: E402
    ClientSettings,
    VendorClient,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    load_manifest,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _logit_session(path: Path) -> ort.InferenceSession:
    """onnxruntime session whose output is the input of the final Sigmoid/Softmax (the logits)."""
    model = onnx.load(str(path))
    last = model.graph.node[-1]
    if last.op_type in ("Sigmoid", "Softmax"):
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(last.input[0], 1, None))
        model.graph.node.remove(last)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--manifest",
        type=Path,
        default=ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml",
    )
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="vendor worker processes")
    args = ap.parse_args()
    manifest = load_manifest(args.manifest)
    shape = tuple(manifest.input.shape)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        create_ca(tmp / "ca")
        srv = issue_server_cert(tmp / "ca", tmp / "tls")
        cli = issue_client_cert(tmp / "ca", tmp / "tls", "bench-hospital")
        port = _free_port()
        cfg = {
            "listen": {"host": "127.0.0.1", "port": port},
            "tls": {
                "cert": str(srv.cert),
                "key": str(srv.key),
                "client_ca": str(tmp / "ca/ca.crt"),
            },
            "models": [str(args.manifest.resolve())],
            "state_dir": str(tmp / "state"),
            "limits": {
                "workers": args.workers,
                "queue_size": 4,
                "max_request_bytes": 256 * 1024 * 1024,
            },
            "log_level": "WARNING",
        }
        (tmp / "vendor.yaml").write_text(yaml.safe_dump(cfg))
        log = open(tmp / "vendor.log", "wb")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "secure_infer.vendor", "serve",
                "--config", str(tmp / "vendor.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            settings = ClientSettings(
                url=f"https://127.0.0.1:{port}",
                client_cert=cli.cert,
                client_key=cli.key,
                ca=tmp / "ca/ca.crt",
            )
            t0 = time.perf_counter()
            with VendorClient(settings, tmp / "keys") as client:
                while True:
                    try:
                        client.health()
                        break
                    except Exception:
                        if proc.poll() is not None or time.perf_counter() - t0 > 120:
                            print((tmp / "vendor.log").read_text()[-2000:])
                            return 1
                        time.sleep(0.2)
                print(f"vendor ready in {time.perf_counter() - t0:.1f} s")
                ref_sess = _logit_session(args.manifest.parent / str(manifest.onnx))
                rng = np.random.default_rng(0)
                lo, hi = manifest.input.range
                t = time.perf_counter()
                sha, ctx_bytes = client.ensure_context(manifest.name)
                setup = time.perf_counter() - t
                rows = []
                maxdiff = 0.0
                for _ in range(args.repeat):
                    x = rng.uniform(lo, hi, (1, *shape))
                    r = client.infer(manifest.name, x)
                    ref = ref_sess.run(None, {ref_sess.get_inputs()[0].name: x.astype(np.float32)})[
                        0
                    ]
                    maxdiff = max(maxdiff, float(np.max(np.abs(r.logits - ref))))
                    rows.append(r)
                xb = rng.uniform(lo, hi, (args.batch, *shape))
                rb = client.infer(manifest.name, xb)
                refb = ref_sess.run(None, {ref_sess.get_inputs()[0].name: xb.astype(np.float32)})[0]
                maxdiff = max(maxdiff, float(np.max(np.abs(rb.logits - refb))))
                scale = float(np.max(np.abs(refb)))
                same = bool(np.all((rb.logits > 0) == (refb > 0)))
        except httpx.HTTPError as exc:
            print(f"error: {exc}")
            return 1
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    keys = ["encrypt", "upload", "queue", "evaluate", "download", "decrypt", "total_without_setup"]
    print(f"model {manifest.name} {manifest.version}, input {list(shape)}, {args.repeat} runs")
    print(
        f"one-time: key generation + context upload {setup * 1000:.0f} ms, {ctx_bytes / 1e6:.2f} MB"
        f" (context {sha[:12]}..)"
    )
    print(f"{'step':<22}{'median ms':>12}")
    for k in keys:
        print(f"{k:<22}{statistics.median(r.timings[k] for r in rows) * 1000:>12.1f}")
    print(f"{'bytes up / image':<22}{statistics.median(r.bytes_up for r in rows):>12.0f}")
    print(f"{'bytes down / image':<22}{statistics.median(r.bytes_down for r in rows):>12.0f}")
    tb = rb.timings["total_without_setup"]
    print(
        f"batch {args.batch}: {tb * 1000:.0f} ms total = {args.batch / tb:.1f} images/s, "
        f"{rb.bytes_up / args.batch / 1e3:.1f} kB up + {rb.bytes_down / args.batch / 1e3:.1f} kB"
        f" down per image; evaluate {rb.timings['evaluate'] * 1000:.0f} ms"
    )
    print(
        f"max |logit_encrypted - logit_onnxruntime| = {maxdiff:.2e} (max |logit| {scale:.1f});"
        f" same decisions on the batch: {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
