"""``blindread vendor ...``: an alias of the vendor's own CLI (``python -m secure_infer.vendor``).

blindread vendor serve --config vendor.yaml
blindread vendor issue-cert ca     --ca-dir DIR [--cn NAME]
blindread vendor issue-cert server --ca-dir DIR --out DIR [--name HOST ...]
blindread vendor issue-cert client --ca-dir DIR --out DIR --cn HOSPITAL
blindread vendor verify-chain FILE

Everything after ``vendor`` goes to :func:`secure_infer.vendor_main` unchanged; the vendor peer
itself never needs the node installed.
"""

from __future__ import annotations

import argparse

from secure_infer import vendor_main

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "vendor",
        help="the vendor peer server (model owner side; alias of python -m secure_infer.vendor)",
        add_help=False,
    )
    # -h/--help must reach the vendor's parser too: a leading option would not land in REMAINDER
    p.add_argument("-h", "--help", action="store_true", dest="vendor_help")
    p.add_argument("vendor_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_delegate)


def _delegate(args: argparse.Namespace) -> int:
    argv = ["--help", *args.vendor_args] if args.vendor_help else list(args.vendor_args)
    code: int = vendor_main(argv, prog="blindread vendor")
    return code
