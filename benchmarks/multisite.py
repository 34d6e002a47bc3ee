"""Multi-site validation vs the same validation done centrally: 7 sites, 1,149 images.

Both sides run ``node.validate.run_validation`` on the same synthetic phantoms with the same
inference backend: ``--backend ckks`` (default) is the real CKKS session and vendor evaluator
in process (tests/support/local_backend.py: the encrypted path without the HTTP hop),
``--backend onnx`` plaintext onnxruntime (to measure the federation's own overhead quickly).

* **central**: one run_validation over the union (one labels file, one folder) + its figures;
* **multi-site**: each site's run_validation + vector (sequential here; in reality the sites
  run in parallel, so the critical path is the slowest site), then one SecAgg+ round over a
  real SuperLink and 7 SuperNode processes on loopback (TLS, node authentication).

Printed: wall time of each, bytes each site sent in the round (record payloads of Flower's
messages, not HTTP/TLS framing) beside the bytes it sent to the vendor, the pooled vs central
figures, and the ratios. ``make bench-multisite``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.config import load_config
from node.demo.localpacs import free_port
from node.demo.phantom_study import phantom_cr_study, write_study_files
from node.demo.stack import DEMO_MODEL_DIR
from node.multisite.config import load_coordinator_config
from node.multisite.coordinator import Federation
from node.multisite.site import (
    generate_site_key,
    prepare_contribution,
    site_dir,
    start_supernode,
)
from node.validate import ValidationSettings, run_validation
from secure_infer.vendor.certs import create_ca, issue_server_cert

SIZES = [97, 121, 143, 160, 178, 205, 245]  # 1,149 images, as the reference study
PREVALENCE = [0.12, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]


def _backend(kind: str, root: Path):  # type: ignore[no-untyped-def]
    if kind == "ckks":
        from tests.support.local_backend import LocalBackend

        return LocalBackend(DEMO_MODEL_DIR / "manifest.yaml", root / "hekeys")
    import onnxruntime as ort

    from node.pipeline import InferenceOutcome
    from secure_infer.manifest import load_manifest

    class Onnx:
        def __init__(self) -> None:
            self.m = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
            self.s = ort.InferenceSession(str(DEMO_MODEL_DIR / "model.onnx"))

        def manifest(self, model: str):  # type: ignore[no-untyped-def]
            return self.m.public()

        def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
            p = self.s.run(None, {"image": batch.astype(np.float32)})[0]
            return InferenceOutcome(p.astype(float).tolist(), self.m.version, "c", ["q"], ["r"],
                                    batch.nbytes, p.nbytes, {}, {})  # fmt: skip

    return Onnx()


def _node_yaml(path: Path, name: str, state: Path, extra: dict | None = None) -> Path:  # type: ignore[type-arg]
    cfg = {"node": {"name": name, "state_dir": str(state)},
           "vendors": {"v": {"url": "https://127.0.0.1:9", "client_cert": "x", "client_key": "x",
                             "ca": "x", "models": ["demo-lesion"], "max_attempts": 1}}}
    if extra:
        cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["ckks", "onnx"], default="ckks")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-multisite-"))
    backend = _backend(args.backend, root)
    names = [f"site-{i + 1}" for i in range(len(SIZES))]
    union = root / "union"
    union_rows = ["path,label"]
    sites = []
    for i, (name, n, prev) in enumerate(zip(names, SIZES, PREVALENCE, strict=True)):
        lesions = [j < round(n * prev) for j in range(n)]
        study = phantom_cr_study(lesions, seed=1000 + i, size=96)
        data = root / name / "data"
        paths = write_study_files(study, data)
        rows = [f"{p.relative_to(data).as_posix()},{int(les)}" for p, les in zip(paths, lesions,
                                                                                strict=True)]
        (root / name / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        for p, les in zip(paths, lesions, strict=True):
            dest = union / name / p.relative_to(data)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, dest)
            union_rows.append(f"{name}/{p.relative_to(data).as_posix()},{int(les)}")
        sites.append((name, data, root / name / "labels.csv"))
    (root / "union.csv").write_text("\n".join(union_rows) + "\n")
    total = sum(SIZES)

    # central
    ccfg = load_config(_node_yaml(root / "central.yaml", "central", root / "central-state"))
    t0 = time.perf_counter()
    central = run_validation(ccfg, ValidationSettings("demo-lesion", union, root / "union.csv"),
                             lambda _n: backend, stream=io.StringIO())  # fmt: skip
    t_central = time.perf_counter() - t0

    # federation
    create_ca(root / "tls" / "ca")
    server = issue_server_cert(root / "tls" / "ca", root / "tls" / "superlink")
    port = free_port()
    keys = {n: generate_site_key(root / "keys", n) for n in names}
    coord = {"coordinator": {"state_dir": str(root / "coordinator"), "port": port,
                             "tls": {"cert": str(server.cert), "key": str(server.key),
                                     "ca": str(root / "tls" / "ca" / "ca.crt")}},
             "model": {"name": "demo-lesion", "version": "1.0.0"}, "threshold": 0.5,
             "sites": {n: {"public_key": str(keys[n][1])} for n in names},
             "aggregation": {"wait_for_sites_seconds": 300, "stage_timeout_seconds": 300}}
    (root / "coordinator.yaml").write_text(yaml.safe_dump(coord))
    fed = Federation(load_coordinator_config(root / "coordinator.yaml"), root / "coordinator.yaml")
    local: dict[str, float] = {}
    to_vendor: dict[str, int] = {}
    procs = []
    try:
        fed.start()
        for name, data, csv in sites:
            path = _node_yaml(root / name / "node.yaml", name, root / name / "state", {
                "multisite": {"site": name, "superlink": f"127.0.0.1:{port}",
                              "ca": str(root / "tls" / "ca" / "ca.crt"),
                              "auth_key": str(keys[name][0])}})  # fmt: skip
            ncfg = load_config(path)
            t0 = time.perf_counter()
            c = prepare_contribution(ncfg, path, ValidationSettings("demo-lesion", data, csv),
                                     lambda _n: backend, stream=io.StringIO())  # fmt: skip
            local[name] = time.perf_counter() - t0
            to_vendor[name] = int(c.result.inference["bytes_up"])
            procs.append((ncfg, start_supernode(ncfg)))
        t0 = time.perf_counter()
        outcome = fed.run_round(timeout=3600)
        t_round = time.perf_counter() - t0
    finally:
        for _, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()
        fed.stop()
    if not outcome.released:
        print(f"round not released: {outcome.reason}")
        return 1
    rep = json.loads((outcome.round_dir / "report" / "report.json").read_text())
    print(f"backend: {args.backend}; {len(SIZES)} sites, {total} images "
          f"({', '.join(map(str, SIZES))})\n")
    print(f"{'site':<8} {'images':>6} {'local validation s':>19} {'bytes to vendor':>16} "
          f"{'bytes in round':>15}")
    for (name, _, _), n in zip(sites, SIZES, strict=True):
        for ncfg, _ in procs:
            if ncfg.multisite is not None and ncfg.multisite.site == name:
                sent = json.loads((site_dir(ncfg) / "sent_bytes.json").read_text())
        print(f"{name:<8} {n:>6} {local[name]:>19.1f} {to_vendor[name]:>16,} "
              f"{sum(sent.values()):>15,}")
    crit = max(local.values()) + t_round
    seq = sum(local.values()) + t_round
    print(f"\nSecAgg+ round (7 SuperNodes, TLS): {t_round:.1f} s")
    print(f"multi-site, sites in parallel (slowest site + round): {crit:.1f} s")
    print(f"multi-site, sites one after another here (sum + round): {seq:.1f} s")
    print(f"central validation of the union: {t_central:.1f} s")
    print(f"ratio multi-site (parallel) / central: {crit / t_central:.2f}; "
          f"(sequential) / central: {seq / t_central:.2f}")
    print(f"\nAUROC pooled {rep['auroc']['value']:.4f} vs central {central.auroc:.4f}; "
          f"Brier {rep['brier']:.4f} vs {central.brier:.4f}; sensitivity "
          f"{rep['at_threshold']['sensitivity']:.4f} vs {central.confusion.sensitivity:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
