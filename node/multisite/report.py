"""The pooled report: report.json, report.md, roc.png, calibration.png, as the local one.

The JSON has the fields of ``blindread validate``'s report (``format`` differs:
``blindread-multisite/1``) minus everything per case (there is none: only sums were
revealed), plus the sites that were summed and any figures a site chose to publish. Files are
written with :func:`durable_io.atomic_write`, report.json last (its presence means complete).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from durable_io import atomic_write
from node.multisite.pooled import PooledFigures
from node.multisite.vector import GRID
from node.validate.report import metric_rows

__all__ = ["REPORT_FILES", "pooled_report_dict", "render_pooled_markdown", "write_pooled_report"]

REPORT_FILES = ("report.json", "report.md", "roc.png", "calibration.png")


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def pooled_report_dict(
    f: PooledFigures, *, model: str, version: str, output: str, run: str, sites: list[str],
    published: dict[str, Any], created: str | None = None,
) -> dict[str, Any]:
    conf = f.confusion
    return {
        "format": "blindread-multisite/1",
        "run": run,
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"name": model, "version": version},
        "output": output,
        "threshold": conf.threshold,
        "decision_rule": "positive when probability >= threshold",
        "sites": {"n": f.sites, "summed": sites},
        "cases": {"n": f.positives + f.negatives, "positive": f.positives,
                  "negative": f.negatives},
        "auroc": {
            "value": f.auroc, "ci_low": f.auroc_ci.low, "ci_high": f.auroc_ci.high,
            "level": f.auroc_ci.level, "method": f.auroc_ci.method,
            "resamples": f.auroc_ci.resamples, "seed": f.auroc_ci.seed,
            "histogram_bins": GRID, "max_binning_error": f.auroc_tie_bound,
        },
        "brier": f.brier,
        "at_threshold": {
            "tp": conf.tp, "fp": conf.fp, "tn": conf.tn, "fn": conf.fn,
            "sensitivity": _num(conf.sensitivity),
            "sensitivity_ci": [_num(v) for v in conf.sensitivity_ci],
            "specificity": _num(conf.specificity),
            "specificity_ci": [_num(v) for v in conf.specificity_ci],
            "ci_method": "Wilson score, 95%",
        },
        "roc": {"fpr": list(f.roc.fpr), "tpr": list(f.roc.tpr),
                "thresholds": [None if math.isinf(v) else v for v in f.roc.thresholds]},
        "calibration": [
            {"low": b.low, "high": b.high, "count": b.count,
             "mean_probability": b.mean_probability, "observed_fraction": b.observed_fraction}
            for b in f.calibration
        ],
        "published_by_sites": published,
        "privacy": (
            "Each site's vector of counts was summed under SecAgg+ secure aggregation; the "
            "coordinator saw only masked vectors and their sum. No per-site or per-case figure "
            "is in this report unless a site chose to publish its own (published_by_sites)."
        ),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def render_pooled_markdown(data: dict[str, Any]) -> str:
    a, c = data["auroc"], data["cases"]
    lines = [
        f"# Multi-site validation: {data['model']['name']} {data['model']['version']}",
        "",
        f"Run `{data['run']}`, output `{data['output']}`, created {data['created']}. "
        f"{data['sites']['n']} sites summed under secure aggregation: "
        f"{', '.join(data['sites']['summed'])}.",
        "",
        f"Cases: {c['n']} ({c['positive']} positive, {c['negative']} negative).",
        "",
        *metric_rows(
            data,
            f"; {a['histogram_bins']} bins, binning error <= {a['max_binning_error']:.1e}",
        ),
        "",
        "## Figures published by sites",
        "",
    ]
    if data["published_by_sites"]:
        for site, figs in sorted(data["published_by_sites"].items()):
            lines.append(f"- {site}: " + ", ".join(f"{k} {v}" for k, v in sorted(figs.items())))
    else:
        lines.append("None (no site opted in; nothing of a single site is shown).")
    lines += ["", data["privacy"], ""]
    return "\n".join(lines)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _roc_png(f: PooledFigures, title: str) -> bytes:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.plot(f.roc.fpr, f.roc.tpr, color="C0",
            label=f"AUROC {f.auroc:.3f} [{f.auroc_ci.low:.3f}, {f.auroc_ci.high:.3f}]")
    conf = f.confusion
    ax.plot([1 - conf.specificity], [conf.sensitivity], "o", color="C3",
            label=f"threshold {conf.threshold:g}")  # fmt: skip
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"ROC: {title} (n={f.positives + f.negatives}, {f.sites} sites)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _calibration_png(f: PooledFigures, title: str) -> bytes:
    fig = Figure(figsize=(5, 6))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    ax.plot([b.mean_probability for b in f.calibration],
            [b.observed_fraction for b in f.calibration], "o-", color="C0",
            label=f"model (Brier {f.brier:.3f})")  # fmt: skip
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed fraction positive")
    ax.set_title(f"Calibration: {title} ({f.sites} sites)")
    ax.legend(loc="upper left")
    hist.bar([(b.low + b.high) / 2 for b in f.calibration], [b.count for b in f.calibration],
             width=[(b.high - b.low) * 0.9 for b in f.calibration], color="C1")  # fmt: skip
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("cases")
    fig.tight_layout()
    return _png(fig)


def write_pooled_report(
    f: PooledFigures, out_dir: Path, *, model: str, version: str, output: str, run: str,
    sites: list[str], published: dict[str, Any],
) -> dict[str, Any]:
    """Write the four files; returns the JSON data plus ``_sha256`` of report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = pooled_report_dict(f, model=model, version=version, output=output, run=run,
                              sites=sites, published=published)  # fmt: skip
    title = f"{model} / {output}" if output else model
    atomic_write(out_dir / "roc.png", _roc_png(f, title), mode=0o644)
    atomic_write(out_dir / "calibration.png", _calibration_png(f, title), mode=0o644)
    atomic_write(out_dir / "report.md", render_pooled_markdown(data).encode(), mode=0o644)
    text = (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()
    atomic_write(out_dir / "report.json", text, mode=0o644)
    return {**data, "_sha256": hashlib.sha256(text).hexdigest()}
