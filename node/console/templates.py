# ruff: noqa: E501  (template text: HTML lines are kept whole)
"""The console's Jinja2 templates (autoescaped), kept in code so they ship with the package
without package-data rules; one small stylesheet inline, no script, no build step."""

from __future__ import annotations

from jinja2 import DictLoader, Environment, select_autoescape

__all__ = ["env"]

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% block title %}BlindRead{% endblock %} · BlindRead console</title>
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}
main{padding:12px 16px}table{border-collapse:collapse;background:#fff;margin:6px 0 14px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.ok{color:#1a7f37;font-weight:600}.degraded{color:#b35900;font-weight:600}
.unhealthy,.bad{color:#c62828;font-weight:600}.msg{background:#e8f0fe;padding:6px 10px}
.card{display:inline-block;background:#fff;border:1px solid #ddd;padding:8px 14px;margin:0 8px 8px 0}
.card b{display:block;font-size:22px}form.inline{display:inline}button{cursor:pointer}
</style></head><body>
<header><b>BlindRead</b>
{% if me %}<a href="/console/">Dashboard</a><a href="/console/jobs">Jobs</a>
<a href="/console/quarantine">Quarantine</a><a href="/console/audit">Audit</a>
<a href="/console/rules">Rules dry-run</a>
<span class="who">{{ me.user }} ({{ me.role }})
<form class="inline" method="post" action="/console/logout">
<input type="hidden" name="csrf" value="{{ me.csrf }}"><button id="logout">Log out</button>
</form></span>{% endif %}</header>
<main>{% if msg %}<p class="msg" id="msg">{{ msg }}</p>{% endif %}
{% block body %}{% endblock %}</main></body></html>"""

_BUTTON = """{% macro button(action, label, id) -%}
{% if me.operator %}<form class="inline" method="post" action="{{ action }}">
<input type="hidden" name="csrf" value="{{ me.csrf }}">
<button id="{{ id }}">{{ label }}</button></form>{% endif %}
{%- endmacro %}"""

_LOGIN = """{% extends "base" %}{% block title %}Log in{% endblock %}{% block body %}
<h2>Log in</h2>
<form method="post" action="/console/login">
<input type="hidden" name="csrf" value="{{ login_csrf }}">
<p><label>User <input name="user" id="user" autocomplete="username"></label></p>
<p><label>Password <input name="password" id="password" type="password"
 autocomplete="current-password"></label></p>
<p><button id="login">Log in</button></p></form>{% endblock %}"""

_JOB_ROWS = """{% macro job_rows(jobs) -%}
<table id="jobs"><tr><th>Job</th><th>Study (pseudonym)</th><th>State</th><th>Attempts</th>
<th>Updated</th><th>Error</th></tr>
{% for j in jobs %}<tr class="job" data-state="{{ j.state }}">
<td><a href="/console/jobs/{{ j.id }}" id="job-{{ j.id }}">{{ j.id }}</a></td>
<td>{{ j.study[:16] }}...</td><td class="state">{{ j.state }}</td>
<td>{{ j.attempts }}/{{ j.max_attempts }}</td><td>{{ j.updated_at }}</td>
<td>{{ j.error }}</td></tr>
{% else %}<tr><td colspan="6">none</td></tr>{% endfor %}</table>
{%- endmacro %}"""

_DASHBOARD = """{% extends "base" %}{% import "button" as b with context %}{% import "jobrows" as r %}
{% block title %}Dashboard{% endblock %}{% block body %}
{% set h = d.health %}
<h2>Node status: <span id="status" class="{{ h.status }}">{{ h.status }}</span></h2>
{% if h.reasons %}<ul id="reasons">{% for name, why in h.reasons.items() %}
<li><b>{{ name }}</b>: {{ why }}</li>{% endfor %}</ul>{% endif %}
<div><span class="card">queue depth<b id="queue-depth">{{ d.queue_depth }}</b></span>
<span class="card">done (24 h)<b id="done-24h">{{ d.done_last_24h }}</b></span>
<span class="card">failed<b id="failed">{{ d.failed }}</b></span>
<span class="card">studies arriving<b>{{ d.studies_in_progress }}</b></span>
<span class="card">instances received<b>{{ d.instances_received|int }}</b></span>
<span class="card">mean end-to-end<b>{{ d.mean_total_seconds if d.mean_total_seconds is not none else "-" }} s</b></span></div>
<h3>Vendors and PACS</h3>
<table id="peers"><tr><th>Kind</th><th>Name</th><th>Address</th><th>Reachable</th>
<th>Paused</th><th></th></tr>
{% for p in d.peers %}<tr id="peer-{{ p.kind }}-{{ p.name }}">
<td>{{ p.kind }}</td><td>{{ p.name }}</td><td>{{ p.address }}</td>
<td>{% if p.reachable is none %}not probed yet{% elif p.reachable %}<span class="ok">yes</span>
{% else %}<span class="bad">no</span> - {{ p.reason }}{% endif %}</td>
<td>{{ "paused" if p.paused else "" }}</td>
<td>{% if p.paused %}{{ b.button("/console/" ~ p.kind ~ "s/" ~ p.name ~ "/resume", "Resume", "resume-" ~ p.name) }}
{% else %}{{ b.button("/console/" ~ p.kind ~ "s/" ~ p.name ~ "/pause", "Pause", "pause-" ~ p.name) }}{% endif %}</td>
</tr>{% endfor %}</table>
<h3>Studies arriving</h3>
<table id="studies"><tr><th>Study (pseudonym)</th><th>Last image</th><th>Completes in</th><th></th></tr>
{% for s in studies %}<tr><td>{{ s.study[:16] }}...</td><td>{{ s.last_received_at }}</td>
<td>{{ s.completes_in_seconds }} s</td>
<td>{{ b.button("/console/studies/" ~ s.study ~ "/complete", "Complete now", "complete-" ~ loop.index) }}</td></tr>
{% else %}<tr><td colspan="4">none</td></tr>{% endfor %}</table>
<h3>Latest jobs</h3>{{ r.job_rows(jobs) }}{% endblock %}"""

_JOBS = """{% extends "base" %}{% import "jobrows" as r %}{% block title %}Jobs{% endblock %}
{% block body %}<h2>Jobs</h2>
<form method="get" action="/console/jobs">State <select name="state" id="state-filter">
<option value="">any</option>{% for s in states %}<option{{ " selected" if s == state else "" }}>{{ s }}</option>{% endfor %}
</select> Study <input name="study" value="{{ study }}"> <button id="filter">Filter</button></form>
{{ r.job_rows(jobs) }}{% endblock %}"""

_JOB = """{% extends "base" %}{% import "button" as b with context %}{% block title %}Job {{ j.id }}{% endblock %}
{% block body %}<h2>Job {{ j.id }}: <span id="job-state">{{ j.state }}</span></h2>
<table><tr><th>Study (pseudonym)</th><td>{{ j.study }}</td></tr>
<tr><th>Attempts</th><td>{{ j.attempts }} of {{ j.max_attempts }}</td></tr>
<tr><th>Instances</th><td>{{ j.instances }}</td></tr>
<tr><th>Created</th><td>{{ j.created_at }}</td></tr><tr><th>Updated</th><td>{{ j.updated_at }}</td></tr>
{% if j.next_attempt_at %}<tr><th>Next attempt</th><td>{{ j.next_attempt_at }}</td></tr>{% endif %}
{% if j.running_seconds is not none %}<tr><th>Running for</th><td>{{ j.running_seconds }} s</td></tr>{% endif %}
{% if j.error %}<tr><th>What failed</th><td id="job-error" class="bad">{{ j.error }}</td></tr>
<tr><th>What to do</th><td id="job-advice">{{ j.advice }}</td></tr>{% endif %}</table>
{% if j.state == "failed" %}{{ b.button("/console/jobs/" ~ j.id ~ "/retry", "Retry", "retry") }}{% endif %}
{% if j.state == "queued" %}{{ b.button("/console/jobs/" ~ j.id ~ "/cancel", "Cancel", "cancel") }}{% endif %}
<h3>Steps</h3><table id="steps"><tr><th>Step</th><th>Finished</th><th>Seconds</th></tr>
{% for s in j.steps %}<tr><td>{{ s.step }}</td><td>{{ s.finished_at }}</td><td>{{ s.seconds }}</td></tr>
{% else %}<tr><td colspan="3">no step finished yet</td></tr>{% endfor %}</table>{% endblock %}"""

_QUARANTINE = """{% extends "base" %}{% import "button" as b with context %}{% import "jobrows" as r %}
{% block title %}Quarantine{% endblock %}{% block body %}<h2>Quarantine</h2>
<p>Failed jobs; their files wait in quarantine until retried.
{{ b.button("/console/jobs/requeue-failed", "Requeue all failed", "requeue-all") }}</p>
{{ r.job_rows(jobs) }}{% endblock %}"""

_AUDIT = """{% extends "base" %}{% block title %}Audit{% endblock %}{% block body %}
<h2>Audit ledger</h2><p id="audit-result" class="{{ 'ok' if v.ok else 'bad' if v.ok is not none else '' }}">{{ v.message }}</p>
<form method="get" action="/console/audit/export">Export entries of the last
<input name="hours" value="24" size="4"> hours <button id="export">Download (JSON lines)</button></form>
{% endblock %}"""

_RULES = """{% extends "base" %}{% block title %}Rules dry-run{% endblock %}{% block body %}
<h2>Rules dry-run</h2><form method="get" action="/console/rules">
Study (pseudonym) <select name="study">{% for s in candidates %}
<option{{ " selected" if s == study else "" }}>{{ s }}</option>{% endfor %}</select>
<button id="dry-run">Run the rules</button></form>
{% if result %}<p>{{ result.instances }} instance(s); rules that match (nothing is sent):</p>
<table id="matches"><tr><th>#</th><th>Rule</th><th>Action</th></tr>
{% for m in result.matches %}<tr><td>{{ m.index }}</td><td>{{ m.rule }}</td><td>{{ m.action }}</td></tr>
{% else %}<tr><td colspan="3">no rule matches: the study would be left alone</td></tr>{% endfor %}</table>
{% elif study %}<p class="bad">no spooled or job files for this study</p>{% endif %}{% endblock %}"""

env = Environment(
    loader=DictLoader({
        "base": _BASE, "button": _BUTTON, "jobrows": _JOB_ROWS, "login": _LOGIN,
        "dashboard": _DASHBOARD, "jobs": _JOBS, "job": _JOB, "quarantine": _QUARANTINE,
        "audit": _AUDIT, "rules": _RULES,
    }),
    autoescape=select_autoescape(default=True, default_for_string=True),
)  # fmt: skip
