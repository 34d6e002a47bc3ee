"""Held-out evaluation of the NON-CLINICAL demo lesion model (accuracy, AUROC) with onnxruntime.

``python -m secure_infer.demo.evaluate [--model secure_infer/models/demo-lesion]`` prints the
accuracy at the manifest threshold and the AUROC on 500 phantoms from a seed disjoint from the
training and validation seeds. :func:`compare_decisions` lets the encrypted-inference tests run
any ``predict`` function (e.g. encrypt -> vendor -> decrypt) on the same phantoms and compare it
with onnxruntime image by image.

AUROC is a few lines of rank statistics (Mann-Whitney U with mid-ranks for ties), so no
scikit-learn dependency is needed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from secure_infer.demo.phantoms import labelled_set
from secure_infer.manifest import Manifest, load_manifest

__all__ = [
    "DEFAULT_MODEL_DIR",
    "HELDOUT_N",
    "HELDOUT_SEED",
    "Comparison",
    "Evaluation",
    "auroc",
    "compare_decisions",
    "heldout_metrics",
    "heldout_set",
    "onnx_predict",
]

HELDOUT_SEED = 1000  # training uses seed 1, validation seed 2
HELDOUT_N = 500
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "demo-lesion"

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating]]


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties 1/2.

    Computed from mid-ranks: ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in length")
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over runs of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def heldout_set(
    n: int = HELDOUT_N, seed: int = HELDOUT_SEED
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The held-out phantoms [n,1,64,64] in [0,1] and their labels (balanced)."""
    return labelled_set(seed, n)


def onnx_predict(model_path: Path) -> Predict:
    """A predict function (images [N,1,64,64] -> probabilities [N]) backed by onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.floating]:
        out = sess.run(["prob"], {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64)[:, 0]

    return predict


@dataclass(frozen=True)
class Evaluation:
    n: int
    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    auroc: float


def _threshold(manifest: Manifest) -> float:
    return float(manifest.outputs[0].threshold)


def heldout_metrics(model_dir: Path = DEFAULT_MODEL_DIR, n: int = HELDOUT_N,
             seed: int = HELDOUT_SEED) -> Evaluation:
    """Accuracy (at the manifest threshold), sensitivity, specificity and AUROC on held-out data."""
    manifest = load_manifest(model_dir / "manifest.yaml")
    x, y = heldout_set(n, seed)
    prob = onnx_predict(model_dir / (manifest.onnx or "model.onnx"))(x)
    t = _threshold(manifest)
    pred = prob >= t
    pos = y == 1
    return Evaluation(
        n=n,
        threshold=t,
        accuracy=float((pred == pos).mean()),
        sensitivity=float(pred[pos].mean()),
        specificity=float((~pred[~pos]).mean()),
        auroc=auroc(prob, y),
    )


@dataclass(frozen=True)
class Comparison:
    """Image-by-image agreement of a candidate predictor with onnxruntime on held-out phantoms."""

    n: int
    disagreements: int
    max_abs_diff: float
    reference_accuracy: float
    candidate_accuracy: float


def compare_decisions(
    predict: Predict,
    model_dir: Path = DEFAULT_MODEL_DIR,
    n: int = HELDOUT_N,
    seed: int = HELDOUT_SEED,
    batch: int | None = None,
) -> Comparison:
    """Run ``predict`` (e.g. encrypted inference) and onnxruntime on the same held-out phantoms.

    ``predict`` receives float32 images [B,1,64,64] (``batch`` at a time, all at once if None)
    and returns probabilities [B] (or [B,1]). Decisions use the manifest threshold.
    """
    manifest = load_manifest(model_dir / "manifest.yaml")
    t = _threshold(manifest)
    x, y = heldout_set(n, seed)
    ref = onnx_predict(model_dir / (manifest.onnx or "model.onnx"))(x)
    step = n if batch is None else batch
    got = np.concatenate([
        np.asarray(predict(x[i:i + step]), dtype=np.float64).reshape(-1)
        for i in range(0, n, step)
    ])
    if got.shape != ref.shape:
        raise ValueError(f"predict returned {got.shape[0]} probabilities for {n} images")
    return Comparison(
        n=n,
        disagreements=int(((got >= t) != (ref >= t)).sum()),
        max_abs_diff=float(np.abs(got - ref).max()),
        reference_accuracy=float(((ref >= t) == (y == 1)).mean()),
        candidate_accuracy=float(((got >= t) == (y == 1)).mean()),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Held-out accuracy/AUROC of the demo model")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder")
    ap.add_argument("-n", type=int, default=HELDOUT_N)
    args = ap.parse_args(argv)
    print(json.dumps(heldout_metrics(args.model, args.n).__dict__, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
