"""The data of every dashboard view, read from the store (read-only).

What the HTML report (``afs-continuous report --html``) and the live dashboard
(``afs-continuous ui``) draw; docs/dashboard.md says how to read each chart. Every
function opens one read transaction on a :class:`~afs_continuous.store.Store` and
returns plain JSON-friendly dicts and lists (datetimes as ISO 8601 text, UTC). Nothing
is written. Usage figures come from the hourly rollups (:mod:`afs_continuous._rollups`),
never from a scan of the usage records, so the cost grows with hours x versions, not
with records; experiment figures come from the stored looks (every evaluation the daemon
made, :mod:`afs_continuous._looks`).

Example:
    >>> import os, tempfile
    >>> from afs_continuous.store import Store
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "usage.db"))
    >>> dashboard(store)["experiments"]
    []
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from . import _rollups
from ._looks import looks_of
from ._telemetry_tables import UsageRollup
from .errors import NotFoundError
from .experiment import _to_info
from .registry import ModelRegistry
from .runs import TrainingRunLog
from .store import ExperimentRow, Store

__all__ = ["overview", "model_days", "experiments", "experiment", "training_runs", "training_run", "audit_trail",
           "dashboard"]

_E = ExperimentRow.__table__  # type: ignore[attr-defined]
_R = UsageRollup.__table__  # type: ignore[attr-defined]
#: Latency quantiles of the per-day view (``latency_p50_ms``, ``latency_p95_ms``).
LATENCY_QUANTILES = (0.5, 0.95)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def overview(store: Store, *, now: datetime | None = None) -> dict[str, Any]:
    """Versions, the current champion and challenger, and the traffic of the last 24 hours.

    Args:
        store: The store (read only).
        now: The end of the traffic window (UTC; default the wall clock). The window ends at
            the earlier of ``now`` and the end of the newest rollup hour, so a store whose
            traffic stopped (or whose clock is simulated, like the demo's) shows its last
            day of traffic; ``traffic_24h["start"]``/``["end"]`` say which hours.

    Returns:
        ``{"store": url (password hidden), "champion": name | None, "challenger": name | None,
        "experiment_id": id of the running experiment | None, "traffic_fraction": float (0-1),
        "versions": [ModelVersion.to_dict() without ``history``], "traffic_24h": {"start", "end",
        "calls": int, "by_model": {model: calls}, "hourly": [{"hour", "model", "calls"}]}}``.
    """
    now = now or datetime.now(timezone.utc)
    registry = ModelRegistry(store)
    with store.read() as conn:
        versions = registry.list(conn=conn)
        running = conn.execute(select(_E).where(_E.c.status == "running").order_by(_E.c.id.desc())).first()
        newest = conn.execute(select(func.max(_R.c.hour))).scalar()
        end = _rollups.hour_of(now) + timedelta(hours=1)
        if newest is not None:
            end = min(end, _rollups.hour_of(newest) + timedelta(hours=1))
        start = end - timedelta(hours=24)
        rows = _rollups.read_rows(conn, since=start, until=end)
    hourly: dict[tuple[str, str], int] = {}
    by_model: dict[str, int] = {}
    for r in rows:
        key = (r["hour"].isoformat(), r["model"])
        hourly[key] = hourly.get(key, 0) + int(r["calls"])
        by_model[r["model"]] = by_model.get(r["model"], 0) + int(r["calls"])
    champion = next((v.name for v in versions if v.is_champion), None)
    challenger = next((v.name for v in versions if v.is_challenger), None)
    exp = _to_info(running) if running is not None else None
    return {
        "store": store.display_url,
        "champion": champion,
        "challenger": challenger,
        "experiment_id": exp.id if exp else None,
        "traffic_fraction": exp.traffic_fraction if exp else 0.0,
        "versions": [{k: v for k, v in ver.to_dict().items() if k != "history"} for ver in versions],
        "traffic_24h": {"start": start.isoformat(), "end": end.isoformat(), "calls": sum(by_model.values()),
                        "by_model": by_model,
                        "hourly": [{"hour": h, "model": m, "calls": n} for (h, m), n in sorted(hourly.items())]},
    }


def model_days(store: Store, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Usage per model version per UTC day, from the hourly rollups (every exposure summed).

    Args:
        store: The store (read only).
        since: Only days from this one on (UTC; None: every day stored).

    Returns:
        One dict per (day, model), oldest day first: ``{"day": "YYYY-MM-DD", "model", "calls",
        "mean_quality": mean quality_score of the records that have one | None, "feedback_rate":
        records with a vote / calls (fraction), "positive_rate": records whose latest vote is up /
        records with a vote (fraction) | None, "latency_p50_ms", "latency_p95_ms": nearest-rank
        quantiles of the merged hourly histograms, within 2% (relative) of the exact quantile
        (:data:`afs_continuous._rollups.RELATIVE_ACCURACY`) | None}``.
    """
    with store.read() as conn:
        rows = _rollups.read_rows(conn, since=since)
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (_rollups.day_of(r["hour"]).date().isoformat(), r["model"])
        a = acc.setdefault(key, {"calls": 0, "n_quality": 0, "quality_sum": 0.0, "voted": 0, "up": 0, "hist": {}})
        a["calls"] += int(r["calls"])
        a["n_quality"] += int(r["n_quality"])
        a["quality_sum"] += float(r["quality_sum"])
        a["voted"] += int(r["feedback_up"]) + int(r["feedback_down"]) + int(r["feedback_neutral"])
        a["up"] += int(r["feedback_up"])
        _rollups.merge_hist(a["hist"], r["latency_hist"])
    out = []
    for (day, model), a in sorted(acc.items()):
        p50, p95 = (_rollups.quantile(a["hist"], q) for q in LATENCY_QUANTILES)
        out.append({"day": day, "model": model, "calls": a["calls"],
                    "mean_quality": _ratio(a["quality_sum"], a["n_quality"]),
                    "feedback_rate": _ratio(a["voted"], a["calls"]), "positive_rate": _ratio(a["up"], a["voted"]),
                    "latency_p50_ms": p50, "latency_p95_ms": p95})
    return out


def experiments(store: Store, *, promotion_threshold: float | None = None) -> list[dict[str, Any]]:
    """Every experiment, running or ended, newest first, each as :func:`experiment` returns it."""
    with store.read() as conn:
        ids = [int(i) for (i,) in conn.execute(select(_E.c.id).order_by(_E.c.id.desc()))]
        return [_experiment(conn, i, promotion_threshold) for i in ids]


def experiment(store: Store, experiment_id: int, *, promotion_threshold: float | None = None) -> dict[str, Any] | None:
    """One experiment's looks, traffic, sample-ratio checks, guardrails and decisions; None when unknown.

    Args:
        store: The store (read only).
        experiment_id: The experiment's id.
        promotion_threshold: The minimum relative lift to promote (fraction; ``ab_test_config.
            promotion_threshold``), shown when no look recorded the one it used. Each look's
            own threshold (``comparison["min_lift"]``) wins: it is the one the daemon decided with.

    Returns:
        ``{"id", "champion", "challenger", "traffic_fraction", "status", "started_at", "ended_at",
        "decision" (final, None while running), "metric", "promotion_threshold", "alpha",
        "looks": [{"at", "elapsed_hours", "decision", "lift", "ci_low", "ci_high" (relative lift
        and its always-valid interval, fractions; None before the minimum sample size),
        "p_value", "significant", "threshold", "units_champion", "units_challenger",
        "expected_challenger" (units the configured split expects), "srm_p_value",
        "srm_mismatch", "reasons", "guardrails": [{"metric", "change", "ci_low", "ci_high",
        "margin", "violated"}]}], "decision_points": [the looks whose decision differs from the
        previous look's, and the last look, each with ``"final"``: True for an ended
        experiment's last look]}``.
    """
    with store.read() as conn:
        return _experiment(conn, experiment_id, promotion_threshold)


def _experiment(conn: Connection, experiment_id: int, threshold: float | None) -> dict[str, Any] | None:
    row = conn.execute(select(_E).where(_E.c.id == experiment_id)).first()
    if row is None:
        return None
    info = _to_info(row)
    looks = []
    for lk in looks_of(conn, experiment_id):
        ev = lk["evaluation"]
        cmp = ev.get("comparison") or {}
        srm = ev.get("srm") or {}
        expected = srm.get("expected") or [None, None]
        looks.append({
            "at": lk["evaluated_at"].isoformat(), "elapsed_hours": ev.get("elapsed_hours"),
            "decision": lk["decision"], "lift": lk["lift"], "ci_low": lk["ci_low"], "ci_high": lk["ci_high"],
            "p_value": lk["p_value"], "significant": cmp.get("significant"), "threshold": cmp.get("min_lift"),
            "alpha": cmp.get("alpha"), "units_champion": lk["units_champion"],
            "units_challenger": lk["units_challenger"], "expected_challenger": expected[-1],
            "srm_p_value": lk["srm_p_value"], "srm_mismatch": srm.get("mismatch"), "reasons": ev.get("reasons", []),
            "guardrails": [{k: g.get(k) for k in ("metric", "change", "ci_low", "ci_high", "margin", "violated")}
                           for g in ev.get("guardrails") or []],
            "metric": ev.get("metric"),
        })
    points = []
    for i, lk in enumerate(looks):
        last = i == len(looks) - 1
        if i == 0 or lk["decision"] != looks[i - 1]["decision"] or last:
            points.append({**lk, "final": last and info.status != "running"})
    used = next((lk["threshold"] for lk in reversed(looks) if lk["threshold"] is not None), None)
    return {
        "id": info.id, "champion": info.champion, "challenger": info.challenger,
        "traffic_fraction": info.traffic_fraction, "status": info.status, "started_at": _iso(info.started_at),
        "ended_at": _iso(info.ended_at), "decision": info.decision,
        "metric": next((lk["metric"] for lk in looks if lk["metric"]), None),
        "promotion_threshold": used if used is not None else threshold,
        "alpha": next((lk["alpha"] for lk in reversed(looks) if lk["alpha"] is not None), None),
        "looks": looks, "decision_points": points,
    }


def training_runs(store: Store, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Every training run (or the ``limit`` newest), newest first: :meth:`TrainingRun.to_dict` plus the views' fields.

    Returns:
        Dicts with the report's keys (``id``, ``trigger``, ``status``, ``counts``, ``metrics``,
        ``canary``, ``decision``, ``error``, ...) and ``"funnel"``: ``[{"stage", "n"}]`` (the
        samples left after each stage of the training-data pipeline, in pipeline order),
        ``"loss_curve"``: ``[{"step", "loss"}]`` and ``"eval_curve"``: ``[{"step", "eval_loss"}]``
        (as the training function returned them; empty when it returned none).
    """
    return [_run_view(run) for run in TrainingRunLog(store).list(limit=limit)]


def training_run(store: Store, run_id: int) -> dict[str, Any] | None:
    """One training run as :func:`training_runs` returns it; None when unknown."""
    try:
        return _run_view(TrainingRunLog(store).get(run_id))
    except NotFoundError:
        return None


def _run_view(run: Any) -> dict[str, Any]:
    d = run.to_dict()
    metrics = d.get("metrics") or {}
    d["funnel"] = [{"stage": k, "n": v} for k, v in (d.get("counts") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
    d["loss_curve"] = [p for p in metrics.get("loss_curve") or [] if isinstance(p, dict)]
    d["eval_curve"] = [p for p in metrics.get("eval_curve") or [] if isinstance(p, dict)]
    return d


def audit_trail(store: Store) -> list[dict[str, Any]]:
    """Every status change of every model version (registration, promotion, retirement, rollback), oldest first.

    Returns:
        ``[{"at", "version", "action", "from_status", "to_status", "actor", "reason",
        "prior_champion"}]`` from the versions' audit histories (``model_versions.history_json``).
    """
    keys = ("at", "action", "from_status", "to_status", "actor", "reason", "prior_champion")
    events = []
    for version in ModelRegistry(store).list():
        for h in version.history:
            events.append({"version": version.name, **{k: h.get(k) for k in keys}})
    return sorted(events, key=lambda e: (str(e["at"]), e["version"]))


def dashboard(store: Store, *, now: datetime | None = None, promotion_threshold: float | None = None
              ) -> dict[str, Any]:
    """Everything the report draws: ``{"generated_at", "overview", "model_days", "experiments",
    "training_runs", "audit"}`` (see each function; ``now`` as for :func:`overview`)."""
    now = now or datetime.now(timezone.utc)
    return {
        "generated_at": now.isoformat(),
        "overview": overview(store, now=now),
        "model_days": model_days(store),
        "experiments": experiments(store, promotion_threshold=promotion_threshold),
        "training_runs": training_runs(store),
        "audit": audit_trail(store),
    }
