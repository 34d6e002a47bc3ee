"""ONNX -> JAX: one small function per ONNX op, for SPU's two-party (Cheetah) engine.

Why a table of our own rather than a converter: the one maintained-looking bridge,
``jaxonnxruntime`` 0.3.0, is stale (it lacked ``Relu`` for opset 13, wanted a fixed batch,
needs ``absl-py``, and its handlers emit JAX forms that SPU cannot run, e.g. grouped
convolutions and ``-inf``-initialised windows). What SPU runs well is a narrow subset of
``jax.numpy``/``jax.lax``, so each handler here is written *for SPU*:

- ``Conv`` with ``group > 1`` is split into one convolution per group and concatenated (SPU
  refuses ``feature_group_count`` > 1: it lowers to a convolution with three spatial dims).
- ``MaxPool`` pads by replicating the edge (exact for max, since an ONNX pad is smaller than
  the kernel) and takes the maximum of strided slices, so no ``-inf`` constant ever meets the
  fixed-point ring.
- ``AveragePool``, ``Resize`` and ``GlobalAveragePool`` divide or interpolate by *public*
  constants (per-position counts, interpolation weights), so no secret division is needed.

Every handler gets the node (attributes, opset) and its inputs. An input is either a traced JAX
value (secret inside SPU: the image, the vendor's weights and everything computed from them) or
a numpy array (a public constant of the architecture: a Reshape shape, Pad pads, Resize scales,
Clip bounds). A node whose inputs are all public is evaluated in the clear by ONNX's own
reference evaluator (shape arithmetic in PyTorch exports), never by these handlers.

``CHECKS`` holds, per op, a static check of the attributes a handler supports; the translator
runs every check before tracing, so a model is refused with *all* of its unsupported nodes named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHECKS", "OPS", "Node", "OpError"]

Value = Any  # a jax array (traced, secret in SPU) or a numpy array (public constant)


class OpError(ValueError):
    """A node cannot be translated (the translator turns it into a CompileError naming it)."""


@dataclass(frozen=True)
class Node:
    """What a handler needs of an ONNX node: its name, op type, attributes and opset."""

    name: str
    op_type: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    n_inputs: int = 1

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


Handler = Callable[[Node, Sequence[Value]], Sequence[Value]]
Check = Callable[[Node], "str | None"]


def _public(v: Value | None, what: str) -> np.ndarray:
    """A constant input the handler needs concretely (it must be part of the architecture)."""
    if v is None:
        raise OpError(f"{what} is missing")
    if isinstance(v, np.ndarray):
        return v
    raise OpError(f"{what} must be a public constant of the architecture, not computed at run time")


def _ints(v: Value | None, what: str) -> list[int]:
    return [int(i) for i in _public(v, what).reshape(-1)]


# --------------------------------------------------------------------------- windows and padding


def _spatial_pads(node: Node, in_sp: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(low, high) padding per spatial axis from ``pads`` or ``auto_pad`` (ONNX rules)."""
    n = len(in_sp)
    auto = node.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(n):
            out = -(-in_sp[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i])
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return pads
    if auto == "VALID":
        return [(0, 0)] * n
    p = list(node.attr("pads", [0] * (2 * n)))
    return [(int(p[i]), int(p[i + n])) for i in range(n)]


def _out_size(size: int, lo: int, hi: int, k: int, s: int, d: int, ceil: bool) -> int:
    span = size + lo + hi - ((k - 1) * d + 1)
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + lo:  # the last window would start inside the right padding
        out -= 1
    return out


def _windows(x: Value, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
             out_sp: Sequence[int]) -> list[Value]:
    """Every kernel offset's strided slice of an already padded NC... tensor."""
    n = len(kernel)
    slices: list[Value] = []
    for offset in np.ndindex(*kernel):
        idx: list[slice] = [slice(None), slice(None)]
        for i in range(n):
            start = offset[i] * dilations[i]
            idx.append(slice(start, start + (out_sp[i] - 1) * strides[i] + 1, strides[i]))
        slices.append(x[tuple(idx)])
    return slices


@dataclass(frozen=True)
class _PoolGeom:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[tuple[int, int]]  # including the extra high padding ceil_mode needs
    declared: list[tuple[int, int]]
    out: list[int]


def _pool_geom(node: Node, shape: Sequence[int]) -> _PoolGeom:
    kernel = [int(k) for k in node.attr("kernel_shape")]
    n = len(kernel)
    in_sp = list(shape[2:])
    strides = [int(s) for s in node.attr("strides", [1] * n)]
    dilations = [int(d) for d in node.attr("dilations", [1] * n)]
    declared = _spatial_pads(node, in_sp, kernel, strides, dilations)
    ceil = bool(node.attr("ceil_mode", 0))
    out, pads = [], []
    for i in range(n):
        lo, hi = declared[i]
        o = _out_size(in_sp[i], lo, hi, kernel[i], strides[i], dilations[i], ceil)
        need = (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        out.append(o)
        pads.append((lo, max(hi, need - in_sp[i] - lo)))
    return _PoolGeom(kernel, strides, dilations, pads, declared, out)


# --------------------------------------------------------------------------------------- handlers


def _conv(node: Node, xs: Sequence[Value]) -> list[Value]:
    x, w, b = xs[0], xs[1], xs[2] if len(xs) > 2 else None
    kernel = list(w.shape[2:])
    n = len(kernel)
    strides = [int(s) for s in node.attr("strides", [1] * n)]
    dilations = [int(d) for d in node.attr("dilations", [1] * n)]
    pads = _spatial_pads(node, list(x.shape[2:]), kernel, strides, dilations)
    group = int(node.attr("group", 1))
    sp = "DHW"[3 - n:] if n <= 3 else None
    if sp is None:
        raise OpError("only 1-3 spatial dimensions")
    dn = ("NC" + sp, "OI" + sp, "NC" + sp)

    def one(xi: Value, wi: Value) -> Value:
        return jax.lax.conv_general_dilated(
            xi, wi, window_strides=strides, padding=pads, rhs_dilation=dilations,
            dimension_numbers=dn,
        )

    if group == 1:
        y = one(x, w)
    else:
        cin, cout = x.shape[1] // group, w.shape[0] // group
        y = jnp.concatenate(
            [one(x[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout]) for g in range(group)],
            axis=1,
        )
    if b is not None:
        y = y + jnp.reshape(b, (1, -1) + (1,) * n)
    return [y]


def _check_conv(node: Node) -> str | None:
    if node.n_inputs < 2:
        return "Conv needs a weight input"
    return None


def _gemm(node: Node, xs: Sequence[Value]) -> list[Value]:
    a, b = xs[0], xs[1]
    c = xs[2] if len(xs) > 2 else None
    if node.attr("transA", 0):
        a = jnp.transpose(a)
    if node.attr("transB", 0):
        b = jnp.transpose(b)
    y = jnp.matmul(a, b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return [y]


def _matmul(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [jnp.matmul(xs[0], xs[1])]


def _relu(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [jnp.maximum(xs[0], 0.0)]


def _leaky_relu(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    alpha = float(node.attr("alpha", 0.01))
    return [jnp.where(x > 0, x, x * alpha)]


def _clip(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = float(_public(xs[1], "Clip min")) if len(xs) > 1 and xs[1] is not None else None
        hi = float(_public(xs[2], "Clip max")) if len(xs) > 2 and xs[2] is not None else None
    if lo is not None:
        x = jnp.maximum(x, float(lo))
    if hi is not None:
        x = jnp.minimum(x, float(hi))
    return [x]


def _sigmoid(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [jax.nn.sigmoid(xs[0])]


def _tanh(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [jnp.tanh(xs[0])]


def _softmax(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    if node.opset >= 13:
        return [jax.nn.softmax(x, axis=int(node.attr("axis", -1)))]
    axis = int(node.attr("axis", 1)) % x.ndim  # opset < 13: coerced to 2-D at `axis`
    flat = jnp.reshape(x, (math.prod(x.shape[:axis]), -1))
    return [jnp.reshape(jax.nn.softmax(flat, axis=-1), x.shape)]


def _max_pool(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    g = _pool_geom(node, x.shape)
    widths = [(0, 0), (0, 0), *g.pads]
    if all(d == 1 or lo == hi == 0 for d, (lo, hi) in zip(g.dilations, g.pads, strict=False)):
        # Edge replication is exact for max: a padded position copies a value of its window.
        x = jnp.pad(x, widths, mode="edge")
    else:
        # Dilated windows may skip the copied edge; pad with the tensor's minimum instead
        # (exact too: every window holds a real value, and no -inf enters the ring).
        x = jnp.pad(x, widths, mode="constant", constant_values=jnp.min(x))
    out = None
    for s in _windows(x, g.kernel, g.strides, g.dilations, g.out):
        out = s if out is None else jnp.maximum(out, s)
    return [out]


def _check_max_pool(node: Node) -> str | None:
    if node.attr("kernel_shape") is None:
        return "MaxPool without kernel_shape"
    if node.attr("storage_order", 0):
        return "MaxPool storage_order=1 is not supported"
    return None


def _avg_pool(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    g = _pool_geom(node, x.shape)
    widths = [(0, 0), (0, 0), *g.pads]
    xp = jnp.pad(x, widths)
    total: Value = None
    for s in _windows(xp, g.kernel, g.strides, g.dilations, g.out):
        total = s if total is None else total + s
    # Per-position divisor, public: the same window sums over a mask of counted positions.
    in_sp = list(x.shape[2:])
    if node.attr("count_include_pad", 0):
        mask = np.zeros([1, 1] + [n + lo + hi for n, (lo, hi) in zip(in_sp, g.pads, strict=True)])
        inner = tuple([0, 0] + [slice(0, n + lo + hi)
                                for n, (lo, hi) in zip(in_sp, g.declared, strict=True)])
        mask[inner] = 1.0  # declared pads count, ceil_mode's extra high padding does not
    else:
        mask = np.pad(np.ones([1, 1, *in_sp]), widths)
    counts = sum(_windows(mask, g.kernel, g.strides, g.dilations, g.out))
    return [total * (1.0 / np.asarray(counts, dtype=np.float64)).astype(np.float32)]


def _global_avg_pool(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    axes = tuple(range(2, x.ndim))
    return [jnp.sum(x, axis=axes, keepdims=True) * np.float32(1.0 / math.prod(x.shape[2:]))]


def _global_max_pool(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    return [jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def _binary(fn: Callable[[Value, Value], Value]) -> Handler:
    def handler(node: Node, xs: Sequence[Value]) -> list[Value]:
        return [fn(xs[0], xs[1])]
    return handler


def _div(node: Node, xs: Sequence[Value]) -> list[Value]:
    a, b = xs[0], xs[1]
    if isinstance(b, np.ndarray):  # a public divisor: multiply by its reciprocal
        return [a * (1.0 / b.astype(np.float64)).astype(np.float32)]
    return [a / b]


def _concat(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [jnp.concatenate([x for x in xs if x is not None], axis=int(node.attr("axis")))]


def _flatten(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    axis = int(node.attr("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return [jnp.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))]


def _reshape(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    shape = _ints(xs[1], "Reshape shape")
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [jnp.reshape(x, shape)]


def _transpose(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    perm = node.attr("perm")
    return [jnp.transpose(x, None if perm is None else [int(p) for p in perm])]


def _axes(node: Node, xs: Sequence[Value], ndim: int) -> list[int] | None:
    if node.opset < 13 or len(xs) < 2 or xs[1] is None:
        axes = node.attr("axes")
        return None if axes is None else [int(a) % ndim for a in axes]
    return [a % ndim for a in _ints(xs[1], f"{node.op_type} axes")]


def _squeeze(node: Node, xs: Sequence[Value]) -> list[Value]:
    axes = _axes(node, xs, xs[0].ndim)
    return [jnp.squeeze(xs[0], axis=None if axes is None else tuple(axes))]


def _unsqueeze(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    if node.opset < 13:
        raw = [int(a) for a in node.attr("axes")]
    else:
        raw = _ints(xs[1], "Unsqueeze axes")
    out_ndim = x.ndim + len(raw)
    axes = sorted(a % out_ndim for a in raw)
    for a in axes:
        x = jnp.expand_dims(x, a)
    return [x]


def _identity(node: Node, xs: Sequence[Value]) -> list[Value]:
    return [xs[0]]


def _pad(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    mode = node.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if node.opset < 11:
        pads = [int(p) for p in node.attr("pads")]
        value = float(node.attr("value", 0.0))
        axes = list(range(x.ndim))
    else:
        pads = _ints(xs[1], "Pad pads")
        value = float(_public(xs[2], "Pad constant_value").reshape(-1)[0]) \
            if len(xs) > 2 and xs[2] is not None else 0.0
        axes = [a % x.ndim for a in _ints(xs[3], "Pad axes")] \
            if len(xs) > 3 and xs[3] is not None else list(range(x.ndim))
    k = len(axes)
    widths = [(0, 0)] * x.ndim
    for j, a in enumerate(axes):
        widths[a] = (pads[j], pads[j + k])
    # Negative pads crop; positive ones pad.
    crop = tuple(slice(max(0, -lo), x.shape[i] - max(0, -hi)) for i, (lo, hi) in enumerate(widths))
    x = x[crop]
    grow = [(max(0, lo), max(0, hi)) for lo, hi in widths]
    if mode == "constant":
        return [jnp.pad(x, grow, mode="constant", constant_values=value)]
    if mode in ("reflect", "edge"):
        return [jnp.pad(x, grow, mode=mode)]
    if mode == "wrap":
        return [jnp.pad(x, grow, mode="wrap")]
    raise OpError(f"Pad mode {mode!r} is not supported")


def _check_pad(node: Node) -> str | None:
    mode = node.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {mode!r} is not supported"
    return None


def _text(node: Node, key: str, default: str) -> str:
    v = node.attr(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _resize_source(node: Node, out: int, size: int, scale: float) -> np.ndarray:
    """Source coordinate of every output position along one axis (ONNX Resize formulas)."""
    x = np.arange(out, dtype=np.float64)
    mode = _text(node, "coordinate_transformation_mode",
                 "half_pixel" if node.opset >= 11 else "asymmetric")
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = out / (size * scale)
        center = size / 2.0
        offset = center * (1 - adj)
        return offset + (x + 0.5) / scale - 0.5
    raise OpError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest(node: Node, src: np.ndarray) -> np.ndarray:
    mode = _text(node, "nearest_mode", "round_prefer_floor")
    if node.opset < 11:
        mode = "floor"
    if mode == "round_prefer_floor":
        return np.ceil(src - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(src + 0.5)
    if mode == "floor":
        return np.floor(src)
    if mode == "ceil":
        return np.ceil(src)
    raise OpError(f"Resize nearest_mode {mode!r} is not supported")


def _resize(node: Node, xs: Sequence[Value]) -> list[Value]:
    x = xs[0]
    nd = x.ndim
    if node.opset < 11:
        scales = [float(s) for s in _public(xs[1], "Resize scales").reshape(-1)]
        sizes = None
    else:
        s_in = xs[2] if len(xs) > 2 else None
        z_in = xs[3] if len(xs) > 3 else None
        scales_a = _public(s_in, "Resize scales") if s_in is not None else None
        if scales_a is not None and scales_a.size:
            scales, sizes = [float(s) for s in scales_a.reshape(-1)], None
        else:
            sizes = _ints(z_in, "Resize sizes")
            scales = [sizes[i] / x.shape[i] for i in range(nd)]
    axes = node.attr("axes")
    if axes is not None:  # opset 18: scales/sizes only for the listed axes
        full_s, full_z = [1.0] * nd, list(x.shape)
        for j, a in enumerate(int(a) % nd for a in axes):
            full_s[a] = scales[j]
            if sizes is not None:
                full_z[a] = sizes[j]
        scales, sizes = full_s, (full_z if sizes is not None else None)
    outs = sizes if sizes is not None else [
        math.floor(x.shape[i] * scales[i]) for i in range(nd)]
    mode = _text(node, "mode", "nearest")
    for axis in range(nd):
        size, out = x.shape[axis], outs[axis]
        if out == size and scales[axis] == 1.0:
            continue
        src = _resize_source(node, out, size, scales[axis])
        if mode == "nearest":
            idx = np.clip(_nearest(node, src), 0, size - 1).astype(np.int32)
            x = jnp.take(x, idx, axis=axis)
        else:  # linear, separable: two gathers and public weights per axis
            src = np.clip(src, 0, size - 1)
            i0 = np.floor(src).astype(np.int32)
            i1 = np.minimum(i0 + 1, size - 1)
            w1 = (src - i0).astype(np.float32)
            shape = [1] * nd
            shape[axis] = out
            w1r = w1.reshape(shape)
            x = jnp.take(x, i0, axis=axis) * (1.0 - w1r) + jnp.take(x, i1, axis=axis) * w1r
    return [x]


def _check_resize(node: Node) -> str | None:
    mode = _text(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} is not supported (nearest and linear are)"
    if node.attr("antialias", 0):
        return "Resize antialias=1 is not supported"
    if _text(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize keep_aspect_ratio_policy other than 'stretch' is not supported"
    ctm = _text(node, "coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_crop_and_resize":
        return "Resize coordinate_transformation_mode 'tf_crop_and_resize' is not supported"
    return None


def _batch_norm(node: Node, xs: Sequence[Value]) -> list[Value]:
    """Only reached when the BN could not be folded (the vendor's split folds it)."""
    x, gamma, beta, mean, var = xs[:5]
    eps = float(node.attr("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = gamma * jax.lax.rsqrt(var + eps)
    return [(x - jnp.reshape(mean, shape)) * jnp.reshape(scale, shape) + jnp.reshape(beta, shape)]


def _check_batch_norm(node: Node) -> str | None:
    if node.attr("training_mode", 0):
        return "BatchNormalization in training mode is not supported"
    return None


OPS: dict[str, Handler] = {
    "Add": _binary(lambda a, b: a + b),
    "AveragePool": _avg_pool,
    "BatchNormalization": _batch_norm,
    "Clip": _clip,
    "Concat": _concat,
    "Conv": _conv,
    "Div": _div,
    "Dropout": _identity,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "GlobalAveragePool": _global_avg_pool,
    "GlobalMaxPool": _global_max_pool,
    "Identity": _identity,
    "LeakyRelu": _leaky_relu,
    "MatMul": _matmul,
    "MaxPool": _max_pool,
    "Mul": _binary(lambda a, b: a * b),
    "Pad": _pad,
    "Relu": _relu,
    "Reshape": _reshape,
    "Resize": _resize,
    "Sigmoid": _sigmoid,
    "Softmax": _softmax,
    "Squeeze": _squeeze,
    "Sub": _binary(lambda a, b: a - b),
    "Tanh": _tanh,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
}

CHECKS: dict[str, Check] = {
    "BatchNormalization": _check_batch_norm,
    "Conv": _check_conv,
    "MaxPool": _check_max_pool,
    "Pad": _check_pad,
    "Resize": _check_resize,
}
