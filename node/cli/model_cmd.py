"""``blindread model check MODEL.onnx``: an alias of ``python -m secure_infer.vendor model check``.

Compiles an ONNX model to an HE plan, plays both parties locally and compares the decrypted
outputs with onnxruntime's; arguments and handler are secure_infer's
(:func:`secure_infer.run_model_check`). Exit codes: 0 within tolerance, 1 outside it,
2 unsupported model or bad input.
"""

from __future__ import annotations

import argparse

from secure_infer import MODEL_CHECK_HELP, add_model_check_arguments, run_model_check

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="vendor model tools")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    c = msub.add_parser("check", help=MODEL_CHECK_HELP)
    add_model_check_arguments(c)
    c.set_defaults(handler=run_model_check)
