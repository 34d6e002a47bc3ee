"""Train the NON-CLINICAL 224x224 reference model (a small ResNet-18-style CNN) on phantoms.

``python -m secure_infer.demo.train_resnet --out secure_infer/models/demo-cxr-resnet`` trains a
width-8 ResNet-18 (ReLU, MaxPool, residual blocks, batch norm, GlobalAveragePool) on synthetic
224x224 chest-radiograph-like phantoms (:mod:`secure_infer.demo.phantoms`) and writes
``model.onnx`` (exported by :func:`secure_infer.demo.cnn.resnet18_onnx` with the trained weights,
batch norm unfolded as PyTorch would export it, a final Sigmoid) and ``manifest.yaml``
(``engine: cheetah``). It is the vendor's second demo model, for the two-party engine.

Trained with JAX (the ``2pc`` extra brings it) rather than torch: the forward pass below is the
same network as the ONNX builder, parameter for parameter, batch norm using batch statistics
while training and the training set's statistics at export; Adam is a few lines. No torch, no
optax.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from secure_infer.demo.cnn import resnet18_onnx
from secure_infer.demo.phantoms import WINDOW_CENTER, WINDOW_WIDTH, labelled_set
from secure_infer.manifest import Manifest

__all__ = ["SIZE", "WIDTH", "main", "reference_manifest", "train"]

log = logging.getLogger(__name__)

SIZE = 224
WIDTH = 8
TRAIN_SEED, VAL_SEED, HELDOUT_SEED = 21, 22, 23


def _forward(params: dict[str, Any], x: Any, stats: dict[str, Any] | None) -> tuple[Any, dict]:
    """The resnet18_onnx graph in JAX; BN uses batch statistics unless ``stats`` are given."""
    import jax
    import jax.numpy as jnp

    seen: dict[str, Any] = {}

    def conv(h: Any, name: str, stride: int, pad: int) -> Any:
        return jax.lax.conv_general_dilated(
            h, params[f"{name}.weight"], (stride, stride), [(pad, pad), (pad, pad)],
            dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def bn(h: Any, name: str) -> Any:
        if stats is None:
            mean, var = jnp.mean(h, axis=(0, 2, 3)), jnp.var(h, axis=(0, 2, 3))
            seen[name] = (mean, var)
        else:
            mean, var = stats[name]
        s = params[f"{name}.weight"] / jnp.sqrt(var + 1e-5)
        return (h - mean[None, :, None, None]) * s[None, :, None, None] \
            + params[f"{name}.bias"][None, :, None, None]

    h = jax.nn.relu(bn(conv(x, "conv1", 2, 3), "bn1"))
    h = jax.lax.reduce_window(jnp.pad(h, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="edge"),
                              -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), "VALID")
    cin = WIDTH
    for stage in range(4):
        cout = WIDTH * 2 ** stage
        for block in range(2):
            p = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            y = jax.nn.relu(bn(conv(h, f"{p}.conv1", stride, 1), f"{p}.bn1"))
            y = bn(conv(y, f"{p}.conv2", 1, 1), f"{p}.bn2")
            skip = h
            if stride != 1 or cin != cout:
                skip = bn(conv(h, f"{p}.downsample.0", stride, 0), f"{p}.downsample.1")
            h = jax.nn.relu(y + skip)
            cin = cout
    h = jnp.mean(h, axis=(2, 3))
    return h @ params["fc.weight"].T + params["fc.bias"], seen


def train(n_train: int = 1600, epochs: int = 6, batch: int = 32, lr: float = 3e-3,
          seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train; returns the ONNX initializer values (BN running stats from the training set)."""
    import jax
    import jax.numpy as jnp

    init = resnet18_onnx(width=WIDTH, size=SIZE, seed=seed)
    params = {t.name: jnp.asarray(onnx.numpy_helper.to_array(t)) for t in init.graph.initializer
              if not t.name.endswith(("running_mean", "running_var"))}
    t0 = time.monotonic()
    x_tr, y_tr = labelled_set(TRAIN_SEED, n_train, size=SIZE)
    x_va, y_va = labelled_set(VAL_SEED, 200, size=SIZE)
    log.info("phantoms rendered in %.0f s", time.monotonic() - t0)

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        logit = _forward(p, x, None)[0][:, 0]
        return jnp.mean(jnp.logaddexp(0.0, logit) - y * logit)

    grad = jax.jit(jax.value_and_grad(loss))
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(w) for k, w in params.items()}
    rng = np.random.default_rng(seed + 1)
    step, total = 0, epochs * (n_train // batch)
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        for i in range(n_train // batch):
            idx = order[i * batch:(i + 1) * batch]
            value, g = grad(params, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx], jnp.float32))
            step += 1
            rate = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            for k in params:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                mh, vh = m[k] / (1 - 0.9 ** step), v[k] / (1 - 0.999 ** step)
                params[k] = params[k] - rate * mh / (jnp.sqrt(vh) + 1e-8)
        log.info("epoch %d loss %.4f (%.0f s)", epoch + 1, float(value), time.monotonic() - t0)
    # Running statistics: batch statistics averaged over the training set.
    stat_fn = jax.jit(lambda p, x: _forward(p, x, None)[1])
    sums: dict[str, list[Any]] = {}
    for i in range(0, n_train, 100):
        for k, (mean, var) in stat_fn(params, jnp.asarray(x_tr[i:i + 100])).items():
            sums.setdefault(k, []).append((mean, var))
    stats = {k: (sum(a for a, _ in s) / len(s), sum(b for _, b in s) / len(s))
             for k, s in sums.items()}
    out = {k: np.asarray(w, np.float32) for k, w in params.items()}
    for k, (mean, var) in stats.items():
        out[f"{k}.running_mean"] = np.asarray(mean, np.float32)
        out[f"{k}.running_var"] = np.asarray(var, np.float32)
    pred = jax.jit(lambda p, x: _forward(p, x, stats)[0][:, 0])
    logits = np.concatenate([np.asarray(pred(params, jnp.asarray(x_va[i:i + 50])))
                             for i in range(0, len(x_va), 50)])
    acc = float(np.mean((logits > 0) == (y_va == 1)))
    log.info("validation accuracy %.3f", acc)
    return out, {"val_accuracy": acc, "seconds": time.monotonic() - t0}


def reference_manifest() -> Manifest:
    return Manifest.model_validate({
        "name": "demo-cxr-resnet",
        "version": "1.0.0",
        "manufacturer": "BlindRead demo (synthetic data, not a medical device)",
        "model_name": "Demo ResNet-18-style lesion classifier on synthetic phantoms (NON-CLINICAL)",
        "intended_use": "NON-CLINICAL demonstration of two-party (Cheetah) inference only. Trained "
        "and tested solely on synthetic 224x224 chest-radiograph-like phantoms generated by "
        "secure_infer.demo.phantoms; it has never seen a patient image and must not be used on "
        "patient data or for any diagnostic, screening or triage purpose.",
        "not_for_primary_diagnosis": True,
        "engine": "cheetah",
        "input": {"shape": [1, SIZE, SIZE], "range": [0.0, 1.0]},
        "preprocessing": {"window": {"center": WINDOW_CENTER, "width": WINDOW_WIDTH},
                          "resize": [SIZE, SIZE], "normalize": {"mean": 0.0, "std": 1.0},
                          "photometric_invert_monochrome1": True},
        "outputs": [{"name": "lesion", "index": 0, "activation": "sigmoid",
                     "finding": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
                     "threshold": 0.5, "level": "study"}],
        "onnx": "model.onnx",
    })


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights, info = train(args.train, args.epochs)
    model = resnet18_onnx(width=WIDTH, size=SIZE, weights=weights, final="Sigmoid")
    args.out.mkdir(parents=True, exist_ok=True)
    from durable_io import atomic_write

    atomic_write(args.out / "model.onnx", model.SerializeToString(), mode=0o644)
    data = reference_manifest().model_dump(mode="json", exclude_none=True)
    text = ("# NON-CLINICAL reference model (python -m secure_infer.demo.train_resnet). "
            "See README.md.\n")
    atomic_write(args.out / "manifest.yaml",
                 (text + yaml.safe_dump(data, sort_keys=False)).encode("utf-8"), mode=0o644)
    log.info("wrote %s (%s)", args.out, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
