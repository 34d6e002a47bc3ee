"""``blindread vendor ...``: run the vendor peer, issue its certificates, verify its chain.

blindread vendor serve --config vendor.yaml
blindread vendor issue-cert ca     --ca-dir DIR [--cn NAME]
blindread vendor issue-cert server --ca-dir DIR --out DIR [--name HOST ...]
blindread vendor issue-cert client --ca-dir DIR --out DIR --cn HOSPITAL
blindread vendor verify-chain FILE
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

from node.config.vendor import load_vendor_config
from node.logsetup import configure_logging
from secure_infer.errors import InferenceError
from secure_infer.manifest import ManifestError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("vendor", help="the vendor peer server (model owner side)")
    vsub = p.add_subparsers(dest="vendor_command", metavar="ACTION")
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


def _serve(args: argparse.Namespace) -> int:
    from secure_infer.server import ServerSettings, TlsFiles, serve

    cfg = load_vendor_config(args.config)
    configure_logging(cfg.log_level)
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
    except (InferenceError, ManifestError, ValueError) as exc:
        print(f"vendor serve: cannot load a model: {exc}", file=sys.stderr)
        return 2
    return 0


def _issue(args: argparse.Namespace) -> int:
    from secure_infer import certs

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
