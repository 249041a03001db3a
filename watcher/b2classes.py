"""B2's transaction classes for the S3 operations (pure).

The table follows Backblaze's "Transactions" price list,
https://www.backblaze.com/b2/b2-transactions-price.html (its S3 Compatible API column); docs/b2.md
repeats it.

Backblaze bills S3-compatible calls in three classes: ``a`` (uploads, deletes, multipart
bookkeeping: free), ``b`` (downloads and HEADs of objects), ``c`` (lists, copies, bucket calls and
the rest). An operation that is not in the table counts as ``c``, the dearest, so an estimate
never undercounts.
"""

from __future__ import annotations

CLASSES = ("a", "b", "c")

_CLASS_A = frozenset(
    {
        "AbortMultipartUpload",
        "CompleteMultipartUpload",
        "CreateMultipartUpload",
        "DeleteBucket",
        "DeleteObject",
        "DeleteObjects",
        "PutObject",
        "PutObjectLegalHold",
        "PutObjectLockConfiguration",
        "PutObjectRetention",
        "UploadPart",
    }
)
_CLASS_B = frozenset(
    {
        "GetObject",
        "GetObjectLegalHold",
        "GetObjectLockConfiguration",
        "GetObjectRetention",
        "HeadObject",
    }
)


def transaction_class(operation: str) -> str:
    """``a``, ``b`` or ``c`` for an S3 operation name (``PutObject`` …)."""
    if operation in _CLASS_A:
        return "a"
    if operation in _CLASS_B:
        return "b"
    return "c"


def by_class(counts: dict[str, int]) -> dict[str, int]:
    """Per-operation request counts summed by class: always ``{"a": n, "b": n, "c": n}``."""
    totals = dict.fromkeys(CLASSES, 0)
    for operation, count in counts.items():
        totals[transaction_class(operation)] += count
    return totals
