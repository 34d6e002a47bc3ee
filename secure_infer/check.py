"""``python -m secure_infer.vendor model check MODEL.onnx``: compile, encrypt, evaluate, decrypt,
compare (``blindread model check`` is an alias).

Plays both parties in one process so a vendor (or a hospital evaluating a vendor model) can see,
before anything is deployed, whether the model compiles to an HE plan, which CKKS parameters it
gets, how long each step takes, and how far the encrypted outputs are from onnxruntime's.
Exit codes: 0 within tolerance, 1 outside it, 2 unsupported model, bad input, or a
meaningless comparison.

Inputs come from the model's declared input distribution, not from uniform noise: uniform noise
over the input range drives a trained model's logits far outside anything it was trained on
(the demo's reach 140-470), every sigmoid saturates at 1.0 on both sides and "agreement" means
nothing. With ``--manifest`` the samples are synthetic phantoms (secure_infer.demo) put through
the manifest's public preprocessing, as the node does with real images; ``--input-npy`` gives
real preprocessed inputs. Whatever the inputs, when most outputs after the final activation are
saturated the check says it is meaningless and exits 2. onnxruntime is run one image at a time,
so a model exported with a fixed batch dimension of 1 is checked like any other.

The one module that plays both parties, so it lives at the top of secure_infer (it may import
``hospital`` and ``vendor``; neither of them imports the other). Both imports are deferred to
:func:`run_model_check`, so building the vendor's parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from secure_infer.errors import InferenceError
from secure_infer.manifest import (
    Code,
    InputSpec,
    Manifest,
    ManifestError,
    OutputLabel,
    load_manifest,
)
from secure_infer.plan import Plan

__all__ = ["MODEL_CHECK_HELP", "add_model_check_arguments", "preflight_error", "run_model_check"]

MODEL_CHECK_HELP = (
    "compile an ONNX model to an HE plan and compare encrypted outputs with onnxruntime"
)


def add_model_check_arguments(c: argparse.ArgumentParser) -> None:
    """Add the arguments of ``model check`` to ``c`` (the vendor CLI's subparser or the node's
    alias); :func:`run_model_check` is its handler."""
    c.add_argument("model", type=Path, help="ONNX model file")
    c.add_argument("--manifest", type=Path, help="model manifest YAML (input range, outputs)")
    c.add_argument("--samples", type=int, default=8, help="random inputs to try (default 8)")
    c.add_argument("--input-npy", type=Path, help="inputs [N, C, H, W] instead of random ones")
    c.add_argument("--approx-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="approximate ReLU/Sigmoid/Tanh/SiLU by polynomials on [LO, HI]")
    c.add_argument("--tolerance", type=float, default=1e-3,
                   help="max abs difference of outputs (after the final activation), default 1e-3")
    c.add_argument("--seed", type=int, default=0)


def _default_manifest(plan: Plan) -> Manifest:
    act = plan.final_activation if plan.final_activation in ("sigmoid", "softmax") else "none"
    return Manifest(
        name="model-check", version="0", manufacturer="unknown", model_name=plan.name,
        intended_use="model check only",
        input=InputSpec(shape=plan.packing.input_shape, range=(0.0, 1.0)),
        outputs=tuple(
            OutputLabel(name=f"output{i}", index=i, activation=act, threshold=0.5,
                        finding=Code(scheme="DCM", value="0", meaning="unspecified"))
            for i in range(plan.n_outputs)
        ),
    )


def run_model_check(args: argparse.Namespace) -> int:
    """Run the check for parsed ``args``; returns the exit code."""
    from secure_infer.hospital.session import HospitalSession, apply_activations
    from secure_infer.vendor.compiler import compile_onnx
    from secure_infer.vendor.model import VendorModel

    out = sys.stdout
    try:
        manifest = load_manifest(args.manifest) if args.manifest else None
    except ManifestError as exc:
        print(f"manifest error: {exc}", file=sys.stderr)
        return 2
    approx = (float(args.approx_range[0]), float(args.approx_range[1])) if args.approx_range \
        else None
    t0 = time.perf_counter()
    try:
        plan = compile_onnx(args.model, manifest.name if manifest else args.model.stem,
                            manifest.version if manifest else "0", approx)
        vendor = VendorModel.from_plan(plan, manifest or _default_manifest(plan))
    except InferenceError as exc:
        print(f"UNSUPPORTED: {exc}", file=sys.stderr)
        return 2
    t_compile = time.perf_counter() - t0
    spec = vendor.spec
    shape = spec.packing.input_shape
    if args.input_npy:
        try:
            x = np.load(args.input_npy).astype(np.float64)
            x = x.reshape(x.shape[0], *shape)
        except (OSError, ValueError) as exc:
            print(f"cannot use {args.input_npy}: {exc}", file=sys.stderr)
            return 2
        source = f"{x.shape[0]} input(s) from {args.input_npy}"
    else:
        if args.samples < 1:
            print("--samples must be >= 1", file=sys.stderr)
            return 2
        x, source = _sample_inputs(manifest, vendor.manifest, shape, args.samples, args.seed)
    n = x.shape[0]
    try:
        ref = _onnxruntime(args.model, x)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        print(f"onnxruntime cannot run {args.model}: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="blindread-check-") as keys:
        t0 = time.perf_counter()
        hospital = HospitalSession.create(spec, Path(keys))
        ctx_bytes = hospital.public_context_bytes()
        t_keys = time.perf_counter() - t0
        ctx = vendor.load_context(ctx_bytes)
        t0 = time.perf_counter()
        cts = hospital.encrypt(x)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs: list[bytes] = []
        for i in tqdm(range(0, len(cts), spec.max_ciphertexts), desc="evaluate", unit="request",
                      disable=None, file=sys.stderr):
            outs += vendor.evaluate(ctx, cts[i : i + spec.max_ciphertexts])
        t_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = hospital.decrypt(outs, n)
        t_dec = time.perf_counter() - t0
    got = apply_activations(logits, spec.activations)
    clear = apply_activations(plan.forward_clear(plan.packing.pack(x)), spec.activations)
    err_he = float(np.max(np.abs(got - clear)))
    err = float(np.max(np.abs(got - ref)))
    thresholds = np.array([o.threshold for o in sorted(vendor.manifest.outputs,
                                                      key=lambda o: o.index)])
    k = len(thresholds)
    agree = float(np.mean((got[:, :k] >= thresholds) == (ref[:, :k] >= thresholds)))
    p = spec.params
    print(f"model        {args.model} ({plan.depth} levels: "
          f"{' -> '.join(s.name for s in plan.stages)})", file=out)
    for note in plan.notes:
        print(f"approx       {note}", file=out)
    print(f"parameters   N={p.poly_modulus_degree} coeff_modulus={list(p.coeff_modulus_bits)} "
          f"({p.total_bits} bits, 128-bit secure) scale=2^{p.scale_bits}", file=out)
    print(f"packing      {spec.packing.kind}, {spec.images_per_ciphertext} image(s)/ciphertext, "
          f"{len(spec.galois_steps)} Galois keys", file=out)
    print(f"traffic      context {len(ctx_bytes) / 1e6:.1f} MB once; "
          f"up {sum(map(len, cts)) / n / 1e3:.0f} kB/image, "
          f"down {sum(map(len, outs)) / n / 1e3:.0f} kB/image", file=out)
    print(f"timings      compile {t_compile:.2f}s keys {t_keys:.2f}s encrypt {t_enc:.3f}s "
          f"evaluate {t_eval:.3f}s decrypt {t_dec:.3f}s ({n} inputs, "
          f"{(t_enc + t_eval + t_dec) / n * 1e3:.0f} ms/image)", file=out)
    print(f"inputs       {source}", file=out)
    print(f"error        max |HE - onnxruntime| = {err:.3g} (HE vs plan in clear {err_he:.3g}); "
          f"decisions agree on {agree * 100:.1f}%", file=out)
    saturated = _saturated_fraction(ref, spec.activations)
    if saturated >= _MEANINGLESS:
        print(f"result       MEANINGLESS: {saturated * 100:.0f}% of the reference outputs are "
              "saturated at 0 or 1 after the final activation, so any two models agree on "
              "them; check with inputs from the model's own distribution (--manifest with its "
              "preprocessing, or --input-npy with preprocessed images)", file=out)
        return 2
    ok = err <= args.tolerance
    print(f"result       {'OK' if ok else 'OUTSIDE TOLERANCE'} (tolerance {args.tolerance:g})",
          file=out)
    return 0 if ok else 1


_MEANINGLESS = 0.9
"""Share of saturated outputs from which a comparison says nothing."""


def _saturated_fraction(ref: np.ndarray, activations: Sequence[str]) -> float:
    """Share of (sample, output) values within 1e-6 of 0 or 1, among outputs with a sigmoid or
    softmax (raw logits never saturate); 0 when there are none."""
    cols = [
        i for i, a in enumerate(activations) if a in ("sigmoid", "softmax") and i < ref.shape[1]
    ]
    if not cols:
        return 0.0
    v = ref[:, cols]
    return float(np.mean((v <= 1e-6) | (v >= 1.0 - 1e-6)))


def _sample_inputs(
    given: Manifest | None, manifest: Manifest, shape: tuple[int, ...], n: int, seed: int
) -> tuple[np.ndarray, str]:
    """``n`` inputs from the model's declared distribution, and how they were made.

    With a manifest: synthetic chest phantoms (half with a lesion) rendered as 12-bit DICOM-like
    pixels and put through the manifest's public preprocessing, the path of a real image. With
    no manifest nothing is known of the distribution: uniform values over the input range,
    said so (and the saturation check catches what that does to a trained model).
    """
    from secure_infer.demo.phantoms import dicom_like_phantom
    from secure_infer.hospital.preprocess import preprocess_for_manifest

    _, rows, cols = manifest.input.shape
    lo, hi = manifest.input.range
    if given is None or (manifest.preprocessing.resize is None and rows != cols):
        x = np.random.default_rng(seed).uniform(lo, hi, size=(n, *shape))
        why = "no --manifest" if given is None else "non-square input without a resize"
        return x, (f"{n} uniform random input(s) on [{lo:g}, {hi:g}] ({why}: not the model's "
                   "input distribution)")
    size = rows if manifest.preprocessing.resize is None else 256
    images = []
    for i in range(n):
        px = dicom_like_phantom(seed * 1000 + i, lesion=i % 2 == 1, size=size)
        images.append(preprocess_for_manifest(
            px.pixels, manifest, rescale_slope=px.rescale_slope,
            rescale_intercept=px.rescale_intercept, photometric=px.photometric,
        ))
    x = np.stack(images).astype(np.float64).reshape(n, *shape)
    return x, f"{n} synthetic phantom(s) through the manifest's preprocessing"


def _onnxruntime(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    shape = sess.get_inputs()[0].shape
    rows = []
    for xi in x:  # one image at a time: a fixed batch dimension of 1 is common in exports
        xin = xi.reshape(1, -1) if len(shape) == 2 else xi[None]
        y = sess.run(None, {name: xin.astype(np.float32)})[0]
        rows.append(np.asarray(y, dtype=np.float64).reshape(-1))
    return np.stack(rows)


def preflight_error(
    vendor: Any, model: Path, prefix: Path | None = None, samples: int = 4, seed: int = 0,
    encrypted: bool = True,
) -> float:
    """The vendor registry's check before a model goes live: max |outputs - onnxruntime|.

    ``vendor`` is the compiled :class:`~secure_infer.vendor.model.VendorModel`, ``model`` its
    private ONNX file and ``prefix`` the public prefix network of a split model (its outputs
    are the private model's inputs). With ``encrypted`` the inputs go the whole way (keys,
    encrypt, evaluate, decrypt) as in ``model check``; otherwise the plan runs in clear (a
    compile check only). Deterministic for a ``seed``.
    """
    from secure_infer.hospital.session import HospitalSession, apply_activations

    spec = vendor.spec
    lo, hi = vendor.manifest.input.range
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(samples, *vendor.manifest.input.shape))
    if prefix is not None:
        x = _onnxruntime(prefix, x)
    x = x.reshape(samples, *spec.packing.input_shape)
    ref = _onnxruntime(model, x)
    if encrypted:
        with tempfile.TemporaryDirectory(prefix="blindread-preflight-") as keys:
            hospital = HospitalSession.create(spec, Path(keys))
            ctx = vendor.load_context(hospital.public_context_bytes())
            cts = hospital.encrypt(x)
            outs: list[bytes] = []
            for i in range(0, len(cts), spec.max_ciphertexts):
                outs += vendor.evaluate(ctx, cts[i : i + spec.max_ciphertexts])
            logits = hospital.decrypt(outs, samples)
    else:
        logits = vendor.plan.forward_clear(vendor.plan.packing.pack(x))
    got = apply_activations(np.asarray(logits)[:, : ref.shape[1]], spec.activations)
    return float(np.max(np.abs(got - ref)))
