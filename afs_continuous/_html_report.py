"""HTML of the dashboard views: the self-contained report file and the live dashboard's pages (private).

Sections are HTML fragments built from :mod:`afs_continuous.views` data and the figures of
:mod:`afs_continuous._charts`; :func:`page` wraps them into a document. The report inlines
plotly.js once (no network needed to open it); the live dashboard (:mod:`afs_continuous._ui`)
serves plotly.js from its own address. Every text from the store is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import _charts, views
from .store import Store

__all__ = ["page", "overview_section", "daily_section", "experiment_section", "experiments_index",
           "runs_section", "audit_section", "versions_section", "render_report", "write_report", "plotly_js"]

Link = Callable[[str, Any], str]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0} header a{color:#cfe3ff;text-decoration:none} header a:hover{text-decoration:underline}
main{max-width:1200px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:6px 0 10px} h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px} th,td{border-bottom:1px solid #e8eaed;padding:4px 10px;
text-align:left;vertical-align:top} th{background:#f1f3f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#666;font-size:13px} .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:8px}
.grid>*{min-width:0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e5e7eb}
.promote,.promoted,.champion{background:#d1fae5} .stop,.rejected,.failed,.rolled_back,.rollback,.deploy_failed,.interrupted{background:#fee2e2}
.continue,.running,.challenger,.deployed{background:#dbeafe}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of a value ('-' for None)."""
    return "-" if value is None else html.escape(str(value))


def pct(value: float | None, signed: bool = True) -> str:
    """A fraction as percent text ('+5.0%'), '-' for None."""
    return "-" if value is None else (f"{value:+.1%}" if signed else f"{value:.1%}")


def num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def when(iso: str | None) -> str:
    """ISO 8601 text as 'YYYY-MM-DD HH:MM UTC'."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def badge(text: Any) -> str:
    t = esc(text)
    return f'<span class="badge {t}">{t}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells are HTML already (escape text with :func:`esc`); columns in ``numeric`` right-aligned."""
    nums = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in nums else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def chart(fig: Any, div_id: str) -> str:
    """A figure as an HTML fragment (no plotly.js; the page loads it once), or '' for None."""
    if fig is None:
        return ""
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def plotly_js() -> str:
    """The plotly.js bundle shipped with the plotly package (served or inlined; never fetched)."""
    _charts.require_plotly()
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _no_link(kind: str, key: Any) -> str:
    return f"#{kind}-{key}"


def page(title: str, body: str, *, script: str, nav: Sequence[tuple[str, str]] = (), note: str = "") -> str:
    """A whole HTML document: header with ``nav`` links ``(label, href)``, then ``body``.

    Args:
        script: The ``<script>`` element(s) that load plotly.js (inline in the report, a URL in the UI).
    """
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in nav)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f'<style>{_CSS}</style>{script}'
            f'</head><body><header><h1>{esc(title)}</h1>{links}<span class="muted">{note}</span></header>'
            f"<main>{body}</main></body></html>")


def versions_section(ov: dict[str, Any]) -> str:
    rows = [(f"<b>{esc(v['name'])}</b>", badge(v["status"]), when(v["created_at"]), esc(v["parent"]),
             esc(v["training_run_id"]), when(v["promoted_at"]), when(v["retired_at"])) for v in ov["versions"]]
    return ("<h3>Model versions</h3>" + table(["version", "status", "created", "parent", "run", "last promoted",
                                                "retired"], rows) if rows else "<p>No model version yet.</p>")


def overview_section(ov: dict[str, Any], link: Link = _no_link) -> str:
    """Champion, challenger, traffic of the last 24 h (chart and per-version calls) and the versions table."""
    t = ov["traffic_24h"]
    exp = (f' in <a href="{esc(link("experiment", ov["experiment_id"]))}">experiment {ov["experiment_id"]}</a> '
           f"at {pct(ov['traffic_fraction'], False)} of traffic") if ov["experiment_id"] else ""
    calls = ", ".join(f"{esc(m)} {n:,}" for m, n in sorted(t["by_model"].items())) or "no traffic"
    fig = _charts.traffic_24h(t)
    return (f'<section id="overview"><h2>Overview</h2><p>Champion <b>{esc(ov["champion"])}</b>; challenger '
            f'<b>{esc(ov["challenger"])}</b>{exp}. Store {esc(ov["store"])}.</p>'
            f'<p>Traffic {when(t["start"])} to {when(t["end"])} (the last 24 h of the rollups): '
            f'{t["calls"]:,} calls ({calls}).</p>{chart(fig, "chart-traffic-24h")}'
            f"{versions_section(ov)}</section>")


def daily_section(days: list[dict[str, Any]]) -> str:
    """Per version per day: calls, mean quality, feedback and positive rates, latency quantiles."""
    if not days:
        return '<section id="daily"><h2>Per version per day</h2><p>No usage recorded yet.</p></section>'
    figs = "".join(chart(f, f"chart-daily-{i}") for i, f in enumerate(_charts.daily(days)))
    rows = [(esc(d["day"]), esc(d["model"]), f"{d['calls']:,}", num(d["mean_quality"]), pct(d["feedback_rate"], False),
             pct(d["positive_rate"], False), num(d["latency_p50_ms"], ".0f"), num(d["latency_p95_ms"], ".0f"))
            for d in days]
    return ('<section id="daily"><h2>Per version per day</h2><p class="muted">From the hourly rollups. Feedback rate: '
            "records with a vote / calls; positive rate: records whose latest vote is up / records with a vote; "
            "latency quantiles within 2% (relative) of the exact ones.</p>"
            f'<div class="grid">{figs}</div>'
            + table(["day (UTC)", "version", "calls", "mean quality", "feedback rate", "positive rate", "p50 ms",
                     "p95 ms"], rows, numeric=range(2, 8)) + "</section>")


def experiment_section(exp: dict[str, Any]) -> str:
    """One experiment: lift with its always-valid interval, units per arm and SRM, guardrails, decision points."""
    i = exp["id"]
    head = (f'<section id="experiment-{i}"><h2>Experiment {i}: {esc(exp["challenger"])} (challenger) vs '
            f'{esc(exp["champion"])} (champion) {badge(exp["status"])} {badge(exp["decision"]) if exp["decision"] else ""}'
            f'</h2><p class="muted">Started {when(exp["started_at"])}, ended {when(exp["ended_at"])}; challenger '
            f'traffic {pct(exp["traffic_fraction"], False)}; primary metric {esc(exp["metric"])}; promotion threshold '
            f'{pct(exp["promotion_threshold"])}; {len(exp["looks"])} looks. The interval is valid at every look: the '
            "lift is significant when it excludes 0; promotion needs a significant lift at or above the threshold "
            "(and the minimum duration and samples, no sample-ratio mismatch, no guardrail violated).</p>")
    if not exp["looks"]:
        return head + "<p>Not evaluated yet.</p></section>"
    charts = (chart(_charts.lift(exp), f"chart-exp-{i}-lift") + chart(_charts.arms(exp), f"chart-exp-{i}-arms")
              + (chart(_charts.guardrails(exp), f"chart-exp-{i}-guardrails")
                 or "<p>No guardrail evaluated yet (each arm needs the minimum samples).</p>"))
    rows = [(when(p["at"]), badge(p["decision"]) + (" final" if p["final"] else ""), pct(p["lift"]),
             f"[{pct(p['ci_low'])}, {pct(p['ci_high'])}]", num(p["p_value"], ".3g"),
             f"{p['units_champion']:,} / {p['units_challenger']:,}", num(p["srm_p_value"], ".3g"),
             esc("; ".join(p["reasons"]))) for p in exp["decision_points"]]
    last = exp["looks"][-1]
    guards = [(esc(g["metric"]), pct(g["change"]), f"[{pct(g['ci_low'])}, {pct(g['ci_high'])}]", pct(g["margin"]),
               "violated" if g["violated"] else "holds") for g in last["guardrails"]]
    return (head + charts + "<h3>Decision points (the decision changed, and the last look)</h3>"
            + table(["look", "decision", "lift", "interval", "p", "units champion / challenger", "SRM p", "reasons"],
                    rows, numeric=(2, 4, 6))
            + ("<h3>Guardrails at the last look</h3>" + table(["metric", "change", "interval", "margin", "verdict"],
                                                               guards) if guards else "") + "</section>")


def experiments_index(exps: list[dict[str, Any]], link: Link = _no_link) -> str:
    """A table of every experiment with its final decision and last lift."""
    if not exps:
        return '<section id="experiments"><h2>Experiments</h2><p>No experiment yet.</p></section>'
    rows = []
    for e in exps:
        last = e["looks"][-1] if e["looks"] else {}
        rows.append((f'<a href="{esc(link("experiment", e["id"]))}">{e["id"]}</a>', esc(e["champion"]),
                     esc(e["challenger"]), badge(e["status"]), badge(e["decision"]) if e["decision"] else "-",
                     when(e["started_at"]), when(e["ended_at"]), str(len(e["looks"])), pct(last.get("lift")),
                     f"[{pct(last.get('ci_low'))}, {pct(last.get('ci_high'))}]"))
    return ('<section id="experiments"><h2>Experiments</h2>'
            + table(["id", "champion", "challenger", "status", "decision", "started", "ended", "looks", "last lift",
                     "interval"], rows, numeric=(7, 8)) + "</section>")


def _canary(run: dict[str, Any]) -> str:
    canary = run.get("canary")
    if not canary:
        return '<p class="muted">No canary evaluation (no eval_fn).</p>'
    metrics = sorted(set(canary.get("challenger") or {}) | set(canary.get("baseline") or {}))
    rows = [(esc(m), num((canary.get("baseline") or {}).get(m), ".4g"), num((canary.get("challenger") or {}).get(m), ".4g"))
            for m in metrics]
    verdict = "passed" if canary.get("passed") else "failed"
    return (f"<h3>Canary: {badge(verdict)}</h3>" + table(["metric", "baseline", "challenger"], rows, numeric=(1, 2))
            + "".join(f'<p class="muted">{esc(r)}</p>' for r in canary.get("reasons") or []))


#: The dashboard's runs page draws the charts of this many newest runs (the table lists all; the report draws all).
DETAILED = 20


def runs_section(runs: list[dict[str, Any]], link: Link = _no_link, *, detailed: int = DETAILED) -> str:
    """Every training run in a table; trigger, outcome, data funnel, loss curve, canary metrics and error of
    the ``detailed`` newest (``runs`` newest first)."""
    if not runs:
        return '<section id="runs"><h2>Training runs</h2><p>No training run yet.</p></section>'
    rows = [(f'<a href="{esc(link("run", r["id"]))}">{r["id"]}</a>', when(r["started_at"]), esc(r["trigger"]),
             badge(r["status"]), esc(r["model_version"]), esc((r.get("counts") or {}).get("total")),
             esc("; ".join(r["decision"].get("reasons") or []))) for r in runs]
    body = table(["run", "started", "trigger", "outcome", "version", "samples", "why"], rows, numeric=(5,))
    if len(runs) > detailed:
        body += f'<p class="muted">Charts of the {detailed} newest runs; the others: follow their links.</p>'
    for r in runs[:detailed]:
        m = r.get("metrics") or {}
        figs = chart(_charts.funnel(r), f"chart-run-{r['id']}-funnel") + (
            chart(_charts.loss_curve(r), f"chart-run-{r['id']}-loss")
            or '<p class="muted">No loss curve stored (the training function returned none).</p>')
        losses = (f"train loss {num(m.get('train_loss'), '.4f')}, eval loss {num(m.get('eval_loss_before'), '.4f')} -> "
                  f"{num(m.get('eval_loss'), '.4f')}" if m else "no training metrics")
        error = f"<p><b>Error:</b> {esc(r['error'])}</p>" if r.get("error") else ""
        body += (f'<h3 id="run-{r["id"]}">Run {r["id"]}: {esc(r["trigger"])} {badge(r["status"])}</h3>'
                 f'<p class="muted">{when(r["started_at"])} to {when(r["finished_at"])}; {losses}; decided by '
                 f'{esc(r["decision"].get("decided_by"))}.</p>{error}<div class="grid">{figs}</div>{_canary(r)}')
    return f'<section id="runs"><h2>Training runs</h2>{body}</section>'


def audit_section(events: list[dict[str, Any]]) -> str:
    """Promotions, retirements and rollbacks (and registrations): when, who, why."""
    if not events:
        return '<section id="audit"><h2>Promotions and rollbacks</h2><p>No model version yet.</p></section>'
    rows = [(when(e["at"]), esc(e["version"]), badge(e["action"]), f"{esc(e['from_status'])} &rarr; {esc(e['to_status'])}",
             esc(e["actor"]), esc(e["prior_champion"]), esc(e["reason"])) for e in reversed(events)]
    return ('<section id="audit"><h2>Promotions and rollbacks</h2><p class="muted">Every status change of every '
            "version, newest first, from the registry's audit history.</p>"
            + table(["when", "version", "action", "status", "who", "prior champion", "why"], rows) + "</section>")


def render_report(data: dict[str, Any]) -> str:
    """The whole report (:func:`afs_continuous.views.dashboard` data) as one self-contained HTML document."""
    body = (overview_section(data["overview"]) + daily_section(data["model_days"])
            + experiments_index(data["experiments"])
            + "".join(experiment_section(e) for e in data["experiments"])
            + runs_section(data["training_runs"], detailed=len(data["training_runs"])) + audit_section(data["audit"]))
    nav = [("Overview", "#overview"), ("Per day", "#daily"), ("Experiments", "#experiments"),
           ("Training runs", "#runs"), ("Promotions and rollbacks", "#audit")]
    script = f'<script type="text/javascript">{plotly_js()}</script>'
    return page("afs_continuous report", body, script=script, nav=nav,
                note=f"generated {when(data['generated_at'])}")


def write_report(store: Store, path: str | os.PathLike[str], *, now: datetime | None = None,
                 promotion_threshold: float | None = None) -> Path:
    """Write the self-contained HTML report of ``store`` to ``path`` (mode 0600); return the absolute path.

    Raises:
        AfsContinuousError: plotly is not installed (the message names ``afs-continuous[report]``).
        OSError: The file cannot be written.
    """
    _charts.require_plotly()
    text = render_report(views.dashboard(store, now=now, promotion_threshold=promotion_threshold))
    out = Path(path).expanduser().absolute()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # names of versions and reasons: owner only
    os.fchmod(fd, 0o600)  # also when it overwrites an existing file
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return out
