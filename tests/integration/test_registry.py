"""ModelRegistry on a real store: register, promote, rollback, retire, with an audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

from afs_continuous import ManualClock, ModelRegistry, NotFoundError, Store, VersionStatus


@pytest.fixture
def store(tmp_path: Path):
    s = Store(str(tmp_path / "usage.db"))
    yield s
    s.dispose()


@pytest.fixture
def registry(store: Store, clock: ManualClock) -> ModelRegistry:
    return ModelRegistry(store, clock=clock)


def snapshot(registry: ModelRegistry) -> list[dict]:
    return [v.to_dict() for v in registry.list()]


@pytest.fixture
def two_versions(registry: ModelRegistry, clock: ManualClock) -> ModelRegistry:
    """v1 champion (initial), then v2 registered as challenger and promoted one hour later."""
    registry.ensure_champion("v1", "/models/v1")
    clock.advance(hours=1)
    registry.register("v2", path="/models/v2", parent="v1", training_run_id=1, metrics={"loss": 0.5},
                      reason="trained by run 1")
    clock.advance(hours=1)
    registry.promote("v2", reason="lift +12% (p 0.001)", evidence={"lift": 0.12, "p_value": 0.001})
    return registry


def test_register_records_who_why_when(registry: ModelRegistry, clock: ManualClock) -> None:
    champ = registry.ensure_champion("v1", "/models/v1")
    assert (champ.name, champ.status, champ.path, champ.promoted_at) == ("v1", VersionStatus.CHAMPION, "/models/v1", clock())
    clock.advance(minutes=30)
    v2 = registry.register("v2", path="/models/v2", parent="v1", training_run_id=7, metrics={"loss": 0.42},
                           reason="trained by run 7 (sample_count)")
    assert v2.status is VersionStatus.CHALLENGER and v2.is_challenger
    assert (v2.parent, v2.training_run_id, v2.metrics, v2.created_at) == ("v1", 7, {"loss": 0.42}, clock())
    [entry] = v2.history
    assert entry == {"at": clock().isoformat(), "action": "register", "from_status": None, "to_status": "challenger",
                     "actor": "daemon", "reason": "trained by run 7 (sample_count)", "prior_champion": "v1"}
    assert registry.champion().name == "v1" and registry.challenger().name == "v2"


def test_ensure_champion_only_bootstraps_once(registry: ModelRegistry) -> None:
    registry.ensure_champion("v1", "/models/v1")
    again = registry.ensure_champion("other", "/models/other")
    assert again.name == "v1"
    assert [v.name for v in registry.list()] == ["v1"]


def test_names_are_unique_and_non_empty(registry: ModelRegistry) -> None:
    registry.ensure_champion("v1")
    with pytest.raises(ValueError, match="model version 'v1' already exists; names are unique"):
        registry.register("v1")
    with pytest.raises(ValueError, match="non-empty"):
        registry.register("")


def test_a_new_challenger_retires_the_previous_one(registry: ModelRegistry) -> None:
    registry.ensure_champion("v1")
    registry.register("v2")
    registry.register("v3")
    assert {v.name: v.status.value for v in registry.list()} == {"v1": "champion", "v2": "retired", "v3": "challenger"}
    assert registry.get("v2").history[-1]["reason"] == "replaced by v3"


def test_promote_moves_the_champion_in_one_step_with_audit(two_versions: ModelRegistry, clock: ManualClock) -> None:
    reg = two_versions
    v1, v2 = reg.get("v1"), reg.get("v2")
    assert v2.is_champion and v2.promoted_at == clock()
    assert v1.status is VersionStatus.RETIRED and v1.retired_at == clock()
    promote = v2.history[-1]
    assert promote["action"] == "promote" and promote["actor"] == "daemon"
    assert promote["prior_champion"] == "v1" and promote["from_status"] == "challenger"
    assert promote["reason"] == "lift +12% (p 0.001)"
    assert promote["evidence"] == {"lift": 0.12, "p_value": 0.001}
    assert promote["at"] == clock().isoformat()
    retire = v1.history[-1]
    assert (retire["action"], retire["from_status"], retire["to_status"]) == ("retire", "champion", "retired")
    assert retire["reason"] == "replaced by v2: lift +12% (p 0.001)"
    assert [v.name for v in reg.list() if v.is_champion] == ["v2"]


def test_promoting_the_champion_changes_nothing(two_versions: ModelRegistry) -> None:
    before = snapshot(two_versions)
    assert two_versions.promote("v2", reason="again").name == "v2"
    assert snapshot(two_versions) == before


def test_promote_unknown_version_changes_nothing(two_versions: ModelRegistry) -> None:
    before = snapshot(two_versions)
    with pytest.raises(NotFoundError, match=r"unknown model version 'v9' \(known versions: v1, v2\)"):
        two_versions.promote("v9", reason="typo")
    assert snapshot(two_versions) == before


def test_rollback_restores_the_previous_champion(two_versions: ModelRegistry, clock: ManualClock) -> None:
    clock.advance(hours=5)
    restored = two_versions.rollback(reason="users complain about v2", actor="alice")
    assert restored.name == "v1" and restored.is_champion and restored.promoted_at == clock()
    entry = restored.history[-1]
    assert entry["action"] == "rollback" and entry["actor"] == "alice" and entry["prior_champion"] == "v2"
    assert entry["reason"] == "users complain about v2" and entry["at"] == clock().isoformat()
    v2 = two_versions.get("v2")
    assert v2.status is VersionStatus.RETIRED
    assert (v2.history[-1]["action"], v2.history[-1]["actor"]) == ("rolled_back", "alice")


@pytest.mark.parametrize("name", [None, "v1"])
def test_rollback_is_idempotent(two_versions: ModelRegistry, name: str | None) -> None:
    two_versions.rollback(name)
    after_first = snapshot(two_versions)
    assert two_versions.rollback(name).name == "v1"
    assert snapshot(two_versions) == after_first
    assert two_versions.rollback(name).name == "v1"
    assert snapshot(two_versions) == after_first


def test_rollback_to_unknown_version_raises_and_changes_nothing(two_versions: ModelRegistry) -> None:
    before = snapshot(two_versions)
    with pytest.raises(NotFoundError, match=r"unknown model version 'v0' \(known versions: v1, v2\)"):
        two_versions.rollback("v0")
    assert snapshot(two_versions) == before
    assert two_versions.champion().name == "v2"


def test_rollback_without_an_earlier_champion(registry: ModelRegistry) -> None:
    with pytest.raises(NotFoundError, match="no champion to roll back from"):
        registry.rollback()
    registry.ensure_champion("v1")
    before = snapshot(registry)
    with pytest.raises(NotFoundError, match="champion 'v1' has no earlier champion to roll back to"):
        registry.rollback()
    assert snapshot(registry) == before


def test_explicit_rollback_to_any_older_version(two_versions: ModelRegistry, clock: ManualClock) -> None:
    two_versions.register("v3")
    clock.advance(hours=1)
    two_versions.promote("v3", reason="better")
    assert two_versions.rollback("v1").name == "v1"
    assert {v.name: v.status.value for v in two_versions.list()} == {"v1": "champion", "v2": "retired", "v3": "retired"}


def test_retire(two_versions: ModelRegistry) -> None:
    two_versions.register("v3", reason="candidate")
    retired = two_versions.retire("v3", reason="stopped: significantly worse", evidence={"lift": -0.2})
    assert retired.status is VersionStatus.RETIRED
    assert retired.history[-1]["evidence"] == {"lift": -0.2}
    before = snapshot(two_versions)
    assert two_versions.retire("v3", reason="again").status is VersionStatus.RETIRED  # idempotent
    assert snapshot(two_versions) == before
    with pytest.raises(ValueError, match="'v2' is the champion; promote or roll back to another version"):
        two_versions.retire("v2", reason="oops")
    with pytest.raises(NotFoundError, match="unknown model version 'nope'"):
        two_versions.retire("nope", reason="typo")
    assert snapshot(two_versions) == before


def test_state_persists_across_registry_objects(two_versions: ModelRegistry, store: Store, tmp_path: Path) -> None:
    other = ModelRegistry(Store(str(tmp_path / "usage.db")))
    assert snapshot(other) == snapshot(two_versions)
    assert other.champion().name == "v2"
    other.store.dispose()
