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

# US dollars per request of each class, from the same price list (and Backblaze's "Understanding
# B2 Pricing Structure", https://help.backblaze.com/hc/en-us/articles/217667478): class A free,
# class B $0.004 per 10,000, class C $0.004 per 1,000, each past 2,500 free calls a day.
PRICE_USD = {"a": 0.0, "b": 0.004 / 10_000, "c": 0.004 / 1_000}
FREE_PER_DAY = {"a": 0, "b": 2_500, "c": 2_500}

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


def cost_usd(classes: dict[str, int]) -> float:
    """What a job's requests by class (``{"a": n, "b": n, "c": n}``) cost on B2 once the day's
    free calls are spent: the marginal price, so a thousand such jobs a day cost a thousand times
    this. Download bytes ($0.01/GB past 1 GB a day) are not transactions and not counted."""
    return sum(PRICE_USD[c] * classes.get(c, 0) for c in CLASSES)
