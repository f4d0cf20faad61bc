"""Human-readable rendering of status summaries, iteration results, versions and run reports.

Every function takes the JSON-friendly dicts the API returns (``to_dict()``),
so ``--json`` and the text output always show the same facts.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_counts(counts: Mapping[str, Any]) -> str:
    """``candidates 805 -> after_quality 357 -> ...`` on one line."""
    return " -> ".join(f"{k} {v}" for k, v in counts.items())


def format_evaluation(ev: Mapping[str, Any]) -> list[str]:
    """Lines describing one experiment evaluation."""
    a, b = ev["champion"], ev["challenger"]
    lines = [
        f"  decision: {ev['decision'].upper()} after {ev['elapsed_hours']:.1f} h ({ev['metric']})",
        f"  champion   {a['model']:<24} units={a['n']:<6} mean={_num(a['mean'])}  requests={a['n_served']}",
        f"  challenger {b['model']:<24} units={b['n']:<6} mean={_num(b['mean'])}  requests={b['n_served']}",
        "  (units: users, or requests without a unit_id, with a score; a unit's requests are averaged into one "
        "sample; requests: every request served)",
    ]
    cmp = ev.get("comparison")
    if cmp:
        kind = "sequential" if cmp.get("sequential") else "fixed-horizon"
        lines.append(
            f"  lift {cmp['lift']:+.1%}  {1 - cmp['alpha']:.0%} CI [{cmp['ci_low']:+.1%}, {cmp['ci_high']:+.1%}]  "
            f"p={cmp['p_value']:.3g} ({kind})"
        )
    for g in ev.get("guardrails") or []:
        state = "VIOLATED" if g["violated"] else "holds"
        lines.append(f"  guardrail {g['metric']:<9} {g['change']:+.1%} (CI [{g['ci_low']:+.1%}, {g['ci_high']:+.1%}], "
                     f"margin +{g['margin']:.0%}): {state}")
    srm = ev.get("srm")
    if srm and srm.get("mismatch"):
        lines.append(f"  SAMPLE-RATIO MISMATCH: p={srm['p_value']:.2g}")
    for reason in ev.get("reasons", []):
        lines.append(f"  - {reason}")
    return lines


def _last_24h_lines(window: Mapping[str, Any] | None) -> list[str]:
    """Per model over the last 24 hours (from the rollups): calls, feedback, quality, latency quantiles."""
    if not window or not window.get("by_model"):
        return []
    lines = ["  last 24 h        calls  feedback  +rate  quality  p50 ms  p95 ms  p99 ms"]
    for model, f in window["by_model"].items():
        lines.append(f"    {model:<14} {f['calls']:>6}  {_pct(f['feedback_rate']):>8}  {_pct(f['positive_rate']):>5}  "
                     f"{_num(f['avg_quality']):>7}  {_num(f['latency_p50_ms'], '.0f'):>6}  "
                     f"{_num(f['latency_p95_ms'], '.0f'):>6}  {_num(f['latency_p99_ms'], '.0f'):>6}")
    return lines


def format_status(summary: Mapping[str, Any]) -> str:
    """Render :meth:`ContinuousLearningLoop.get_status_summary` for people."""
    u, s = summary["usage_stats"], summary["status"]
    lines = [
        "afs_continuous status",
        f"  store            {summary['store']}",
        *_configuration_line(summary.get("configuration")),
        f"  now              {s['now']}",
        f"  daemon lease     {_lease_text(summary.get('lease'))}",
        "",
        "Usage",
        f"  records          {u['total']}",
        f"  feedback rate    {_pct(u['feedback_rate'])}  (+{u['positive_feedback']} / -{u['negative_feedback']})",
        f"  avg quality      {_num(u['avg_quality_score'] if u['n_scored'] else None)}  ({u['n_scored']} scored)",
        f"  avg latency      {_num(u['avg_latency_ms'], '.1f')} ms",
    ]
    if u.get("by_model"):
        lines.append("  by model         " + ", ".join(f"{k}: {v}" for k, v in sorted(u["by_model"].items())))
    lines += _last_24h_lines(summary.get("last_24h"))
    writer = u.get("writer") or {}
    if writer.get("n_dropped"):
        lines.append(f"  DROPPED RECORDS  {writer['n_dropped']} (last error: {writer.get('last_error')})")
    drops = summary.get("drops") or {}
    if drops.get("records") or drops.get("feedback"):
        lines.append(f"  DROPPED (store)  {drops['records']} records, {drops['feedback']} feedback events by "
                     f"{drops['processes']} process(es); last 24 h: {drops['recent_records']} records, "
                     f"{drops['recent_feedback']} feedback; last at {drops['last_at']} ({drops['last_reason']})")
    lines += [
        "",
        "Models",
        f"  champion         {s['champion_model']}" + (f"  ({s['champion_path']})" if s.get("champion_path") else ""),
        f"  challenger       {s['challenger_model'] or '-'}"
        + (f"  at {_pct(s['challenger_traffic'], 0)} of traffic" if s["challenger_model"] else ""),
        f"  total retrains   {s['total_retrains']}",
        *_serving_lines(summary.get("serving")),
        "",
        "Triggers",
        f"  eligible samples {s['eligible_samples']} / {s['min_new_samples']} since {s['data_watermark'] or 'the start'}"
        f" (counted {s.get('eligible_checked_at') or '-'})",
        f"  last training    {s['last_training_at'] or 'never'}",
        f"  last check       {s.get('last_iteration_at') or 'never'}",
        f"  cooldown until   {s['cooldown_until'] or '-'}",
        f"  next scheduled   {s['next_scheduled_at'] or '-'}",
    ]
    exp = summary.get("experiment")
    if exp:
        lines += ["", f"Experiment {exp['id']}: {exp['champion']} vs {exp['challenger']} since {exp['started_at']}"]
        if exp.get("last_evaluation"):
            lines += format_evaluation(exp["last_evaluation"])
        else:
            lines.append("  not evaluated yet")
    watch = summary.get("promotion_watch")
    if watch:
        lines += ["", f"Watching champion {watch['champion']} against {watch['previous']}'s level "
                  f"{watch['baseline']['mean']:.3f} until {watch['until']} (rollback on a significant drop)"]
    runs = summary.get("training_runs") or []
    if runs:
        lines += ["", "Recent training runs"]
        for r in runs:
            extra = f" -> {r['model_version']}" if r.get("model_version") else ""
            why = _first_reason(r)
            lines.append(f"  #{r['id']:<4} {r['started_at'][:16]}  {r['trigger']:<13} {r['status']:<11}{extra}"
                         + (f"  ({why[:90]})" if why else ""))
    return "\n".join(lines)


def _serving_lines(serving: Mapping[str, Any] | None) -> list[str]:
    """The serving engine and its fallbacks (``summary["serving"]``); nothing for ``engine: none`` without events."""
    if not serving or (serving.get("engine") == "none" and not serving.get("fallbacks")):
        return []
    where = ", ".join(serving.get("base_urls") or []) or "-"
    lines = [f"  serving engine   {serving['engine']} ({where})",
             f"  fallbacks        {serving['fallbacks']} ({serving['fallbacks_24h']} in the last 24 h; "
             f"{serving['reloads']} reloads)"]
    last = serving.get("last_fallback")
    if last:
        lines.append(f"  last fallback    {last['at'][:19]} from {last['version']}: {(last.get('detail') or '-')[:100]}")
    ko = serving.get("last_load_failure")
    if ko:
        lines.append(f"  last load error  {ko['at'][:19]} {ko['version']} on {ko.get('replica') or '-'}: "
                     f"{(ko.get('detail') or '-')[:100]}")
    return lines


def _configuration_line(info: Mapping[str, Any] | None) -> list[str]:
    """Which configuration the status was computed with (set by the CLI; absent from Python summaries)."""
    if not info:
        return []
    if info["source"] == "daemon":
        text = f"as recorded by the daemon at {info.get('recorded_at')}"
    elif info["source"] == "file":
        text = f"--config {info['file']}"
        if info.get("differs_from_daemon"):
            text += f" (differs from the daemon's, recorded at {info.get('daemon_recorded_at')})"
    else:
        text = "defaults and environment (" + (info.get("note") or
                                               "no daemon has recorded its configuration in this store") + ")"
    return [f"  configuration    {text}"]


def _lease_text(lease: Mapping[str, Any] | None) -> str:
    """The daemon lease on one line: holder, since, until, and whether its process runs."""
    if not lease:
        return "none (no daemon running)"
    if lease.get("expired"):
        state = "expired: the next daemon takes over"
    else:
        state = {True: "process running", False: "process gone: the next daemon on this host takes over at once",
                 None: "on another host"}[lease.get("holder_alive")]
    return f"{lease['holder']}  (acquired {lease['acquired_at']}, expires {lease['expires_at']}; {state})"


def _first_reason(run: Mapping[str, Any]) -> str:
    decision = run.get("decision") or {}
    reasons = [r for r in decision.get("reasons") or [] if r]
    if reasons:
        return str(reasons[0])
    return (run.get("error") or "").split("\n")[0]


def _metrics(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    parts = []
    for key, value in metrics.items():
        if key == "model_path":
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (dict, list)):
            parts.append(f"{key}={json.dumps(value, sort_keys=True)}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts) or "-"


def format_versions(versions: Sequence[Mapping[str, Any]]) -> str:
    """Render ``[ModelVersion.to_dict(), ...]``: one line per version, its metrics and its audit history."""
    if not versions:
        return "no model versions"
    lines = []
    for v in versions:
        run = v["training_run_id"] if v["training_run_id"] is not None else "-"
        lines.append(f"{v['name']:<24} {v['status']:<10} created {v['created_at'][:19]}  parent {v['parent'] or '-':<16} "
                     f"run {run}")
        if v.get("path"):
            lines.append(f"    path     {v['path']}")
        if v.get("metrics"):
            lines.append(f"    metrics  {_metrics(v['metrics'])}")
        for h in v.get("history") or []:
            if h.get("action") == "register":
                continue
            prior = f" (prior champion {h['prior_champion']})" if h.get("prior_champion") else ""
            lines.append(f"    {h['at'][:19]}  {h['action']:<11} by {h.get('actor') or '-'}{prior}: {h.get('reason') or ''}")
    return "\n".join(lines)


def format_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    """Render ``[TrainingRun.to_dict(), ...]`` one line each (newest first)."""
    if not runs:
        return "no training runs"
    lines = []
    for r in runs:
        dry = " (dry run)" if r.get("dry_run") and r["status"] != "dry_run" else ""
        why = _first_reason(r)
        lines.append(
            f"#{r['id']:<4} {r['started_at'][:19]} {r['trigger']:<13} {r['status']:<11}{dry} "
            f"new={r['counts'].get('new_samples', '-')} version={r['model_version'] or '-'}"
            + (f"  {why[:100]}" if why else "")
        )
    return "\n".join(lines)


def format_run_report(report: Mapping[str, Any]) -> str:
    """Render one :meth:`TrainingRun.to_dict` report for people (``afs-continuous report RUN_ID``)."""
    r = report
    lines = [
        f"Training run #{r['id']}: {r['status']}" + ("  (dry run)" if r.get("dry_run") and r["status"] != "dry_run" else ""),
        f"  trigger          {(r.get('trigger_details') or {}).get('reason') or r['trigger']}",
        f"  started          {r['started_at']}",
        f"  finished         {r['finished_at'] or '-'}",
        f"  source records   {r['source_start'] or '-'} .. {r['source_end'] or '-'}",
        f"  samples          {format_counts(r['counts']) if r.get('counts') else '-'}",
    ]
    if r.get("data_path"):
        gone = " (deleted after the run; keep_training_data=false)" if r.get("data_deleted") else ""
        lines.append(f"  training data    {r['data_path']}{gone}")
    base, chal = r.get("baseline") or {}, r.get("challenger") or {}
    lines += [
        "",
        "Baseline",
        f"  version          {base.get('version') or '-'}" + ("  (pinned)" if base.get("pinned") else "  (champion at the time)"),
        f"  canary metrics   {_metrics(base.get('canary_metrics'))}"
        + (f"  ({base['canary_source']})" if base.get("canary_source") else ""),
        "",
        "Challenger",
        f"  version          {chal.get('version') or '-'}",
        f"  model path       {chal.get('model_path') or '-'}",
        f"  training metrics {_metrics(chal.get('training_metrics'))}",
        f"  canary metrics   {_metrics(chal.get('canary_metrics'))}",
    ]
    canary = r.get("canary")
    if canary:
        lines += ["", f"Canary gate: {'PASSED' if canary['passed'] else 'FAILED'}"]
        for c in canary.get("checks") or []:
            value = "n/a" if c.get("value") is None else f"{c['value']:.4f}"
            lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['metric']:<16} {c['rule']:<15} {value} (limit {c['limit']:g})")
    exp = r.get("experiment")
    if exp:
        lines += ["", f"Experiment {exp['id']}: {exp['champion']} vs {exp['challenger']}, {exp['status']}"
                  + (f", decision {exp['decision']}" if exp.get("decision") else "")]
        if exp.get("last_evaluation"):
            lines += format_evaluation(exp["last_evaluation"])
    d = r.get("decision") or {}
    lines += ["", f"Decision: {d.get('status')} by {d.get('decided_by') or '-'}"
              + (f" at {d['decided_at']}" if d.get("decided_at") else "")]
    if d.get("prior_champion"):
        lines.append(f"  prior champion   {d['prior_champion']}")
    if "would_deploy" in d:
        lines.append(f"  would deploy     {'yes' if d['would_deploy'] else 'no'}")
    for reason in d.get("reasons") or []:
        lines.append(f"  - {reason}")
    for reason in d.get("evidence_reasons") or []:
        lines.append(f"  - (evaluation) {reason}")
    version = r.get("version")
    if version:
        lines += ["", f"Resulting version {version['name']}: now {version['status']}"]
        for h in version.get("history") or []:
            prior = f" (prior champion {h['prior_champion']})" if h.get("prior_champion") else ""
            lines.append(f"  {h['at'][:19]}  {h['action']:<11} by {h.get('actor') or '-'}{prior}: {h.get('reason') or ''}")
    deploy = r.get("deploy")
    if deploy:
        lines += ["", f"Deployment refused by the serving engine (replica {deploy.get('replica') or '-'})",
                  f"  {deploy.get('engine_message') or deploy.get('error')}"]
    if r.get("error") and r["status"] in ("failed", "interrupted", "skipped", "deploy_failed"):
        lines += ["", "Error", *("  " + line for line in r["error"].rstrip().splitlines())]
    return "\n".join(lines)


def format_iteration(result: Mapping[str, Any]) -> str:
    """Render one :meth:`ContinuousLearningLoop.run_iteration` result for people."""
    lines = [f"iteration at {result['timestamp']}"]
    if result.get("drift"):
        lines.append(f"drift monitor: {result['drift']['reason']}")
        if result["drift"].get("rollback_refused"):
            lines.append(f"  NOT ROLLED BACK: {result['drift']['rollback_refused']}")
    if result.get("experiment"):
        lines.append("experiment:")
        lines += format_evaluation(result["experiment"])
    serving = result.get("serving") or {}
    for key, label in (("reloaded", "loaded again (a replica had lost it)"), ("unloaded", "unloaded (retired)")):
        if serving.get(key):
            lines.append(f"serving: {', '.join(serving[key])} {label}")
    for error in serving.get("errors") or []:
        lines.append(f"serving error: {error}")
    trig = result.get("trigger") or {}
    lines.append(f"trigger: {trig.get('reason', '-')}")
    for check in trig.get("checks", []):
        lines.append(f"  {'*' if check['fired'] else ' '} {check['trigger']:<13} {check['reason']}")
    retrain = result.get("retrain")
    if retrain:
        lines.append(f"training run #{retrain['run_id']}: {retrain['status']}")
        if retrain.get("counts"):
            lines.append("  data: " + format_counts(retrain["counts"]))
        if retrain.get("data_path") and retrain["status"] == "data_ready":
            lines.append(f"  training data: {retrain['data_path']}")
        canary = retrain.get("canary")
        if canary:
            lines.append(f"  canary vs {canary.get('baseline_version') or '-'}: {'passed' if canary['passed'] else 'FAILED'}"
                         f"  challenger {_metrics(canary['challenger'])}  baseline {_metrics(canary.get('baseline'))}")
        if "would_deploy" in retrain:
            lines.append(f"  dry run: would {'' if retrain['would_deploy'] else 'not '}be deployed")
        for reason in retrain.get("reasons") or []:
            lines.append(f"  - {reason}")
        for key in ("reason", "error"):
            if retrain.get(key):
                lines.append(f"  {key}: {retrain[key]}")
        if retrain.get("model_version"):
            lines.append(f"  model version: {retrain['model_version']} ({retrain.get('model_path')})")
        elif retrain.get("model_path"):
            lines.append(f"  model (not deployed): {retrain['model_path']}")
        lines.append(f"  report: afs-continuous report {retrain['run_id']}")
    return "\n".join(lines)
