"""Promotion safety on real judged traffic: the 2% gap, guardrails, clustered users, drift rollback."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from afs_continuous import RunStatus, VersionStatus
from afs_continuous.stats import ArmSummary, compare

CHAMPION = "FuseChat-Llama-3.2-3B"
CHALLENGER = f"{CHAMPION}-ft1"


def test_small_true_gap_is_not_promoted(tmp_path, clock, make_loop, alpaca):
    """8B vs Qwen-7B (true win rates 0.633 vs 0.646, about +2%): hourly looks for 7 days never promote.

    The assignment seed and the traffic are fixed so the test is reproducible; how often the rule
    promotes at +2% across experiments is measured by the simulation (docs/statistics.md).
    """
    loop = make_loop(tmp_path, clock, champion_model="llama-8b", route_cache_s=60,
                     trigger_config={"min_new_samples": None, "schedule_interval_hours": None,
                                     "quality_drop_threshold": None})
    loop.registry.register("qwen-7b", path=str(tmp_path), reason="a candidate with a +2% true gap")
    loop.experiments.start("llama-8b", "qwen-7b", seed="small-gap-1")
    champ, chall = alpaca("FuseChat-Llama-3.1-8B"), alpaca("FuseChat-Qwen-2.5-7B")
    rng = random.Random(7)
    decisions = []
    for hour in range(1, 169):
        for k in range(60):
            uid = f"user-{hour}-{k}"
            version = loop.route(uid)
            row = (chall if version.is_challenger else champ)[rng.randrange(805)]
            loop.log_usage(row["instruction"], row["output"], model=version.name, unit_id=uid,
                           quality_score=row["preference"] - 1.0, latency_ms=300.0)
            clock.advance(seconds=60)
        ev = loop.run_iteration()["experiment"]
        decisions.append(ev["decision"] if ev else "ended")
        if ev is None or ev["decision"] != "continue":
            break
    assert "promote" not in decisions
    assert loop.registry.champion().name == "llama-8b"


def _serve_8b_challenger(loop, clock, alpaca, *, challenger_latency_ms: float) -> None:
    """6,000 routed requests: the champion arm serves 3B answers at ~1 s, the challenger 8B answers,
    each request rated by thumbs from the judge's preference."""
    champ, chall = alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B")
    for i in range(6000):
        uid = f"user-{i}"
        version = loop.route(uid)
        row = (chall if version.is_challenger else champ)[i % 805]
        latency = (challenger_latency_ms if version.is_challenger else 1000.0) + i % 200
        rid = loop.log_usage(row["instruction"], row["output"], model=version.name, unit_id=uid,
                             quality_score=row["preference"] - 1.0, latency_ms=latency)
        loop.record_feedback(rid, 1 if row["preference"] > 1.5 else -1)
        clock.advance(seconds=30)


def test_latency_guardrail_stops_a_slower_challenger(experiment_loop, clock, alpaca):
    """Better answers (8B) served 40% slower: the latency guardrail (margin +10%) stops it."""
    loop = experiment_loop
    _serve_8b_challenger(loop, clock, alpaca, challenger_latency_ms=1400.0)
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "stop"
    latency = next(g for g in ev["guardrails"] if g["metric"] == "latency")
    assert latency["violated"] and latency["change"] == pytest.approx(0.4, abs=0.05)
    assert any(r.startswith("guardrail latency") for r in ev["reasons"])
    assert ev["comparison"]["lift"] > 0.05  # it would have won on quality
    assert loop.registry.get(CHALLENGER).status is VersionStatus.RETIRED
    assert loop.registry.champion().name == CHAMPION


def test_guardrails_hold_for_an_equally_fast_challenger(experiment_loop, clock, alpaca):
    loop = experiment_loop
    _serve_8b_challenger(loop, clock, alpaca, challenger_latency_ms=1000.0)
    ev = loop.run_iteration()["experiment"]
    assert {g["metric"] for g in ev["guardrails"]} == {"latency", "negative"}
    assert not any(g["violated"] for g in ev["guardrails"])
    assert ev["decision"] == "promote", ev["reasons"]


def test_repeat_users_widen_the_interval():
    """Per-unit (cluster-robust) summaries: 100 users x 20 identical requests carry the evidence of 100 users,
    not of 2,000 independent requests."""
    rng = random.Random(3)

    def arm(mean: float, units: int, per_unit: int) -> tuple[ArmSummary, ArmSummary]:
        s = s2 = m = m2 = sm = 0.0
        flat = []
        for _ in range(units):
            level = min(1.0, max(0.0, rng.gauss(mean, 0.25)))  # a user's requests share their level
            values = [level] * per_unit
            flat += values
            su, mu = sum(values), len(values)
            s, s2, m, m2, sm = s + su, s2 + su * su, m + mu, m2 + mu * mu, sm + su * mu
        return ArmSummary.from_unit_sums(units, s, s2, m, m2, sm), ArmSummary.from_values(flat)

    (ua, fa), (ub, fb) = arm(0.5, 900, 20), arm(0.5, 100, 20)
    clustered, naive = compare(ua, ub), compare(fa, fb)
    assert ua.n == 900 and fa.n == 18_000
    assert (clustered.ci_high - clustered.ci_low) > 3 * (naive.ci_high - naive.ci_low)


def test_drift_monitor_rolls_back_a_champion_that_drops(experiment_loop, clock, alpaca, replay):
    """Promoted on real 8B answers; afterwards the new champion serves 1B answers: rolled back automatically."""
    loop = experiment_loop
    t0 = clock()
    replay(loop, alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B"), 6000, hours=48)
    clock.set(t0 + timedelta(hours=49))
    assert loop.run_iteration()["experiment"]["decision"] == "promote"
    watch = loop.get_status_summary()["promotion_watch"]
    assert watch["champion"] == CHALLENGER and watch["previous"] == CHAMPION
    assert watch["baseline"]["mean"] == pytest.approx(0.513, abs=0.03)

    worse = alpaca("FuseChat-Llama-3.2-1B")  # win rate 0.299: a real, large drop
    drift = None
    for hour in range(1, 73):
        for k in range(100):
            uid = f"after-{hour}-{k}"
            version = loop.route(uid)
            assert version.name == CHALLENGER
            row = worse[(hour * 100 + k) % 805]
            loop.log_usage(row["instruction"], row["output"], model=version.name, unit_id=uid,
                           quality_score=row["preference"] - 1.0, latency_ms=250.0)
            clock.advance(seconds=36)
        drift = loop.run_iteration()["drift"]
        if drift and drift["rollback"]:
            break
    assert drift is not None and drift["rollback"], drift
    assert hour <= 12
    champion = loop.registry.champion()
    assert champion.name == CHAMPION
    last = champion.history[-1]
    assert last["action"] == "rollback" and last["actor"] == "drift-monitor" and "dropped significantly" in last["reason"]
    assert loop.registry.get(CHALLENGER).status is VersionStatus.RETIRED
    assert loop.runs.get(1).status is RunStatus.ROLLED_BACK
    assert loop.get_status_summary()["promotion_watch"] is None
    assert {loop.route(f"u{i}").name for i in range(200)} == {CHAMPION}


def test_drift_monitor_keeps_a_champion_that_holds(experiment_loop, clock, alpaca, replay):
    loop = experiment_loop
    t0 = clock()
    better = alpaca("FuseChat-Llama-3.1-8B")
    replay(loop, alpaca(CHAMPION), better, 6000, hours=48)
    clock.set(t0 + timedelta(hours=49))
    assert loop.run_iteration()["experiment"]["decision"] == "promote"
    last = None
    for hour in range(1, 80):
        for k in range(50):
            uid = f"after-{hour}-{k}"
            row = better[(hour * 50 + k) % 805]
            loop.log_usage(row["instruction"], row["output"], model=loop.route(uid).name, unit_id=uid,
                           quality_score=row["preference"] - 1.0, latency_ms=250.0)
            clock.advance(seconds=72)
        last = loop.run_iteration()["drift"]
        if last is None or last["finished"]:
            break
    assert last is not None and last["finished"] and not last["rollback"]
    assert "ended without a drop" in last["reason"]
    assert loop.registry.champion().name == CHALLENGER


def test_evaluate_experiment_reports_without_acting(experiment_loop, clock, alpaca, replay):
    loop = experiment_loop
    assert loop.evaluate_experiment().decision.value == "continue"  # nothing served yet
    t0 = clock()
    replay(loop, alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B"), 6000, hours=48)
    clock.set(t0 + timedelta(hours=49))
    ev = loop.evaluate_experiment()
    assert ev.decision.value == "promote" and ev.lift > 0.05 and ev.p_value < 0.05
    d = ev.to_dict()
    assert d["comparison"]["ci_low"] > 0 and d["challenger"]["n"] >= 200 and d["reasons"]
    assert loop.registry.champion().name == CHAMPION  # evaluated, not acted on
    assert loop.experiments.active() is not None
    assert loop.run_iteration()["experiment"]["decision"] == "promote"  # run_iteration acts on it
    assert loop.registry.champion().name == CHALLENGER


# ------------------------------------------------------------------ manual operations during an experiment
def test_rollback_to_the_champion_during_an_experiment_changes_nothing(experiment_loop):
    loop = experiment_loop
    exp = loop.experiments.active()
    version = loop.rollback(CHAMPION, reason="oops, already champion")
    assert version.name == CHAMPION
    assert loop.experiments.active() is not None and loop.experiments.active().id == exp.id
    assert loop.registry.get(CHALLENGER).status is VersionStatus.CHALLENGER
    assert loop.runs.get(1).status is RunStatus.DEPLOYED
    assert loop.promote(CHAMPION).name == CHAMPION and loop.experiments.active() is not None


def test_rollback_to_the_challenger_under_test_promotes_it(experiment_loop):
    loop = experiment_loop
    version = loop.rollback(CHALLENGER, reason="the operator trusts it")
    assert version.name == CHALLENGER and loop.registry.champion().name == CHALLENGER
    assert loop.experiments.active() is None
    assert loop.experiments.history(1)[0].decision == "promote"
    assert loop.runs.get(1).status is RunStatus.PROMOTED


def test_a_daemon_that_lost_its_lease_during_training_does_not_deploy(tmp_path, clock, make_loop, log_rows, alpaca):
    """The lease expires during a long train_fn and another daemon takes the store over."""
    from afs_continuous.clock import utc_now
    from afs_continuous.lease import Lease

    def train_while_taken_over(data_path: str) -> dict:
        later = lambda: utc_now() + timedelta(days=1)  # noqa: E731 - leases run on the wall clock
        other = Lease(loop.store, "daemon", ttl_s=60, holder="otherhost:1:abcd", clock=later)
        assert other.acquire() is not None  # our lease looked expired to it
        out = tmp_path / "adapter"
        out.mkdir()
        return {"model_path": str(out)}

    loop = make_loop(tmp_path, clock, generator_config={"min_samples": 5, "include_existing_data": False})
    log_rows(loop, [r for r in alpaca("FuseChat-Llama-3.1-8B") if r["preference"] > 1.7][:10], "base")
    result = loop.run_iteration(train_while_taken_over, manual=True)["retrain"]
    assert result["status"] == "interrupted" and "lost the daemon lease" in result["error"]
    assert [v.name for v in loop.registry.list()] == ["base"]  # nothing deployed
    assert loop.experiments.active() is None
    assert loop.triggers.state()["data_watermark"] is None  # no data consumed
