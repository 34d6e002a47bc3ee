"""What an admin can see and do, in one place: the REST API (:mod:`node.api.routes`) and the
web console (:mod:`node.console`) both call :class:`Operations`, so the two never disagree.

Everything returned is PHI-free: studies appear as keyed pseudonyms (the spool's and job
store's study keys), errors as the job store's vetted text (:func:`node.jobs.describe_error`)
with advice on what to do, steps as names and times (never their contents), rule dry-runs as
the names and actions of the rules that match (the explanation quotes attribute values, so
it stays with ``blindread rules test`` on the node).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from node.audit import AuditLedger, export_since, load_public_key, verify_ledger
from node.config import NodeConfig
from node.health import Prober
from node.jobs import STATES, Job
from node.metrics import NodeMetrics
from node.pauses import Pauses
from node.rules import evaluate
from node.service import NodeService

__all__ = ["ActionResult", "Operations", "advice"]

log = logging.getLogger(__name__)

_ADVICE = (
    ("JobDeferredError", "Resume the paused destination or vendor; the job then runs by itself."),
    ("VendorUnavailableError", "The vendor could not be reached: see its health on the"
     " dashboard (server running? network? certificates?), fix it, then retry the job."),
    ("VendorError", "The vendor refused the request (see the code above): check the model"
     " name and version with the vendor, then retry the job."),
    ("SendError", "A destination did not accept the results: check the PACS (running, AE"
     " title, port, TLS) on the dashboard, then retry the job."),
    ("cancelled", "Cancelled by an operator: retry it to run it again."),
    ("JobError", "A step of the job failed on this node: read the message, fix the cause"
     " (config, disk, input), then retry the job."),
    ("OSError", "A file operation failed on this node (disk full? permissions?): fix it,"
     " then retry the job."),
)


def advice(error: str | None) -> str:
    """What to do about a job's ``last_error`` (empty for no error)."""
    if not error:
        return ""
    for key, text in _ADVICE:
        if key in error:
            return text
    return ("Unexpected error in the node (its type is shown): see the node's log around the"
            " job's last attempt, then retry the job.")  # fmt: skip


@dataclass(frozen=True)
class ActionResult:
    """Outcome of an operator's action: ``ok``, and a message for the operator."""

    ok: bool
    message: str
    status: int = 200


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""


class Operations:
    """Read models and actions over the running node's parts (built by :mod:`node.app`)."""

    def __init__(
        self,
        cfg: NodeConfig,
        service: NodeService,
        pauses: Pauses,
        metrics: NodeMetrics,
        prober: Prober | None = None,
        audit: AuditLedger | None = None,
    ) -> None:
        self.cfg = cfg
        self.service = service
        self.pauses = pauses
        self.metrics = metrics
        self.prober = prober
        self.audit = audit

    # ------------------------------------------------------------------ reading
    def job_summary(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "study": job.study,
            "state": job.state,
            "attempts": job.attempts,
            "max_attempts": self.cfg.sender.max_attempts,
            "instances": len(job.files),
            "created_at": _iso(job.created_at),
            "updated_at": _iso(job.updated_at),
            "next_attempt_at": _iso(job.next_attempt_at) if job.state == "queued" else "",
            "error": job.last_error or "",
            "advice": advice(job.last_error),
        }

    def jobs(
        self, state: str | None = None, study: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Newest first; ``state`` one of :data:`node.jobs.STATES`, ``study`` a pseudonym
        prefix."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        found = self.service.store.list(state)
        if study:
            found = [j for j in found if j.study.startswith(study)]
        return [self.job_summary(j) for j in reversed(found[-limit:])]

    def job(self, job_id: int) -> dict[str, Any] | None:
        """A job with its steps (name, when finished, seconds since the previous one) and,
        while it runs, for how long."""
        job = self.service.store.get(job_id)
        if job is None:
            return None
        out = self.job_summary(job)
        steps = []
        folder = job.dir / "steps"
        if folder.is_dir():
            prev = job.created_at
            for p in sorted(folder.glob("*.json"), key=lambda q: q.stat().st_mtime):
                t = p.stat().st_mtime
                steps.append({"step": p.stem, "finished_at": _iso(t),
                              "seconds": round(max(0.0, t - prev), 3)})  # fmt: skip
                prev = t
        out["steps"] = steps
        running = [r for r in self.service.runner.running() if r.job.id == job_id]
        out["running_seconds"] = round(running[0].seconds(), 1) if running else None
        return out

    def studies_in_progress(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {"study": key, "first_received_at": _iso(first), "last_received_at": _iso(last),
             "completes_at": _iso(due), "completes_in_seconds": round(max(0.0, due - now), 1)}
            for key, first, last, due in self.service.monitor.timers()
        ]  # fmt: skip

    def quarantine(self) -> list[dict[str, Any]]:
        return [self.job_summary(j) for j in self.service.store.list("failed")]

    def peers(self) -> list[dict[str, Any]]:
        """Destinations and vendors: where, paused, reachable (``None``: not probed yet)."""
        out: list[dict[str, Any]] = []
        rows: list[tuple[str, str, str]] = [
            ("destination", n, f"{d.ae_title}@{d.host}:{d.port}")
            for n, d in self.cfg.destinations.items()
        ] + [("vendor", n, v.url) for n, v in self.cfg.vendors.items()]
        for kind, name, where in rows:
            ok, reason, at = (None, "", 0.0)
            if self.prober is not None:
                ok, reason, at = self.prober.state(kind, name)
            out.append({"kind": kind, "name": name, "address": where,
                        "paused": self.pauses.is_paused(kind, name), "reachable": ok,
                        "reason": reason, "checked_at": _iso(at)})  # fmt: skip
        return out

    def health(self) -> dict[str, Any]:
        return self.service.health().as_json()

    def dashboard(self) -> dict[str, Any]:
        """Throughput, queue depth, failures, health: what the console's front page shows."""
        counts = self.service.store.counts()
        day_ago = time.time() - 86400
        done = self.service.store.list("done")
        sample = self.metrics.registry.get_sample_value
        total_n = sample("blindread_step_seconds_count", {"step": "total"}) or 0.0
        total_s = sample("blindread_step_seconds_sum", {"step": "total"}) or 0.0
        return {
            "jobs": counts,
            "queue_depth": counts["queued"] + counts["running"],
            "done_last_24h": sum(1 for j in done if j.updated_at >= day_ago),
            "failed": counts["failed"],
            "studies_in_progress": len(self.service.monitor.timers()),
            "instances_received": sample("blindread_instances_received_total") or 0.0,
            "mean_total_seconds": round(total_s / total_n, 2) if total_n else None,
            "health": self.health(),
            "peers": self.peers(),
        }

    def audit_verify(self) -> dict[str, Any]:
        ledger = self.cfg.audit_ledger
        if not self.cfg.audit.enabled or not ledger.exists():
            return {"ok": None, "message": "no audit ledger yet (audit disabled or no event)"}
        key = load_public_key(Path(str(ledger) + ".pub"))
        report = verify_ledger(ledger, key, anchor=self.cfg.audit_anchor)
        return {"ok": report.ok, "message": report.describe(), "entries": report.entries}

    def audit_export(self, since: float) -> str:
        """The ledger's entries since ``since`` (epoch seconds), JSON lines (pseudonyms and
        hashes only, see :mod:`node.audit`)."""
        import datetime as dt

        ledger = self.cfg.audit_ledger
        if not ledger.exists():
            return ""
        when = dt.datetime.fromtimestamp(since, dt.UTC)
        return "".join(line + "\n" for line in export_since(ledger, when))

    def rules_dry_run(self, study: str) -> dict[str, Any] | None:
        """The rules that would match ``study`` (a spooled study in progress or a job's)."""
        files = sorted(self.service.spool.study_dir(study).glob("*.dcm")) if study else []
        if not files:
            for job in reversed(self.service.store.list()):
                if job.study == study:
                    files = [p for p in job.paths if p.exists()]
                    break
        if not files:
            return None
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        ae = meta.get("SourceApplicationEntityTitle") if meta is not None else None
        result = evaluate(self.cfg.routes, ds, str(ae).strip() or None if ae else None)
        return {
            "study": study,
            "instances": len(files),
            "matches": [
                {"rule": m.name, "index": m.index,
                 "action": "infer" if m.action.infer else
                 "forward_deidentified" if m.action.forward_deidentified else "discard"}
                for m in result.matches
            ],
        }  # fmt: skip

    # ------------------------------------------------------------------ acting
    def _audit(self, action: str, **details: Any) -> None:
        log.info("operator action %s %s", action, details)
        if self.audit is not None:
            self.audit.append("operator_action", {"action": action, **details})

    def retry(self, job_id: int, user: str) -> ActionResult:
        new = self.service.intake.retry(job_id)
        if new is None:
            return ActionResult(False, f"job {job_id} is not failed: nothing to retry", 409)
        self.service.runner.wake()
        self._audit("retry", job=job_id, user=user)
        return ActionResult(True, f"job {job_id} queued again")

    def cancel(self, job_id: int, user: str) -> ActionResult:
        new = self.service.intake.cancel(job_id, f"cancelled by operator {user}")
        if new is None:
            return ActionResult(False, f"job {job_id} is not queued (a running job can be"
                                " cancelled once its attempt ends)", 409)  # fmt: skip
        self._audit("cancel", job=job_id, user=user)
        return ActionResult(True, f"job {job_id} cancelled; its files are in quarantine")

    def requeue_failed(self, user: str) -> ActionResult:
        n = sum(1 for j in self.service.store.list("failed")
                if self.service.intake.retry(j.id) is not None)  # fmt: skip
        if n:
            self.service.runner.wake()
        self._audit("requeue_failed", jobs=n, user=user)
        return ActionResult(True, f"{n} failed job(s) queued again")

    def force_complete(self, study: str, user: str) -> ActionResult:
        if not self.service.force_complete(study):
            return ActionResult(False, f"study {study} is not in progress", 404)
        self._audit("force_complete", study=study, user=user)
        return ActionResult(True, f"study {study} completed now; its job is queued")

    def set_paused(self, kind: str, name: str, paused: bool, user: str) -> ActionResult:
        known = self.cfg.destinations if kind == "destination" else self.cfg.vendors
        if name not in known:
            return ActionResult(False, f"no {kind} named {name}", 404)
        self.pauses.set(kind, name, paused)
        if not paused:
            self.service.runner.wake()
        self._audit("pause" if paused else "resume", kind=kind, peer=name, user=user)
        return ActionResult(True, f"{kind} {name} {'paused' if paused else 'resumed'}")
