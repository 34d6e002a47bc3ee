"""``blindread node run``, ``blindread echo`` and ``blindread jobs list|retry``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from node.cli.errors import reported_as
from node.cli.listen import LISTEN_ERRNOS, listen_error
from node.cli.state import require_jobs_db
from node.config import load_config
from node.logsetup import configure_logging
from node.netsettings import destination_settings
from scp import ScpError, echo

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run the hospital node")
    nsub = node.add_subparsers(dest="node_command", metavar="ACTION")
    nsub.required = True
    run = nsub.add_parser("run", help="run in the foreground until SIGTERM (systemd-friendly)")
    run.add_argument("--config", required=True, help="node config YAML")
    run.set_defaults(handler=_run)

    ech = sub.add_parser("echo", help="C-ECHO a configured destination")
    ech.add_argument("--config", required=True, help="node config YAML")
    ech.add_argument("destination", help="name under 'destinations:' in the config")
    ech.set_defaults(handler=_echo)

    jobs = sub.add_parser("jobs", help="show and requeue jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    ls = jsub.add_parser("list", help="list jobs (no PHI: studies by pseudonym)")
    ls.add_argument("--config", required=True, help="node config YAML")
    ls.add_argument("--state", choices=("claiming", "queued", "running", "done", "failed"))
    ls.set_defaults(handler=_jobs_list)
    rt = jsub.add_parser("retry", help="requeue a failed job (files leave quarantine)")
    rt.add_argument("--config", required=True, help="node config YAML")
    rt.add_argument("id", type=int, help="job id")
    rt.set_defaults(handler=_jobs_retry)
    pg = jsub.add_parser(
        "purge", help="delete the files of jobs finished more than DAYS ago (records stay)"
    )
    pg.add_argument("--config", required=True, help="node config YAML")
    pg.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    pg.set_defaults(handler=_jobs_purge)


def _run(args: argparse.Namespace) -> int:
    from node.app import build_node

    cfg = load_config(args.config)
    configure_logging(cfg.node.log_level)
    try:
        build_node(cfg).run_forever()
    except OSError as exc:
        if exc.errno not in LISTEN_ERRNOS:
            raise
        raise listen_error(cfg, exc) from None
    return 0


def _echo(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    with reported_as("error", KeyError, usage=True):
        dest = destination_settings(cfg, args.destination)
    try:
        code = echo(dest, timeout=cfg.sender.timeout_seconds)
    except ScpError as exc:
        print(f"echo {args.destination}: FAILED ({exc})")
        return 1
    ok = code == 0
    print(
        f"echo {args.destination} ({dest.ae_title}@{dest.host}:{dest.port}): "
        f"{'OK' if ok else 'FAILED'} status 0x{code:04X}"
    )
    return 0 if ok else 1


def _fmt_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def _jobs_list(args: argparse.Namespace) -> int:
    from node.app import open_jobs

    cfg = load_config(args.config)
    require_jobs_db(cfg)
    store, _ = open_jobs(cfg)
    jobs = store.list(args.state)
    print(
        f"{'ID':>5}  {'STATE':<9} {'STUDY':<20} {'FILES':>5} {'TRIES':>5}  "
        f"{'NEXT ATTEMPT':<20}  LAST ERROR"
    )
    for j in jobs:
        nxt = _fmt_time(j.next_attempt_at) if j.state == "queued" else "-"
        print(
            f"{j.id:>5}  {j.state:<9} {j.study:<20} {len(j.files):>5} {j.attempts:>5}  "
            f"{nxt:<20}  {j.last_error or ''}"
        )
    store.close()
    return 0


def _jobs_purge(args: argparse.Namespace) -> int:
    from node.app import open_jobs

    if args.older_than <= 0:
        print("--older-than must be > 0 days", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    require_jobs_db(cfg)
    store, intake = open_jobs(cfg)
    try:
        n = intake.purge_done(args.older_than * 86400.0)
    finally:
        store.close()
    print(f"deleted the files of {n} finished job(s)")
    return 0


def _jobs_retry(args: argparse.Namespace) -> int:
    from node.app import open_jobs

    cfg = load_config(args.config)
    require_jobs_db(cfg)
    store, intake = open_jobs(cfg)
    try:
        job = intake.retry(args.id)
        if job is None:
            existing = store.get(args.id)
            why = "no such job" if existing is None else f"job is {existing.state}, not failed"
            print(f"job {args.id}: cannot retry: {why}", file=sys.stderr)
            return 1
        print(f"job {job.id}: requeued ({len(job.files)} file(s))")
        return 0
    finally:
        store.close()
