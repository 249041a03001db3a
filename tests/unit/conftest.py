"""Fixtures of the unit tests (those of the whole suite are in tests/conftest.py)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws


@pytest.fixture
def versioned_bucket(aws_env):
    """In-process moto with one bucket, ``bkt``, that keeps versions: its boto3 client."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bkt")
        client.put_bucket_versioning(Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
        yield client
