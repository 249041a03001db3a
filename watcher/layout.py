"""The bucket's key layout: every prefix and suffix the daemon writes, in one place.

Under the requests prefix ``P`` (watch bucket):

* ``P<name>.json`` — a manifest waiting (:func:`is_manifest_key`);
* ``P done/<name>``, ``P failed/<name>`` — filed manifests (:func:`filed_key`), and
  ``P failed/<name>.error.json`` — why a manifest failed for good (:func:`error_report_key`);
* ``P .claims/<name>…`` — claims (:func:`claim_base`), including start-up probe keys;
* ``P .jobs/<job_id>.json`` — the job index (:func:`job_index_key`);
* ``P .cancel/<job_id>.json`` — a cancel request waiting for a daemon (:func:`cancel_key`);
* ``P .crc/…`` — reserved for the CRC-32 cache (CONTRACT §11).

Next to every target (output bucket): ``<target>.status.json`` and ``<target>.result.json``.

Every sub-prefix of our own either contains a ``/`` or starts with ``.``, so none of its keys is
ever taken for a manifest.
"""

from __future__ import annotations

DONE = "done/"
FAILED = "failed/"
CLAIMS = ".claims/"
JOBS = ".jobs/"
CRC = ".crc/"
CANCEL = ".cancel/"

STATUS_SUFFIX = ".status.json"
RESULT_SUFFIX = ".result.json"
MARKER_SUFFIXES = (STATUS_SUFFIX, RESULT_SUFFIX)
ERROR_SUFFIX = ".error.json"


def is_manifest_key(key: str, prefix: str) -> bool:
    """A key the watcher takes: directly in the prefix, ends in .json, not one of our own."""
    if not key.startswith(prefix):
        return False
    name = key[len(prefix) :]
    return bool(name) and "/" not in name and name.endswith(".json") and not name.startswith(".")


def manifest_name(prefix: str, manifest_key: str) -> str:
    return manifest_key[len(prefix) :]


def filed_key(prefix: str, manifest_key: str, succeeded: bool) -> str:
    """Where a finished manifest is filed: ``done/<name>`` or ``failed/<name>``."""
    return f"{prefix}{DONE if succeeded else FAILED}{manifest_name(prefix, manifest_key)}"


def error_report_key(prefix: str, manifest_key: str) -> str:
    """``failed/<name>.error.json``: why the manifest ``<name>.json`` failed for good."""
    name = manifest_name(prefix, manifest_key).removesuffix(".json")
    return f"{prefix}{FAILED}{name}{ERROR_SUFFIX}"


def claim_base(prefix: str, manifest_key: str) -> str:
    """The claim key of a manifest (``conditional``), or the base of its generation keys."""
    return f"{prefix}{CLAIMS}{manifest_name(prefix, manifest_key)}"


def probe_key(prefix: str, token: str) -> str:
    """A start-up probe's scratch key (under ``.claims/``, so never a manifest)."""
    return f"{prefix}{CLAIMS}.probe-{token}"


def job_index_key(prefix: str, job_id: str) -> str:
    return f"{prefix}{JOBS}{job_id}.json"


def cancel_key(prefix: str, job_id: str) -> str:
    """Where a cancel request for ``job_id`` waits for the daemon that has (or will claim) it."""
    return f"{prefix}{CANCEL}{job_id}.json"


def crc_prefix(prefix: str) -> str:
    """Where the CRC-32 cache lives (reserved; CONTRACT §11)."""
    return f"{prefix}{CRC}"


def status_key(target: str) -> str:
    return f"{target}{STATUS_SUFFIX}"


def result_key(target: str) -> str:
    return f"{target}{RESULT_SUFFIX}"


def is_marker_key(key: str) -> bool:
    return key.endswith(MARKER_SUFFIXES)
