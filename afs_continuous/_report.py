"""Human-readable rendering of status summaries and iteration results."""

from __future__ import annotations

from typing import Any, Mapping


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
        f"  champion   {a['model']:<24} n={a['n']:<6} mean={_num(a['mean'])}  served={a['n_served']}",
        f"  challenger {b['model']:<24} n={b['n']:<6} mean={_num(b['mean'])}  served={b['n_served']}",
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


def format_status(summary: Mapping[str, Any]) -> str:
    """Render :meth:`ContinuousLearningLoop.get_status_summary` for people."""
    u, s = summary["usage_stats"], summary["status"]
    lines = [
        "afs_continuous status",
        f"  store            {summary['store']}",
        f"  now              {s['now']}",
        "",
        "Usage",
        f"  records          {u['total']}",
        f"  feedback rate    {_pct(u['feedback_rate'])}  (+{u['positive_feedback']} / -{u['negative_feedback']})",
        f"  avg quality      {_num(u['avg_quality_score'] if u['n_scored'] else None)}  ({u['n_scored']} scored)",
        f"  avg latency      {_num(u['avg_latency_ms'], '.1f')} ms",
    ]
    if u.get("by_model"):
        lines.append("  by model         " + ", ".join(f"{k}: {v}" for k, v in sorted(u["by_model"].items())))
    writer = u.get("writer") or {}
    if writer.get("n_dropped"):
        lines.append(f"  DROPPED RECORDS  {writer['n_dropped']} (last error: {writer.get('last_error')})")
    lines += [
        "",
        "Models",
        f"  champion         {s['champion_model']}" + (f"  ({s['champion_path']})" if s.get("champion_path") else ""),
        f"  challenger       {s['challenger_model'] or '-'}"
        + (f"  at {_pct(s['challenger_traffic'], 0)} of traffic" if s["challenger_model"] else ""),
        f"  total retrains   {s['total_retrains']}",
        "",
        "Triggers",
        f"  eligible samples {s['eligible_samples']} / {s['min_new_samples']} since {s['data_watermark'] or 'the start'}",
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
            err = f"  ({(r['error'] or '').splitlines()[0][:90]})" if r.get("error") else ""
            lines.append(f"  #{r['id']:<4} {r['started_at'][:16]}  {r['trigger']:<13} {r['status']:<11}{extra}{err}")
    return "\n".join(lines)


def format_iteration(result: Mapping[str, Any]) -> str:
    """Render one :meth:`ContinuousLearningLoop.run_iteration` result for people."""
    lines = [f"iteration at {result['timestamp']}"]
    if result.get("drift"):
        lines.append(f"drift monitor: {result['drift']['reason']}")
    if result.get("experiment"):
        lines.append("experiment:")
        lines += format_evaluation(result["experiment"])
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
        for key in ("reason", "error"):
            if retrain.get(key):
                lines.append(f"  {key}: {retrain[key]}")
        if retrain.get("model_version"):
            lines.append(f"  model version: {retrain['model_version']} ({retrain.get('model_path')})")
    return "\n".join(lines)
