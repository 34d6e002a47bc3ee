"""The vendor's ONNX split into a public architecture and private weights.

Both parties must compile the same program, but only the vendor may hold the weights. So the
vendor's model is rewritten once, on the vendor side, into:

- **the architecture**: a valid ONNX model whose first graph input is the hospital's image and
  whose other graph inputs are the vendor's weights, *declared* (name, shape, dtype) but with no
  values. The batch dimension is bound to 1, ``Constant``/``Identity``/``Shape`` and every node
  whose inputs are all constants are folded, and ``BatchNormalization`` is folded into the
  preceding ``Conv``/``Gemm`` (or turned into a per-channel ``Mul``/``Add`` when there is none),
  since an unfolded batch norm costs a secret inverse square root per channel and, on a
  DenseNet-121, 88 s and 3.75 GB more. Doc strings, producer and metadata are cleared and the
  protobuf is serialized deterministically, so the bytes, and their SHA-256
  (``Program.description_sha256``), depend on the network only.
- **the weights**: ``name -> numpy array`` for those graph inputs, in argument order.

**Public constants.** An initializer used only where the op needs a value to know its output
*shape or geometry* (a ``Reshape`` shape, ``Pad`` pads and constant value, ``Resize``
roi/scales/sizes, ``Clip`` bounds, ``Squeeze``/``Unsqueeze``/``Slice`` axes) keeps its value in
the architecture: SPU compiles shapes statically, so both parties must know them. Those values
are therefore visible to the hospital (docs/threat-model.md). Every other initializer (conv and
dense weights, biases, folded batch-norm scales, constants of ``Add``/``Mul``/``Div``) is a
private weight. A tensor used in both roles gets a public copy for the shape role only.

The translation into JAX (:mod:`secure_infer.twopc.translate`) reads the architecture only, so
the hospital never needs, and never sees, a weight value. This module needs ``onnx`` only
(no JAX): the vendor can split a model without the ``2pc`` extra.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from secure_infer.errors import CompileError

__all__ = [
    "PUBLIC_INPUT_SLOTS",
    "SplitModel",
    "architecture_sha256",
    "evaluate_public",
    "load_architecture",
    "split_model",
]

#: op type -> input positions whose value fixes output shapes/geometry (public in the architecture)
PUBLIC_INPUT_SLOTS: dict[str, frozenset[int]] = {
    "Clip": frozenset({1, 2}),
    "ConstantOfShape": frozenset({0}),
    "Expand": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "ReduceMax": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Squeeze": frozenset({1}),
    "Tile": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Upsample": frozenset({1}),
}

_NOT_FOLDED = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                         "RandomUniformLike", "Multinomial", "Bernoulli"})
_PRODUCER = "blindread-twopc-architecture"


@dataclass(frozen=True)
class SplitModel:
    """A vendor model split into the public ``architecture`` bytes and the private ``weights``."""

    architecture: bytes
    weights: dict[str, np.ndarray]

    @property
    def sha256(self) -> str:
        return architecture_sha256(self.architecture)


def architecture_sha256(architecture: bytes) -> str:
    """The hash both parties compare (``Program.description_sha256``)."""
    return hashlib.sha256(architecture).hexdigest()


def evaluate_public(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None],
                    opset: int) -> list[np.ndarray]:
    """Evaluate one node on public numpy inputs with ONNX's reference evaluator.

    Used for constant folding (shape arithmetic of PyTorch exports: Shape, Gather, Concat, Cast,
    ...); ONNX's own implementation keeps every op's edge cases right without a table of ours.
    """
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    outs = [f"out{i}" for i in range(len(node.output))]
    one = helper.make_node(node.op_type, names, outs, domain=node.domain)
    one.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [one], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs, strict=False) if v is not None],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: v for n, v in zip(names, inputs, strict=False) if v is not None}
    try:
        result = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference evaluator raises many kinds
        raise CompileError(
            f"node {node.name!r} ({node.op_type}): cannot fold its constant inputs: "
            f"{type(exc).__name__}", node=node.name, op_type=node.op_type,
        ) from None
    return [np.asarray(r) for r in result]


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise CompileError("the model imports no default ONNX opset")


def _load(model: onnx.ModelProto | bytes | str | Path) -> onnx.ModelProto:
    try:
        if isinstance(model, onnx.ModelProto):
            out = onnx.ModelProto()
            out.CopyFrom(model)
            return out
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(str(model))
    except Exception as exc:  # protobuf decode errors, missing file
        raise CompileError(f"not a readable ONNX model: {type(exc).__name__}") from None


def _bind_batch(graph: onnx.GraphProto, batch: int) -> None:
    """Symbolic (or 0) leading dims become ``batch``; any other symbolic dim is refused."""
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if i != 0:
                raise CompileError(
                    f"input {vi.name!r}: dimension {i} is symbolic; only the batch dimension "
                    "may be (it is bound to 1)")
            d.Clear()
            d.dim_value = batch
    for vi in graph.output:
        vi.type.tensor_type.ClearField("shape")
    del graph.value_info[:]


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help for Shape folding only
        return {}
    out: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise CompileError(f"node {node.name!r} (Constant): unsupported value attribute",
                       node=node.name, op_type="Constant")


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fold(graph: onnx.GraphProto, opset: int, shapes: Mapping[str, tuple[int, ...]],
          consts: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """Fold Constant, Identity, static Shape and all-constant nodes; returns the kept nodes."""
    alias: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        ins = [alias.get(i, i) for i in node.input]
        if node.domain not in ("", "ai.onnx"):
            n = onnx.NodeProto()
            n.CopyFrom(node)
            del n.input[:]
            n.input.extend(ins)
            kept.append(n)
            continue
        op = node.op_type
        if op == "Constant":
            consts[node.output[0]] = _constant_value(node)
            continue
        live_outs = [o for o in node.output if o]
        if (op == "Identity" or (op == "Dropout" and len(live_outs) == 1)) \
                and node.output[0] not in outputs:
            alias[node.output[0]] = ins[0]
            continue
        if op == "Shape" and ins[0] in shapes and ins[0] not in consts:
            dims = shapes[ins[0]]
            start = int(_attr(node, "start", 0))  # type: ignore[call-overload]
            end = _attr(node, "end", None)
            consts[node.output[0]] = np.array(
                dims[start:None if end is None else int(end)], dtype=np.int64)  # type: ignore[call-overload]
            continue
        if op not in _NOT_FOLDED and ins and all(i == "" or i in consts for i in ins):
            values = evaluate_public(node, [consts[i] if i else None for i in ins], opset)
            for name, v in zip(node.output, values, strict=False):
                if name:
                    consts[name] = v
            continue
        n = onnx.NodeProto()
        n.CopyFrom(node)
        del n.input[:]
        n.input.extend(ins)
        kept.append(n)
    return kept


def _fold_batch_norm(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                     outputs: set[str], shapes: Mapping[str, tuple[int, ...]]
                     ) -> list[onnx.NodeProto]:
    """Fold each inference-mode BatchNormalization into its producer Conv/Gemm."""
    producer = {o: n for n in nodes for o in n.output}
    uses = Counter(i for n in nodes for i in n.input)
    drop: set[int] = set()
    replace: dict[int, list[onnx.NodeProto]] = {}
    for bn in nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        if _attr(bn, "training_mode", 0):
            continue
        x, gamma, beta, mean, var = (list(bn.input) + [""] * 5)[:5]
        if not all(n in consts for n in (gamma, beta, mean, var)):
            continue
        eps = float(_attr(bn, "epsilon", 1e-5))  # type: ignore[arg-type]
        g64, b64 = consts[gamma].astype(np.float64), consts[beta].astype(np.float64)
        scale = g64 / np.sqrt(consts[var].astype(np.float64) + eps)
        shift = b64 - consts[mean].astype(np.float64) * scale
        p = producer.get(x)
        tag = bn.output[0]
        if (p is not None and uses[x] == 1 and x not in outputs and len(p.input) >= 2
                and p.input[1] in consts and (len(p.input) < 3 or p.input[2] == ""
                                              or p.input[2] in consts)):
            if p.op_type == "Conv":
                w = consts[p.input[1]].astype(np.float64)
                if w.shape[0] == scale.size:
                    b = consts[p.input[2]].astype(np.float64) if len(p.input) > 2 and p.input[2] \
                        else np.zeros(w.shape[0])
                    wn, bn_ = f"{tag}.conv_weight", f"{tag}.conv_bias"
                    consts[wn] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
                    consts[bn_] = (b * scale + shift).astype(np.float32)
                    _rewire(p, [p.input[0], wn, bn_], tag)
                    drop.add(id(bn))
                    continue
            if p.op_type == "Gemm" and not _attr(p, "transA", 0):
                w = consts[p.input[1]].astype(np.float64)
                alpha = float(_attr(p, "alpha", 1.0))  # type: ignore[arg-type]
                beta_ = float(_attr(p, "beta", 1.0))  # type: ignore[arg-type]
                trans_b = bool(_attr(p, "transB", 0))
                m = w.shape[0] if trans_b else w.shape[1]
                if m == scale.size:
                    c = consts[p.input[2]].astype(np.float64) if len(p.input) > 2 and p.input[2] \
                        else np.zeros(m)
                    wn, cn = f"{tag}.gemm_weight", f"{tag}.gemm_bias"
                    ws = alpha * (w * scale[:, None] if trans_b else w * scale[None, :])
                    consts[wn] = ws.astype(np.float32)
                    consts[cn] = (np.broadcast_to(beta_ * c, (m,)) * scale + shift) \
                        .astype(np.float32)
                    _rewire(p, [p.input[0], wn, cn], tag)
                    _set_attrs(p, alpha=1.0, beta=1.0)
                    drop.add(id(bn))
                    continue
        # No producer to fold into: a per-channel affine map of (private) constants.
        rank = len(shapes.get(x, (1, 1, 1, 1)))
        shape = (-1,) + (1,) * max(0, rank - 2)  # (C,1,1) broadcasts over NCHW
        sn, tn = f"{tag}.bn_scale", f"{tag}.bn_shift"
        consts[sn] = scale.astype(np.float32).reshape(shape)
        consts[tn] = shift.astype(np.float32).reshape(shape)
        mid = f"{tag}.bn_scaled"
        replace[id(bn)] = [
            helper.make_node("Mul", [x, sn], [mid], name=f"{bn.name}.scale"),
            helper.make_node("Add", [mid, tn], [tag], name=f"{bn.name}.shift"),
        ]
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if id(n) in drop:
            continue
        out.extend(replace.get(id(n), [n]))
    return out


def _rewire(node: onnx.NodeProto, inputs: list[str], output: str) -> None:
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = output


def _set_attrs(node: onnx.NodeProto, **values: float) -> None:
    keep = [a for a in node.attribute if a.name not in values]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in values.items())


def _strip(msg: onnx.ModelProto) -> None:
    msg.doc_string = ""
    msg.producer_name = _PRODUCER
    msg.producer_version = "1"
    msg.domain = ""
    msg.model_version = 0
    del msg.metadata_props[:]
    g = msg.graph
    g.doc_string = ""
    g.name = "architecture"
    for n in g.node:
        n.doc_string = ""
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.doc_string = ""
    for t in g.initializer:
        t.doc_string = ""


def split_model(model: onnx.ModelProto | bytes | str | Path, batch: int = 1) -> SplitModel:
    """Split the vendor's ONNX into the public architecture and the private weights.

    Raises :class:`CompileError` for a model that is not readable, has other than one image
    input, or a symbolic dimension other than the batch.
    """
    m = _load(model)
    opset = _opset(m)
    g = m.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    data_inputs = [vi for vi in g.input if vi.name not in consts]
    if len(data_inputs) != 1:
        raise CompileError(
            f"the model has {len(data_inputs)} data inputs; the two-party engine takes exactly "
            "one (the hospital's image)")
    keep_inputs = list(data_inputs)
    del g.input[:]
    g.input.extend(keep_inputs)
    _bind_batch(g, batch)
    keep_inputs = list(g.input)
    shapes = _static_shapes(m)
    nodes = _fold(g, opset, shapes, consts)
    out_names = {o.name for o in g.output}
    nodes = _fold_batch_norm(nodes, consts, out_names, shapes)
    for o in g.output:
        if o.name in consts:
            raise CompileError(
                f"graph output {o.name!r} is a constant; it must depend on the image")

    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    seen: Counter[str] = Counter()
    for n in nodes:
        seen[n.name] += 1
        if seen[n.name] > 1:
            n.name = f"{n.name}_{seen[n.name] - 1}"

    # Classify every constant a node reads: public (shape role) or private weight.
    public: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for n in nodes:
        slots = PUBLIC_INPUT_SLOTS.get(n.op_type, frozenset())
        for j, name in enumerate(n.input):
            if not name or name not in consts:
                continue
            if j in slots:
                public.setdefault(name, consts[name])
            else:
                weights.setdefault(name, consts[name])
    for name in [k for k in public if k in weights]:  # both roles: a public copy for the shape role
        copy = f"{name}.public"
        public[copy] = public.pop(name)
        for n in nodes:
            slots = PUBLIC_INPUT_SLOTS.get(n.op_type, frozenset())
            for j, inp in enumerate(n.input):
                if inp == name and j in slots:
                    n.input[j] = copy

    arch = onnx.ModelProto()
    arch.ir_version = m.ir_version
    arch.opset_import.extend(m.opset_import)
    ag = arch.graph
    ag.input.extend(keep_inputs)
    for name, w in weights.items():
        ag.input.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(w.dtype), list(w.shape)))
    ag.initializer.extend(numpy_helper.from_array(v, name) for name, v in public.items())
    ag.node.extend(nodes)
    ag.output.extend(g.output)
    _strip(arch)
    try:
        arch = onnx.shape_inference.infer_shapes(arch, strict_mode=True)
        inferred = {vi.name: vi.type for vi in arch.graph.value_info}
        for o in arch.graph.output:
            if not o.type.tensor_type.HasField("shape") and o.name in inferred:
                o.type.CopyFrom(inferred[o.name])
        del arch.graph.value_info[:]
        onnx.checker.check_model(arch)
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"the folded architecture is not a valid ONNX model: {exc}") from None
    return SplitModel(arch.SerializeToString(deterministic=True),
                      {k: np.array(v, order="C") for k, v in weights.items()})


def load_architecture(architecture: bytes) -> onnx.ModelProto:
    """Parse architecture bytes and check they hold no weight values (only public constants)."""
    try:
        model = onnx.load_from_string(architecture)
    except Exception as exc:
        raise CompileError(f"not a readable architecture: {type(exc).__name__}") from None
    g = model.graph
    if len(g.input) < 1:
        raise CompileError("the architecture declares no image input")
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name in declared:
            raise CompileError(f"initializer {t.name!r} is also a graph input")
    used: dict[str, set[int]] = {}
    for n in g.node:
        for j, name in enumerate(n.input):
            used.setdefault(name, set())
            if name and j in PUBLIC_INPUT_SLOTS.get(n.op_type, frozenset()):
                used[name].add(-1)
            elif name:
                used[name].add(j)
    for t in g.initializer:
        roles = used.get(t.name, set())
        if roles - {-1}:
            raise CompileError(
                f"initializer {t.name!r} is not a public shape constant; weights must be graph "
                "inputs without values")
    return model
