"""Champion/challenger experiments: sticky routing, and decisions on replayed real AlpacaEval traffic.

The replay: request ``i`` asks AlpacaEval instruction ``i % 805`` for unit
``user-i``; ``loop.route`` picks the arm and the answer is that arm's model's
real answer, scored ``quality_score = preference - 1`` (the GPT-4-turbo judge).
Win rates: Llama-3.2-1B 0.299 < Llama-3.2-3B 0.513 < Llama-3.1-8B 0.633.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Callable

import pytest

from afs_continuous import Arm, ContinuousLearningLoop, Decision, ManualClock, ModelVersion, VersionStatus

NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}
CHAMPION = "FuseChat-Llama-3.2-3B"
CHALLENGER = f"{CHAMPION}-ft1"


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------ routing
@pytest.fixture
def routed(tmp_path, clock, make_loop):
    """(worker loop, experiment): an operator's loop starts base vs cand; a worker routes with a 60 s cache."""
    admin = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS)
    admin.registry.register("cand", path=str(tmp_path), reason="test candidate")
    exp = admin.experiments.start("base", "cand")
    worker = make_loop(tmp_path, clock, route_cache_s=60, trigger_config=NO_TRIGGERS)
    return worker, exp


def test_route_returns_the_champion_without_an_experiment(tmp_path, clock, make_loop) -> None:
    loop = make_loop(tmp_path, clock, champion_model="nayru-v1", champion_model_path="/models/nayru-v1")
    versions = {loop.route(f"user-{i}").name for i in range(200)} | {loop.route().name for _ in range(50)}
    assert versions == {"nayru-v1"}
    assert loop.route("user-1").path == "/models/nayru-v1"
    assert loop.route("user-1").status is VersionStatus.CHAMPION


def test_same_unit_same_arm_within_an_experiment(routed) -> None:
    loop, exp = routed
    for i in range(300):
        uid = f"user-{i}"
        first = loop.route(uid).name
        assert {loop.route(uid).name for _ in range(3)} == {first}
        assert (first == "cand") == (loop.experiments.assign(exp, uid) is Arm.CHALLENGER)


def test_split_matches_the_traffic_fraction(routed) -> None:
    loop, exp = routed
    n = 20_000
    n_challenger = sum(loop.route(f"user-{i}").name == "cand" for i in range(n))
    assert exp.traffic_fraction == 0.1
    assert within_binomial(n_challenger, n, 0.1), n_challenger


def test_no_unit_id_draws_at_random(routed) -> None:
    loop, _ = routed
    n = 5_000
    n_challenger = sum(loop.route().name == "cand" for _ in range(n))
    assert within_binomial(n_challenger, n, 0.1), n_challenger


def test_a_new_experiment_reshuffles_units(routed, tmp_path, clock, make_loop) -> None:
    loop, first = routed
    units = [f"user-{i}" for i in range(10_000)]
    before = {u for u in units if loop.route(u).name == "cand"}
    loop.registry.register("cand2", reason="next candidate")
    second = loop.experiments.start("base", "cand2")
    assert first.seed != second.seed
    assert loop.experiments.get(first.id).status == "ended"
    worker = make_loop(tmp_path, clock, route_cache_s=60)  # a freshly started worker process
    after = {u for u in units if worker.route(u).name == "cand2"}
    assert within_binomial(len(after), 10_000, 0.1)
    assert len(before & after) < 0.2 * len(before)  # ~10% overlap if independent, 100% if not


def test_a_fixed_assignment_seed_reproduces_the_split(tmp_path, clock, make_loop, trainer, good_rows,
                                                      log_rows) -> None:
    """Issue 11 item 19: with ab_test_config.assignment_seed, two stores that deploy the same challenger route
    every user the same way (a seeded demo or replay reproduces its A/B figures); each experiment still gets its
    own seed (units reshuffle between experiments)."""
    arms, seeds = [], []
    for k in range(2):
        loop = make_loop(tmp_path / f"store{k}", clock, train_fn=trainer, trigger_config=NO_TRIGGERS,
                         database_url=None,  # two separate stores (SQLite files) on every backend
                         ab_test_config={"assignment_seed": "demo-0"}, generator_config={"min_samples": 10})
        log_rows(loop, good_rows[:20], "base")
        assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
        seeds.append(loop.experiments.active().seed)
        arms.append([loop.route(f"user-{i}").name for i in range(400)])
    assert seeds[0] == seeds[1] and arms[0] == arms[1]
    assert 10 < sum(name != "base" for name in arms[0]) < 80  # 10% of 400, give or take
    log_rows(loop, good_rows[20:40], "base")
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"  # a second challenger
    assert loop.experiments.active().seed != seeds[1]


def test_routing_sees_changes_at_once_with_no_cache(tmp_path, clock, make_loop) -> None:
    loop = make_loop(tmp_path, clock)  # route_cache_s=0
    assert loop.route("user-1").name == "base"
    loop.registry.register("cand")
    exp = loop.experiments.start("base", "cand", traffic_fraction=0.5)
    arms = {loop.route(f"u{i}").name for i in range(100)}
    assert arms == {"base", "cand"}
    with loop.store.write() as conn:
        loop.experiments.conclude(exp, Decision.STOP, conn=conn)
    assert {loop.route(f"u{i}").name for i in range(100)} == {"base"}


def test_route_keeps_a_units_arm_across_snapshots_and_follows_a_changed_assignment(tmp_path, clock,
                                                                                  make_loop) -> None:
    """route() reuses a unit's remembered arm while the assignment is unchanged (snapshot refreshes), and
    reassigns every unit when the experiment, its seed or its traffic fraction changes."""
    from sqlalchemy import text

    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS)  # route_cache_s=0: a new snapshot per call
    loop.registry.register("cand")
    exp = loop.experiments.start("base", "cand", traffic_fraction=0.5)
    units = [f"u{i}" for i in range(400)]

    def expected(e: Any) -> list[str]:
        return ["cand" if loop.experiments.assign(e, u) is Arm.CHALLENGER else "base" for u in units]

    for _ in range(2):  # the second pass answers from the remembered arms
        versions = [loop.route(u) for u in units]
        assert [v.name for v in versions] == expected(exp)
        assert {(v.experiment_id, v.arm) for v in versions} == {(exp.id, "champion"), (exp.id, "challenger")}
    with loop.store.write() as conn:  # a ramp: the same experiment, a new fraction
        conn.execute(text("UPDATE experiments SET traffic_fraction = 0.9 WHERE id = :i"), {"i": exp.id})
    ramped = loop.experiments.active()
    assert ramped.traffic_fraction == 0.9
    assert [loop.route(u).name for u in units] == expected(ramped)
    assert expected(ramped) != expected(exp)
    with loop.store.write() as conn:
        loop.experiments.conclude(ramped, Decision.STOP, conn=conn)
    second = loop.experiments.start("base", "cand", traffic_fraction=0.5)  # the same arms, a new seed
    versions = [loop.route(u) for u in units]
    assert [v.name for v in versions] == expected(second) != expected(exp)
    assert {v.experiment_id for v in versions} == {second.id}


def test_start_rejects_a_bad_fraction(routed) -> None:
    loop, _ = routed
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"traffic_fraction must be in \(0, 1\)"):
            loop.experiments.start("base", "cand", traffic_fraction=bad)


# ------------------------------------------------------------------ replay of real traffic
def test_truly_better_challenger_is_promoted_after_48_hours(experiment_loop, clock, alpaca, replay) -> None:
    loop = experiment_loop
    t0 = clock()
    served = replay(loop, alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B"), 6000, hours=46)
    assert within_binomial(served[CHALLENGER], 6000, 0.1)

    clock.set(t0 + timedelta(hours=47))
    early = loop.run_iteration()["experiment"]
    assert early["decision"] == "continue"
    assert early["reasons"] == ["minimum duration not reached: 47.0 h of 48 h"]
    assert early["comparison"]["lift"] > 0.05  # the evidence is there; only the clock holds it back
    assert loop.registry.champion().name == CHAMPION

    clock.set(t0 + timedelta(hours=49))
    result = loop.run_iteration()
    ev = result["experiment"]
    assert ev["decision"] == "promote", ev["reasons"]
    assert ev["comparison"]["significant"] and ev["comparison"]["ci_low"] > 0
    assert ev["challenger"]["mean"] == pytest.approx(0.633, abs=0.08)
    assert ev["champion"]["mean"] == pytest.approx(0.513, abs=0.03)
    assert ev["srm"]["mismatch"] is False
    champion = loop.registry.champion()
    assert champion.name == CHALLENGER
    assert champion.history[-1]["action"] == "promote" and champion.history[-1]["prior_champion"] == CHAMPION
    assert champion.history[-1]["evidence"]["decision"] == "promote"
    assert loop.registry.get(CHAMPION).status is VersionStatus.RETIRED
    assert loop.experiments.active() is None
    assert loop.experiments.history(1)[0].decision == "promote"
    assert loop.runs.get(1).status.value == "promoted"
    assert {loop.route(f"user-{i}").name for i in range(500)} == {CHALLENGER}
    assert loop.get_status_summary()["status"]["champion_model"] == CHALLENGER


def test_no_promotion_before_min_samples_per_arm(experiment_loop, clock, alpaca, replay) -> None:
    loop = experiment_loop
    t0 = clock()
    served = replay(loop, alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B"), 600, hours=40)
    clock.set(t0 + timedelta(hours=49))
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "continue"
    assert ev["reasons"] == [f"not enough samples: {served[CHALLENGER]} units in the smaller arm, need 200 per arm"]
    assert loop.registry.champion().name == CHAMPION
    assert loop.experiments.active() is not None


def test_a_a_experiment_is_not_promoted(experiment_loop, clock, alpaca, replay) -> None:
    """The 'retrained' model answers exactly like the champion: looks every hour must never promote."""
    loop = experiment_loop
    t0 = clock()
    same = alpaca(CHAMPION)
    replay(loop, same, same, 4000, hours=46)
    decisions = []
    for look in range(6):
        clock.set(t0 + timedelta(hours=49 + look))
        replay(loop, same, same, 300, hours=0.5, start=4000 + 300 * look)
        ev = loop.run_iteration()["experiment"]
        decisions.append(ev["decision"])
        assert abs(ev["comparison"]["lift"]) < 0.25
    assert decisions == ["continue"] * 6
    assert loop.registry.champion().name == CHAMPION
    exp = loop.experiments.active()
    assert exp.n_looks == 6 and exp.min_p_value is not None

    clock.set(t0 + timedelta(hours=337))  # undecided past max_duration_hours: stop, champion stays
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "stop"
    assert "maximum duration reached undecided" in ev["reasons"][-1]
    assert loop.registry.champion().name == CHAMPION
    assert loop.registry.get(CHALLENGER).status is VersionStatus.RETIRED


def test_sample_ratio_mismatch_blocks_promotion(experiment_loop, clock, alpaca) -> None:
    """Records exposed 70/30 although the experiment routes 90/10 (a broken router of the user's own):
    the decision is invalid."""
    from dataclasses import replace

    loop = experiment_loop
    t0 = clock()
    exp = loop.experiments.active()
    champ_rows, chall_rows = alpaca(CHAMPION), alpaca("FuseChat-Llama-3.1-8B")
    arms = {arm: replace(loop.registry.get(name), experiment_id=exp.id, arm=arm)
            for arm, name in (("champion", CHAMPION), ("challenger", CHALLENGER))}
    for i in range(2000):
        to_challenger = i % 10 < 3
        row = (chall_rows if to_challenger else champ_rows)[i % 805]
        loop.log_usage(row["instruction"], row["output"], model=arms["challenger" if to_challenger else "champion"],
                       quality_score=row["preference"] - 1.0, unit_id=f"user-{i}")
        clock.advance(seconds=60)
    loop.logger.flush()
    clock.set(t0 + timedelta(hours=60))
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "invalid"
    assert ev["srm"]["mismatch"] is True and ev["srm"]["observed"] == [1400, 600]
    assert ev["reasons"][0].startswith("sample-ratio mismatch: served 1400/600 units vs configured 90%/10%")
    assert loop.registry.champion().name == CHAMPION
    assert loop.experiments.active() is not None  # kept running (blocked) for someone to fix the routing
    assert loop.experiments.active().last_evaluation["decision"] == "invalid"
    # ... but not forever: at max_duration_hours an invalid experiment stops, the champion stays
    clock.set(t0 + timedelta(hours=337))
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "stop" and "maximum duration reached" in ev["reasons"][-1]
    assert loop.experiments.active() is None and loop.registry.champion().name == CHAMPION
    assert loop.registry.get(CHALLENGER).status is VersionStatus.RETIRED


def test_significantly_worse_challenger_is_stopped_early(experiment_loop, clock, alpaca, replay) -> None:
    loop = experiment_loop
    t0 = clock()
    replay(loop, alpaca(CHAMPION), alpaca("FuseChat-Llama-3.2-1B"), 4000, hours=10)
    clock.set(t0 + timedelta(hours=11))  # long before the 48 h minimum
    result = loop.run_iteration()
    ev = result["experiment"]
    assert ev["decision"] == "stop"
    assert ev["reasons"][0].startswith("challenger significantly worse: lift -")
    assert ev["comparison"]["lift"] < -0.2 and ev["comparison"]["ci_high"] < 0
    assert loop.registry.champion().name == CHAMPION
    retired = loop.registry.get(CHALLENGER)
    assert retired.status is VersionStatus.RETIRED and retired.history[-1]["evidence"]["decision"] == "stop"
    assert loop.experiments.active() is None
    assert loop.experiments.history(1)[0].decision == "stop"
    assert loop.runs.get(1).status.value == "rejected"
    assert {loop.route(f"user-{i}").name for i in range(2000)} == {CHAMPION}


def test_heavy_users_do_not_fake_a_sample_ratio_mismatch(experiment_loop, clock, alpaca) -> None:
    """Routing is by user; a few very active users in the challenger arm is no routing bug.

    The split is checked on units (distinct unit ids), which are what the router
    assigns; requests per user are heavy-tailed in real traffic.
    """
    loop = experiment_loop
    t0 = clock()
    rows = alpaca(CHAMPION)
    arms: dict[str, str] = {f"user-{u}": loop.route(f"user-{u}").name for u in range(3000)}
    heavy = [u for u, arm in arms.items() if arm == CHALLENGER][:5]
    i = 0
    for uid, arm in arms.items():
        for _ in range(150 if uid in heavy else 1):
            row = rows[i % len(rows)]
            loop.log_usage(row["instruction"], row["output"], model=loop.route(uid).name, unit_id=uid,
                           quality_score=row["preference"] - 1.0)
            i += 1
    loop.logger.flush()
    clock.set(t0 + timedelta(hours=49))
    ev = loop.run_iteration()["experiment"]
    n_challenger_units = sum(arm == CHALLENGER for arm in arms.values())
    assert ev["srm"]["observed"] == [3000 - n_challenger_units, n_challenger_units]
    assert ev["srm"]["mismatch"] is False
    assert ev["decision"] != "invalid"


# ------------------------------------------------------------------ one rule: the store and the simulation
@pytest.mark.parametrize(("true_lift", "overrides", "expected"), [
    (0.5, {"min_duration_hours": 12}, "promote"),
    (-0.5, {}, "stop"),
    (0.0, {"max_duration_hours": 30}, "stop"),
])
def test_store_decisions_equal_the_simulation_rule(store_url, clock, true_lift, overrides, expected) -> None:
    """Hourly evaluations of an experiment in a real store decide, look by look, exactly what the
    simulation behind docs/statistics.md decides on the same units (``first_decision_look``)."""
    import numpy as np

    from afs_continuous import ABTestConfig, Store, UsageLogger
    from afs_continuous import _stats_sequential as k
    from afs_continuous.experiment import ExperimentManager

    cfg = ABTestConfig(initial_challenger_traffic=0.5, min_samples_per_arm=50, **overrides)
    store = Store(store_url)
    logger = UsageLogger(store, clock=clock)
    manager = ExperimentManager(store, cfg, clock=clock)
    exp = manager.start("a", "b", seed="one-rule")
    t0 = clock()
    rng = np.random.default_rng(3)
    values: dict[str, list[float]] = {"a": [], "b": []}
    cumulative: list[tuple[float, ...]] = []
    store_decisions = []
    for hour in range(1, 61):
        for i in range(40):
            uid = f"u{hour}-{i}"
            arm = "b" if manager.assign(exp, uid) == Arm.CHALLENGER else "a"
            p = 0.3 * (1 + true_lift) if arm == "b" else 0.3
            y = float(rng.random() < p)
            values[arm].append(y)
            clock.set(t0 + timedelta(hours=hour - 1, seconds=90 * i))
            exposed = ModelVersion(arm, None, VersionStatus.CHAMPION, t0, experiment_id=exp.id,
                                   arm="challenger" if arm == "b" else "champion")  # as route() returns it
            logger.log(f"q {uid}", "r", exposed, quality_score=y, unit_id=uid)
        clock.set(t0 + timedelta(hours=hour))
        assert logger.flush(timeout_s=30)
        ev = manager.evaluate(exp, record=False)
        store_decisions.append(ev.decision.value)
        cumulative.append(tuple(x for arm in ("a", "b") for x in (
            float(np.mean(values[arm])), float(np.var(values[arm], ddof=1)), float(len(values[arm])))))
        if ev.decision.value in ("promote", "stop"):
            break
    logger.close()
    store.dispose()
    arms = [np.array([[row[j] for row in cumulative]]) for j in range(6)]
    look, decision = k.first_decision_look(*arms, config=cfg)
    assert store_decisions[-1] == expected
    assert (int(look[0]) + 1, k.DECISIONS[int(decision[0])]) == (len(store_decisions), expected)


# ------------------------------------------------------------------ exposure: stale routing caches
@pytest.mark.parametrize("log_with", ["name", "version"])
def test_records_served_from_a_stale_routing_cache_count_for_neither_arm(tmp_path, clock, make_loop, log_with) -> None:
    """Issue 9 item 4, the 4-worker service: each worker caches the routing state for route_cache_s; when the
    daemon starts an experiment, a worker keeps sending every unit to the champion until its cache expires
    (here: worker k's cache expires after 500 * (k + 1) requests of the whole service, as caches filled at
    different times do). Those requests were never assigned under the experiment: they must count for
    neither arm, else the champion arm gains ~1,250 units and the sample-ratio check trips."""
    daemon = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS)
    workers = [make_loop(tmp_path, clock, route_cache_s=3600, trigger_config=NO_TRIGGERS) for _ in range(4)]
    for worker in workers:
        assert worker.route("warm-up").experiment_id is None  # cache filled: no experiment runs
    daemon.registry.register("cand", path=str(tmp_path), reason="test candidate")
    exp = daemon.experiments.start("base", "cand", traffic_fraction=0.1, seed="stale-caches")
    assert exp.exposure_logging is True
    expires_at = [500 * (k + 1) for k in range(4)]
    exposed = {"champion": 0, "challenger": 0}
    stale = 0
    expired: set[int] = set()
    for i in range(8000):
        k = i % 4
        worker = workers[k]
        if i >= expires_at[k] and k not in expired:
            worker._invalidate()  # what route_cache_s does when this worker's cache gets old
            expired.add(k)
        uid = f"user-{i}"
        version = worker.route(uid)
        if version.experiment_id is None:
            stale += 1
            assert version.name == "base"
        else:
            assert version.experiment_id == exp.id
            exposed[version.arm] += 1
        worker.log_usage(f"question {i}", f"answer {i}", model=version.name if log_with == "name" else version,
                         unit_id=uid, quality_score=0.5 + 0.1 * (i % 3), latency_ms=100.0)
        clock.advance(seconds=20)
    assert stale == sum(e // 4 for e in expires_at) == 1250  # the stale requests of each worker
    for worker in workers:
        assert worker.logger.flush(timeout_s=30)
    ev = daemon.evaluate_experiment()
    assert ev is not None
    assert (ev.champion["n_units"], ev.challenger["n_units"]) == (exposed["champion"], exposed["challenger"])
    assert ev.champion["n_served"] + ev.challenger["n_served"] == 8000 - stale
    assert ev.srm["mismatch"] is False, ev.srm
    assert ev.decision != Decision.INVALID
    records = daemon.logger.get_records(limit=10_000)
    by_exposure = {(r["experiment_id"], r["arm"]) for r in records if r["unit_id"] != "warm-up"}
    assert by_exposure == {(None, None), (exp.id, "champion"), (exp.id, "challenger")}
