"""Configuration: defaults, the seed's config.json, validation messages, environment and precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afs_continuous import (
    ABTestConfig,
    ConfigError,
    DataGeneratorConfig,
    Durability,
    LoopConfig,
    PrimaryMetric,
    TriggerConfig,
    load_config,
)
from afs_continuous.errors import AfsContinuousError

# The "Configuration" block of the quick start, verbatim.
SEED_CONFIG_JSON = """\
{
  "check_interval_seconds": 3600,
  "trigger_config": {
    "min_new_samples": 1000,
    "schedule_interval_hours": 168
  },
  "generator_config": {
    "min_quality_score": 0.7,
    "min_user_feedback": 1
  },
  "ab_test_config": {
    "initial_challenger_traffic": 0.1,
    "promotion_threshold": 0.05
  }
}
"""


def write(tmp_path: Path, text: str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_quick_start() -> None:
    cfg = LoopConfig()
    assert cfg.check_interval_seconds == 3600
    assert cfg.enable_ab_testing is True
    t = cfg.trigger_config
    assert (t.min_new_samples, t.schedule_interval_hours, t.quality_drop_threshold, t.cooldown_hours) == (1000, 168, 0.10, 24)
    g = cfg.generator_config
    assert (g.min_quality_score, g.min_user_feedback, g.deduplicate) == (0.7, 1, True)
    a = cfg.ab_test_config
    assert (a.initial_challenger_traffic, a.promotion_threshold, a.min_duration_hours) == (0.1, 0.05, 48)
    assert a.primary_metric is PrimaryMetric.QUALITY_SCORE
    assert cfg.logger_config.durability is Durability.ASYNC
    assert cfg.store_url.startswith("sqlite:///") and "~" not in cfg.store_url


def test_seed_config_json_loads_every_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SEED_CONFIG_JSON), env={})
    raw = json.loads(SEED_CONFIG_JSON)
    assert cfg.check_interval_seconds == raw["check_interval_seconds"]
    for section in ("trigger_config", "generator_config", "ab_test_config"):
        for key, value in raw[section].items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = LoopConfig(trigger_config=TriggerConfig(min_new_samples=7, cooldown_hours=0))
    again = load_config(write(tmp_path, cfg.to_json()), env={})
    assert again == cfg
    assert again.trigger_config.cooldown_hours == 0  # 0 is a value, not "use the default"


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"trigger_config": {"min_new_sampels": 5}}, r"trigger_config\.min_new_sampels: unknown key \(did you mean 'min_new_samples'\?\)"),
        ({"check_interval_second": 60}, r"check_interval_second: unknown key \(did you mean 'check_interval_seconds'\?\)"),
        ({"ab_test_config": {"promotion_treshold": 0.1}}, r"ab_test_config\.promotion_treshold: unknown key \(did you mean 'promotion_threshold'\?\)"),
        ({"trigger_cofig": {"min_new_samples": 5}}, r"trigger_cofig: unknown key \(did you mean 'trigger_config'\?\)"),
    ],
)
def test_unknown_key_names_the_path_and_suggests_the_fix(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        LoopConfig.model_validate(data)


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"generator_config\.zzzz: unknown key$"):
        LoopConfig.model_validate({"generator_config": {"zzzz": 1}})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"check_interval_seconds": "hourly"}, r"check_interval_seconds: .*'hourly'"),
        ({"trigger_config": {"min_new_samples": "lots"}}, r"trigger_config\.min_new_samples: .*'lots'"),
        ({"trigger_config": {"cooldown_hours": -1}}, r"trigger_config\.cooldown_hours: .*greater than or equal to 0.*-1"),
        ({"ab_test_config": {"initial_challenger_traffic": 1.5}}, r"ab_test_config\.initial_challenger_traffic: .*less than 1.*1\.5"),
        ({"ab_test_config": {"initial_challenger_traffic": 10}}, r"ab_test_config\.initial_challenger_traffic"),
        ({"ab_test_config": {"primary_metric": "accuracy"}}, r"ab_test_config\.primary_metric"),
        ({"generator_config": {"min_user_feedback": 2}}, r"generator_config\.min_user_feedback"),
        ({"trigger_config": {"min_new_samples": 0}}, r"trigger_config\.min_new_samples"),
        ({"database_url": "/var/lib/usage.db"}, r"database_url must be a SQLAlchemy URL"),
        ({"trigger_config": 5}, r"trigger_config"),
        ({"retention_days": 0}, r"retention_days: .*greater than 0"),
        ({"retention_days": "30"}, r"retention_days: .*'30'"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        LoopConfig.model_validate(data)


def test_constructor_and_assignment_validate_too() -> None:
    with pytest.raises(ConfigError, match=r"cooldown_hours.*-3"):
        TriggerConfig(cooldown_hours=-3)
    with pytest.raises(ConfigError, match=r"initial_challenger_traffic.*1\.5"):
        LoopConfig(ab_test_config=ABTestConfig(initial_challenger_traffic=1.5))
    cfg = DataGeneratorConfig()
    with pytest.raises(ConfigError, match=r"rehearsal_fraction"):
        cfg.rehearsal_fraction = 1.0
    assert cfg.rehearsal_fraction == 0.2


def test_config_error_is_a_value_error_and_ours() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, AfsContinuousError)
    with pytest.raises(ValueError, match="cooldown_hours"):
        load_config(None, env={}, overrides={"trigger_config": {"cooldown_hours": -1}})


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "check_interval_seconds": 3600,\n  "trigger_config": {\n    "min_new_samples": 10,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON at line 5 column"):
        load_config(path, env={})


def test_missing_file_and_non_object_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.json"):
        load_config(tmp_path / "nope.json", env={})
    with pytest.raises(ConfigError, match=r"top level must be a JSON object, got list"):
        load_config(write(tmp_path, "[1, 2]"), env={})


def test_env_override_of_a_nested_key() -> None:
    cfg = load_config(None, env={"AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES": "500"})
    assert cfg.trigger_config.min_new_samples == 500
    cfg = load_config(None, env={"AFS_CONTINUOUS_TRIGGER_CONFIG__COOLDOWN_HOURS": "0",
                                 "AFS_CONTINUOUS_ENABLE_AB_TESTING": "false",
                                 "AFS_CONTINUOUS_DB_PATH": "/tmp/x/usage.db",
                                 "AFS_CONTINUOUS_TRIGGER_CONFIG__SCHEDULE_INTERVAL_HOURS": "null",
                                 "UNRELATED_VAR": "1"})
    assert cfg.trigger_config.cooldown_hours == 0
    assert cfg.enable_ab_testing is False
    assert cfg.db_path == "/tmp/x/usage.db"
    assert cfg.trigger_config.schedule_interval_hours is None


def test_env_override_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES", "321")
    assert load_config().trigger_config.min_new_samples == 321


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        ({"AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES": "lots"}, r"trigger_config\.min_new_samples: .*'lots'"),
        ({"AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPELS": "5"}, r"trigger_config\.min_new_sampels: unknown key \(did you mean 'min_new_samples'\?\)"),
        ({"AFS_CONTINUOUS_AB_TEST_CONFIG__INITIAL_CHALLENGER_TRAFFIC": "1.5"}, r"initial_challenger_traffic"),
    ],
)
def test_bad_env_override_is_a_config_error(env: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, env=env)


def test_precedence_overrides_then_env_then_file_then_default(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"trigger_config": {"min_new_samples": 1000, "cooldown_hours": 12}}))
    env = {"AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES": "500"}
    assert load_config(path, env={}).trigger_config.min_new_samples == 1000
    from_env = load_config(path, env=env)
    assert from_env.trigger_config.min_new_samples == 500
    assert from_env.trigger_config.cooldown_hours == 12  # a sibling key from the file survives the env merge
    assert from_env.trigger_config.schedule_interval_hours == 168  # default
    top = load_config(path, env=env, overrides={"trigger_config": {"min_new_samples": 200}})
    assert top.trigger_config.min_new_samples == 200
    assert top.trigger_config.cooldown_hours == 12


# ---- strict numbers and booleans, finite numbers, encodings (issue 11 item 12) -----------------------------------

@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"check_interval_seconds": Infinity}', r"check_interval_seconds: .*finite number.*inf"),
        ('{"check_interval_seconds": NaN}', r"check_interval_seconds: .*finite number.*nan"),
        ('{"trigger_config": {"schedule_interval_hours": Infinity}}', r"trigger_config\.schedule_interval_hours: .*finite"),
        ('{"ab_test_config": {"max_duration_hours": -Infinity}}', r"ab_test_config\.max_duration_hours: .*finite"),
        ('{"check_interval_seconds": true}', r"check_interval_seconds: .*valid number.*True"),
        ('{"check_interval_seconds": "1"}', r"check_interval_seconds: .*valid number.*'1'"),
        ('{"trigger_config": {"min_new_samples": true}}', r"trigger_config\.min_new_samples: .*valid integer.*True"),
        ('{"trigger_config": {"min_new_samples": "1"}}', r"trigger_config\.min_new_samples: .*valid integer.*'1'"),
        ('{"trigger_config": {"min_new_samples": 10.5}}', r"trigger_config\.min_new_samples: .*valid integer.*10\.5"),
        ('{"generator_config": {"min_user_feedback": true}}', r"generator_config\.min_user_feedback: .*valid integer"),
        ('{"generator_config": {"min_quality_score": false}}', r"generator_config\.min_quality_score: .*valid number"),
        ('{"enable_ab_testing": 1}', r"enable_ab_testing: .*valid boolean.*1"),
        ('{"retention_days": NaN}', r"retention_days: .*finite"),
        ('{"retention_days": true}', r"retention_days: .*valid number.*True"),
        ('{"enable_ab_testing": "true"}', r"enable_ab_testing: .*valid boolean.*'true'"),
        ('{"logger_config": {"flush_on_sigterm": "yes"}}', r"logger_config\.flush_on_sigterm: .*valid boolean"),
        ('{"training": {"canary_min_metrics": {"accuracy": "0.8"}}}', r"training\.canary_min_metrics\.accuracy: .*valid number"),
        ('{"training": {"canary_max_metrics": {"loss": Infinity}}}', r"training\.canary_max_metrics\.loss: .*finite"),
        ('{"training": {"lora": {"base_model": "m", "rank": "8"}}}', r"training\.lora: .*rank"),
        ('{"training": {"lora": {"base_model": "m", "epochs": true}}}', r"training\.lora: .*epochs"),
    ],
)
def test_non_finite_and_wrongly_typed_values_are_rejected(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text), env={})


def test_ints_are_accepted_for_float_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '{"check_interval_seconds": 60, "trigger_config": {"cooldown_hours": 0}}'), env={})
    assert cfg.check_interval_seconds == 60
    assert cfg.trigger_config.cooldown_hours == 0
    assert LoopConfig(route_cache_s=1).route_cache_s == 1


def test_python_values_are_as_strict_as_the_file() -> None:
    with pytest.raises(ConfigError, match=r"check_interval_seconds: .*finite"):
        LoopConfig(check_interval_seconds=float("inf"))
    with pytest.raises(ConfigError, match=r"min_new_samples: .*valid integer.*True"):
        TriggerConfig(min_new_samples=True)
    with pytest.raises(ConfigError, match=r"cooldown_hours: .*valid number.*'3'"):
        LoopConfig(trigger_config={"cooldown_hours": "3"})
    cfg = TriggerConfig()
    with pytest.raises(ConfigError, match=r"cooldown_hours: .*finite"):
        cfg.cooldown_hours = float("nan")


def test_a_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"champion_model": "café"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json: not valid UTF-8 .*byte 0xe9 at position 23.*save the file as UTF-8"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        ({"AFS_CONTINUOUS_CHECK_INTERVAL_SECONDS": "Infinity"}, r"check_interval_seconds: .*finite.*AFS_CONTINUOUS_CHECK_INTERVAL_SECONDS"),
        ({"AFS_CONTINUOUS_CHECK_INTERVAL_SECONDS": "NaN"}, r"check_interval_seconds: .*finite"),
        ({"AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES": "true"}, r"trigger_config\.min_new_samples: .*valid integer"),
        ({"AFS_CONTINUOUS_ENABLE_AB_TESTING": "1"}, r"enable_ab_testing: .*valid boolean"),
    ],
)
def test_env_overrides_are_strict_too(env: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, env=env)


def test_env_overrides_keep_working() -> None:
    cfg = load_config(None, env={"AFS_CONTINUOUS_CHECK_INTERVAL_SECONDS": "5",
                                 "AFS_CONTINUOUS_ROUTE_CACHE_S": "0.5",
                                 "AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES": "500",
                                 "AFS_CONTINUOUS_ENABLE_AB_TESTING": "true",
                                 "AFS_CONTINUOUS_CHAMPION_MODEL": "2024",  # a str key: taken as the string
                                 "AFS_CONTINUOUS_TRAINING__BASELINE_VERSION": "7",
                                 "AFS_CONTINUOUS_GENERATOR_CONFIG__SYSTEM_PROMPT": "null"})
    assert cfg.check_interval_seconds == 5 and cfg.route_cache_s == 0.5
    assert cfg.trigger_config.min_new_samples == 500 and cfg.enable_ab_testing is True
    assert cfg.champion_model == "2024" and cfg.training.baseline_version == "7"
    assert cfg.generator_config.system_prompt is None


# ---- paths: os.PathLike (item 16) and one rule for relative paths (item 25) -------------------------------------

def test_path_settings_accept_path_objects_and_round_trip(tmp_path: Path) -> None:
    cfg = LoopConfig(db_path=tmp_path / "usage.db", data_dir=tmp_path / "data",
                     champion_model_path=tmp_path / "base",
                     generator_config=DataGeneratorConfig(existing_data_path=tmp_path / "buffer.jsonl"),
                     training={"lora": {"base_model": tmp_path / "base", "output_dir": tmp_path / "adapters"}})
    assert cfg.db_path == str(tmp_path / "usage.db") and cfg.data_dir == str(tmp_path / "data")
    assert cfg.champion_model_path == str(tmp_path / "base")
    assert cfg.generator_config.existing_data_path == str(tmp_path / "buffer.jsonl")
    assert cfg.training.lora == {"base_model": str(tmp_path / "base"), "output_dir": str(tmp_path / "adapters")}
    assert cfg.store_url == f"sqlite:///{tmp_path / 'usage.db'}"
    again = load_config(write(tmp_path, cfg.to_json()), env={})
    assert again == cfg
    cfg.data_dir = tmp_path / "elsewhere"
    assert cfg.data_dir == str(tmp_path / "elsewhere")
    from afs_continuous.training.lora import LoRATrainingConfig

    assert LoRATrainingConfig(base_model=tmp_path / "base").base_model == str(tmp_path / "base")
    with pytest.raises(ConfigError, match=r"db_path: .*valid (string|path).*5"):
        LoopConfig(db_path=5)


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc" / "afs"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(folder, json.dumps({
        "db_path": "state/usage.db", "data_dir": "data", "champion_model_path": "../models/base",
        "generator_config": {"existing_data_path": "buffers/rehearsal.jsonl"},
        "training": {"lora": {"base_model": "models/base", "output_dir": "./adapters"}},
    }))
    cfg = load_config(path, env={})
    assert cfg.db_path == str(folder / "state" / "usage.db")
    assert cfg.data_dir == str(folder / "data")
    assert cfg.champion_model_path == str(tmp_path / "etc" / "models" / "base")  # normalised, no '..'
    assert cfg.generator_config.existing_data_path == str(folder / "buffers" / "rehearsal.jsonl")
    assert cfg.training.lora == {"base_model": str(folder / "models" / "base"), "output_dir": str(folder / "adapters")}
    assert cfg.store_url == f"sqlite:///{folder / 'state' / 'usage.db'}"
    # a relative path reached through a symlinked config folder still resolves against the folder as named
    (tmp_path / "link").symlink_to(folder)
    assert load_config(tmp_path / "link" / "config.json", env={}).data_dir == str(tmp_path / "link" / "data")


def test_relative_paths_from_python_and_the_environment_resolve_against_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = LoopConfig(db_path="usage.db", generator_config={"existing_data_path": "buffer.jsonl"})
    assert cfg.db_path == str(tmp_path / "usage.db")
    assert cfg.generator_config.existing_data_path == str(tmp_path / "buffer.jsonl")
    path = write(tmp_path / "etc", '{"data_dir": "data"}')
    cfg = load_config(path, env={"AFS_CONTINUOUS_DB_PATH": "state/usage.db"}, overrides={"champion_model_path": "base"})
    assert cfg.db_path == str(tmp_path / "state" / "usage.db")       # environment: cwd
    assert cfg.champion_model_path == str(tmp_path / "base")         # overrides (e.g. --db): cwd
    assert cfg.data_dir == str(tmp_path / "etc" / "data")            # the file: its folder


def test_home_relative_and_absolute_paths_are_kept_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"db_path": "~/afs/usage.db", "data_dir": "/srv/afs",
                                       "champion_model_path": "/srv/models/../base"}))
    cfg = load_config(path, env={})
    assert cfg.db_path == "~/afs/usage.db" and cfg.data_dir == "/srv/afs"
    assert cfg.champion_model_path == "/srv/models/../base"
    assert LoopConfig().db_path.startswith("~/")


def test_a_relative_sqlite_url_follows_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", json.dumps({"database_url": "sqlite:///state/usage.db"}))
    assert load_config(path, env={}).database_url == f"sqlite:///{tmp_path / 'conf' / 'state' / 'usage.db'}"
    assert LoopConfig(database_url="sqlite:///usage.db").database_url == f"sqlite:///{tmp_path / 'usage.db'}"
    for url in ("sqlite:////srv/usage.db", "sqlite:///~/usage.db", "sqlite://", "sqlite:///:memory:",
                "postgresql+psycopg://afs:pw@db.example/afs"):
        assert LoopConfig(database_url=url).database_url == url


def test_config_record_hides_the_password_and_expands_home(tmp_path: Path) -> None:
    from afs_continuous.config import config_record

    cfg = LoopConfig(database_url="postgresql+psycopg://afs:s3cret@db.example:5432/afs", data_dir="~/afs",
                     generator_config={"existing_data_path": tmp_path / "buffer.jsonl"})
    record = config_record(cfg)
    assert record["database_url"] == "postgresql+psycopg://afs:***@db.example:5432/afs"
    assert "s3cret" not in json.dumps(record)
    assert record["data_dir"] == str(Path.home() / "afs") and record["db_path"].startswith(str(Path.home()))
    assert record["generator_config"]["existing_data_path"] == str(tmp_path / "buffer.jsonl")
    assert LoopConfig.model_validate(record).trigger_config == cfg.trigger_config


def test_serving_defaults_to_no_engine_and_validates_its_keys() -> None:
    from afs_continuous.config import ServingEngineKind

    assert LoopConfig().serving.engine is ServingEngineKind.NONE
    with pytest.raises(ConfigError, match=r"serving: Value error, engine 'vllm' needs base_urls"):
        LoopConfig(serving={"engine": "vllm"})
    with pytest.raises(ConfigError, match=r"serving\.base_urls: .*must start with http:// or https://, got '127\.0\.0\.1:8000'"):
        LoopConfig(serving={"engine": "vllm", "base_urls": ["127.0.0.1:8000"]})
    with pytest.raises(ConfigError, match=r"serving\.timeout_s: Input should be a valid number"):
        LoopConfig(serving={"timeout_s": "30"})
    with pytest.raises(ConfigError, match=r"serving\.engnie: unknown key \(did you mean 'engine'\?\)"):
        LoopConfig(serving={"engnie": "vllm"})
    with pytest.raises(ConfigError, match=r"serving\.engine: Input should be 'none' or 'vllm'"):
        LoopConfig(serving={"engine": "sglang"})


def test_the_serving_api_key_is_a_secret_never_shown() -> None:
    from afs_continuous.config import config_record

    cfg = load_config(None, env={"AFS_CONTINUOUS_SERVING__API_KEY": "12345",
                                 "AFS_CONTINUOUS_SERVING__ENGINE": "vllm",
                                 "AFS_CONTINUOUS_SERVING__BASE_URLS": '["http://127.0.0.1:8000"]'})
    assert cfg.serving.api_key is not None and cfg.serving.api_key.get_secret_value() == "12345"  # text, not 12345
    record = config_record(cfg)
    assert record["serving"]["api_key"] == "***"
    for shown in (json.dumps(record), repr(cfg), str(cfg), json.dumps(cfg.model_dump(mode="json"))):
        assert "12345" not in shown
    with pytest.raises(ConfigError) as info:
        LoopConfig(serving={"api_key": "s3cret-key", "timeout_s": -1})
    assert "s3cret-key" not in str(info.value)
    with pytest.raises(ConfigError, match=r"must not hold credentials \(user:password@\); set serving\.api_key") as info:
        LoopConfig(serving={"engine": "vllm", "base_urls": ["http://afs:pw-secret@10.0.0.5:8000"]})
    assert "pw-secret" not in str(info.value)
