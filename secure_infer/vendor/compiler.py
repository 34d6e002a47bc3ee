"""ONNX -> HE plan compiler.

Walks a single-path ONNX graph, turns every linear op (Conv, Gemm, MatMul, Add/Sub/Mul/Div by a
constant, BatchNormalization, AveragePool, GlobalAveragePool, Flatten/Reshape) into a dense affine
map on the flattened tensor, and every polynomial activation (``Mul(x, x)``, ``Pow(x, 2)``, and -
opt-in - quadratic fits of ReLU/Sigmoid/Tanh/SiLU) into ``a2 (x + c)^2 + k``. Consecutive affine
maps are then folded into one matrix per stage, ``c`` into the preceding bias and ``a2``/``k`` into
the following stage, so each stage costs exactly one CKKS level. A final Sigmoid/Softmax is
stripped: the hospital applies it after decryption.

Each ONNX op type has one small handler in ``_CKKS_LOWERING`` (op type -> handler); the walk
only checks that the graph is a single path, folds constants and fuses SiLU, then hands every
node to its handler. Another engine (Cheetah 2PC) will add a lowering table of its own beside it.
An op without a handler, or a form of one its handler cannot lower, raises
:class:`~secure_infer.errors.CompileError` naming the node, its op type and what to do.

Dense matrices are built with numpy (no scipy dependency); the size guard keeps them within
what a CKKS ciphertext can hold anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from secure_infer.errors import CompileError
from secure_infer.packing import InputPacking, next_pow2
from secure_infer.plan import LinearStage, Plan, ReduceStage, SquareStage, Stage
from secure_infer.vendor.approx import fit_quadratic

__all__ = ["compile_onnx"]

_MAX_DIM = 16384  # elements one image may occupy in the largest (N=32768) ring


@dataclass
class _Lin:
    m: np.ndarray
    b: np.ndarray
    kind: str = "lin"  # "lin", "pad" (im2col conv), "sel" (padded -> natural selection)


@dataclass
class _Sq:
    pass


_Op = _Lin | _Sq
_Shape = tuple[int, ...]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _err(node: onnx.NodeProto, what: str) -> CompileError:
    name = node.name or (node.output[0] if node.output else "?")
    return CompileError(
        f"node {name!r} ({node.op_type}): {what}", node=name, op_type=node.op_type
    )


def _conv_natural(
    w: np.ndarray, group: int, shape: tuple[int, int, int], pk: InputPacking
) -> np.ndarray:
    co_n, cig, kh, kw = w.shape
    c, h, wd = shape
    oh, ow = pk.out_hw
    cog = co_n // group
    mat = np.zeros((co_n * oh * ow, c * h * wd))
    gy, gx = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    oy, ox = gy.ravel(), gx.ravel()
    p = np.arange(oh * ow)
    for co in range(co_n):
        g = co // cog
        for j in range(cig):
            ci = g * cig + j
            for ky in range(kh):
                for kx in range(kw):
                    iy = oy * pk.stride[0] - pk.pads[0] + ky * pk.dilation[0]
                    ix = ox * pk.stride[1] - pk.pads[1] + kx * pk.dilation[1]
                    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
                    cols = ci * h * wd + iy[ok] * wd + ix[ok]
                    mat[co * oh * ow + p[ok], cols] += w[co, j, ky, kx]
    return mat


def _conv_im2col(w: np.ndarray, group: int, pk: InputPacking) -> tuple[np.ndarray, np.ndarray]:
    """Conv matrix on the im2col vector (rows co*P'+p) and the padded->natural selection."""
    co_n, cig, kh, kw = w.shape
    cog = co_n // group
    pp, npos = pk.position_block, pk.positions
    mat = np.zeros((co_n * pp, pk.raw_length))
    p = np.arange(npos)
    for co in range(co_n):
        g = co // cog
        for j in range(cig):
            ci = g * cig + j
            for ky in range(kh):
                for kx in range(kw):
                    t = (ci * kh + ky) * kw + kx
                    mat[co * pp + p, t * pp + p] = w[co, j, ky, kx]
    sel = np.zeros((co_n * npos, co_n * pp))
    for co in range(co_n):
        sel[co * npos + p, co * pp + p] = 1.0
    return mat, sel


def _pool_matrix(
    shape: tuple[int, int, int], pk: InputPacking, include_pad: bool
) -> tuple[np.ndarray, tuple[int, int, int]]:
    c, h, w = shape
    oh, ow = pk.out_hw
    kh, kw = pk.kernel
    mat = np.zeros((c * oh * ow, c * h * w))
    for ch in range(c):
        for y in range(oh):
            for x in range(ow):
                y0 = y * pk.stride[0] - pk.pads[0]
                x0 = x * pk.stride[1] - pk.pads[1]
                cells = [
                    (yy, xx)
                    for yy in range(y0, y0 + kh)
                    for xx in range(x0, x0 + kw)
                    if 0 <= yy < h and 0 <= xx < w
                ]
                if not cells:
                    continue
                if include_pad:
                    y1, x1 = min(y0 + kh, h + pk.pads[2]), min(x0 + kw, w + pk.pads[3])
                    count = (y1 - y0) * (x1 - x0)
                else:
                    count = len(cells)
                for yy, xx in cells:
                    mat[(ch * oh + y) * ow + x, (ch * h + yy) * w + xx] = 1.0 / count
    return mat, (c, oh, ow)


def _spatial(node: onnx.NodeProto, shape: tuple[int, ...], kernel: tuple[int, int]) -> InputPacking:
    a = _attrs(node)
    if len(shape) != 3:
        raise _err(node, f"expects a [C, H, W] input, got {list(shape)}; reshape before it")
    strides = tuple(a.get("strides", [1, 1]))
    dil = tuple(a.get("dilations", [1, 1]))
    pads = tuple(a.get("pads", [0, 0, 0, 0]))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if a.get("ceil_mode", 0):
        raise _err(node, "ceil_mode=1 is not supported; export with ceil_mode=0")
    _, h, w = shape
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        def total(n: int, s: int, d: int, k: int) -> int:
            return max(0, ((n + s - 1) // s - 1) * s + d * (k - 1) + 1 - n)

        ph = total(h, strides[0], dil[0], kernel[0])
        pw = total(w, strides[1], dil[1], kernel[1])
        if auto == "SAME_UPPER":
            pads = (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
        else:
            pads = (ph - ph // 2, pw - pw // 2, ph // 2, pw // 2)
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    if len(strides) != 2 or len(pads) != 4 or len(dil) != 2:
        raise _err(node, "only 2-D spatial ops are supported")
    pk = InputPacking(
        "im2col",
        (int(shape[0]), int(h), int(w)),
        kernel,
        (int(strides[0]), int(strides[1])),
        (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])),
        (int(dil[0]), int(dil[1])),
    )
    oh, ow = pk.out_hw
    if oh < 1 or ow < 1:
        raise _err(node, f"output would be empty for input {list(shape)}")
    return pk


def _broadcast_const(node: onnx.NodeProto, v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    try:
        if arr.ndim == len(shape) + 1:
            if arr.shape[0] != 1:
                raise ValueError
            arr = arr[0]
        return np.broadcast_to(arr, shape).reshape(-1).copy()
    except ValueError:
        raise _err(
            node, f"constant of shape {list(v.shape)} does not broadcast to {list(shape)}"
        ) from None


class _Compiler:
    def __init__(self, model: onnx.ModelProto, approx_range: tuple[float, float] | None) -> None:
        self.g = model.graph
        self.approx_range = approx_range
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in self.g.initializer
        }
        self.ops: list[_Op] = []
        self.packing: InputPacking | None = None
        self.notes: list[str] = []

    # -- helpers ---------------------------------------------------------------------------
    def lin(self, m: np.ndarray, b: np.ndarray, kind: str = "lin") -> None:
        self.ops.append(
            _Lin(np.asarray(m, dtype=np.float64), np.asarray(b, dtype=np.float64), kind)
        )

    def diag(self, scale: np.ndarray, bias: np.ndarray) -> None:
        self.lin(np.diag(scale), bias)

    def quad(self, a2: float, a1: float, a0: float, size: int) -> None:
        """Append ``a2 x^2 + a1 x + a0`` as shift, square, scale (folded later)."""
        if a2 == 0.0:
            self.diag(np.full(size, a1), np.full(size, a0))
            return
        c = a1 / (2 * a2)
        k = a0 - a1 * a1 / (4 * a2)
        if c != 0.0:
            self.diag(np.ones(size), np.full(size, c))
        self.ops.append(_Sq())
        if a2 != 1.0 or k != 0.0:
            self.diag(np.full(size, a2), np.full(size, k))

    # -- walk ------------------------------------------------------------------------------
    def run(self) -> tuple[list[_Op], InputPacking, int, str]:
        inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise CompileError(
                f"the model must have exactly one (non-initializer) input, found {len(inputs)}"
            )
        if len(self.g.output) != 1:
            raise CompileError(
                f"the model must have exactly one output, found {len(self.g.output)}"
            )
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) not in (2, 4) or any(d is None or d <= 0 for d in dims[1:]):
            raise CompileError(
                f"input {inputs[0].name!r} must be [N, C, H, W] or [N, F] with fixed C, H, W / F; "
                f"got {dims}"
            )
        shape: tuple[int, ...] = tuple(int(d or 0) for d in dims[1:])
        in_shape3 = shape if len(shape) == 3 else (1, 1, shape[0])
        cur = inputs[0].name
        out_name = self.g.output[0].name
        producers = {o: n for n in self.g.node for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        final_act = "none"
        last = producers.get(out_name)
        skip: set[int] = set()
        if last is not None and last.op_type in ("Sigmoid", "Softmax"):
            final_act = last.op_type.lower()
            if last.op_type == "Softmax":
                axis = _attrs(last).get("axis", -1)
                if axis not in (-1, 1):
                    raise _err(last, "Softmax must be over the last (class) axis")
            skip.add(id(last))
            out_name = last.input[0]
        for node in self.g.node:
            if id(node) in skip:
                continue
            if node.op_type == "Constant":
                a = _attrs(node)
                if "value" not in a:
                    raise _err(node, "only tensor-valued Constant nodes are supported")
                self.consts[node.output[0]] = numpy_helper.to_array(a["value"])
                continue
            data = [i for i in node.input if i and i not in self.consts]
            if not data:
                raise _err(
                    node, "constant sub-graphs are not supported; fold them (onnx-simplifier)"
                )
            if any(d != cur for d in data):
                raise _err(
                    node,
                    "the graph branches (this node reads a tensor other than the running one); "
                    "only single-path networks are supported",
                )
            # SiLU written as x * Sigmoid(x)
            if node.op_type == "Sigmoid":
                users = consumers.get(node.output[0], [])
                if (len(users) == 1 and users[0].op_type == "Mul"
                        and set(users[0].input) == {cur, node.output[0]}):
                    self.activation(node, "SiLU", shape)
                    skip.add(id(users[0]))
                    cur = users[0].output[0]
                    continue
            shape = self.lower(node, cur, shape, in_shape3)
            cur = node.output[0]
        if cur != out_name:
            raise CompileError(f"the graph output {out_name!r} is not produced by the main path")
        n_out = int(np.prod(shape))
        if self.packing is None:
            self.packing = InputPacking("flat", in_shape3)
        return self.ops, self.packing, n_out, final_act

    def activation(self, node: onnx.NodeProto, kind: str, shape: tuple[int, ...]) -> None:
        if self.approx_range is None:
            raise _err(
                node,
                f"{kind} is not a polynomial; retrain with x*x activations or enable the "
                "polynomial approximation with a declared input range (--approx-range LO HI)",
            )
        lo, hi = self.approx_range
        a2, a1, a0 = fit_quadratic(kind, lo, hi)
        self.notes.append(
            f"{node.name or node.output[0]}: {kind} ~ {a2:.4g} x^2 + {a1:.4g} x + {a0:.4g} "
            f"on [{lo}, {hi}]"
        )
        self.quad(a2, a1, a0, int(np.prod(shape)))

    def lower(self, node: onnx.NodeProto, cur: str, shape: _Shape, in3: _Shape) -> _Shape:
        """Lower one node on the running path with its handler; return the new tensor shape."""
        handler = _CKKS_LOWERING.get(node.op_type)
        if handler is None:
            raise _all_unsupported(self.g, node)
        at = _At(
            node,
            _attrs(node),
            [self.consts[i] for i in node.input if i in self.consts],
            cur,
            shape,
            in3,
        )
        return handler(self, at)

    def check_size(self, node: onnx.NodeProto, m: int, n: int) -> None:
        if m > _MAX_DIM or n > _MAX_DIM:
            raise _err(node, f"a {m}x{n} linear map exceeds {_MAX_DIM} values per image; "
                       "reduce the layer size or move it into a public prefix network")


# --- one handler per ONNX op ---------------------------------------------------------------------
# A handler lowers one node of the running path for the CKKS engine: it appends affine maps and
# squares to the compiler (``c.lin``/``c.diag``/``c.quad``/``c.activation``) and returns the shape
# of the tensor it produces (without the batch axis), or raises ``at.err(...)`` saying what to do.
# Another engine (Cheetah 2PC) adds a table of its own next to ``_CKKS_LOWERING``.


@dataclass(frozen=True)
class _At:
    """One ONNX node at its place on the running path: everything a handler reads."""

    node: onnx.NodeProto
    attrs: dict[str, Any]
    consts: list[np.ndarray]  # its constant inputs (initializers, Constant nodes), in order
    cur: str  # name of the running (encrypted) tensor
    shape: _Shape  # the running tensor's shape without the batch axis
    in3: _Shape  # the model input as [C, H, W]

    @property
    def size(self) -> int:
        """Values per image in the running tensor."""
        return int(np.prod(self.shape))

    def err(self, what: str) -> CompileError:
        """A CompileError naming this node and its op type."""
        return _err(self.node, what)


_Handler = Callable[["_Compiler", _At], _Shape]

_UNSUPPORTED_HINTS = {
    "MaxPool": "replace it by AveragePool",
    "Softmax": "a Softmax is only supported as the final node (applied by the hospital)",
    "Concat": "only single-path networks are supported",
}
_SUPPORTED = (
    "supported: Conv, Gemm, MatMul, Add, Sub, Mul, Div, BatchNormalization, "
    "AveragePool, GlobalAveragePool, Flatten, Reshape, Mul(x,x), Pow(x,2), and "
    "Relu/Sigmoid/Tanh/SiLU with --approx-range"
)


def _unsupported(node: onnx.NodeProto) -> CompileError:
    """The error for an op type (or form of one) no handler lowers, with what to do instead."""
    return _err(node, f"unsupported operation; {_UNSUPPORTED_HINTS.get(node.op_type, _SUPPORTED)}")


_WALKED = frozenset({"Constant", "Softmax"})
"""Op types the walk itself handles (not in the lowering table)."""


def _all_unsupported(graph: onnx.GraphProto, first: onnx.NodeProto) -> CompileError:
    """The error for the first op type no handler lowers, naming every other such node of the
    graph too: an admin fixing a model should not learn of them one compile at a time."""
    others = [
        n for n in graph.node
        if n.op_type not in _CKKS_LOWERING and n.op_type not in _WALKED and n is not first
    ]
    if not others:
        return _unsupported(first)
    nodes = [first, *others]
    lines = "; ".join(
        f"node {n.name or (n.output[0] if n.output else '?')!r} ({n.op_type})" for n in nodes
    )
    hints = dict.fromkeys(_UNSUPPORTED_HINTS.get(n.op_type, _SUPPORTED) for n in nodes)
    name = first.name or (first.output[0] if first.output else "?")
    return CompileError(
        f"{len(nodes)} unsupported operations: {lines}; {'; '.join(hints)}",
        node=name,
        op_type=first.op_type,
    )


def _lower_identity(c: _Compiler, at: _At) -> _Shape:
    """Identity, Dropout (inference mode): nothing to compute."""
    return at.shape


def _lower_flatten(c: _Compiler, at: _At) -> _Shape:
    """Flatten: the packed vector is already flat; only the batch axis may stay apart."""
    if at.attrs.get("axis", 1) != 1:
        raise at.err("Flatten must keep the batch axis (axis=1)")
    return (at.size,)


def _lower_reshape(c: _Compiler, at: _At) -> _Shape:
    """Reshape to a constant target that keeps the batch axis first; no values move."""
    target = [int(v) for v in np.asarray(at.consts[0]).reshape(-1)]
    if not target or target[0] not in (0, -1, 1) or (target[0] == -1 and -1 in target[1:]):
        raise at.err(f"reshape to {target} must keep the batch axis first")
    rest = target[1:]
    if -1 in rest:
        known = int(np.prod([r for r in rest if r != -1])) or 1
        rest = [at.size // known if r == -1 else r for r in rest]
    if int(np.prod(rest)) != at.size:
        raise at.err(f"cannot reshape {list(at.shape)} to {rest}")
    return tuple(rest)


def _lower_conv(c: _Compiler, at: _At) -> _Shape:
    """Conv (2-D, grouped): on the model input it becomes the im2col packing and a few-diagonal
    matrix; anywhere else one dense matrix on the natural [C, H, W] layout."""
    w = np.asarray(at.consts[0], dtype=np.float64)
    if w.ndim != 4:
        raise at.err("only 2-D convolutions are supported")
    group = int(at.attrs.get("group", 1))
    shape = at.shape
    if len(shape) != 3 or shape[0] != w.shape[1] * group:
        raise at.err(f"weights {list(w.shape)} do not match input {list(shape)}")
    pk = _spatial(at.node, shape, (int(w.shape[2]), int(w.shape[3])))
    bias = (np.asarray(at.consts[1], dtype=np.float64) if len(at.consts) > 1
            else np.zeros(w.shape[0]))
    oh, ow = pk.out_hw
    out = (int(w.shape[0]), oh, ow)
    b_nat = np.repeat(bias, oh * ow)
    if not c.ops and c.packing is None and shape == tuple(at.in3):
        if pk.raw_length > _MAX_DIM:
            raise at.err(f"im2col input of {pk.raw_length} values exceeds {_MAX_DIM}; "
                         "downscale the input or use a public prefix network")
        c.packing = pk
        mat, sel = _conv_im2col(w, group, pk)
        c.lin(mat, sel.T @ b_nat, "pad")
        c.lin(sel, np.zeros(sel.shape[0]), "sel")
    else:
        c.check_size(at.node, int(np.prod(out)), at.size)
        c.lin(_conv_natural(w, group, shape, pk), b_nat)
    return out


def _dense_weight(at: _At) -> np.ndarray:
    """The constant weight of a Gemm/MatMul whose first (A) input is the flat running tensor."""
    if len(at.shape) != 1:
        raise at.err(f"expects a flattened [N, F] input, got [N, {at.shape}]; add Flatten")
    if at.node.input[0] != at.cur:
        raise at.err("the running tensor must be the first (A) input")
    return np.asarray(at.consts[0], dtype=np.float64)


def _emit_dense(c: _Compiler, at: _At, mat: np.ndarray, bias: np.ndarray) -> _Shape:
    """Append ``y = mat x + bias`` after checking it fits the running tensor and the ring."""
    if mat.shape[1] != at.size:
        raise at.err(f"weight has {mat.shape[1]} inputs but the tensor has {at.size}")
    c.check_size(at.node, mat.shape[0], at.size)
    c.lin(mat, bias)
    return (int(mat.shape[0]),)


def _lower_gemm(c: _Compiler, at: _At) -> _Shape:
    """Gemm: ``alpha * x B' + beta * C`` with B (optionally transposed) and C constant."""
    w = _dense_weight(at)
    a = at.attrs
    if a.get("transA", 0):
        raise at.err("transA=1 is not supported")
    mat = w if a.get("transB", 0) else w.T
    mat = mat * float(a.get("alpha", 1.0))
    bias = (np.zeros(mat.shape[0]) if len(at.consts) < 2 else
            float(a.get("beta", 1.0)) * np.broadcast_to(
                np.asarray(at.consts[1], dtype=np.float64).reshape(-1), (mat.shape[0],)))
    return _emit_dense(c, at, mat, bias)


def _lower_matmul(c: _Compiler, at: _At) -> _Shape:
    """MatMul: ``x W`` with W constant."""
    w = _dense_weight(at)
    return _emit_dense(c, at, w.T, np.zeros(w.shape[1]))


def _elementwise(at: _At) -> tuple[np.ndarray, bool] | None:
    """For Add/Sub/Mul/Div: (the constant broadcast to the running tensor, whether the tensor
    is the first operand), or ``None`` when both operands are the running tensor."""
    if len(at.node.input) != 2:
        raise _unsupported(at.node)
    if at.node.input[0] == at.cur and at.node.input[1] == at.cur:
        return None
    return _broadcast_const(at.node, at.consts[0], at.shape), at.node.input[0] == at.cur


def _const_operand(at: _At) -> tuple[np.ndarray, bool]:
    """:func:`_elementwise` for Sub and Div, where ``x - x`` and ``x / x`` are refused."""
    operand = _elementwise(at)
    if operand is None:
        raise at.err("x-x / x/x is degenerate; remove the node")
    return operand


def _lower_add(c: _Compiler, at: _At) -> _Shape:
    """Add a constant (a bias), or ``x + x`` (a scale by 2)."""
    operand = _elementwise(at)
    if operand is None:
        c.diag(np.full(at.size, 2.0), np.zeros(at.size))
    else:
        c.diag(np.ones(at.size), operand[0])
    return at.shape


def _lower_sub(c: _Compiler, at: _At) -> _Shape:
    """``x - k`` or ``k - x`` with a constant ``k``."""
    k, first = _const_operand(at)
    c.diag(np.full(at.size, 1.0 if first else -1.0), -k if first else k)
    return at.shape


def _lower_mul(c: _Compiler, at: _At) -> _Shape:
    """Multiply by a constant (a diagonal map), or ``x * x`` (a square: one CKKS level)."""
    operand = _elementwise(at)
    if operand is None:
        c.quad(1.0, 0.0, 0.0, at.size)
    else:
        c.diag(operand[0], np.zeros(at.size))
    return at.shape


def _lower_div(c: _Compiler, at: _At) -> _Shape:
    """Divide by a constant; dividing by the encrypted tensor has no CKKS form."""
    k, first = _const_operand(at)
    if not first:
        raise at.err("division by the encrypted tensor is not possible under CKKS")
    c.diag(1.0 / k, np.zeros(at.size))
    return at.shape


def _lower_pow(c: _Compiler, at: _At) -> _Shape:
    """Pow with a constant exponent of 2 (a square) or 1 (nothing)."""
    e = np.asarray(at.consts[0]).reshape(-1)
    if e.size != 1 or float(e[0]) not in (1.0, 2.0):
        raise at.err("only Pow(x, 2) is supported; use x*x or a polynomial")
    if float(e[0]) == 2.0:
        c.quad(1.0, 0.0, 0.0, at.size)
    return at.shape


def _lower_neg(c: _Compiler, at: _At) -> _Shape:
    """Neg: a diagonal of -1."""
    c.diag(np.full(at.size, -1.0), np.zeros(at.size))
    return at.shape


def _lower_batchnorm(c: _Compiler, at: _At) -> _Shape:
    """BatchNormalization (inference): a per-channel scale and shift."""
    if len(at.shape) < 1:
        raise at.err("needs a channel axis")
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in at.consts[:4])
    eps = float(at.attrs.get("epsilon", 1e-5))
    sc = gamma / np.sqrt(var + eps)
    sh = beta - mean * sc
    per = at.size // at.shape[0]
    c.diag(np.repeat(sc, per), np.repeat(sh, per))
    return at.shape


def _chw(at: _At) -> tuple[int, int, int]:
    """The running tensor as [C, H, W], or the error a pooling op gives without one."""
    if len(at.shape) != 3:
        raise at.err(f"expects [C, H, W], got {list(at.shape)}")
    ch, h, w = at.shape
    return ch, h, w


def _emit_pool(c: _Compiler, shape: tuple[int, int, int], pk: InputPacking,
               include_pad: bool) -> _Shape:
    """Append the averaging matrix of a pooling window ``pk`` and return the pooled shape."""
    mat, out = _pool_matrix(shape, pk, include_pad)
    c.lin(mat, np.zeros(mat.shape[0]))
    return out


def _lower_average_pool(c: _Compiler, at: _At) -> _Shape:
    """AveragePool (2-D, undilated): a fixed averaging matrix."""
    shape = _chw(at)
    ks = at.attrs.get("kernel_shape")
    assert isinstance(ks, list)
    pk = _spatial(at.node, shape, (int(ks[0]), int(ks[1])))
    if pk.dilation != (1, 1):
        raise at.err("dilated pooling is not supported")
    return _emit_pool(c, shape, pk, bool(at.attrs.get("count_include_pad", 0)))


def _lower_global_average_pool(c: _Compiler, at: _At) -> _Shape:
    """GlobalAveragePool: the mean of each channel."""
    shape = _chw(at)
    pk = InputPacking("im2col", shape, (shape[1], shape[2]))
    return _emit_pool(c, shape, pk, False)


def _lower_activation(c: _Compiler, at: _At) -> _Shape:
    """Relu, Sigmoid, Tanh: a quadratic fit on the declared input range (opt-in)."""
    c.activation(at.node, at.node.op_type, at.shape)
    return at.shape


_CKKS_LOWERING: Mapping[str, _Handler] = {
    "Identity": _lower_identity,
    "Dropout": _lower_identity,
    "Flatten": _lower_flatten,
    "Reshape": _lower_reshape,
    "Conv": _lower_conv,
    "Gemm": _lower_gemm,
    "MatMul": _lower_matmul,
    "Add": _lower_add,
    "Sub": _lower_sub,
    "Mul": _lower_mul,
    "Div": _lower_div,
    "Pow": _lower_pow,
    "Neg": _lower_neg,
    "BatchNormalization": _lower_batchnorm,
    "AveragePool": _lower_average_pool,
    "GlobalAveragePool": _lower_global_average_pool,
    "Relu": _lower_activation,
    "Sigmoid": _lower_activation,
    "Tanh": _lower_activation,
}
"""How the CKKS engine lowers each ONNX op type it supports; any other raises ``_unsupported``.
(Constant nodes, a final Sigmoid/Softmax and the SiLU pattern are handled by the walk itself.)"""


def _compose(ops: list[_Lin]) -> tuple[np.ndarray, np.ndarray]:
    m, b = ops[0].m, ops[0].b
    for o in ops[1:]:
        m, b = o.m @ m, o.m @ b + o.b
    return m, b


def _is_diag(m: np.ndarray) -> bool:
    return m.shape[0] == m.shape[1] and not np.any(m - np.diag(np.diag(m)))


def _fold(ops: list[_Op]) -> list[Stage]:
    """Group consecutive affine ops into stages; keep the im2col conv's padded output if it
    is followed (after squares) by another affine stage."""
    groups: list[list[_Lin] | _Sq] = []
    for op in ops:
        if isinstance(op, _Sq):
            groups.append(op)
        elif groups and isinstance(groups[-1], list):
            groups[-1].append(op)
        else:
            groups.append([op])
    stages: list[Stage] = []
    carry: np.ndarray | None = None  # selection to apply on the next affine stage's input
    for gi, grp in enumerate(groups):
        if isinstance(grp, _Sq):
            stages.append(SquareStage())
            continue
        if grp[0].kind == "pad" and any(isinstance(g, list) for g in groups[gi + 1:]):
            sel = grp[1].m
            rest = grp[2:]
            r_m, r_b = _compose(rest) if rest else (np.eye(sel.shape[0]), np.zeros(sel.shape[0]))
            if _is_diag(r_m):
                dp = sel.T @ np.diag(r_m)
                m = dp[:, None] * grp[0].m
                b = dp * grp[0].b + sel.T @ r_b
                stages.append(LinearStage(m, b, "conv(im2col)"))
                carry = sel
                continue
        m, b = _compose(grp)
        if carry is not None:
            m = m @ carry
            carry = None
        if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])) and not b.any():
            continue
        stages.append(LinearStage(m, b, "affine"))
    return stages


def _signed_square_sum(stages: list[Stage]) -> list[Stage]:
    """Rewrite a final ``Linear(A) -> Square -> Linear(1 x m)`` as complex ``Linear -> Square ->
    Reduce``.

    Saves one CKKS level (more precision for the same ring, or a smaller ring).
    """
    if (
        len(stages) < 3
        or not isinstance(stages[-1], LinearStage)
        or not isinstance(stages[-2], SquareStage)
        or not isinstance(stages[-3], LinearStage)
        or stages[-1].weight.shape[0] != 1
        or np.iscomplexobj(stages[-3].weight)
    ):
        return stages
    a, last = stages[-3], stages[-1]
    assert isinstance(a, LinearStage)
    w = last.weight[0]
    pos = np.flatnonzero(w > 0)
    neg = np.flatnonzero(w < 0)
    r = max(len(pos), len(neg), 1)
    wc = np.zeros((r, a.weight.shape[1]), dtype=np.complex128)
    bc = np.zeros(r, dtype=np.complex128)
    sp = np.sqrt(w[pos] / 2)
    sn = np.sqrt(-w[neg] / 2)
    wc[: len(pos)] += sp[:, None] * a.weight[pos]
    bc[: len(pos)] += sp * a.bias[pos]
    wc[: len(neg)] += 1j * sn[:, None] * a.weight[neg]
    bc[: len(neg)] += 1j * sn * a.bias[neg]
    new_a = LinearStage(wc, bc, a.name + "+signed-sqrt")
    return [*stages[:-3], new_a, SquareStage(), ReduceStage(new_a.out_dim, float(last.bias[0]))]


def compile_onnx(
    model: onnx.ModelProto | str | Path,
    name: str = "model",
    version: str = "0",
    approx_range: tuple[float, float] | None = None,
) -> Plan:
    """Compile an ONNX model to an HE :class:`Plan` (raises :class:`CompileError`)."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as exc:
            raise CompileError(f"cannot read ONNX model: {exc}") from None
    c = _Compiler(model, approx_range)
    ops, packing, n_out, final_act = c.run()
    stages = _signed_square_sum(_fold(ops))
    if not stages:
        raise CompileError("the model has no operations to evaluate")
    if isinstance(stages[0], LinearStage) and stages[0].weight.shape[1] > packing.length:
        raise CompileError("internal: first stage wider than the packed input")
    if isinstance(stages[0], SquareStage) and packing.kind == "im2col":
        raise CompileError("internal: im2col packing without a conv stage")
    for s in stages:
        if isinstance(s, LinearStage) and max(s.out_dim, s.in_dim) > _MAX_DIM:
            raise CompileError(f"a {s.weight.shape} stage exceeds {_MAX_DIM} values per image")
    _ = next_pow2
    return Plan(name, version, packing, stages, n_out, final_act, c.notes)
