"""``blindread deid IN_DIR OUT_DIR`` and ``blindread vault purge|rotate-key``.

Nothing printed here contains PHI: the summary has counts only; which files were skipped,
blocked or failed (their paths may contain names) goes to ``skipped.csv`` under ``--map-out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from durable_io import atomic_write
from node.cli.errors import reported_as
from node.cli.state import require_vault
from node.config import load_config
from node.config.model import NodeConfig
from node.deid import Deidentifier, DeidKeys, OptionError, parse_options
from node.deid.batch import deidentify_tree, write_mapping_csv
from node.keys import load_or_create_secret
from node.logsetup import configure_logging
from node.vault import VAULT_KEY_FILE, IdentifierVault

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``deid`` and ``vault`` commands."""
    p = sub.add_parser(
        "deid",
        help="de-identify a directory of DICOM files (PS3.15 Annex E profile)",
        description="De-identify every DICOM file under IN_DIR into OUT_DIR (same layout).",
    )
    p.add_argument("in_dir", type=Path, metavar="IN_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--config", type=Path, help="node config (keys, options, masks, allow-list)")
    p.add_argument(
        "--option",
        action="extend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="profile option (repeatable); replaces the config's deid.options",
    )
    p.add_argument("--profile", help="a named option set from the config's deid.profiles")
    p.add_argument(
        "--map-out",
        type=Path,
        metavar="DIR",
        help="write uid_mapping.csv, patient_id_mapping.csv and skipped.csv (mode 0600)",
    )
    p.add_argument("--no-fsync", action="store_true", help="do not fsync each output file")
    p.set_defaults(handler=_deid)

    v = sub.add_parser("vault", help="identifier vault maintenance")
    vsub = v.add_subparsers(dest="vault_command", metavar="ACTION")
    vsub.required = True
    purge = vsub.add_parser("purge", help="delete vault entries older than DAYS")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.add_argument("--config", type=Path, required=True, help="node config")
    purge.set_defaults(handler=_purge)
    rot = vsub.add_parser("rotate-key", help="re-encrypt the vault under a new key")
    rot.add_argument("--config", type=Path, required=True, help="node config")
    rot.add_argument(
        "--new-key", type=Path, required=True, help="new 32-byte key file (created 0600 if absent)"
    )
    rot.set_defaults(handler=_rotate)


def _deid(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    cfg = load_config(args.config) if args.config else NodeConfig()
    if not args.in_dir.is_dir():
        print("deid: IN_DIR is not a directory", file=sys.stderr)
        return 2
    with reported_as("deid", OptionError, KeyError, usage=True):
        if args.option is not None:
            options = parse_options(args.option)
        else:
            options = cfg.deid.profile_options(args.profile)
    if args.config:
        keys = DeidKeys.load_or_create(cfg.node.keys)
    else:
        keys = DeidKeys.ephemeral()
        print(
            "deid: no --config: using one-off keys (outputs unlinkable to other runs)",
            file=sys.stderr,
        )
    deid = Deidentifier(
        options, keys, burned_in=cfg.deid.burned_in.to_policy(), safe_private=cfg.deid.allow_list()
    )
    summary = deidentify_tree(
        args.in_dir,
        args.out_dir,
        deid,
        fsync=not args.no_fsync,
        exclude=() if args.map_out is None else (args.map_out,),
    )
    if args.map_out is not None:
        args.map_out.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_mapping_csv(args.map_out / "uid_mapping.csv", summary.uid_map)
        write_mapping_csv(args.map_out / "patient_id_mapping.csv", summary.patient_map)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(summary.problems)
        atomic_write(args.map_out / "skipped.csv", buf.getvalue().encode("utf-8"), mode=0o600)
    print(
        f"deid: files={summary.files} written={summary.written} blocked={summary.blocked} "
        f"skipped={summary.skipped} errors={summary.errors} truncated={summary.truncated} "
        f"options={','.join(options.names())}"
    )
    if summary.truncated:
        print(f"deid: {summary.truncated} truncated input file(s) not written (see skipped.csv "
              "with --map-out)", file=sys.stderr)
    return 1 if summary.errors or summary.truncated else 0


def _open_vault(args: argparse.Namespace) -> IdentifierVault:
    cfg = load_config(args.config)
    require_vault(cfg)
    return IdentifierVault.open(cfg.node.state_dir, cfg.node.keys)


def _purge(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        print("vault purge: --older-than must be >= 0", file=sys.stderr)
        return 2
    with _open_vault(args) as vault:
        n = vault.purge(args.older_than)
    print(f"vault purge: deleted {n} entr{'y' if n == 1 else 'ies'}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    require_vault(cfg)
    new_key = load_or_create_secret(args.new_key)
    with IdentifierVault.open(cfg.node.state_dir, cfg.node.keys) as vault:
        n = vault.rotate_key(new_key)
    print(
        f"vault rotate-key: re-encrypted {n} entries; now replace "
        f"{cfg.node.keys / VAULT_KEY_FILE} with {args.new_key} (see docs/deid.md)"
    )
    return 0
