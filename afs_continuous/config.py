"""Configuration of the continuous-learning loop.

All configuration objects are pydantic models that validate at construction:
an unknown or mistyped key, a value of the wrong type or out of range raises
:class:`~afs_continuous.errors.ConfigError` naming the key path and, for a
typo, the closest valid key.

Precedence (highest first): explicit arguments > ``AFS_CONTINUOUS_*``
environment variables > the JSON file > defaults. Environment variables name a
key path with ``__`` between levels, for example
``AFS_CONTINUOUS_TRIGGER_CONFIG__MIN_NEW_SAMPLES=500`` or
``AFS_CONTINUOUS_DB_PATH=/var/lib/afs/usage.db``; values are parsed as JSON
when they can be (``500``, ``true``, ``null``) and taken as strings otherwise
(and always for text keys).

Types are strict: numbers must be numbers (an int is accepted for a float key;
``true`` and ``"1"`` are not), ``Infinity``/``NaN`` are rejected, booleans
must be booleans. Path keys (:data:`PATH_KEYS`) accept ``os.PathLike`` and are
stored as ``str``; a relative path in a config file is relative to the file's
folder, one given in Python or the environment to the current directory when
validated (see :mod:`afs_continuous._config_paths`).

Example:
    >>> cfg = LoopConfig(trigger_config=TriggerConfig(min_new_samples=500))
    >>> cfg.trigger_config.min_new_samples, cfg.ab_test_config.initial_challenger_traffic
    (500, 0.1)
    >>> LoopConfig.model_validate({"trigger_config": {"min_new_sampels": 5}})
    Traceback (most recent call last):
    ...
    afs_continuous.errors.ConfigError: invalid configuration: trigger_config.min_new_sampels: unknown key (did you mean 'min_new_samples'?)
"""

from __future__ import annotations

import contextvars
import difflib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ._config_paths import LORA_PATH_KEYS, PATH_KEYS, absolute_url, path_text
from .errors import ConfigError

__all__ = [
    "LoopConfig",
    "TriggerConfig",
    "DataGeneratorConfig",
    "ABTestConfig",
    "LoggerConfig",
    "TrainingConfig",
    "ServingConfig",
    "ServingEngineKind",
    "PrimaryMetric",
    "Durability",
    "OutputFormat",
    "load_config",
    "ENV_PREFIX",
    "DEFAULT_HOME",
    "PATH_KEYS",
    "config_record",
]

ENV_PREFIX = "AFS_CONTINUOUS_"
DEFAULT_HOME = "~/.context/training/continuous"
"""Default data folder; the store defaults to ``<DEFAULT_HOME>/usage.db`` (the quick start's path)."""

_VALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("afs_config_validating", default=False)


class PrimaryMetric(str, Enum):
    """The metric an experiment is decided on."""

    QUALITY_SCORE = "quality_score"
    """Mean ``quality_score`` of the records each arm served (records without a score are ignored)."""
    POSITIVE_FEEDBACK_RATE = "positive_feedback_rate"
    """Share of rated records whose latest feedback is +1."""


class Durability(str, Enum):
    """How ``log_usage`` persists records."""

    ASYNC = "async"
    """Hand the record to a background writer (microseconds in the caller); committed in batches."""
    SYNC = "sync"
    """Commit each record in the caller's thread before returning."""


PathText = Annotated[str, BeforeValidator(path_text)]
"""A filesystem path setting: ``str`` or ``os.PathLike``, stored as ``str``; relative means relative to the
current directory at validation (relative paths in a config file are resolved against its folder first)."""


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Return " (did you mean 'x'?)" for an unknown key at ``loc``, if a close match exists."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            annotation = current.model_fields[str(part)].annotation
            candidates = [annotation, *getattr(annotation, "__args__", ())]
            current = next(
                (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
            )
        else:
            return ""
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return ""
    matches = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


_SECRET_KEYS = frozenset({"api_key", "database_url"})


def _config_error(model: type[BaseModel], exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            lines.append(f"{_format_loc(loc)}: unknown key{_suggest(model, loc)}")
        else:
            value = err.get("input")
            secret = bool(loc) and str(loc[-1]) in _SECRET_KEYS  # never echo a secret, even a mistyped one
            shown = "" if isinstance(value, (dict, list)) or secret else f" (got {value!r})"
            lines.append(f"{_format_loc(loc)}: {err.get('msg')}{shown}")
    return ConfigError("invalid configuration: " + "; ".join(lines))


class _Config(BaseModel):
    """Base of every configuration class: strict keys, validated assignment, ConfigError."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        # pydantic calls a custom __init__ for nested models too; only the
        # outermost call converts the ValidationError, so the key path is whole.
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if token.old_value is True:
                raise
            raise _config_error(type(self), exc) from None
        finally:
            _VALIDATING.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        token = _VALIDATING.set(True)
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            if token.old_value is True:
                raise
            raise _config_error(cls, exc) from None
        finally:
            _VALIDATING.reset(token)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _config_error(type(self), exc) from None


class TriggerConfig(_Config):
    """When the daemon retrains. Set a trigger's threshold to ``None`` to disable it."""

    min_new_samples: StrictInt | None = Field(
        1000, ge=1, description="Sample-count trigger: eligible training samples (same filters as the generator) since the last successful retrain."
    )
    schedule_interval_hours: StrictFloat | None = Field(
        168.0, gt=0, description="Schedule trigger: hours since the last training run (or since the loop first started)."
    )
    quality_drop_threshold: StrictFloat | None = Field(
        0.10, gt=0, lt=1, description="Quality-drop trigger: fractional drop of the recent mean quality below the baseline mean (0.10 = 10%)."
    )
    quality_drop_alpha: StrictFloat = Field(
        0.001, gt=0, lt=1, description="Quality-drop trigger: it fires only when the drop is also significant, i.e. the "
        "one-sided Welch t-test of 'recent mean < baseline mean' has p below this. Checked every iteration, so keep it "
        "small: at 0.001 unchanged traffic at 5 requests/h fired it in 3% of simulated weeks (docs/statistics.md)."
    )
    quality_window_hours: StrictFloat = Field(24.0, gt=0, description="Length of the recent window for the quality-drop trigger, hours.")
    quality_baseline_hours: StrictFloat = Field(
        168.0, gt=0, description="Length of the baseline window that ends where the recent window starts, hours."
    )
    min_quality_samples: StrictInt = Field(
        100, ge=1, description="Minimum scored records in each window before the quality-drop trigger may fire."
    )
    cooldown_hours: StrictFloat = Field(24.0, ge=0, description="Minimum hours between two training runs (survives restarts).")


class OutputFormat(str, Enum):
    """Line format of the exported training (and validation) JSONL."""

    CHATML = "chatml"
    """``{"messages": [{"role": "system"?, ...}, {"role": "user", ...}, {"role": "assistant", ...}]}``."""
    ALPACA = "alpaca"
    """``{"instruction": query, "input": "", "output": response}``."""
    COMPLETION = "completion"
    """``{"prompt": query, "completion": response}``."""


class DataGeneratorConfig(_Config):
    """How a training set is built from the logged traffic."""

    min_quality_score: StrictFloat | None = Field(0.7, ge=0, le=1, description="Keep records with quality_score >= this (None: no quality filter).")
    min_user_feedback: StrictInt | None = Field(
        1, ge=-1, le=1, description="Keep records whose latest feedback is >= this (1 = positive only; None: no feedback filter)."
    )
    include_unrated: StrictBool = Field(False, description="Also keep records that have no feedback at all (only when min_user_feedback is set).")
    deduplicate: StrictBool = Field(True, description="Drop exact duplicates after normalising whitespace and case.")
    near_dedup_threshold: StrictFloat | None = Field(
        0.9, gt=0, le=1, description="Drop a new sample whose estimated Jaccard similarity (MinHash over word n-gram shingles "
        "of the normalised query and response) with an earlier kept sample, a rehearsal-buffer sample or a recently "
        "trained sample is >= this (None: exact dedup only)."
    )
    near_dedup_num_perm: StrictInt = Field(
        64, ge=16, le=1024, description="MinHash permutations per signature: more is more precise and slower (index memory ~2 bytes each per sample)."
    )
    near_dedup_ngram: StrictInt = Field(5, ge=1, le=64, description="Words per shingle for near-duplicate detection.")
    near_dedup_history_size: StrictInt = Field(
        100_000, ge=0, description="Newest trained samples (latest runs first) that new samples are checked against for near "
        "duplicates; older history is covered by the exact-content exclusion only (0: none)."
    )
    include_existing_data: StrictBool = Field(True, description="Mix in samples from the rehearsal buffer against forgetting.")
    existing_data_path: PathText | None = Field(
        None, description="Rehearsal buffer, JSONL (chat, alpaca or completion format). Default: <data_dir>/rehearsal_buffer.jsonl."
    )
    rehearsal_fraction: StrictFloat = Field(
        0.2, ge=0, lt=1, description="Target share of the final training set drawn from the rehearsal buffer (0.2 = 20%)."
    )
    rehearsal_buffer_size: StrictInt = Field(10_000, ge=1, description="Maximum samples kept in the rehearsal buffer (reservoir-sampled).")
    min_samples: StrictInt = Field(10, ge=1, description="A run with fewer new samples than this is skipped; train_fn is never called.")
    max_samples: StrictInt | None = Field(None, ge=1, description="Cap on new samples per training set (highest quality first).")
    output_format: OutputFormat = Field(
        OutputFormat.CHATML, description="Line format of the training JSONL: 'chatml' ({\"messages\": [...]}), "
        "'alpaca' ({\"instruction\", \"input\", \"output\"}) or 'completion' ({\"prompt\", \"completion\"})."
    )
    validation_fraction: StrictFloat = Field(
        0.0, ge=0, lt=1, description="Share of the final (shuffled) set written to <name>.val.jsonl beside the training file (0: no validation split)."
    )
    export_parquet: StrictBool = Field(
        False, description="Also write <name>.parquet (and <name>.val.parquet) beside the JSONL; needs pyarrow (the train extra)."
    )
    system_prompt: str | None = Field(None, description="Optional system message prepended to every exported conversation (chatml only).")
    seed: StrictInt = Field(0, description="Seed for rehearsal sampling, the shuffle and the validation split (reproducible training sets).")
    late_arrival_hours: StrictFloat = Field(
        24.0, ge=0, description="Each run reconsiders records created up to this many hours before the previous run, "
        "so records committed late or feedback given late still count; content already trained on is excluded by hash."
    )

    @model_validator(mode="after")
    def _check_export(self) -> "DataGeneratorConfig":
        if self.system_prompt is not None and self.output_format is not OutputFormat.CHATML:
            raise ValueError(
                f"system_prompt is only written in the 'chatml' output format, got output_format "
                f"{self.output_format.value!r}; drop system_prompt or use 'chatml'"
            )
        if self.export_parquet:
            import importlib.util

            if importlib.util.find_spec("pyarrow") is None:
                raise ValueError(
                    "export_parquet needs pyarrow, which is not installed: pip install 'afs-continuous[train]' "
                    "(or pip install pyarrow), or set export_parquet to false"
                )
        return self


class ABTestConfig(_Config):
    """How a challenger is tested against the champion and when it is promoted.

    The decision rule: promote only when the challenger's relative lift on the
    primary metric is at least ``promotion_threshold`` *and* significantly
    greater than zero (always-valid sequential test at ``alpha``), the
    guardrails hold, the experiment has run ``min_duration_hours`` and each
    arm has ``min_samples_per_arm`` units, and there is no sample-ratio mismatch.
    """

    initial_challenger_traffic: StrictFloat = Field(0.1, gt=0, lt=1, description="Traffic fraction routed to the challenger (0.1 = 10%).")
    promotion_threshold: StrictFloat = Field(0.05, ge=0, description="Minimum relative lift on the primary metric to promote (0.05 = +5%).")
    min_duration_hours: StrictFloat = Field(48.0, ge=0, description="Minimum experiment duration before promotion, hours.")
    max_duration_hours: StrictFloat | None = Field(
        336.0, gt=0, description="An experiment still undecided after this many hours is stopped; the champion stays."
    )
    min_samples_per_arm: StrictInt = Field(200, ge=2, description="Minimum units (users; records without a unit id count one each) with the primary metric in each arm before any decision.")
    alpha: StrictFloat = Field(0.05, gt=0, lt=1, description="Significance level of the promotion test (two-sided).")
    primary_metric: PrimaryMetric = Field(PrimaryMetric.QUALITY_SCORE, description="Metric the promotion is decided on.")
    sequential: StrictBool = Field(True, description="Use the always-valid sequential test (safe under hourly looks).")
    sequential_n_star: StrictInt = Field(5000, ge=1, description="Tuning constant N* of the confidence sequence: total samples at which a decision is expected.")
    strict: StrictBool = Field(False, description="Require the lower confidence bound of the lift itself to clear promotion_threshold.")
    stop_on_regression: StrictBool = Field(True, description="Retire a challenger that is significantly worse without waiting for min_duration_hours.")
    srm_threshold: StrictFloat = Field(0.001, gt=0, lt=1, description="p-value below which the arm split is flagged as a sample-ratio mismatch.")
    guardrail_latency_margin: StrictFloat | None = Field(
        0.10, gt=0, description="Guardrail: stop the challenger when its mean latency_ms is significantly more than this fraction above the champion's (0.10 = +10%; None disables)."
    )
    guardrail_negative_feedback_margin: StrictFloat | None = Field(
        0.10, gt=0, description="Guardrail: stop the challenger when its negative-feedback rate is significantly more than this fraction above the champion's (relative; None disables)."
    )
    assignment_seed: str | None = Field(
        None, min_length=1, description="Fixed seed of the unit-to-arm assignment, for reproducible replays and demos: each experiment hashes units with '<assignment_seed>:<challenger name>', so a rerun routes every unit the same way and a new experiment still reshuffles units. None: a random seed per experiment."
    )
    rollback_watch_hours: StrictFloat | None = Field(
        72.0, gt=0, description="After a promotion, compare the new champion with the previous champion's level for this long; a significant drop rolls back (None disables)."
    )


class LoggerConfig(_Config):
    """How usage records and feedback reach the store."""

    durability: Durability = Field(Durability.ASYNC, description="'async' (background batched writer) or 'sync' (commit per call).")
    flush_interval_s: StrictFloat = Field(
        0.5, gt=0, description="Longest a record waits in memory before its batch is committed, seconds (the loss bound on a hard kill)."
    )
    batch_size: StrictInt = Field(500, ge=1, description="Maximum records per write transaction.")
    queue_size: StrictInt = Field(100_000, ge=1, description="Bound of the in-memory queue; when full the caller blocks up to enqueue_timeout_s.")
    enqueue_timeout_s: StrictFloat = Field(5.0, ge=0, description="How long log_usage blocks on a full queue before counting the record as dropped, seconds.")
    flush_on_sigterm: StrictBool = Field(
        True, description="Install a SIGTERM handler (main thread only) that flushes every logger, then runs the previous handler."
    )
    max_text_chars: StrictInt = Field(
        200_000, ge=1, description="Longer queries/responses are stored truncated (flagged, original length kept) and never used for training."
    )
    redact_fn: str | None = Field(
        None, description="Import path 'module:function' or 'path/to/file.py:function' of a redact_fn(text) -> text applied to every "
        "query, response, conversation turn and feedback comment before it is queued (e.g. 'afs_continuous.redact:basic'; None: stored as given)."
    )


class TrainingConfig(_Config):
    """Training function used by the daemon when none is passed on the command line, and the canary gate.

    The canary gate runs ``eval_fn(model_path) -> {metric: float}`` on your
    fixed golden set after training and before deployment, for the challenger
    and for the baseline (the champion, or ``baseline_version``). A challenger
    that misses a floor, exceeds a ceiling or regresses against the baseline
    by more than allowed is not deployed; its run is ``rejected`` with the
    reasons and both metric sets.
    """

    train_fn: str | None = Field(None, description="Import path 'module:function' of a train_fn(data_path) -> dict.")
    lora: dict[str, Any] | None = Field(
        None, description="Settings of the reference LoRA trainer (afs_continuous.training.lora.LoRATrainingConfig)."
    )
    timeout_s: StrictFloat | None = Field(None, gt=0, description="Seconds after which a hanging train_fn is reported as failed.")
    eval_fn: str | None = Field(
        None, description="Canary gate: import path 'module:function' of an eval_fn(model_path) -> {metric: float} run on a "
        "fixed golden set after training, before deployment (None: no canary evaluation)."
    )
    eval_timeout_s: StrictFloat | None = Field(None, gt=0, description="Seconds after which a hanging eval_fn is reported as failed.")
    canary_min_metrics: dict[str, StrictFloat] = Field(
        {}, description="Canary gate: floors, e.g. {\"accuracy\": 0.8}; a challenger below one is rejected."
    )
    canary_max_metrics: dict[str, StrictFloat] = Field(
        {}, description="Canary gate: ceilings, e.g. {\"loss\": 2.0}; a challenger above one is rejected."
    )
    canary_max_regression: dict[str, StrictFloat] = Field(
        {}, description="Canary gate: largest allowed worsening against the baseline's canary metrics, "
        "absolute in the metric's units, e.g. {\"accuracy\": 0.02} (0.85 -> 0.83 passes, 0.82 is rejected)."
    )
    canary_lower_is_better: list[str] = Field(
        [], description="Metrics for which lower is better (loss, perplexity); every other metric is "
        "higher-is-better when canary_max_regression is checked."
    )
    baseline_version: str | None = Field(
        None, description="Compare challengers' canary metrics with this model version instead of the current champion "
        "(--baseline-version overrides). The online A/B test always runs against the serving champion."
    )

    @field_validator("lora")
    @classmethod
    def _check_lora(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Validate now (a typo fails at start-up, not at the first retrain hours later);
        # the trainer's config module is cheap to import (no torch).
        if value is not None:
            from .training.lora import LoRATrainingConfig

            value = {key: path_text(item) if key in LORA_PATH_KEYS else item for key, item in value.items()}
            LoRATrainingConfig(**value)
        return value

    @field_validator("canary_min_metrics", "canary_max_metrics", "canary_max_regression")
    @classmethod
    def _check_thresholds(cls, value: dict[str, float], info: Any) -> dict[str, float]:
        for metric, limit in value.items():  # finite: allow_inf_nan=False
            if not metric:
                raise ValueError("metric names must be non-empty")
            if info.field_name == "canary_max_regression" and limit < 0:
                raise ValueError(f"{metric!r}: allowed regression must be >= 0 (an absolute amount), got {limit!r}")
        return value

    @model_validator(mode="after")
    def _check_directions(self) -> "TrainingConfig":
        for metric in self.canary_max_regression:
            if metric in self.canary_max_metrics and metric not in self.canary_lower_is_better:
                raise ValueError(
                    f"canary_max_regression names {metric!r}, which has a ceiling in canary_max_metrics (so lower is "
                    f"better) but is not in canary_lower_is_better; add it there so a drop counts as an improvement"
                )
        return self

    @property
    def canary_thresholds_set(self) -> bool:
        """True when any canary threshold is configured (the gate then requires an eval_fn)."""
        return bool(self.canary_min_metrics or self.canary_max_metrics or self.canary_max_regression)


class ServingEngineKind(str, Enum):
    """The serving engine the daemon keeps in step with the registry."""

    NONE = "none"
    """No engine: ``route()`` returns a version and you load ``version.path`` into your serving stack yourself."""
    VLLM = "vllm"
    """vLLM servers (``base_urls``): the daemon loads each adapter through vLLM's runtime LoRA API."""


class ServingConfig(_Config):
    """The serving engine (docs/serving.md). ``"engine": "none"`` (the default) changes nothing.

    With ``"vllm"`` the daemon loads every new version as a LoRA adapter on each
    replica in ``base_urls`` and checks one short generation through it before
    any traffic is routed to it; a version that fails gets none (its training
    run ends ``deploy_failed``).
    """

    engine: ServingEngineKind = Field(
        ServingEngineKind.NONE, description="'none' (you load version.path yourself) or 'vllm' (the daemon loads adapters "
        "into the vLLM servers of base_urls before routing traffic to them)."
    )
    base_urls: list[str] = Field(
        [], description="Base URLs of the engine's replicas, e.g. [\"http://127.0.0.1:8000\"] (the OpenAI API is under /v1); "
        "every replica gets every adapter. Required for 'vllm'."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token of the replicas (vLLM's --api-key); a secret, never shown (set it with "
        "AFS_CONTINUOUS_SERVING__API_KEY rather than in a file)."
    )
    base_model_name: str | None = Field(
        None, min_length=1, description="The base model's served name (vLLM's --served-model-name), used for versions "
        "without an adapter, e.g. the initial champion. None: the base model the first replica lists."
    )
    timeout_s: StrictFloat = Field(60.0, gt=0, description="Timeout of each request to a replica (load, unload, check generation), seconds.")
    check_prompt: str = Field("Hello", min_length=1, description="Prompt of the check generation each replica must answer through a new adapter.")
    check_max_tokens: StrictInt = Field(1, ge=1, le=64, description="Tokens the check generation asks for.")
    reload_interval_s: StrictFloat = Field(
        30.0, ge=0, description="report_unavailable() asks the engine to load a missing adapter again at most once per this many seconds per version."
    )

    @field_validator("base_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if isinstance(url, str) and "@" in url.split("://", 1)[-1].split("/", 1)[0]:
                raise ValueError("a base URL must not hold credentials (user:password@); set serving.api_key "
                                 "(AFS_CONTINUOUS_SERVING__API_KEY) instead")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) < 10:
                raise ValueError(f"each base URL must start with http:// or https://, got {url!r} "
                                 "(e.g. \"http://127.0.0.1:8000\")")
        if len(set(value)) != len(value):
            raise ValueError("base_urls lists a replica twice")
        return value

    @model_validator(mode="after")
    def _check_engine(self) -> "ServingConfig":
        if self.engine is ServingEngineKind.VLLM and not self.base_urls:
            raise ValueError("engine 'vllm' needs base_urls, the replicas' base URLs, e.g. [\"http://127.0.0.1:8000\"]")
        return self


class LoopConfig(_Config):
    """Configuration of :class:`~afs_continuous.loop.ContinuousLearningLoop`.

    Keys in ``config.json`` are exactly these field names (nested objects for
    the sections). Paths may start with ``~`` (expanded when used); relative
    paths become absolute (see the module docstring).
    """

    db_path: PathText = Field(f"{DEFAULT_HOME}/usage.db", description="SQLite store file (used when database_url is not set).")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the store; overrides db_path (e.g. sqlite:////var/lib/afs/usage.db).")
    data_dir: PathText = Field(DEFAULT_HOME, description="Directory for training sets and the default rehearsal buffer.")
    check_interval_seconds: StrictFloat = Field(3600.0, gt=0, description="Seconds between two daemon iterations.")
    enable_ab_testing: StrictBool = Field(True, description="False: a newly trained model becomes champion at once, without an experiment.")
    champion_model: str = Field("base", min_length=1, description="Name of the initial champion registered in an empty store.")
    champion_model_path: PathText | None = Field(None, description="Path of the initial champion's weights, recorded in the registry.")
    keep_training_data: StrictBool = Field(False, description="Keep each run's training JSONL after a successful run (deleted by default).")
    route_cache_s: StrictFloat = Field(5.0, ge=0, description="How long route() caches the active experiment, seconds.")
    lease_ttl_s: StrictFloat = Field(
        300.0, gt=0, description="The daemon's lease on the store lasts this long without renewal, seconds; a crashed daemon blocks others at most this long."
    )
    retention_days: StrictFloat | None = Field(
        None, gt=0, description="The daemon deletes usage records and feedback older than this many days (kept while the running "
        "experiment or the drift watch needs them; rollups stay); None: kept forever. See docs/privacy.md."
    )
    trigger_config: TriggerConfig = Field(default_factory=TriggerConfig)
    generator_config: DataGeneratorConfig = Field(default_factory=DataGeneratorConfig)
    ab_test_config: ABTestConfig = Field(default_factory=ABTestConfig)
    logger_config: LoggerConfig = Field(default_factory=LoggerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    @field_validator("database_url", mode="before")
    @classmethod
    def _absolute_sqlite_url(cls, value: Any) -> Any:
        return absolute_url(value, None)

    @model_validator(mode="after")
    def _check_paths(self) -> "LoopConfig":
        if self.database_url is not None and "://" not in self.database_url:
            raise ValueError(f"database_url must be a SQLAlchemy URL like sqlite:///path, got {self.database_url!r}")
        return self

    @property
    def store_url(self) -> str:
        """The SQLAlchemy URL of the store (``database_url`` or ``sqlite:///<db_path>``)."""
        if self.database_url is not None:
            return self.database_url
        return "sqlite:///" + str(Path(self.db_path).expanduser())

    @property
    def data_path(self) -> Path:
        """``data_dir`` with ``~`` expanded."""
        return Path(self.data_dir).expanduser()

    def to_json(self) -> str:
        """Serialise to the JSON accepted by :func:`load_config`."""
        return self.model_dump_json(indent=2)


# Loading (file, environment, overrides) lives in its own module to keep this one to the models.
from ._config_load import config_record, load_config  # noqa: E402  (needs LoopConfig above)
