"""The dashboard's views (afs_continuous.views) read what the loop stored, on SQLite and PostgreSQL, and the HTML
report renders them; the read never writes."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from afs_continuous import views
from afs_continuous._rollups import RELATIVE_ACCURACY
from afs_continuous.store import Store

CHAMPION = "FuseChat-Llama-3.2-3B"
CHALLENGER = f"{CHAMPION}-ft1"


def _replay(loop, clock, alpaca, hours: int, per_hour: int) -> list[dict]:
    """Routed requests, evaluated every hour (as the daemon does); returns what was logged."""
    champion, challenger = alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B")
    logged, i = [], 0
    for _ in range(hours):
        for _ in range(per_hour):
            uid = f"user-{i}"
            version = loop.route(uid)
            row = (challenger if version.name == CHALLENGER else champion)[i % len(champion)]
            latency = 200.0 + 7.0 * (i % 97)
            rid = loop.log_usage(row["instruction"], row["output"], model=version, unit_id=uid,
                                 quality_score=row["preference"] - 1.0, latency_ms=latency)
            vote = 1 if row["preference"] > 1.5 else -1
            if i % 3:  # two records in three get a vote
                loop.record_feedback(rid, vote)
            logged.append({"at": clock(), "model": version.name, "q": row["preference"] - 1.0, "lat": latency,
                           "vote": vote if i % 3 else None})
            i += 1
            clock.advance(seconds=3600 / per_hour)
        assert loop.logger.flush(timeout_s=30)
        loop.run_iteration()
    return logged


def test_views_show_what_the_loop_stored(experiment_loop, clock, alpaca) -> None:
    loop = experiment_loop
    logged = _replay(loop, clock, alpaca, hours=6, per_hour=450)
    loop.promote(CHALLENGER, reason="looks good", actor="alice")
    data = views.dashboard(loop.store, now=clock())

    # experiments: every stored look, in order, with its interval, threshold and decision points
    (exp,) = data["experiments"]
    looks = exp["looks"]
    assert len(looks) == 6 and exp["status"] == "ended" and exp["decision"] is not None
    assert exp["promotion_threshold"] == loop.config.ab_test_config.promotion_threshold
    assert [lk["at"] for lk in looks] == sorted(lk["at"] for lk in looks)
    for lk in looks:
        if lk["lift"] is not None:
            assert lk["ci_low"] <= lk["lift"] <= lk["ci_high"]
        assert lk["units_champion"] + lk["units_challenger"] > 0
        assert 0.0 <= lk["srm_p_value"] <= 1.0
    assert exp["decision_points"][0]["at"] == looks[0]["at"]
    assert exp["decision_points"][-1]["at"] == looks[-1]["at"] and exp["decision_points"][-1]["final"]
    assert all(p["decision"] != q["decision"] for p, q in zip(exp["decision_points"][:-2], exp["decision_points"][1:-1]))
    assert any(lk["guardrails"] for lk in looks)  # ~270 challenger units by the end: guardrails evaluated

    # per version per day: exact counts and means; latency quantiles within the stated 2%
    for day in data["model_days"]:
        mine = [r for r in logged if r["model"] == day["model"] and r["at"].date().isoformat() == day["day"]]
        if not mine:
            continue  # the fixture's training records, logged before the replay
        assert day["calls"] == len(mine)
        assert day["mean_quality"] == pytest.approx(sum(r["q"] for r in mine) / len(mine), rel=1e-9)
        voted = [r for r in mine if r["vote"] is not None]
        assert day["feedback_rate"] == pytest.approx(len(voted) / len(mine))
        assert day["positive_rate"] == pytest.approx(sum(r["vote"] == 1 for r in voted) / len(voted))
        lats = np.array([r["lat"] for r in mine])
        for q, key in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms")):
            exact = float(np.quantile(lats, q, method="inverted_cdf"))
            assert math.isclose(day[key], exact, rel_tol=RELATIVE_ACCURACY), (key, day[key], exact)
    assert sum(d["calls"] for d in data["model_days"] if d["model"] == CHALLENGER) == sum(
        r["model"] == CHALLENGER for r in logged)

    # training runs: the funnel is the run's counts in pipeline order; a train_fn without a curve has none
    (run,) = data["training_runs"]
    assert [s["stage"] for s in run["funnel"]][0] == "candidates"
    assert {s["stage"]: s["n"] for s in run["funnel"]} == {k: v for k, v in run["counts"].items()}
    assert run["loss_curve"] == [] and run["eval_curve"] == []
    assert views.training_run(loop.store, run["id"]) == run and views.training_run(loop.store, 99) is None

    # audit: the manual promotion, with who and why
    promote = [e for e in data["audit"] if e["action"] == "promote"]
    assert promote[-1]["version"] == CHALLENGER and promote[-1]["actor"] == "alice"
    assert promote[-1]["reason"] == "looks good" and promote[-1]["prior_champion"] == CHAMPION
    assert data["overview"]["champion"] == CHALLENGER and data["overview"]["challenger"] is None
    # the last 24 h of traffic: every logged request (the replay spans 6 h)
    assert data["overview"]["traffic_24h"]["by_model"][CHALLENGER] == sum(r["model"] == CHALLENGER for r in logged)

    pytest.importorskip("plotly")
    from afs_continuous._html_report import render_report

    page = render_report(data)
    for title in ("Experiment 1: relative lift and its always-valid 95% interval", "Calls per day",
                  "Run 1: training data funnel", "Promotions and rollbacks"):
        assert title in page
    assert "<script" in page and "cdn.plot.ly" not in page.split("</script>", 1)[1]


def test_an_unknown_experiment_is_none_and_an_empty_store_has_empty_views(tmp_path) -> None:
    store = Store(str(tmp_path / "usage.db"))
    assert views.experiment(store, 7) is None
    data = views.dashboard(store)
    assert data["model_days"] == [] and data["training_runs"] == [] and data["audit"] == []
    assert data["overview"]["traffic_24h"]["calls"] == 0 and data["overview"]["champion"] is None
    pytest.importorskip("plotly")
    from afs_continuous._html_report import render_report

    page = render_report(data)
    assert "No experiment yet." in page and "No training run yet." in page and "No usage recorded yet." in page


def test_the_views_write_nothing(experiment_loop, clock, alpaca, sqlite_rows) -> None:
    loop = experiment_loop
    _replay(loop, clock, alpaca, hours=1, per_hour=50)
    if not loop.store.is_sqlite:
        pytest.skip("checked on SQLite (the file's content)")
    loop.close()
    path = loop.store.path
    before = sqlite_rows(path)
    views.dashboard(Store(str(path), auto_upgrade=False), now=clock() + timedelta(hours=1))
    assert sqlite_rows(path) == before


def test_a_failed_run_shows_its_error_and_a_curve_returned_by_a_custom_train_fn_is_drawn(
        tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    calls = []

    def train(data_path: str) -> dict:
        calls.append(data_path)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (raised by this train_fn)")
        out = tmp_path / "adapter"
        out.mkdir()
        return {"model_path": str(out), "loss_curve": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                "eval_curve": [{"step": 0, "eval_loss": 2.2}, {"step": 2, "eval_loss": 1.7}]}

    loop = make_loop(tmp_path, clock, train_fn=train, trigger_config={"min_new_samples": None},
                     generator_config={"min_samples": 5, "include_existing_data": False})
    log_rows(loop, good_rows[:20], "base")
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "failed"
    clock.advance(hours=1)
    assert loop.run_iteration(manual=True)["retrain"]["status"] in ("deployed", "promoted")
    second, first = views.training_runs(loop.store)
    assert first["status"] == "failed" and "CUDA out of memory" in first["error"] and first["loss_curve"] == []
    assert second["loss_curve"] == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert second["eval_curve"][-1] == {"step": 2, "eval_loss": 1.7}
    assert views.training_runs(loop.store, limit=1) == [second]
    pytest.importorskip("plotly")
    from afs_continuous._html_report import runs_section

    html = runs_section([second, first])
    assert "Run 2: loss curve" in html and "Run 1: loss curve" not in html
    assert "CUDA out of memory (raised by this train_fn)" in html
