"""Two-party programs written directly in JAX, for the runtime's tests and benchmark.

The ONNX -> JAX translation lives elsewhere; the runtime must work for any
:class:`~secure_infer.twopc.program.Program`, so these are hand-written: a tiny
conv + ReLU + MaxPool + dense net, and the 64x64 demo-lesion architecture with ReLU in place of
the squares (its ONNX twin comes from :func:`tests.support.modelzoo.build_sequential`, so
results can be checked against onnxruntime). Each ``load_*`` is a vendor loader
(``module:function`` in the vendor config's ``twopc.models``): source file in, ``(Program,
weights)`` out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.twopc.program import Program, TensorSpec


def _conv(x: Any, w: Any, b: Any, stride: int, pad: int) -> Any:
    import jax

    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + b[None, :, None, None]


def _maxpool(x: Any, k: int) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, k, k), (1, 1, k, k), "VALID")


# ------------------------------------------------------------------ tiny
TINY_SIDE = 8


def tiny_fn(x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> tuple[Any]:
    """conv 3x3 pad 1 (2 channels) -> ReLU -> MaxPool 2 -> flatten -> dense 32->2."""
    import jax.numpy as jnp

    y = jnp.maximum(_conv(x, w1, b1, 1, 1), 0.0)
    y = _maxpool(y, 2).reshape(1, -1)
    return (y @ w2.T + b2,)


def tiny_program(side: int = TINY_SIDE) -> Program:
    cells = 2 * (side // 2) ** 2
    return Program(
        fn=tiny_fn,
        input=TensorSpec("image", (1, 1, side, side)),
        weights=(
            TensorSpec("w1", (2, 1, 3, 3)),
            TensorSpec("b1", (2,)),
            TensorSpec("w2", (2, cells)),
            TensorSpec("b2", (2,)),
        ),
        outputs=(TensorSpec("logits", (1, 2)),),
        description_sha256=hashlib.sha256(
            f"tiny conv-relu-maxpool-dense {side}".encode()
        ).hexdigest(),
    )


def tiny_weights(seed: int = 0, side: int = TINY_SIDE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = 2 * (side // 2) ** 2
    return [
        rng.normal(0, 0.4, (2, 1, 3, 3)).astype(np.float32),
        rng.normal(0, 0.1, 2).astype(np.float32),
        rng.normal(0, 1 / np.sqrt(cells), (2, cells)).astype(np.float32),
        rng.normal(0, 0.1, 2).astype(np.float32),
    ]


def save_tiny_weights(path: Path, seed: int = 0) -> Path:
    w = tiny_weights(seed)
    np.savez(path, **{f"w{i}": a for i, a in enumerate(w)})
    return path


def load_tiny(source: Path) -> tuple[Program, list[np.ndarray]]:
    """Vendor loader: the tiny program and the weights in ``source`` (``.npz``, ``w0..w3``)."""
    with np.load(source) as z:
        weights = [z[f"w{i}"] for i in range(4)]
    return tiny_program(), weights


def tiny_reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The tiny net in plain numpy (float64): the reference the two-party result must match."""
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in weights)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    side = x.shape[-1]
    y = np.zeros((1, 2, side, side))
    for c in range(2):
        for i in range(side):
            for j in range(side):
                y[0, c, i, j] = np.sum(xp[0, 0, i : i + 3, j : j + 3] * w1[c, 0]) + b1[c]
    y = np.maximum(y, 0)
    y = y.reshape(1, 2, side // 2, 2, side // 2, 2).max(axis=(3, 5))
    return np.asarray(y.reshape(1, -1) @ w2.T + b2)


# ------------------------------------------------------------------ demo 64x64 with ReLU
DEMO_LAYERS = [
    ("conv", 4, 8, 8, 0),
    ("relu",),
    ("flatten",),
    ("gemm", 32),
    ("relu",),
    ("gemm", 1),
]
"""The demo-lesion architecture with ReLU; its logit (the hospital applies the sigmoid)."""


def demo64_fn(x: Any, w0: Any, b0: Any, w3: Any, b3: Any, w5: Any, b5: Any) -> tuple[Any]:
    import jax.numpy as jnp

    y = jnp.maximum(_conv(x, w0, b0, 8, 0), 0.0).reshape(1, -1)
    y = jnp.maximum(y @ w3.T + b3, 0.0)
    return (y @ w5.T + b5,)


def demo64_program() -> Program:
    return Program(
        fn=demo64_fn,
        input=TensorSpec("image", (1, 1, 64, 64)),
        weights=(
            TensorSpec("w0", (4, 1, 8, 8)),
            TensorSpec("b0", (4,)),
            TensorSpec("w3", (32, 256)),
            TensorSpec("b3", (32,)),
            TensorSpec("w5", (1, 32)),
            TensorSpec("b5", (1,)),
        ),
        outputs=(TensorSpec("logit", (1, 1)),),
        description_sha256=hashlib.sha256(repr(DEMO_LAYERS).encode()).hexdigest(),
    )


def demo64_onnx(path: Path, seed: int = 0) -> Path:
    """The same architecture as ONNX with random weights (for onnxruntime and the vendor)."""
    import onnx

    from tests.support.modelzoo import build_sequential

    onnx.save(build_sequential((1, 64, 64), DEMO_LAYERS, seed), str(path))
    return path


def load_demo64(source: Path) -> tuple[Program, list[np.ndarray]]:
    """Vendor loader: the demo program and the weights of the ONNX at ``source``."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(source)).graph.initializer}
    names = ("w0", "b0", "w3", "b3", "w5", "b5")
    return demo64_program(), [inits[n].astype(np.float32) for n in names]


def onnx_reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: x.astype(np.float32)})[0], dtype=np.float64)
