"""B2 transaction classes (Backblaze's price list, cited in docs/b2.md) and their metrics."""

from __future__ import annotations

import pytest

from watcher.b2classes import by_class, cost_usd, transaction_class
from watcher.metrics import Metrics


@pytest.mark.parametrize(
    ("operation", "klass"),
    [
        ("PutObject", "a"),
        ("UploadPart", "a"),
        ("CreateMultipartUpload", "a"),
        ("CompleteMultipartUpload", "a"),
        ("AbortMultipartUpload", "a"),
        ("DeleteObject", "a"),
        ("DeleteObjects", "a"),
        ("GetObject", "b"),
        ("HeadObject", "b"),
        ("ListObjectsV2", "c"),
        ("ListObjectVersions", "c"),
        ("ListMultipartUploads", "c"),
        ("CopyObject", "c"),
        ("UploadPartCopy", "c"),
        ("GetBucketVersioning", "c"),
        ("HeadBucket", "c"),
        ("SomethingNew", "c"),  # unknown: the dearest class, so estimates never undercount
    ],
)
def test_operations_fall_in_backblazes_classes(operation, klass):
    assert transaction_class(operation) == klass


def test_counts_by_class_always_name_all_three():
    assert by_class({}) == {"a": 0, "b": 0, "c": 0}
    counts = {"PutObject": 3, "UploadPart": 2, "GetObject": 5, "ListObjectsV2": 1, "CopyObject": 1}
    assert by_class(counts) == {"a": 5, "b": 5, "c": 2}


def test_metrics_count_requests_by_operation_and_by_class():
    counts = {"GetObject": 3, "PutObject": 2, "ListObjectsV2": 4}
    text = Metrics(request_counts=lambda: counts).render()[0].decode()
    assert 'b2zip_storage_requests_total{operation="GetObject"} 3.0' in text
    assert 'b2zip_storage_transactions_total{class="a"} 2.0' in text
    assert 'b2zip_storage_transactions_total{class="b"} 3.0' in text
    assert 'b2zip_storage_transactions_total{class="c"} 4.0' in text


def test_cost_follows_the_price_list_a_free_b_per_ten_thousand_c_per_thousand():
    assert cost_usd({"a": 1_000_000, "b": 0, "c": 0}) == 0
    assert cost_usd({"a": 0, "b": 10_000, "c": 0}) == pytest.approx(0.004)
    assert cost_usd({"a": 0, "b": 0, "c": 1_000}) == pytest.approx(0.004)
    # the media benchmark's cold job: 19 A, 144 B, 13 C
    assert cost_usd({"a": 19, "b": 144, "c": 13}) == pytest.approx(144 * 4e-7 + 13 * 4e-6)
    assert cost_usd({}) == 0
