"""Exception hierarchy of afs_continuous.

Every error the SDK raises on purpose derives from :class:`AfsContinuousError`,
so ``except AfsContinuousError`` catches all of them. Errors that describe a
caller's mistake also derive from :class:`ValueError`, so code written against
the seed's API (which raised ``ValueError``) keeps working.
"""

from __future__ import annotations

__all__ = [
    "AfsContinuousError",
    "ConfigError",
    "StoreError",
    "NotFoundError",
    "SchemaVersionError",
    "TrainingError",
    "RedactionError",
]


class AfsContinuousError(Exception):
    """Root of every exception raised by afs_continuous."""


class ConfigError(AfsContinuousError, ValueError):
    """A configuration value or key is invalid (unknown key, wrong type, out of range)."""


class StoreError(AfsContinuousError):
    """The store (SQLite file or database URL) cannot be opened or used."""


class NotFoundError(AfsContinuousError, LookupError):
    """A record, model version or training run that was asked for does not exist."""


class SchemaVersionError(StoreError):
    """The store's schema is newer (or older) than this version of the library supports."""


class TrainingError(AfsContinuousError):
    """A training function failed or returned an unusable result."""


class RedactionError(AfsContinuousError, ValueError):
    """The configured ``redact_fn`` raised or returned something other than a str; nothing was stored."""
