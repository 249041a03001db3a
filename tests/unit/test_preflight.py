"""What a failed bucket probe means (preflight.classify): pure, no network."""

from __future__ import annotations

import pytest

from watcher.config import from_mapping
from watcher.preflight import StoreUnusable, classify, probe, require_usable

ENDPOINT = "https://s3.us-west-004.backblazeb2.com"


def problem(code=None, status=None, transport="", key="buckets.input"):
    return classify(
        key=key, bucket="b", endpoint=ENDPOINT, code=code, status=status, transport=transport
    )


@pytest.mark.parametrize(
    ("answer", "culprit", "kind"),
    [
        ({"code": "NoSuchBucket", "status": 404}, "buckets.input", "no_bucket"),
        ({"code": "InvalidAccessKeyId", "status": 403}, "AWS_ACCESS_KEY_ID", "credentials"),
        ({"code": "SignatureDoesNotMatch", "status": 403}, "AWS_SECRET_ACCESS_KEY", "credentials"),
        ({"code": "AccessDenied", "status": 403}, "buckets.input", "denied"),
        ({"transport": "EndpointConnectionError"}, "s3.endpoint_url", "unreachable"),
        ({"transport": "ConnectTimeoutError"}, "s3.endpoint_url", "unreachable"),
        ({"transport": "ReadTimeoutError"}, "s3.endpoint_url", "unreachable"),
        ({"transport": "NoCredentialsError"}, "AWS_ACCESS_KEY_ID", "credentials"),
    ],
)
def test_each_answer_names_its_culprit(answer, culprit, kind):
    found = problem(**answer)
    assert (found.culprit, found.kind) == (culprit, kind)
    assert found.line().startswith(f"{culprit}: ") and "\n" not in found.line()


def test_the_three_first_deploy_failures_read_differently():
    lines = {
        problem(code="NoSuchBucket", status=404).message,
        problem(code="InvalidAccessKeyId", status=403).message,
        problem(transport="EndpointConnectionError").message,
    }
    assert len(lines) == 3


def test_an_unset_bucket_is_reported_without_any_request():
    settings = from_mapping({"s3": {"endpoint_url": ENDPOINT}}, {})
    found = probe(settings, ["buckets.output"], client=object())
    assert [(p.culprit, p.kind) for p in found] == [("buckets.output", "unset")]
    with pytest.raises(StoreUnusable) as info:
        require_usable(settings, ["buckets.input"])
    assert info.value.key == "buckets.input" and "BUCKET_NAME" in info.value.message
