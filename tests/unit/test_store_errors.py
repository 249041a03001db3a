"""Storage failures become the job error codes of CONTRACT §4, without leaking credentials."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from watcher.errors import AccessDenied, MissingInput, StorageError
from watcher.store import NotImplementedByStore, PreconditionFailed, translate_client_error


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "AWS4-HMAC-SHA256 Credential=AKIA..."},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, MissingInput),
        ("404", 404, MissingInput),
        ("AccessDenied", 403, AccessDenied),
        ("InvalidAccessKeyId", 403, AccessDenied),
        ("SignatureDoesNotMatch", 403, AccessDenied),
        ("NoSuchBucket", 404, StorageError),
        ("PreconditionFailed", 412, PreconditionFailed),
        ("ConditionalRequestConflict", 409, PreconditionFailed),
        ("NotImplemented", 501, NotImplementedByStore),
        ("SlowDown", 503, StorageError),
        ("InternalError", 500, StorageError),
    ],
)
def test_client_errors_map_to_codes(code, status, kind):
    error = translate_client_error(client_error(code, status), bucket="b", key="k/x.txt")
    assert type(error) is kind
    assert "k/x.txt" in error.message or "b" in error.message
    assert "AKIA" not in error.message and "Credential" not in error.message


def test_connection_errors_are_storage_errors():
    error = translate_client_error(
        EndpointConnectionError(endpoint_url="http://x"), bucket="b", key="k"
    )
    assert error.code == "storage_error"


def test_only_transient_failures_are_storage_errors():
    """Retry loops retry StorageError; an answer such as 412 or 501 must never look like one."""
    for code, status in (("PreconditionFailed", 412), ("NotImplemented", 501)):
        error = translate_client_error(client_error(code, status), bucket="b", key="k")
        assert not isinstance(error, StorageError)
        assert error.code == "storage_error" and error.status == status
    denied = translate_client_error(client_error("AccessDenied", 403), bucket="b", key="k")
    assert denied.code == "access_denied"
