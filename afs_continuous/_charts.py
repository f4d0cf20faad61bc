"""Plotly figures of the dashboard views (private; needs the ``report`` or ``ui`` extra).

Each function takes the data of one view (:mod:`afs_continuous.views`) and returns a
``plotly.graph_objects.Figure`` with a title (the browser tests find the charts by it), or
None when there is nothing to draw. Times are drawn in UTC (the time axes carry no title; the pages say so).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from .errors import AfsContinuousError

__all__ = ["require_plotly", "traffic_24h", "daily", "lift", "arms", "guardrails", "funnel", "loss_curve",
           "DAILY_CHARTS"]

INSTALL_HINT = "pip install 'afs-continuous[report]'"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_BANDS = ("rgba(31,119,180,0.18)", "rgba(255,127,14,0.18)", "rgba(44,160,44,0.18)", "rgba(214,39,40,0.15)",
          "rgba(148,103,189,0.18)", "rgba(140,86,75,0.18)", "rgba(227,119,194,0.18)", "rgba(127,127,127,0.18)")
_DECISION_COLORS = {"promote": "#2ca02c", "stop": "#d62728", "continue": "#7f7f7f", "invalid": "#ff7f0e"}
#: The per-day charts: (title, field(s) of views.model_days, y-axis title, percent axis).
DAILY_CHARTS = (
    ("Calls per day", ("calls",), "calls", False),
    ("Mean quality score per day", ("mean_quality",), "mean quality_score", False),
    ("Feedback rate and positive rate per day", ("feedback_rate", "positive_rate"), "fraction of records", True),
    ("Latency p50 and p95 per day (ms)", ("latency_p50_ms", "latency_p95_ms"), "ms (within 2%)", False),
)


def require_plotly() -> Any:
    """Import plotly's graph objects, or raise AfsContinuousError naming the extra to install."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise AfsContinuousError(f"the report and the dashboard need plotly: {INSTALL_HINT}") from None
    return go


def _t(iso: str | None) -> str | None:
    """ISO 8601 text as the naive UTC text plotly.js reads (it ignores offsets)."""
    if iso is None:
        return None
    at = datetime.fromisoformat(iso)
    if at.tzinfo is not None:
        at = at.astimezone(timezone.utc).replace(tzinfo=None)
    return at.isoformat(sep=" ")


def _figure(title: str, *, height: int = 340, y_title: str | None = None, x_title: str | None = None,
            percent: bool = False) -> Any:
    go = require_plotly()
    fig = go.Figure()
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 15}}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 40}, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.3 if x_title else -0.2, "yanchor": "top", "x": 0})
    fig.update_yaxes(title_text=y_title, tickformat=".0%" if percent else None)
    fig.update_xaxes(title_text=x_title)
    return fig


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _models(rows: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({r["model"] for r in rows})


def traffic_24h(traffic: dict[str, Any]) -> Any:
    """Stacked bars: calls per hour per model version over the last 24 h of traffic."""
    hourly = traffic["hourly"]
    if not hourly:
        return None
    go = require_plotly()
    fig = _figure("Traffic, last 24 h (calls per hour per version)", y_title="calls")
    for i, model in enumerate(_models(hourly)):
        rows = [r for r in hourly if r["model"] == model]
        fig.add_trace(go.Bar(x=[_t(r["hour"]) for r in rows], y=[r["calls"] for r in rows], name=model,
                             marker_color=_color(i)))
    fig.update_layout(barmode="stack")
    return fig


def daily(days: list[dict[str, Any]]) -> list[Any]:
    """The :data:`DAILY_CHARTS` of :func:`afs_continuous.views.model_days` (one line per version and field)."""
    if not days:
        return []
    go = require_plotly()
    figs = []
    models = _models(days)
    for title, fields, y_title, percent in DAILY_CHARTS:
        fig = _figure(title, y_title=y_title, percent=percent)
        for i, model in enumerate(models):
            rows = [r for r in days if r["model"] == model]
            for j, f in enumerate(fields):
                label = model if len(fields) == 1 else f"{model} {f.replace('_ms', '').replace('_', ' ')}"
                fig.add_trace(go.Scatter(x=[r["day"] for r in rows], y=[r[f] for r in rows], name=label,
                                         mode="lines+markers", line={"color": _color(i), "dash": "dot" if j else None}))
        fig.update_xaxes(type="date", tickformat="%Y-%m-%d", dtick=86_400_000)
        figs.append(fig)
    return figs


def lift(exp: dict[str, Any]) -> Any:
    """The relative lift at every look with its always-valid interval, zero, the promotion threshold and
    the decision points (markers; the final decision annotated)."""
    looks = exp["looks"]
    if not looks:
        return None
    go = require_plotly()
    alpha = exp.get("alpha") or 0.05
    fig = _figure(f"Experiment {exp['id']}: relative lift and its always-valid {1 - alpha:.0%} interval",
                  height=380, y_title=f"relative lift of {exp.get('metric') or 'the primary metric'}",
                  percent=True)
    x = [_t(lk["at"]) for lk in looks]
    fig.add_trace(go.Scatter(x=x, y=[lk["ci_high"] for lk in looks], mode="lines", line={"width": 0},
                             name="interval (upper)", showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=[lk["ci_low"] for lk in looks], mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=_BANDS[0], name=f"always-valid {1 - alpha:.0%} interval",
                             hovertemplate="%{y:.1%}"))
    fig.add_trace(go.Scatter(x=x, y=[lk["lift"] for lk in looks], mode="lines", name="relative lift",
                             line={"color": _color(0)}, hovertemplate="%{y:+.1%}"))
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    threshold = exp.get("promotion_threshold")
    if threshold is not None:
        fig.add_hline(y=threshold, line={"color": _DECISION_COLORS["promote"], "dash": "dash", "width": 1},
                      annotation_text=f"promotion threshold {threshold:+.0%}", annotation_position="top left")
    points = exp["decision_points"]
    fig.add_trace(go.Scatter(
        x=[_t(p["at"]) for p in points], y=[p["lift"] if p["lift"] is not None else 0.0 for p in points],
        mode="markers", name="decision changed / final",
        marker={"size": 11, "symbol": "diamond", "line": {"width": 1, "color": "#222"},
                "color": [_DECISION_COLORS.get(p["decision"], "#7f7f7f") for p in points]},
        text=[f"{p['decision']}{' (final)' if p['final'] else ''}: {'; '.join(p['reasons'])[:160]}" for p in points],
        hovertemplate="%{text}<extra></extra>"))
    fig.update_yaxes(range=_focus([*looks[len(looks) // 4:]], ("lift", "ci_low", "ci_high"), (0.0, threshold)))
    final = points[-1] if points and points[-1]["final"] else None
    if final is not None:
        fig.add_annotation(x=_t(final["at"]), y=final["lift"] if final["lift"] is not None else 0.0,
                           text=f"final: {final['decision']}", showarrow=True, arrowhead=2, ax=-60, ay=-30)
    return fig


def _focus(rows: list[dict[str, Any]], keys: tuple[str, ...], extra: tuple[float | None, ...]) -> list[float] | None:
    """A y range holding ``keys`` of ``rows`` and ``extra``, padded 15%: the first looks' intervals are very
    wide and would flatten the rest (plotly's autoscale button shows them)."""
    values = [v for r in rows for k in keys if (v := r.get(k)) is not None] + [v for v in extra if v is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = 0.15 * (hi - lo or 1.0)
    return [lo - pad, hi + pad]


def arms(exp: dict[str, Any]) -> Any:
    """Units per arm at every look, the units the configured split expects for the challenger, and the
    sample-ratio check's p-value (right axis)."""
    looks = exp["looks"]
    if not looks:
        return None
    go = require_plotly()
    fig = _figure(f"Experiment {exp['id']}: units per arm and sample-ratio check", height=360, y_title="units")
    x = [_t(lk["at"]) for lk in looks]
    fig.add_trace(go.Scatter(x=x, y=[lk["units_champion"] for lk in looks], name=f"champion {exp['champion']}",
                             mode="lines", line={"color": _color(0)}))
    fig.add_trace(go.Scatter(x=x, y=[lk["units_challenger"] for lk in looks],
                             name=f"challenger {exp['challenger']}", mode="lines", line={"color": _color(1)}))
    fig.add_trace(go.Scatter(x=x, y=[lk["expected_challenger"] for lk in looks],
                             name=f"challenger expected at {exp['traffic_fraction']:.0%}", mode="lines",
                             line={"color": _color(1), "dash": "dot"}))
    fig.add_trace(go.Scatter(x=x, y=[lk["srm_p_value"] for lk in looks], name="sample-ratio p-value (right)",
                             mode="lines+markers", marker={"size": 4}, line={"color": _color(4)}, yaxis="y2"))
    fig.update_layout(yaxis2={"title": {"text": "sample-ratio p-value"}, "overlaying": "y", "side": "right",
                              "range": [0, 1], "dtick": 0.2, "tickformat": ".1f", "showgrid": False})
    return fig


def guardrails(exp: dict[str, Any]) -> Any:
    """Each guardrail's relative change (challenger vs champion; higher is worse) at every look, with its
    interval and its allowed margin."""
    metrics = sorted({g["metric"] for lk in exp["looks"] for g in lk["guardrails"]})
    if not metrics:
        return None
    go = require_plotly()
    fig = _figure(f"Experiment {exp['id']}: guardrails (relative change, higher is worse)", height=360,
                  y_title="relative change", percent=True)
    for i, metric in enumerate(metrics):
        rows = [(lk["at"], g) for lk in exp["looks"] for g in lk["guardrails"] if g["metric"] == metric]
        x = [_t(at) for at, _ in rows]
        fig.add_trace(go.Scatter(x=x, y=[g["ci_high"] for _, g in rows], mode="lines", line={"width": 0},
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=[g["ci_low"] for _, g in rows], mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor=_BANDS[(i + 2) % len(_BANDS)], name=f"{metric} interval",
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=[g["change"] for _, g in rows], name=metric, mode="lines",
                                 line={"color": _color(i + 2)}, hovertemplate="%{y:+.1%}"))
        fig.add_trace(go.Scatter(x=x, y=[g["margin"] for _, g in rows], name=f"{metric} margin", mode="lines",
                                 line={"color": _color(i + 2), "dash": "dash", "width": 1}, hoverinfo="skip"))
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    return fig


def funnel(run: dict[str, Any]) -> Any:
    """Samples left after each stage of the training-data pipeline of one run."""
    stages = run["funnel"]
    if not stages:
        return None
    go = require_plotly()
    fig = _figure(f"Run {run['id']}: training data funnel (samples after each stage)",
                  height=80 + 26 * len(stages), x_title="samples")
    fig.add_trace(go.Bar(y=[s["stage"] for s in stages], x=[s["n"] for s in stages], orientation="h",
                         marker_color=_color(0), text=[s["n"] for s in stages], textposition="auto", name="samples"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


def loss_curve(run: dict[str, Any]) -> Any:
    """Training loss per logged step and the eval loss before and after training."""
    curve, evals = run["loss_curve"], run["eval_curve"]
    if not curve and not evals:
        return None
    go = require_plotly()
    fig = _figure(f"Run {run['id']}: loss curve", height=340, y_title="loss (nats/token)", x_title="optimizer step")
    fig.add_trace(go.Scatter(x=[p.get("step") for p in curve], y=[p.get("loss") for p in curve], name="training loss",
                             mode="lines+markers", marker={"size": 5}, line={"color": _color(0)}))
    if evals:
        fig.add_trace(go.Scatter(x=[p.get("step") for p in evals], y=[p.get("eval_loss") for p in evals],
                                 name="eval loss (held out; before and after training)", mode="markers+text",
                                 marker={"size": 10, "color": _color(1)}, textposition="top right",
                                 text=[f"{p['eval_loss']:.3f}" if isinstance(p.get("eval_loss"), (int, float)) else ""
                                       for p in evals]))
    fig.update_layout(hovermode="closest")
    return fig
