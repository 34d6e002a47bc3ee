"""Train the NON-CLINICAL demo lesion model on synthetic phantoms and ship it as ONNX + manifest.

``python -m secure_infer.demo.train --out secure_infer/models/demo-lesion`` regenerates the shipped
model deterministically (same seeds, same numpy => same weights) in well under a minute on two
cores. Numpy by hand (forward/backward in :mod:`secure_infer.demo.model`, Adam, binary
cross-entropy) keeps the training dependency-free.

Pre-activation magnitudes (the values that get squared) are kept modest with a penalty on the part
of ``|x|`` above a bound plus weight decay: squares amplify large values, and CKKS precision
degrades with magnitude, so a bounded network is also an accurate one under encryption.

The decision threshold is chosen on a validation split (Youden's J) and then folded into the
output bias (``b -= logit(threshold)``), so the shipped manifest keeps the contract's 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # before numpy loads OpenBLAS; never a side effect of an import
    # The matrices are small: one BLAS thread is ~10x faster than contended threads on a shared
    # 2-core machine, and keeps the float results independent of the machine's thread count.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import numpy.typing as npt
import yaml

from secure_infer.demo.model import (
    DemoWeights,
    backward,
    export_onnx,
    forward,
    init_weights,
)
from secure_infer.demo.phantoms import WINDOW_CENTER, WINDOW_WIDTH, labelled_set
from secure_infer.manifest import Manifest

__all__ = [
    "TRAIN_SEED",
    "VAL_SEED",
    "TrainConfig",
    "TrainResult",
    "demo_manifest",
    "main",
    "train",
    "write_manifest",
]

log = logging.getLogger(__name__)

TRAIN_SEED = 1
VAL_SEED = 2
INIT_SEED = 3

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults produce the shipped model."""

    n_train: int = 12000
    n_val: int = 1000
    epochs: int = 80
    batch: int = 100
    lr: float = 0.003
    weight_decay: float = 1e-4
    bound: float = 4.0  # soft limit on |pre-activation| before each square
    bound_penalty: float = 1.0


@dataclass(frozen=True)
class TrainResult:
    weights: DemoWeights
    threshold: float  # chosen on validation, before folding into the bias
    val_accuracy: float
    max_abs_conv: float
    max_abs_fc1: float
    seconds: float


def _bce_grad(logit: F64, y: F64) -> tuple[float, F64]:
    """Mean binary cross-entropy from logits and its gradient (numerically stable)."""
    loss = np.maximum(logit, 0) - logit * y + np.log1p(np.exp(-np.abs(logit)))
    p = 1.0 / (1.0 + np.exp(-logit))
    return float(loss.mean()), (p - y) / logit.shape[0]


def _excess(a: F64, bound: float) -> tuple[float, F64]:
    """Penalty mean(relu(|a| - bound)^2) and its gradient with respect to ``a``."""
    e = np.maximum(np.abs(a) - bound, 0.0)
    return float((e * e).mean()), 2.0 * e * np.sign(a) / a.size


def train(cfg: TrainConfig = TrainConfig()) -> TrainResult:
    """Train from fixed seeds; return weights with the validation threshold folded in."""
    t0 = time.perf_counter()
    x, y = labelled_set(TRAIN_SEED, cfg.n_train)
    xv, yv = labelled_set(VAL_SEED, cfg.n_val)
    rng = np.random.default_rng(INIT_SEED)
    w = init_weights(rng)
    names = list(w.arrays())
    m = {k: np.zeros_like(v) for k, v in w.arrays().items()}
    v2 = {k: np.zeros_like(v) for k, v in w.arrays().items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    yf = y.astype(np.float64)[:, None]
    for epoch in range(cfg.epochs):
        order = rng.permutation(cfg.n_train)
        lr = cfg.lr * 0.5 * (1.0 + np.cos(np.pi * epoch / cfg.epochs))  # cosine decay
        total = 0.0
        for s in range(0, cfg.n_train, cfg.batch):
            idx = order[s:s + cfg.batch]
            f = forward(w, x[idx])
            loss, dlogit = _bce_grad(f.logit, yf[idx])
            pen_conv, d_conv = _excess(f.conv, cfg.bound)
            pen_fc1, d_fc1 = _excess(f.fc1, cfg.bound)
            total += (loss + cfg.bound_penalty * (pen_conv + pen_fc1)) * len(idx)
            g = backward(w, f, dlogit, d_fc1_extra=cfg.bound_penalty * d_fc1,
                         d_conv_extra=cfg.bound_penalty * d_conv)
            step += 1
            for k in names:
                grad = getattr(g, k)
                if k.endswith("_w"):
                    grad = grad + cfg.weight_decay * getattr(w, k)
                m[k] = b1 * m[k] + (1 - b1) * grad
                v2[k] = b2 * v2[k] + (1 - b2) * grad * grad
                mh = m[k] / (1 - b1**step)
                vh = v2[k] / (1 - b2**step)
                setattr(w, k, getattr(w, k) - lr * mh / (np.sqrt(vh) + eps))
        if epoch % 5 == 4 or epoch == cfg.epochs - 1:
            fv = forward(w, xv)
            acc = float(((fv.prob[:, 0] >= 0.5) == (yv == 1)).mean())
            log.info("epoch %d loss %.4f val_acc %.4f max|conv| %.2f max|fc1| %.2f", epoch + 1,
                     total / cfg.n_train, acc, np.abs(fv.conv).max(), np.abs(fv.fc1).max())
    fv = forward(w, xv)
    threshold = _youden_threshold(fv.prob[:, 0], yv)
    w.fc2_b = w.fc2_b - float(np.log(threshold / (1.0 - threshold)))
    fv = forward(w, xv)
    val_acc = float(((fv.prob[:, 0] >= 0.5) == (yv == 1)).mean())
    ft = forward(w, x)
    return TrainResult(
        weights=w,
        threshold=threshold,
        val_accuracy=val_acc,
        max_abs_conv=float(max(np.abs(ft.conv).max(), np.abs(fv.conv).max())),
        max_abs_fc1=float(max(np.abs(ft.fc1).max(), np.abs(fv.fc1).max())),
        seconds=time.perf_counter() - t0,
    )


def _youden_threshold(prob: F64, y: npt.NDArray[np.int64]) -> float:
    """Threshold maximizing sensitivity + specificity - 1 (midpoint between adjacent scores)."""
    s = np.sort(np.unique(prob))
    cands = np.concatenate([[s[0] - 1e-12], (s[:-1] + s[1:]) / 2.0]) if len(s) > 1 else s
    pos, neg = y == 1, y == 0
    best, best_t = -1.0, 0.5
    for t in cands:
        j = (prob[pos] >= t).mean() + (prob[neg] < t).mean() - 1.0
        if j > best + 1e-12:
            best, best_t = float(j), float(t)
    return float(np.clip(best_t, 1e-6, 1.0 - 1e-6))


def demo_manifest() -> Manifest:
    """The shipped manifest: public description of the demo model (validated by the schema)."""
    return Manifest.model_validate({
        "name": "demo-lesion",
        "version": "1.0.0",
        "manufacturer": "BlindRead demo (synthetic data, not a medical device)",
        "model_name": "Demo lesion detector on synthetic phantoms (NON-CLINICAL)",
        "intended_use": (
            "NON-CLINICAL demonstration of encrypted inference only. Trained and tested solely "
            "on synthetic chest-radiograph-like phantoms generated by "
            "secure_infer.demo.phantoms; it has never seen a patient image and must not be "
            "used on patient data or for any diagnostic, screening or triage purpose."
        ),
        "not_for_primary_diagnosis": True,
        "input": {"shape": [1, 64, 64], "range": [0.0, 1.0]},
        "preprocessing": {
            "window": {"center": WINDOW_CENTER, "width": WINDOW_WIDTH},
            "resize": [64, 64],
            "normalize": {"mean": 0.0, "std": 1.0},
            "photometric_invert_monochrome1": True,
        },
        "outputs": [{
            "name": "lesion",
            "index": 0,
            "activation": "sigmoid",
            "finding": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
            "threshold": 0.5,
            "level": "study",
        }],
        "onnx": "model.onnx",
    })


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest`` as YAML (temp file + rename, so a reader never sees half a file)."""
    header = (
        "# BlindRead NON-CLINICAL demo model manifest (generated by\n"
        "# `python -m secure_infer.demo.train --out secure_infer/models/demo-lesion`).\n"
        "# The decision threshold was chosen on a validation split and folded into the\n"
        "# output bias, so the threshold below is 0.5. See README.md (model card).\n"
    )
    body = yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="model folder to (re)write")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = train(TrainConfig(epochs=args.epochs))
    export_onnx(res.weights, args.out / "model.onnx",
                doc="BlindRead NON-CLINICAL demo: lesion on synthetic phantoms")
    write_manifest(demo_manifest(), args.out / "manifest.yaml")
    info = {
        "val_threshold_folded": res.threshold,
        "val_accuracy": res.val_accuracy,
        "max_abs_conv": res.max_abs_conv,
        "max_abs_fc1": res.max_abs_fc1,
        "train_seconds": round(res.seconds, 1),
    }
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
