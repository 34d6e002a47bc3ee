"""Encrypted inference benchmark for the demo model (``make bench-infer``).

From one run on this machine: onnxruntime plaintext latency; ours split into encrypt / upload /
evaluate / download / decrypt / total; bytes per image and the one-time public-context upload;
the same model done the straightforward TenSEAL way (``ts.im2col_encoding`` + ``conv2d_im2col``
+ ``pack_vectors`` + ``square`` + ``CKKSVector.mm``, as in TenSEAL's encrypted-CNN tutorial) and
our speed-up; a batched figure for 64 images (1 and 2 worker processes).

Upload/download are real HTTP transfers of the serialized ciphertexts over loopback (a minimal
starlette/uvicorn sink in this process: it measures the transport, not the vendor server's
request handling); evaluation runs in process. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx
import onnxruntime as ort

from secure_infer import HospitalSession, PublicContext, VendorModel
from tests.support.modelzoo import demo_architecture

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml"

_MANIFEST = """name: demo-lesion-random
version: 0.0.0
manufacturer: benchmark
model_name: demo architecture with random weights
intended_use: benchmark only
input: {shape: [1, 64, 64], range: [0.0, 1.0]}
outputs:
- name: lesion
  index: 0
  activation: sigmoid
  finding: {scheme: SCT, value: '52988006', meaning: Lesion}
  threshold: 0.5
onnx: model.onnx
"""


def demo_package(tmp: Path) -> tuple[Path, str]:
    """The shipped demo model, or the same architecture with random weights until it exists."""
    if DEMO.exists():
        return DEMO, "shipped demo-lesion model"
    onnx.save(demo_architecture(0), tmp / "model.onnx")
    (tmp / "manifest.yaml").write_text(_MANIFEST)
    return tmp / "manifest.yaml", "demo architecture, random weights (shipped model not found)"


def images(n: int, seed: int = 7) -> tuple[np.ndarray, str]:
    try:
        from secure_infer.demo.phantoms import labelled_set  # type: ignore[import-not-found]

        x, _ = labelled_set(seed, n)
        return np.asarray(x, dtype=np.float64), "synthetic phantoms"
    except ImportError:
        rng = np.random.default_rng(seed)
        return rng.uniform(0, 1, size=(n, 1, 64, 64)), "uniform random images"


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# -- loopback HTTP sink ----------------------------------------------------------------------
class Loopback:
    """POST /up consumes a body; GET /down returns the stored payload (real TCP on 127.0.0.1)."""

    def __init__(self) -> None:
        import httpx
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.payload = b""

        async def up(request: Request) -> Response:
            body = await request.body()
            return Response(str(len(body)))

        async def down(request: Request) -> Response:
            return Response(self.payload, media_type="application/octet-stream")

        app = Starlette(routes=[Route("/up", up, methods=["POST"]), Route("/down", down)])
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}")

    def upload(self, blobs: list[bytes]) -> None:
        r = self.client.post("/up", content=b"".join(blobs))
        assert int(r.text) == sum(map(len, blobs))

    def download(self, blobs: list[bytes]) -> bytes:
        self.payload = b"".join(blobs)
        return self.client.get("/down").content

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=5)


# -- straightforward TenSEAL -----------------------------------------------------------------
def tenseal_baseline(model_path: Path, x: np.ndarray, repeat: int) -> dict[str, float]:
    """The demo model the TenSEAL-tutorial way (EncConvNet of Tutorial 4)."""
    import tenseal as ts
    from onnx import numpy_helper

    m = onnx.load(str(model_path))
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    nodes = {n.op_type: n for n in m.graph.node}
    conv, gemms = nodes["Conv"], [n for n in m.graph.node if n.op_type == "Gemm"]
    kw, kb = w[conv.input[1]], w[conv.input[2]]
    stride = int(next(a.ints[0] for a in conv.attribute if a.name == "strides"))

    def fc(node: onnx.NodeProto) -> tuple[list[list[float]], list[float]]:
        wt = w[node.input[1]]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        mat = wt.T if trans_b else wt  # [in, out] for CKKSVector.mm
        return mat.tolist(), w[node.input[2]].reshape(-1).tolist()

    fc1, fc2 = fc(gemms[0]), fc(gemms[1])
    # The tutorial's parameters: conv2d_im2col, square, mm, square, mm need 6 levels in TenSEAL,
    # which leaves 5 integer bits at N=8192 (218 bits); large logits may wrap (error reported).
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192,
                     coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    ctx.global_scale = 2**26
    t0 = time.perf_counter()
    ctx.generate_galois_keys()
    t_keys = time.perf_counter() - t0
    ctx_size = len(ctx.serialize(save_secret_key=False))
    kernels = [k[0].tolist() for k in kw]
    ks = kw.shape[2]

    def one(img: np.ndarray) -> tuple[float, float, float, float, int, int, float]:
        c0 = time.process_time()
        t = time.perf_counter()
        enc, windows = ts.im2col_encoding(ctx, img[0].tolist(), ks, ks, stride)
        t_enc = time.perf_counter() - t
        s0 = time.process_time()
        up = len(enc.serialize())
        excl = time.process_time() - s0
        t = time.perf_counter()
        chans = [enc.conv2d_im2col(k, windows) + float(b) for k, b in zip(kernels, kb, strict=True)]
        h = ts.CKKSVector.pack_vectors(chans)
        h.square_()
        h = h.mm(fc1[0]) + fc1[1]
        h.square_()
        h = h.mm(fc2[0]) + fc2[1]
        t_eval = time.perf_counter() - t
        s0 = time.process_time()
        down = len(h.serialize())
        excl += time.process_time() - s0
        t = time.perf_counter()
        logit = h.decrypt()[0]
        t_dec = time.perf_counter() - t
        cpu = time.process_time() - c0 - excl  # encrypt + evaluate + decrypt, not serialization
        return t_enc, t_eval, t_dec, logit, up, down, cpu

    runs = [one(x[i % len(x)]) for i in range(repeat)]
    med = [statistics.median(r[j] for r in runs) for j in range(3)]
    return {"encrypt": med[0], "evaluate": med[1], "decrypt": med[2],
            "cpu": statistics.median(r[6] for r in runs),
            "total": sum(med), "up": runs[0][4], "down": runs[0][5], "keys": t_keys,
            "context": ctx_size, "logits": [r[3] for r in runs]}  # type: ignore[dict-item]


# -- batched with worker processes -----------------------------------------------------------
_VM: VendorModel | None = None
_CTX: PublicContext | None = None


def _work(chunk: list[bytes]) -> list[bytes]:
    assert _VM is not None and _CTX is not None
    return _VM.evaluate(_CTX, chunk)


def batched(vm: VendorModel, ctx: PublicContext, hs: HospitalSession, x: np.ndarray,
            workers: int) -> float:
    global _VM, _CTX
    _VM, _CTX = vm, ctx
    t = time.perf_counter()
    cts = hs.encrypt(x)
    if workers == 1:
        outs = vm.evaluate(ctx, cts)
    else:
        k = -(-len(cts) // workers)
        chunks = [cts[i : i + k] for i in range(0, len(cts), k)]
        with mp.get_context("fork").Pool(workers) as pool:
            outs = [o for part in pool.map(_work, chunks) for o in part]
    hs.predict_proba(outs, len(x))
    return len(x) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="single-image repetitions")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--baseline-repeat", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="blindread-bench-"))
    manifest, what = demo_package(tmp)
    x, data = images(max(args.batch, args.repeat))
    print(f"model: {what}; inputs: {data}; cores: {os.cpu_count()}", flush=True)

    t0 = time.perf_counter()
    vm = VendorModel.load(manifest)
    t_compile = time.perf_counter() - t0
    spec = vm.spec
    model_path = manifest.parent / (vm.manifest.onnx or "model.onnx")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x32 = x.astype(np.float32)
    sess.run(None, {name: x32[:1]})
    t_ort, _ = timed(lambda: sess.run(None, {name: x32[:1]}), 50)

    t0 = time.perf_counter()
    hs = HospitalSession.create(spec, tmp / "keys")
    t_keys = time.perf_counter() - t0
    ctx_bytes = hs.public_context_bytes()
    net = Loopback()
    try:
        t_ctx_up, _ = timed(lambda: net.upload([ctx_bytes]), 1)
        ctx = vm.load_context(ctx_bytes)
        rows: list[tuple[float, ...]] = []
        cpus: list[float] = []
        errs = []
        for i in range(args.repeat):
            xi = x[i : i + 1]
            c0 = time.process_time()
            t = time.perf_counter()
            cts = hs.encrypt(xi)
            t1 = time.perf_counter()
            c1 = time.process_time()
            net.upload(cts)
            c2 = time.process_time()
            t2 = time.perf_counter()
            outs = vm.evaluate(ctx, cts)
            t3 = time.perf_counter()
            c3 = time.process_time()
            got = [net.download(outs)]
            c4 = time.process_time()
            t4 = time.perf_counter()
            assert got[0] == b"".join(outs)
            p = hs.predict_proba(outs, 1)
            t5 = time.perf_counter()
            cpus.append((c1 - c0) + (c3 - c2) + (time.process_time() - c4))
            rows.append((t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t))
            ref = sess.run(None, {name: x32[i : i + 1]})[0]
            errs.append(float(np.max(np.abs(p - ref))))
            up, down = sum(map(len, cts)), sum(map(len, outs))
    finally:
        net.close()
    med = [statistics.median(r[j] for r in rows) for j in range(6)]
    ips1 = batched(vm, ctx, hs, x[: args.batch], 1)
    ips2 = batched(vm, ctx, hs, x[: args.batch], 2)

    base = None if args.no_baseline else tenseal_baseline(model_path, x, args.baseline_repeat)

    p = spec.params
    print(f"\nparameters: N={p.poly_modulus_degree}, coeff modulus {list(p.coeff_modulus_bits)} "
          f"({p.total_bits} bits <= 218, 128-bit), scale 2^{p.scale_bits}, depth {spec.depth}, "
          f"{len(spec.galois_steps)} Galois keys, {spec.images_per_ciphertext} image(s)/ct; "
          f"compile {t_compile:.2f}s, hospital keygen {t_keys:.2f}s")
    head = f"per image (median of {args.repeat})"
    print(f"\n| {head:<31} | ours          | TenSEAL tutorial way |")
    print("|---------------------------------|---------------|----------------------|")

    def row(label: str, ours: str, theirs: str) -> None:
        print(f"| {label:<31} | {ours:<13} | {theirs:<20} |")

    def ms(v: float) -> str:
        return f"{v * 1e3:.1f} ms" if v >= 1e-3 else f"{v * 1e6:.0f} us"

    row("onnxruntime plaintext", ms(t_ort), "")
    row("encrypt", ms(med[0]), ms(base["encrypt"]) if base else "-")
    row("upload (loopback HTTP)", ms(med[1]), "-")
    row("evaluate", ms(med[2]), ms(base["evaluate"]) if base else "-")
    row("download (loopback HTTP)", ms(med[3]), "-")
    row("decrypt + activation", ms(med[4]), ms(base["decrypt"]) if base else "-")
    row("total", ms(med[5]), ms(base["total"]) if base else "-")
    ours_compute = med[0] + med[2] + med[4]
    ours_cpu = statistics.median(cpus)
    row("CPU time enc+eval+dec", ms(ours_cpu), ms(base["cpu"]) if base else "-")
    if base:
        row("speed-up, wall (enc+eval+dec)", f"{base['total'] / ours_compute:.1f}x", "1x")
        row("speed-up, CPU time", f"{base['cpu'] / ours_cpu:.1f}x", "1x")
    row("bytes up / image", f"{up / 1e3:.0f} kB", f"{base['up'] / 1e3:.0f} kB" if base else "-")
    row("bytes down / image", f"{down / 1e3:.0f} kB",
        f"{base['down'] / 1e3:.0f} kB" if base else "-")
    row("public context (once)", f"{len(ctx_bytes) / 1e6:.1f} MB ({ms(t_ctx_up)})",
        f"{base['context'] / 1e6:.1f} MB" if base else "-")
    row(f"batched {args.batch} images, 1 process", f"{ips1:.2f} img/s", "")
    row(f"batched {args.batch} images, 2 processes", f"{ips2:.2f} img/s", "")
    row("max |prob - onnxruntime|", f"{max(errs):.2e}", "")
    row("machine load (1-min average)", f"{os.getloadavg()[0]:.1f}", "")
    if base:
        ref_logits = [float(np.log(r / (1 - r))) if 0 < r < 1 else float("nan")
                      for r in sess.run(None, {name: x32[: args.baseline_repeat]})[0][:, 0]]
        diffs = [abs(a - b) for a, b in zip(base["logits"], ref_logits, strict=False)  # type: ignore[call-overload]
                 if np.isfinite(b)]
        if diffs:
            row("baseline max |logit diff|", "", f"{max(diffs):.2e}")
    print("\nfloors: <= 1.0 s/image end to end, >= 10x vs TenSEAL, <= 2 MB/image: "
          f"{'OK' if med[5] <= 1.0 else 'MISSED'} / "
          f"{'OK' if base and base['cpu'] / ours_cpu >= 10 else 'n/a or MISSED'} (CPU time) / "
          f"{'OK' if up + down <= 2e6 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
