"""afs_continuous: improve a production LLM from its own traffic, safely.

Log every call and its feedback (:class:`UsageLogger`, or
:meth:`ContinuousLearningLoop.log_usage`); a daemon retrains a LoRA adapter
when enough good samples arrive, the schedule is due or quality drops, tests it
as a challenger on a slice of traffic and promotes it only on a significant
gain. Importing this package never imports torch or transformers.
"""

from .clock import ManualClock, utc_now
from .config import (
    ABTestConfig,
    DataGeneratorConfig,
    Durability,
    LoggerConfig,
    LoopConfig,
    OutputFormat,
    PrimaryMetric,
    TrainingConfig,
    TriggerConfig,
    load_config,
)
from .errors import AfsContinuousError, ConfigError, NotFoundError, SchemaVersionError, StoreError, TrainingError
from .experiment import Arm, Decision, Evaluation, assign_arm
from .generator import GenerationResult, TrainingDataGenerator
from .logger import UsageLogger
from .loop import ContinuousLearningLoop
from .registry import ModelRegistry, ModelVersion, VersionStatus
from .rehearsal import RehearsalBuffer
from .runs import RunStatus, TrainingRun
from .store import Store
from .triggers import TriggerChecker, TriggerResult, TriggerType

__version__ = "0.1.0"

__all__ = [
    "ABTestConfig",
    "AfsContinuousError",
    "Arm",
    "ConfigError",
    "ContinuousLearningLoop",
    "DataGeneratorConfig",
    "Decision",
    "Durability",
    "Evaluation",
    "GenerationResult",
    "LoggerConfig",
    "LoopConfig",
    "ManualClock",
    "OutputFormat",
    "ModelRegistry",
    "ModelVersion",
    "NotFoundError",
    "PrimaryMetric",
    "RehearsalBuffer",
    "RunStatus",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "TrainingConfig",
    "TrainingDataGenerator",
    "TrainingError",
    "TrainingRun",
    "TriggerChecker",
    "TriggerConfig",
    "TriggerResult",
    "TriggerType",
    "UsageLogger",
    "VersionStatus",
    "assign_arm",
    "load_config",
    "utc_now",
    "__version__",
]
