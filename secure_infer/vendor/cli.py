"""The vendor's command line: run the peer, issue its certificates, verify its chain, check a model.

python -m secure_infer.vendor serve --config vendor.yaml     (or the blindread-vendor script)
python -m secure_infer.vendor issue-cert ca     --ca-dir DIR [--cn NAME]
python -m secure_infer.vendor issue-cert server --ca-dir DIR --out DIR [--name HOST ...]
python -m secure_infer.vendor issue-cert client --ca-dir DIR --out DIR --cn HOSPITAL
python -m secure_infer.vendor issue-cert revoke --ca-dir DIR --crl FILE CERT ...
python -m secure_infer.vendor verify-chain FILE [--public-key PUB] [--anchor FILE]
python -m secure_infer.vendor check-config FILE
python -m secure_infer.vendor models --config vendor.yaml list|add MANIFEST|retire NAME@V|
                                     current NAME@V|reload
python -m secure_infer.vendor model check MODEL.onnx [--manifest FILE]

Imports nothing of the hospital node (``node``), so a vendor installs and runs only
secure_infer. ``blindread vendor ...`` is an alias that calls :func:`main`; ``blindread model
check`` reuses :mod:`secure_infer.check`. Exit codes: 0 success, 1 the operation failed, 2 bad
usage or config.

"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_infer.check import MODEL_CHECK_HELP, add_model_check_arguments, run_model_check
from secure_infer.errors import InferenceError
from secure_infer.vendor.config import VendorConfig, VendorConfigError, load_vendor_config

if TYPE_CHECKING:
    from secure_infer.vendor._twopc_sessions import TwoPcSettings

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
    rev = csub.add_parser("revoke", help="add client certificates to the CA's CRL (tls.crl)")
    rev.add_argument("--ca-dir", required=True, type=Path)
    rev.add_argument("--crl", required=True, type=Path, help="the CRL file (PEM), created if new")
    rev.add_argument("certs", nargs="*", type=Path, help="certificates (PEM) to revoke")
    rev.add_argument("--days", type=int, default=30, help="CRL valid for (next update)")
    cert.set_defaults(handler=_issue)

    chk = vsub.add_parser(
        "check-config", help="validate a vendor config; exit 0 if valid, 2 otherwise"
    )
    chk.add_argument("file", type=Path, help="vendor config YAML")
    chk.set_defaults(handler=_check_config)

    chain = vsub.add_parser(
        "verify-chain",
        help="check every link, hash and signature of the vendor's chain and its signed head",
    )
    chain.add_argument("file", type=Path, help="<state_dir>/chain.jsonl")
    chain.add_argument("--public-key", type=Path,
                       help="the chain's public key (default <file>.pub; use an off-host copy)")
    chain.add_argument("--anchor", type=Path, help="the anchor copy of the head (chain_anchor)")
    chain.set_defaults(handler=_verify_chain)

    models = vsub.add_parser(
        "models", help="the running server's models: list, add, retire, set current, reload"
    )
    models.add_argument("--config", required=True, help="the server's vendor config YAML")
    models.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the server's reload (default 600)")
    rsub = models.add_subparsers(dest="models_command", metavar="ACTION")
    rsub.required = True
    rsub.add_parser("list", help="models live and refused at the last (re)load")
    add = rsub.add_parser("add", help="serve another model (checked before it goes live)")
    add.add_argument("manifest", type=Path, help="its manifest.yaml (ONNX beside it)")
    ret = rsub.add_parser("retire", help="stop serving one version")
    ret.add_argument("ref", help="name@version")
    cur = rsub.add_parser("current", help="make a version the one a bare name gets")
    cur.add_argument("ref", help="name@version")
    rsub.add_parser("reload", help="re-read the config and the models (same as SIGHUP)")
    models.set_defaults(handler=_models)

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
    from secure_infer.vendor.server import TlsFiles, serve, settings_from_config

    cfg = load_vendor_config(args.config)
    _configure_logging(cfg.log_level)
    settings = dataclasses.replace(
        settings_from_config(Path(args.config)),
        twopc=_twopc_settings(cfg),
        **_scale_settings(cfg),
    )
    if not settings.manifests and settings.twopc is None:
        print(f"{args.config}: no manifest found under models_dir", file=sys.stderr)
        return 2
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


def _check_config(args: argparse.Namespace) -> int:
    """The file's own problems, then the files it names that are missing on this machine."""
    try:
        cfg = load_vendor_config(args.file)
    except VendorConfigError as exc:
        problems = exc.problems
    else:
        named = [("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key),
                 ("tls.client_ca", cfg.tls.client_ca)]
        named += [(f"models[{i}]", m) for i, m in enumerate(cfg.models)]
        problems = [f"{where}: {p}: no such file" for where, p in named if not p.is_file()]
        if cfg.models_dir is not None and not cfg.models_dir.is_dir():
            problems.append(f"models_dir: {cfg.models_dir}: no such directory")
    if problems:
        print(f"{args.file}: INVALID ({len(problems)} problem(s))")
        for line in problems:
            print(f"  {line}")
        return 2
    print(f"{args.file}: OK (vendor peer config, {len(cfg.manifest_paths())} model(s))")
    return 0


def _models(args: argparse.Namespace) -> int:
    """Edit the admin overlay (``<state_dir>/registry.json``), SIGHUP the server, print the
    outcome of its reload; 1 if a model named by the command was refused."""
    from secure_infer.modelref import parse_model_ref
    from secure_infer.vendor import _admin

    cfg = load_vendor_config(args.config)
    state = cfg.state_dir
    cmd = args.models_command
    if cmd in ("retire", "current"):
        try:
            ref = parse_model_ref(args.ref)
        except ValueError as exc:
            print(f"models {cmd}: {exc}", file=sys.stderr)
            return 2
        if ref.version is None:
            print(f"models {cmd}: name a version (NAME@VERSION)", file=sys.stderr)
            return 2
    if cmd == "list":
        status = _admin.read_status(state)
        if status is None:
            print(f"no status in {state} (server not started?)", file=sys.stderr)
            return 1
        _print_status(status)
        return 0
    try:
        with _admin.edit_overlay(state) as overlay:
            if cmd == "add":
                path = str(args.manifest.resolve())
                if not args.manifest.is_file():
                    print(f"models add: {args.manifest}: no such file", file=sys.stderr)
                    return 2
                if path not in overlay.added:
                    overlay.added.append(path)
            elif cmd == "retire" and args.ref not in overlay.retired:
                overlay.retired.append(args.ref)
            elif cmd == "current":
                overlay.current[ref.name] = str(ref.version)
    except ValueError as exc:
        print(f"models {cmd}: {exc}", file=sys.stderr)
        return 1
    before = int((_admin.read_status(state) or {}).get("reload", -1))
    try:
        pid = _admin.signal_reload(state)
    except (ProcessLookupError, PermissionError) as exc:
        print(f"models {cmd}: saved; no server to reload now ({exc}): it applies at start",
              file=sys.stderr)
        return 0
    status = _admin.wait_for_status(state, before, args.timeout)
    if status is None:
        print(f"models {cmd}: server {pid} did not report its reload within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    _print_status(status)
    if status.get("error"):
        return 1
    if cmd == "add":
        refused = [r for r in status.get("refused", []) if r["manifest"] == path]
        return 1 if refused else 0
    return 0


def _print_status(status: dict[str, object]) -> None:
    print(f"registry generation {status.get('generation')}")
    for m in status.get("models", []):  # type: ignore[attr-defined]
        mark = "  (current)" if m.get("current") else ""
        print(f"  live     {m['name']}@{m['version']}{mark}")
    for r in status.get("refused", []):  # type: ignore[attr-defined]
        kept = " (the previous build keeps serving)" if r.get("kept_previous") else ""
        print(f"  REFUSED  {r.get('model') or r.get('manifest')}: {r.get('reason')}{kept}")
    if status.get("error"):
        print(f"  RELOAD FAILED: {status['error']} (nothing changed)")


def _twopc_settings(cfg: VendorConfig) -> TwoPcSettings | None:
    from secure_infer.vendor._twopc_sessions import TwoPcModelSettings, TwoPcSettings

    t = cfg.twopc
    if not t.models:
        return None
    return TwoPcSettings(
        models=tuple(
            TwoPcModelSettings(
                name=m.name,
                version=m.version,
                loader=m.loader,
                source=m.source,
                fixed_point=m.fixed_point.model_dump() if m.fixed_point else None,
            )
            for m in t.models
        ),
        link_host=t.link_host,
        max_sessions=t.max_sessions,
        session_timeout=t.session_timeout_seconds,
        connect_timeout=t.connect_timeout_seconds,
        recv_timeout=t.recv_timeout_seconds,
        start_timeout=t.start_timeout_seconds,
        max_images=t.max_images_per_session,
    )


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

    if args.cert_kind == "revoke":
        try:
            n = certs.revoke_certificates(args.ca_dir, args.crl, tuple(args.certs), args.days)
        except (FileNotFoundError, ValueError) as exc:
            print(f"issue-cert revoke: {exc}", file=sys.stderr)
            return 1
        print(f"CRL {args.crl}: {n} revoked certificate(s)")
        return 0
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
    from secure_infer.chain import ChainError, load_public_key, verify_chain

    try:
        key = load_public_key(args.public_key) if args.public_key else None
        n = verify_chain(args.file, key, anchor=args.anchor)
    except ValueError as exc:
        print(f"verify-chain: {exc}", file=sys.stderr)
        return 2
    except ChainError as exc:
        print(f"BROKEN: {exc}")
        return 1
    anchored = ", anchor checked" if args.anchor else ", no anchor checked"
    print(f"{args.file}: OK ({n} entries, signatures and signed head valid{anchored})")
    return 0
