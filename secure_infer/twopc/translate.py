"""Public architecture -> :class:`~secure_infer.twopc.program.Program` (a JAX function for SPU).

Both parties call :func:`build_program` on the same architecture bytes (made by
:func:`~secure_infer.twopc.architecture.split_model` on the vendor side) and get the same
function; neither needs a weight value for that. The function interprets the graph node by node
with the handlers of :mod:`secure_infer.twopc.ops`; a node whose inputs are all public constants
is evaluated in the clear with ONNX's reference evaluator while tracing, so shape arithmetic never
reaches SPU.

Before anything is traced, every node is checked: an op with no handler, or an attribute form
its handler does not support, is collected, and one :class:`~secure_infer.errors.CompileError`
names *all* such nodes (name, op type, reason), so a vendor learns in one run what to change.

JAX is imported here (the ``2pc`` extra); nothing in ``import secure_infer`` imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from secure_infer.errors import CompileError
from secure_infer.twopc.architecture import architecture_sha256, evaluate_public, load_architecture
from secure_infer.twopc.program import Program, TensorSpec

__all__ = ["Unsupported", "build_program", "check_architecture", "run_plain", "weight_args"]


@dataclass(frozen=True)
class Unsupported:
    """One node the two-party engine cannot run, and why."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op_type}): {self.reason}"


def _dtype_name(elem_type: int) -> str:
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    return TensorSpec(vi.name, tuple(int(d.dim_value) for d in t.shape.dim),
                      _dtype_name(t.elem_type))


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise CompileError("the architecture imports no default ONNX opset")


def _node(n: onnx.NodeProto, opset: int) -> Any:
    from secure_infer.twopc.ops import Node

    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    return Node(n.name, n.op_type, attrs, opset, len([i for i in n.input if i]))


def check_architecture(model: onnx.ModelProto) -> list[Unsupported]:
    """Every node of ``model`` the table cannot translate (empty: all supported)."""
    from secure_infer.twopc.ops import CHECKS, OPS

    opset = _opset(model)
    g = model.graph
    public = {t.name for t in g.initializer} | {""}
    problems: list[Unsupported] = []
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(Unsupported(n.name, n.op_type, f"custom domain {n.domain!r}"))
            continue
        if all(i in public for i in n.input) and n.input:
            public.update(n.output)  # evaluated in the clear while tracing
            continue
        if n.op_type not in OPS:
            problems.append(Unsupported(n.name, n.op_type,
                                        "op type has no two-party translation"))
            continue
        if len([o for o in n.output if o]) > 1:
            problems.append(Unsupported(n.name, n.op_type,
                                        "only the first output is supported"))
            continue
        check = CHECKS.get(n.op_type)
        reason = check(_node(n, opset)) if check else None
        if reason:
            problems.append(Unsupported(n.name, n.op_type, reason))
    return problems


def _refuse(problems: Sequence[Unsupported]) -> CompileError:
    first = problems[0]
    return CompileError(
        f"{len(problems)} node(s) cannot run under the two-party engine: "
        + "; ".join(str(p) for p in problems),
        node=first.node, op_type=first.op_type,
    )


def build_program(architecture: bytes) -> Program:
    """The architecture as ``fn(image, *weights) -> tuple of outputs`` for SPU (and plain JAX).

    Raises :class:`CompileError` listing every unsupported node, or naming the node whose
    handler fails while the function is shaped (e.g. a Reshape to an impossible shape).
    """
    import jax

    from secure_infer.twopc.ops import OPS, OpError

    model = load_architecture(architecture)
    problems = check_architecture(model)
    if problems:
        raise _refuse(problems)
    opset = _opset(model)
    g = model.graph
    image = _spec(g.input[0])
    weights = tuple(_spec(vi) for vi in g.input[1:])
    publics = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    nodes = [(n, _node(n, opset)) for n in g.node]
    out_names = [o.name for o in g.output]
    arg_names = [image.name] + [w.name for w in weights]

    def fn(x: Any, *ws: Any) -> tuple[Any, ...]:
        env: dict[str, Any] = dict(publics)
        env.update(zip(arg_names, (x, *ws), strict=False))
        for proto, node in nodes:
            ins = [env[i] if i else None for i in proto.input]
            try:
                if all(v is None or isinstance(v, np.ndarray) for v in ins) and ins:
                    outs: Sequence[Any] = evaluate_public(proto, ins, opset)
                else:
                    outs = OPS[proto.op_type](node, ins)
            except (OpError, TypeError, ValueError) as exc:
                raise CompileError(f"node {proto.name!r} ({proto.op_type}): {exc}",
                                   node=proto.name, op_type=proto.op_type) from None
            for name, v in zip(proto.output, outs, strict=False):
                if name:
                    env[name] = v
        return tuple(env[o] for o in out_names)

    args = [jax.ShapeDtypeStruct(image.shape, np.dtype(image.dtype))] + [
        jax.ShapeDtypeStruct(w.shape, np.dtype(w.dtype)) for w in weights]
    shaped = jax.eval_shape(fn, *args)
    outputs = tuple(TensorSpec(name, tuple(int(d) for d in s.shape), str(s.dtype))
                    for name, s in zip(out_names, shaped, strict=False))
    return Program(fn=fn, input=image, weights=weights, outputs=outputs,
                   description_sha256=architecture_sha256(architecture))


def weight_args(program: Program, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The vendor's weights in the program's argument order (checks names and shapes)."""
    out = []
    for spec in program.weights:
        if spec.name not in weights:
            raise CompileError(f"weight {spec.name!r} is missing")
        w = np.asarray(weights[spec.name], dtype=np.dtype(spec.dtype))
        if tuple(w.shape) != spec.shape:
            raise CompileError(f"weight {spec.name!r} has shape {w.shape}, expected {spec.shape}")
        out.append(w)
    return out


def run_plain(program: Program, weights: Mapping[str, np.ndarray],
              image: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run the program in the clear with JAX (jit-compiled) on one image batch of the spec."""
    import jax

    x = np.asarray(image, dtype=np.dtype(program.input.dtype)).reshape(program.input.shape)
    outs = jax.jit(program.fn)(x, *weight_args(program, weights))
    return tuple(np.asarray(o) for o in outs)
