"""The vendor's command line: run the peer, issue its certificates, verify its chain, check a model.

python -m secure_infer.vendor serve --config vendor.yaml     (or the blindread-vendor script)
python -m secure_infer.vendor issue-cert ca     --ca-dir DIR [--cn NAME]
python -m secure_infer.vendor issue-cert server --ca-dir DIR --out DIR [--name HOST ...]
python -m secure_infer.vendor issue-cert client --ca-dir DIR --out DIR --cn HOSPITAL
python -m secure_infer.vendor verify-chain FILE
python -m secure_infer.vendor model check MODEL.onnx [--manifest FILE]

Imports nothing of the hospital node (``node``), so a vendor installs and runs only
secure_infer. ``blindread vendor ...`` is an alias that calls :func:`main`; ``blindread model
check`` reuses :mod:`secure_infer.check`. Exit codes: 0 success, 1 the operation failed, 2 bad
usage or config.

"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secure_infer.check import MODEL_CHECK_HELP, add_model_check_arguments, run_model_check
from secure_infer.errors import InferenceError
from secure_infer.vendor.config import VendorConfig, VendorConfigError, load_vendor_config

__all__ = ["build_parser", "main", "vendor_main"]


def build_parser(prog: str = "python -m secure_infer.vendor") -> argparse.ArgumentParser:
    """The vendor CLI's parser (``prog`` is what usage lines show, e.g. ``blindread vendor``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="BlindRead vendor peer: serves models on CKKS ciphertexts."
    )
    vsub = parser.add_subparsers(dest="vendor_command", metavar="ACTION")
    vsub.required = True

    serve = vsub.add_parser("serve", help="serve models over HTTPS with mutual TLS")
    serve.add_argument("--config", required=True, help="vendor config YAML")
    serve.set_defaults(handler=_serve)

    cert = vsub.add_parser("issue-cert", help="create the vendor CA and certificates")
    csub = cert.add_subparsers(dest="cert_kind", metavar="KIND")
    csub.required = True
    ca = csub.add_parser("ca", help="create ca.crt / ca.key (key mode 0600)")
    ca.add_argument("--ca-dir", required=True, type=Path)
    ca.add_argument("--cn", default="BlindRead vendor CA")
    ca.add_argument("--days", type=int, default=3650)
    ca.add_argument("--force", action="store_true", help="overwrite existing files")
    srv = csub.add_parser("server", help="server.crt / server.key (SAN 127.0.0.1, ::1, localhost)")
    srv.add_argument("--ca-dir", required=True, type=Path)
    srv.add_argument("--out", required=True, type=Path)
    srv.add_argument("--name", action="append", default=[], help="extra DNS name or IP (repeat)")
    srv.add_argument("--days", type=int, default=825)
    srv.add_argument("--force", action="store_true")
    cli = csub.add_parser("client", help="<cn>.crt / <cn>.key for one hospital")
    cli.add_argument("--ca-dir", required=True, type=Path)
    cli.add_argument("--out", required=True, type=Path)
    cli.add_argument("--cn", required=True, help="the hospital's identity at the vendor")
    cli.add_argument("--days", type=int, default=825)
    cli.add_argument("--force", action="store_true")
    cert.set_defaults(handler=_issue)

    chain = vsub.add_parser("verify-chain", help="check every link of the vendor's hash chain")
    chain.add_argument("file", type=Path, help="<state_dir>/chain.jsonl")
    chain.set_defaults(handler=_verify_chain)

    model = vsub.add_parser("model", help="vendor model tools")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    c = msub.add_parser("check", help=MODEL_CHECK_HELP)
    add_model_check_arguments(c)
    c.set_defaults(handler=run_model_check)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m secure_infer.vendor`` and the ``blindread-vendor`` script.

    Errors that end a command map to exit codes here, in one place.
    """
    args = build_parser(prog or "python -m secure_infer.vendor").parse_args(argv)
    try:
        code: int = args.handler(args)
    except VendorConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


vendor_main = main
"""The name :mod:`secure_infer` exports for :func:`main` (the ``blindread vendor`` alias)."""


def _configure_logging(level: str) -> None:
    """One line per record on stderr (journald adds the timestamp)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _serve(args: argparse.Namespace) -> int:
    from secure_infer.vendor.server import ServerSettings, TlsFiles, serve

    cfg = load_vendor_config(args.config)
    _configure_logging(cfg.log_level)
    manifests = cfg.manifest_paths()
    if not manifests:
        print(f"{args.config}: no manifest found under models_dir", file=sys.stderr)
        return 2
    lim = cfg.limits
    settings = ServerSettings(
        manifests=manifests,
        state_dir=cfg.state_dir,
        max_request_bytes=lim.max_request_bytes,
        max_context_bytes=lim.max_context_bytes,
        max_frames=lim.max_frames,
        workers=lim.workers,
        queue_size=lim.queue_size,
        read_timeout=lim.read_timeout_seconds,
        evaluate_timeout=lim.evaluate_timeout_seconds,
        context_cache=lim.context_cache,
        **_scale_settings(cfg),
    )
    tls = TlsFiles(cert=cfg.tls.cert, key=cfg.tls.key, client_ca=cfg.tls.client_ca)
    try:
        serve(
            settings,
            tls,
            cfg.listen.host,
            cfg.listen.port,
            log_level=cfg.log_level,
            max_connections=cfg.listen.max_connections,
        )
    except (OSError, ssl.SSLError) as exc:
        print(f"vendor serve: cannot start: {exc}", file=sys.stderr)
        return 2
    except (InferenceError, ValueError) as exc:  # ManifestError is an InferenceError
        print(f"vendor serve: cannot load a model: {exc}", file=sys.stderr)
        return 2
    return 0


def _scale_settings(cfg: VendorConfig) -> dict[str, Any]:
    """The ``scale`` section as ServerSettings fields (backend, Ray settings, shared store)."""
    from secure_infer.vendor._ray_pool import RaySettings

    sc = cfg.scale
    ray = RaySettings(
        address=sc.ray_address,
        namespace=sc.ray_namespace,
        worker_cpus=sc.worker_cpus,
        node_cache_dir=sc.node_cache_dir,
    )
    return {"backend": sc.backend, "ray": ray, "contexts_dir": sc.contexts_dir}


def _issue(args: argparse.Namespace) -> int:
    from secure_infer.vendor import certs

    try:
        if args.cert_kind == "ca":
            pair = certs.create_ca(args.ca_dir, cn=args.cn, days=args.days, overwrite=args.force)
        elif args.cert_kind == "server":
            pair = certs.issue_server_cert(
                args.ca_dir, args.out, tuple(args.name), days=args.days, overwrite=args.force
            )
        else:
            pair = certs.issue_client_cert(
                args.ca_dir, args.out, args.cn, days=args.days, overwrite=args.force
            )
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"issue-cert: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {pair.cert}\nprivate key: {pair.key} (mode 0600)")
    return 0


def _verify_chain(args: argparse.Namespace) -> int:
    from secure_infer.chain import ChainError, verify_chain

    try:
        n = verify_chain(args.file)
    except ChainError as exc:
        print(f"BROKEN: {exc}")
        return 1
    print(f"{args.file}: OK ({n} entries)")
    return 0
