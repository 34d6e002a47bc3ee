"""Two-party (Cheetah) inference: ours (two processes over TLS, full session layer) vs plain SPU.

Ours: ``python -m secure_infer.vendor serve`` with the model as a two-party model, and the
hospital's :class:`~secure_infer.hospital.twopc.TwoPartySession` (HTTPS session opening, TLS
link, hash and key hand-shake, weight shares once, then one run per image). Peer: plain SPU
with the same runtime config, program and inputs, in two plain processes linked by brpc
without TLS and without our session layer (the vendor's process shares the weights, the
hospital's the image, as SPU's own examples do; no SPU helper does this for separate
processes). Printed side by side with the ratio ours/plain:

- set-up: ours from the HTTPS request to the weight shares received; plain from link start to
  weight shares received (program compilation excluded from both, reported apart);
- first image (includes Cheetah's one-time OT/HE set-up), then s/image over the rest;
- bytes per image on the loopback: the kernel's per-socket ``bytes_received`` counters
  (``ss -ti``) over every TCP connection of the two link ports, so TLS and brpc framing count.

Usage::

    python benchmarks/twopc.py                        # the 64x64 demo architecture with ReLU
    python benchmarks/twopc.py --images 5 --model tests.support.twopc_nets:load_demo64:PATH.onnx
    python benchmarks/twopc.py --model mypkg.onnx2jax:load:resnet18.onnx --images 2

``--model LOADER:SOURCE`` is a vendor loader (``module:function``) and its source file, exactly
as in the vendor config's ``twopc.models``; the benchmark calls it on both sides.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from secure_infer.twopc.program import FixedPoint, Program  # noqa: E402


def _load(model: str) -> tuple[str, Path, Program, list[np.ndarray], FixedPoint]:
    mod, fn, source = model.split(":", 2)
    got = getattr(importlib.import_module(mod), fn)(Path(source))
    fp = got[2] if len(got) > 2 else FixedPoint()
    return f"{mod}:{fn}", Path(source), got[0], list(got[1]), fp


def _ss_bytes(ports: set[int]) -> int:
    """Sum of bytes_received over every TCP socket whose local or peer port is in ``ports``."""
    out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True, check=True).stdout
    total = 0
    lines = out.splitlines()
    for i, line in enumerate(lines):
        cols = line.split()
        if not line or line[0].isspace() or len(cols) < 5:  # info lines are indented
            continue
        lp = int(cols[3].rsplit(":", 1)[1])
        pp = int(cols[4].rsplit(":", 1)[1])
        if lp not in ports and pp not in ports:
            continue
        info = lines[i + 1] if i + 1 < len(lines) else ""
        m = re.search(r"bytes_received:(\d+)", info)
        if m:
            total += int(m.group(1))
    return total


def _images(program: Program, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.uniform(0, 1, program.input.shape).astype(np.float32) for _ in range(n)]


# ------------------------------------------------------------------ ours
def run_ours(model: str, n: int, workdir: Path) -> dict[str, Any]:
    from secure_infer.hospital.client import ClientSettings, VendorClient
    from secure_infer.hospital.twopc import TwoPartySession
    from tests.support.twopc_peers import TwoPcVendor, make_pki

    loader, source, program, _weights, fp = _load(model)
    pki = make_pki(workdir / "pki")
    models = [{"name": "bench", "version": "1", "loader": loader, "source": str(source)}]
    if fp != FixedPoint():
        models[0]["fixed_point"] = {"field": fp.field, "fraction_bits": fp.fraction_bits}
    images = _images(program, n)
    res: dict[str, Any] = {}
    with TwoPcVendor(
        workdir / "vendor", pki, models, recv_timeout_seconds=600, session_timeout_seconds=86400
    ) as vendor:
        s = ClientSettings(
            url=vendor.url, client_cert=pki.hospital.cert, client_key=pki.hospital.key, ca=pki.ca
        )
        with VendorClient(s, workdir) as vc:
            session = TwoPartySession(vc, "bench", "1", program, fp)
            t0 = time.monotonic()
            session.open()
            res["setup_s"] = time.monotonic() - t0 - session.stats.compile_seconds
            res["compile_s"] = session.stats.compile_seconds
            vendor_port = int(vendor_link_port(vendor))
            ports = {vendor_port, _hospital_port(session)}
            outs, per_bytes = [], []
            for x in images:
                b0 = _ss_bytes(ports)
                outs.append(session.infer(x)[0])
                per_bytes.append(_ss_bytes(ports) - b0)
            session.close()
        res["image_s"] = list(session.stats.image_seconds)
        res["bytes"] = per_bytes
        res["outputs"] = [o.ravel().tolist() for o in outs]
    return res


def vendor_link_port(vendor: Any) -> int:
    """The session worker's listening link port (from the kernel's socket table)."""
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    (pid,) = vendor.workers()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise RuntimeError("the session worker's link port was not found")


def _hospital_port(session: Any) -> int:
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    pid = session._proc.pid
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise RuntimeError("the hospital party's link port was not found")


# ------------------------------------------------------------------ plain SPU
def plain_party(rank: int, model: str, n: int, ports: list[int], report: Path) -> None:
    """One plain SPU party (rank 0 vendor, 1 hospital): brpc without TLS, no session layer."""
    import spu
    import spu.libspu as libspu

    from secure_infer.twopc.party import compile_program

    _, _, program, weights, fp = _load(model)
    t0 = time.monotonic()
    compiled = compile_program(program, fp)
    compile_s = time.monotonic() - t0
    desc = libspu.link.Desc()
    desc.id = "plain"
    desc.recv_timeout_ms = 600_000
    desc.connect_retry_times = 300
    desc.connect_retry_interval_ms = 200
    for r in range(2):
        desc.add_party(f"p{r}", f"127.0.0.1:{ports[r]}")
    t1 = time.monotonic()
    lctx = libspu.link.create_brpc(desc, rank)
    rt = spu.Runtime(lctx, compiled.config)
    io = spu.Io(2, compiled.config)

    def give(name: str, v: np.ndarray) -> None:
        sh = io.make_shares(v, libspu.Visibility.VIS_SECRET)
        rt.set_var(name, sh[rank])
        lctx.send(1 - rank, sh[1 - rank].meta)
        lctx.send(1 - rank, str(len(sh[1 - rank].share_chunks)))
        for c in sh[1 - rank].share_chunks:
            lctx.send(1 - rank, c)

    def take(name: str) -> Any:
        s = libspu.Share()
        s.meta = lctx.recv(1 - rank)
        k = int(lctx.recv(1 - rank))
        s.share_chunks = [lctx.recv(1 - rank) for _ in range(k)]
        if name:
            rt.set_var(name, s)
        return s

    for i, w in enumerate(weights):
        if rank == 0:
            give(f"w{i}", w)
        else:
            take(f"w{i}")
    setup_s = time.monotonic() - t1
    times, outs, per_bytes = [], [], []
    for x in _images(program, n):
        b0 = _ss_bytes(set(ports)) if rank == 1 else 0
        t = time.monotonic()
        if rank == 1:
            give("x", x)
        else:
            take("x")
        rt.run(compiled.executable)
        names = compiled.output_names
        if rank == 0:
            for name in names:
                o = rt.get_var(name)
                lctx.send(1, o.meta)
                lctx.send(1, str(len(o.share_chunks)))
                for c in o.share_chunks:
                    lctx.send(1, c)
        else:
            theirs = [take("") for _ in names]
            first = np.asarray(io.reconstruct([theirs[0], rt.get_var(names[0])]))
            outs.append(first.ravel().tolist())
        times.append(time.monotonic() - t)
        if rank == 1:
            per_bytes.append(_ss_bytes(set(ports)) - b0)
    lctx.barrier()
    report.write_text(
        json.dumps(
            {
                "compile_s": compile_s,
                "setup_s": setup_s,
                "image_s": times,
                "outputs": outs,
                "bytes": per_bytes,
            }
        )
    )
    os._exit(0)  # not stop_link (see secure_infer/twopc/party.py)


def run_plain(model: str, n: int, workdir: Path) -> dict[str, Any]:
    from node.demo.localpacs import free_port

    ports = [free_port(), free_port()]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = []
    reports = [workdir / f"plain{r}.json" for r in range(2)]
    for r in range(2):
        cmd = [sys.executable, __file__, "--plain-party", str(r), "--model", model]
        cmd += [
            "--images",
            str(n),
            "--ports",
            f"{ports[0]},{ports[1]}",
            "--report",
            str(reports[r]),
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    for p in procs:
        p.wait(timeout=86400)
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"plain SPU parties exited {[p.returncode for p in procs]}")
    res: dict[str, Any] = json.loads(reports[1].read_text())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="LOADER:SOURCE (default: demo 64x64 ReLU)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--plain-party", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    ap.add_argument("--report", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_party is not None:
        ports = [int(p) for p in args.ports.split(",")]
        plain_party(args.plain_party, args.model, args.images, ports, Path(args.report))
        return
    with tempfile.TemporaryDirectory(prefix="bench-2pc-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from tests.support.twopc_nets import demo64_onnx

            src = demo64_onnx(work / "demo64.onnx", seed=0)
            model = f"tests.support.twopc_nets:load_demo64:{src}"
        print(
            f"model {model}, {args.images} images, 2 cores shared (load {os.getloadavg()[0]:.1f})"
        )
        ours = run_ours(model, args.images, work)
        plain = run_plain(model, args.images, work)
        report(ours, plain)


def report(ours: dict[str, Any], plain: dict[str, Any]) -> None:
    def steady(xs: list[float]) -> float:
        return statistics.median(xs[1:]) if len(xs) > 1 else float("nan")

    rows = [
        ("compile (s, each party)", ours["compile_s"], plain["compile_s"]),
        ("set-up (s, once per session)", ours["setup_s"], plain["setup_s"]),
        ("first image (s, incl. Cheetah set-up)", ours["image_s"][0], plain["image_s"][0]),
        ("s/image after set-up (median)", steady(ours["image_s"]), steady(plain["image_s"])),
    ]
    print(f"{'':42s} {'ours (TLS)':>12s} {'plain SPU':>12s} {'ours/plain':>10s}")
    for name, a, b in rows:
        print(f"{name:42s} {a:12.3f} {b:12.3f} {a / b if b else float('nan'):10.2f}")
    mo = [b / 1e6 for b in ours["bytes"]]
    mp = [b / 1e6 for b in plain["bytes"]]
    for name, a, b in (
        ("MB on the link, first image", mo[0], mp[0]),
        ("MB/image on the link after set-up", steady(mo), steady(mp)),
    ):
        print(f"{name:42s} {a:12.2f} {b:12.2f} {a / b if b else float('nan'):10.2f}")
    diff = max(
        abs(a - b)
        for o, p in zip(ours["outputs"], plain["outputs"], strict=True)
        for a, b in zip(o, p, strict=True)
    )
    print(f"max |ours - plain| over the outputs: {diff:.2e}")


if __name__ == "__main__":
    main()
