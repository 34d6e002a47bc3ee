"""``blindread config check FILE``: validate a node (or vendor) config file.

A node config is checked for its own problems (every key, every reference), then for what it
needs on this machine (:func:`node.config.hostcheck.host_problems`: files it names exist and can
be read, its directories can be made) and for its directories' file systems. An empty file is
invalid (a config that sets nothing is a mistake, not the defaults). A vendor peer's config
(top-level keys of ``config/vendor.example.yaml``: ``listen``, ``tls``, ``limits``, ...) is
recognized and checked by the vendor's own model through ``blindread vendor check-config``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.config import ConfigError, NodeConfig, parse_model
from node.config.hostcheck import host_problems
from node.netsettings import sender_settings
from secure_infer import VendorConfig, read_yaml, vendor_main

__all__ = ["VENDOR_KEYS", "register"]

VENDOR_KEYS = frozenset(VendorConfig.model_fields)
"""Top-level keys of a vendor peer's config (read from its model, so a new vendor section is
known here at once); a file with only these (and ``listen``, ``tls``, ``limits`` or
``models_dir``, which no node config has) is a vendor config."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="inspect configuration files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser(
        "check",
        help="validate a node config (or a vendor peer's, recognized by its keys); "
        "exit 0 if valid, 2 otherwise",
    )
    check.add_argument("file", help="node (or vendor) config YAML")
    check.set_defaults(handler=_check)


def is_vendor_config(data: object) -> bool:
    """Whether parsed YAML is a vendor peer's config rather than a node's."""
    if not isinstance(data, dict) or not data:
        return False
    keys = {str(k) for k in data}
    return keys <= VENDOR_KEYS and bool(keys & {"listen", "tls", "limits", "models_dir"})


def _check(args: argparse.Namespace) -> int:
    """The file's own problems, then (if it is valid) those on this machine."""
    try:
        data = read_yaml(Path(args.file), ConfigError)
        if is_vendor_config(data):
            print(f"{args.file}: a vendor peer config; checking it as one "
                  "(blindread vendor check-config)")
            code: int = vendor_main(["check-config", str(args.file)], prog="blindread vendor")
            return code
        if data is None or data == {}:
            raise ConfigError(
                str(args.file),
                ["<top level>: the file is empty: nothing is configured (see "
                 "config/node.example.yaml)"],
            )
        cfg = parse_model(data, NodeConfig, str(args.file))
        problems = host_problems(cfg) or cfg.filesystem_problems()
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
