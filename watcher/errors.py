"""The project's small error hierarchy.

Every failure a job can end with is a :class:`JobError` whose ``code`` is the stable string written
into the result marker (CONTRACT §4). Configuration problems are :class:`ConfigError` and name the
offending key; the CLI turns them into exit status 2.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error this package raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(WatcherError):
    """The configuration (file, environment, command line) is unusable; ``key`` names it."""

    code = "config_error"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class JobError(WatcherError):
    """A job failed; ``code`` goes into the result marker's ``error.code``."""

    code = "internal_error"


class InvalidManifest(JobError):
    code = "invalid_manifest"


class MissingInput(JobError):
    code = "missing_input"


class AccessDenied(JobError):
    code = "access_denied"


class TargetConflict(JobError):
    code = "target_conflict"


class StorageError(JobError):
    code = "storage_error"


class IdConflict(JobError):
    """The job id is taken by a job with other content (CONTRACT §7.7): HTTP 409."""

    code = "id_conflict"


class InternalError(JobError):
    code = "internal_error"


class JobCancelled(JobError):
    """Shutdown outlasted the grace period; the job will run again elsewhere."""

    code = "cancelled"
