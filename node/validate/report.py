"""Write a :class:`node.validate.ValidationResult` as report.json, report.md, roc.png and
calibration.png.

Plots use matplotlib's object API with the Agg canvas (no pyplot global state, no display
needed on a headless node). Every file is written to a temp file, fsynced and renamed, so a
crash never leaves a half-written report; report.json is written last, so its presence means
the report is complete.
"""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from durable_io import atomic_write
from node.validate.run import ValidationResult

__all__ = ["REPORT_FILES", "render_markdown", "report_dict", "write_report"]

REPORT_FILES = ("report.json", "report.md", "roc.png", "calibration.png")


def _num(v: float) -> float | None:
    """JSON has no NaN: undefined figures are written as null."""
    return None if math.isnan(v) else v


def report_dict(result: ValidationResult, created: str | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (the single source of report.md as well)."""
    conf = result.confusion
    t = result.threshold
    n_pos = sum(c.label for c in result.cases)
    return {
        "format": "blindread-validation/1",
        "run": result.run_id,
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"name": result.model, "version": result.model_version},
        "vendor": result.vendor,
        "output": result.output,
        "threshold": t,
        "decision_rule": "positive when probability >= threshold",
        "cases": {
            "n": len(result.cases),
            "positive": n_pos,
            "negative": len(result.cases) - n_pos,
            "dicom_files_without_label": result.files_without_label,
            "non_dicom_files": result.non_dicom_files,
        },
        "auroc": {
            "value": result.auroc,
            "ci_low": result.auroc_ci.low,
            "ci_high": result.auroc_ci.high,
            "level": result.auroc_ci.level,
            "method": result.auroc_ci.method,
            "resamples": result.auroc_ci.resamples,
            "seed": result.auroc_ci.seed,
        },
        "brier": result.brier,
        "at_threshold": {
            "tp": conf.tp,
            "fp": conf.fp,
            "tn": conf.tn,
            "fn": conf.fn,
            "sensitivity": _num(conf.sensitivity),
            "sensitivity_ci": [_num(v) for v in conf.sensitivity_ci],
            "specificity": _num(conf.specificity),
            "specificity_ci": [_num(v) for v in conf.specificity_ci],
            "ci_method": "Wilson score, 95%",
        },
        "roc": {
            "fpr": list(result.roc.fpr),
            "tpr": list(result.roc.tpr),
            "thresholds": [None if math.isinf(v) else v for v in result.roc.thresholds],
        },
        "calibration": [
            {
                "low": b.low,
                "high": b.high,
                "count": b.count,
                "mean_probability": b.mean_probability,
                "observed_fraction": b.observed_fraction,
            }
            for b in result.calibration
        ],
        "discordant": [
            {
                "pseudonym": c.pseudonym,
                "path": c.path,
                "label": c.label,
                "decision": c.decision(t),
                "probability": c.probability,
                "kind": "false negative" if c.label else "false positive",
            }
            for c in result.discordant
        ],
        "per_case": [
            {
                "pseudonym": c.pseudonym,
                "path": c.path,
                "label": c.label,
                "probability": c.probability,
                "decision": c.decision(t),
            }
            for c in result.cases
        ],
        "inference": result.inference,
        "privacy": (
            "Only CKKS ciphertexts and the public evaluation context were sent to the vendor; "
            "cases are named by keyed pseudonym and relative path."
        ),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def metric_rows(data: dict[str, Any], auroc_note: str = "") -> list[str]:
    """The report's metric table and plots, shared by the local and the pooled (multi-site)
    report so both read the same; ``auroc_note`` is appended inside the AUROC row."""
    a, th = data["auroc"], data["at_threshold"]
    lo_s, hi_s = th["sensitivity_ci"]
    lo_p, hi_p = th["specificity_ci"]
    return [
        "| metric | value |",
        "|---|---|",
        f"| AUROC | {a['value']:.4f} (95% CI {a['ci_low']:.4f}-{a['ci_high']:.4f}, "
        f"{a['method']}, {a['resamples']} resamples, seed {a['seed']}{auroc_note}) |",
        f"| Brier score | {data['brier']:.4f} |",
        f"| Threshold (manifest) | {data['threshold']:g} (positive when p >= threshold) |",
        f"| Sensitivity | {_pct(th['sensitivity'])} ({th['tp']}/{th['tp'] + th['fn']}; "
        f"Wilson 95% CI {_pct(lo_s)}-{_pct(hi_s)}) |",
        f"| Specificity | {_pct(th['specificity'])} ({th['tn']}/{th['tn'] + th['fp']}; "
        f"Wilson 95% CI {_pct(lo_p)}-{_pct(hi_p)}) |",
        f"| TP / FP / TN / FN | {th['tp']} / {th['fp']} / {th['tn']} / {th['fn']} |",
        "",
        "![ROC curve](roc.png) ![Calibration](calibration.png)",
    ]


def render_markdown(data: dict[str, Any]) -> str:
    """A human-readable summary of :func:`report_dict` output."""
    c = data["cases"]
    lines = [
        f"# Local validation: {data['model']['name']} {data['model']['version']}",
        "",
        f"Vendor peer `{data['vendor']}`, output `{data['output']}`, created {data['created']}. "
        "Inference ran under CKKS encryption; only ciphertexts left the hospital.",
        "",
        f"Cases: {c['n']} ({c['positive']} positive, {c['negative']} negative); "
        f"{c['dicom_files_without_label']} DICOM file(s) without a label and "
        f"{c['non_dicom_files']} non-DICOM file(s) were not evaluated.",
        "",
        *metric_rows(data),
        "",
        f"## Cases where the decision differs from the label ({len(data['discordant'])})",
        "",
    ]
    if data["discordant"]:
        lines += ["| pseudonym | path | label | decision | probability | kind |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for d in data["discordant"]:
            path = d["path"].replace("|", "\\|")
            lines.append(
                f"| {d['pseudonym']} | {path} | {d['label']} | {d['decision']} | "
                f"{d['probability']:.4f} | {d['kind']} |"
            )
    else:
        lines.append("None.")
    lines += [
        "",
        "Pseudonyms (`in-...`, of the SOP Instance UID) use this node's pseudonym key, as in "
        "the node's logs and audit ledger; without the key they cannot be linked to a UID.",
        "",
    ]
    return "\n".join(lines)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def roc_png(result: ValidationResult) -> bytes:
    """ROC curve with the chance diagonal and the manifest operating point."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    # straight segments, not steps: a group of tied scores moves diagonally (area = AUROC)
    ax.plot(result.roc.fpr, result.roc.tpr, color="C0",
            label=f"AUROC {result.auroc:.3f} "
                  f"[{result.auroc_ci.low:.3f}, {result.auroc_ci.high:.3f}]")  # fmt: skip
    conf = result.confusion
    ax.plot([1 - conf.specificity], [conf.sensitivity], "o", color="C3",
            label=f"threshold {result.threshold:g}")  # fmt: skip
    ax.set_xlim(-0.01, 1.01)  # a margin so a curve along an axis stays visible
    ax.set_ylim(-0.01, 1.02)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"ROC: {result.model} / {result.output} (n={len(result.cases)})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def calibration_png(result: ValidationResult) -> bytes:
    """Reliability diagram (observed fraction vs mean probability per bin) over a histogram."""
    fig = Figure(figsize=(5, 6))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    xs = [b.mean_probability for b in result.calibration]
    ys = [b.observed_fraction for b in result.calibration]
    ax.plot(xs, ys, "o-", color="C0", label=f"model (Brier {result.brier:.3f})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed fraction positive")
    ax.set_title(f"Calibration: {result.model} / {result.output}")
    ax.legend(loc="upper left")
    hist.bar(
        [(b.low + b.high) / 2 for b in result.calibration],
        [b.count for b in result.calibration],
        width=[(b.high - b.low) * 0.9 for b in result.calibration],
        color="C1",
    )
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("cases")
    fig.tight_layout()
    return _png(fig)


def write_report(result: ValidationResult, out_dir: Path) -> dict[str, Any]:
    """Write the four report files into ``out_dir`` (created if needed); returns the JSON data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    atomic_write(out_dir / "roc.png", roc_png(result), mode=0o644)
    atomic_write(out_dir / "calibration.png", calibration_png(result), mode=0o644)
    atomic_write(out_dir / "report.md", render_markdown(data).encode(), mode=0o644)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(out_dir / "report.json", text.encode(), mode=0o644)
    return data
