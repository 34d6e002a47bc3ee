"""``blindread config check FILE``: validate a node (or vendor) config file."""

from __future__ import annotations

import argparse

from node.config import ConfigError, load_config
from node.netsettings import sender_settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="inspect configuration files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a config file; exit 0 if valid, 2 otherwise")
    check.add_argument("file", help="node config YAML")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    """The file's own problems, then (if it is valid) those of its directories on this
    machine's file systems (spool and jobs directory on one file system, as the node's
    start-up requires)."""
    try:
        cfg = load_config(args.file)
        problems = cfg.filesystem_problems()
        if problems:
            raise ConfigError(str(args.file), problems)
    except ConfigError as exc:
        print(f"{exc.source}: INVALID ({len(exc.problems)} problem(s))")
        for line in exc.problems:
            print(f"  {line}")
        return 2
    print(f"{args.file}: OK")
    print(f"  retry budget per job: {sender_settings(cfg).budget().describe()}")
    return 0
