"""``blindread multisite``: pooled validation across hospitals under secure aggregation.

* ``coordinator --config C.yaml``: run the SuperLink, one round, release the pooled report if
  the minimum participation holds (exit 0), else print why nothing was released (exit 1);
* ``join --config node.yaml --labels L.csv --model NAME DIR``: validate locally (encrypted, as
  ``blindread validate``), then take part in the round with this site's masked vector;
* ``verify --config node.yaml [--ledger F --key F.pub]``: verify the coordinator's ledger and
  that every contribution this site made was summed;
* ``keygen --out DIR``: the site's EC key pair for Flower node authentication.

See docs/multisite.md. Flower (the ``multisite`` extra) is imported only when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.cli.errors import CommandError, reported_as
from node.config import load_config
from node.validate.labels import LabelError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("multisite", help="pooled validation across sites (secure aggregation)",
                       description="Multi-site validation with Flower SecAgg+; docs/multisite.md")
    ms = p.add_subparsers(dest="multisite_command", metavar="SUBCOMMAND")
    ms.required = True

    c = ms.add_parser("coordinator", help="run one round as the coordinator")
    c.add_argument("--config", required=True, type=Path, help="coordinator config YAML")
    c.set_defaults(handler=_coordinator)

    j = ms.add_parser("join", help="validate locally and contribute this site's masked vector")
    j.add_argument("--config", required=True, type=Path, help="node config YAML (multisite:)")
    j.add_argument("--labels", required=True, type=Path, help="labels CSV (as validate)")
    j.add_argument("--model", required=True, help="model name (as in vendors.<name>.models)")
    j.add_argument("--vendor", default=None, help="vendor peer (default: the one listing MODEL)")
    j.add_argument("--output", default=None, help="model output (default: first)")
    j.add_argument("--batch", type=int, default=8, help="images per encrypted request (8)")
    j.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the round")
    j.add_argument("dir", type=Path, metavar="DIR", help="folder of labeled DICOM files")
    j.set_defaults(handler=_join)

    v = ms.add_parser("verify", help="verify the coordinator ledger and this site's inclusion")
    v.add_argument("--config", required=True, type=Path, help="node config YAML (multisite:)")
    v.add_argument("--ledger", type=Path, default=None,
                   help="coordinator ledger (default: the copy it sent after the last round)")
    v.add_argument("--key", type=Path, default=None,
                   help="its public key (default: multisite.coordinator_public_key)")
    v.set_defaults(handler=_verify)

    k = ms.add_parser("keygen", help="create this site's node-authentication key pair")
    k.add_argument("--out", required=True, type=Path, help="folder for site.key / site.pub")
    k.add_argument("--name", default="site", help="file name stem (site)")
    k.set_defaults(handler=_keygen)


def _coordinator(args: argparse.Namespace) -> int:
    from node.multisite.coordinator import run_coordinator

    outcome = run_coordinator(args.config)
    if not outcome.released:
        raise CommandError(f"nothing released: {outcome.reason}")
    rep = outcome.round_dir / "report"
    print(f"pooled report of {len(outcome.data['contributions'])} site(s): {rep / 'report.md'}")
    return 0


def _join(args: argparse.Namespace) -> int:
    from node.multisite.site import join_round, prepare_contribution
    from node.validate import ValidationSettings
    from node.vendors import VendorBackends

    cfg = load_config(args.config)
    settings = ValidationSettings(model=args.model, data_dir=args.dir, labels_csv=args.labels,
                                  vendor=args.vendor, output=args.output, batch=args.batch,
                                  bootstrap=1)  # fmt: skip

    def label_problems(exc: LabelError) -> str:
        lines = "".join(f"\n  {problem}" for problem in exc.problems)
        return f"labels: {len(exc.problems)} problem(s) in {args.labels}:{lines}"

    backends = VendorBackends(cfg)
    try:
        with reported_as(label_problems, LabelError, usage=True):
            contribution = prepare_contribution(cfg, args.config, settings, backends)
    finally:
        backends.close()
    n = len(contribution.result.cases)
    print(f"{n} cases evaluated locally; joining the round (only the masked sum leaves)")
    outcome = join_round(cfg, timeout=args.timeout)
    if not outcome["released"]:
        raise CommandError(f"round {outcome['run']}: nothing released: {outcome['reason']}")
    print(f"round {outcome['run']}: pooled result released by the coordinator")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from node.audit import AuditEntry
    from node.multisite.site import site_dir, site_section, verify_inclusion

    cfg = load_config(args.config)
    section = site_section(cfg)
    ledger = args.ledger or site_dir(cfg) / "coordinator-ledger.jsonl"
    key = args.key or section.coordinator_public_key or ledger.with_name(ledger.name + ".pub")
    own = []
    with reported_as("error: cannot read this site's audit ledger", OSError, ValueError):
        with cfg.audit_ledger.open(encoding="utf-8") as fh:
            own = [AuditEntry.from_json(line) for line in fh if line.strip()]
    with reported_as(f"error: cannot read {ledger}", OSError):
        result = verify_inclusion(section.site, own, ledger, Path(key))
    print(f"coordinator ledger: {result.ledger_ok}")
    for row in result.included:
        state = "released" if row["released"] else f"not released ({row['reason']})"
        print(f"included: run {row['run']} masked vector {row['masked_vector_sha256'][:16]}... "
              f"{state}")
    for row in result.missing:
        print(f"NOT FOUND: run {row['run']} masked vector {row['masked_vector_sha256'][:16]}... "
              f"({row['reason']})")
    return 0 if result.ok else 1


def _keygen(args: argparse.Namespace) -> int:
    from node.multisite.site import generate_site_key

    key, pub = generate_site_key(args.out, args.name)
    print(f"private key: {key} (0600, stays at the site)\npublic key: {pub} (give it to the "
          "coordinator: sites.<name>.public_key)")
    return 0
