"""A B2-faithful S3 server for tests: a proxy on 127.0.0.1 in front of moto's server that answers
the way Backblaze B2's S3-compatible API is documented to (docs/b2.md cites each rule's source).

    proxy = B2Proxy(moto_port).start()      # endpoint: proxy.endpoint_url
    ...
    proxy.stop()

Rules (each one checked before the request reaches moto):

* conditional writes — ``If-None-Match`` / ``If-Match`` on PutObject, CopyObject, DeleteObject,
  CreateMultipartUpload, UploadPart: ``501 NotImplemented`` with B2's message;
* ``x-amz-tagging`` and tagging calls: ``400 InvalidArgument`` / ``501 NotImplemented``;
* checksum headers (``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm``): ``400
  InvalidArgument`` "Unsupported header";
* keys over 1,024 bytes of UTF-8, or with a character below 32 or DEL: ``400``;
* part numbers above 10,000: ``400 InvalidArgument``; CompleteMultipartUpload with a part other
  than the last under 5,000,000 bytes: ``400 EntityTooSmall``;
* every bucket keeps versions: versioning is enabled on moto for each bucket the proxy sees (so
  DeleteObject without VersionId leaves a delete marker), ``GetBucketVersioning`` answers
  ``Enabled`` and ``PutBucketVersioning`` changes nothing;
* listings (ListObjects, ListObjectsV2, ListObjectVersions) give LastModified in whole seconds.

``counts`` tallies the requests that reached the proxy by S3 operation (:func:`operation`), so a
test can see what the daemon's traffic cost in B2 transaction classes.
"""

from __future__ import annotations

import http.client
import re
import socketserver
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote, urlsplit

from faultproxy import QuietServer

MIN_PART_BYTES = 5_000_000
MAX_PARTS = 10_000
MAX_KEY_BYTES = 1024
NOT_IMPLEMENTED = "A header you provided implies functionality that is not implemented"
_CHECKSUM_HEADER = re.compile(r"^x-amz-(checksum-|sdk-checksum-algorithm$)", re.IGNORECASE)
_LAST_MODIFIED = re.compile(rb"(<LastModified>[^<.]*)\.\d+(Z?</LastModified>)")
_PART = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
_VERSIONING_ON = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Status>Enabled</Status></VersioningConfiguration>"
)


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Error>\n'
            f"    <Code>{self.code}</Code>\n    <Message>{self.message}</Message>\n</Error>\n"
        ).encode()


def split_path(path: str) -> tuple[str, str, dict[str, str]]:
    """(bucket, key, query) of a path-style request."""
    parts = urlsplit(path)
    bucket, _, key = parts.path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key), dict(parse_qsl(parts.query, keep_blank_values=True))


def operation(method: str, path: str, headers: dict[str, str]) -> str:
    """The S3 operation name of a path-style request (``PutObject`` …)."""
    bucket, key, query = split_path(path)
    lower = {k.lower() for k in headers}
    if not bucket:
        return "ListBuckets"
    if not key:
        table = {
            "versioning": "BucketVersioning",
            "versions": "ListObjectVersions",
            "uploads": "ListMultipartUploads",
            "delete": "DeleteObjects",
            "location": "GetBucketLocation",
        }
        for name, op in table.items():
            if name in query:
                if op == "BucketVersioning":
                    return "GetBucketVersioning" if method == "GET" else "PutBucketVersioning"
                return op
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
            method, "Unknown"
        )
    if "uploadId" in query:
        if method == "PUT":
            return "UploadPartCopy" if "x-amz-copy-source" in lower else "UploadPart"
        return {
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }.get(method, "Unknown")
    if "uploads" in query:
        return "CreateMultipartUpload"
    if "tagging" in query:
        return f"{method.title()}ObjectTagging"
    if method == "PUT":
        return "CopyObject" if "x-amz-copy-source" in lower else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, "Unknown"
    )


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise Refusal(400, "KeyTooLongError", "Your key is too long")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise Refusal(400, "InvalidArgument", "File names must not contain control characters")


class _Server(QuietServer):
    request_queue_size = 128  # three daemons' bursts of claims


class B2Proxy:
    """Forwards to moto on ``upstream_port`` what B2 would accept; answers the rest as B2 does."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._parts: dict[tuple[str, int], int] = {}  # (upload id, part number) -> bytes
        self._versioned: set[str] = set()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.refused.clear()

    # -- the dialect -------------------------------------------------------------------------

    def check(self, op: str, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Raise :class:`Refusal` where B2 refuses the request."""
        lower = {k.lower(): v for k, v in headers.items()}
        for name in lower:
            if _CHECKSUM_HEADER.match(name) or name == "x-amz-checksum-mode":
                raise Refusal(
                    400,
                    "InvalidArgument",
                    f"Unsupported header '{name}' received for this API call.",
                )
        if op.endswith("ObjectTagging"):
            raise Refusal(501, "NotImplemented", "Object tagging is not supported")
        if "x-amz-tagging" in lower:
            raise Refusal(
                400,
                "InvalidArgument",
                "Unsupported header 'x-amz-tagging' received for this API call.",
            )
        conditional = {"if-none-match", "if-match"} & set(lower)
        writes = (
            "PutObject",
            "CopyObject",
            "DeleteObject",
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
        )
        if conditional and op in writes:
            raise Refusal(501, "NotImplemented", NOT_IMPLEMENTED)
        bucket, key, query = split_path(path)
        if key and op in ("PutObject", "CopyObject", "CreateMultipartUpload"):
            check_key(key)
        if op in ("UploadPart", "UploadPartCopy"):
            number = int(query.get("partNumber", "0") or 0)
            if not 1 <= number <= MAX_PARTS:
                raise Refusal(
                    400,
                    "InvalidArgument",
                    f"Part number must be an integer between 1 and {MAX_PARTS}",
                )
        if op == "CompleteMultipartUpload":
            numbers = [int(n) for n in _PART.findall(body)]
            with self._lock:
                sizes = [self._parts.get((query["uploadId"], n)) for n in numbers]
            if len(numbers) > MAX_PARTS:
                raise Refusal(400, "InvalidArgument", f"More than {MAX_PARTS} parts")
            for size in sizes[:-1]:
                if size is not None and size < MIN_PART_BYTES:
                    raise Refusal(
                        400,
                        "EntityTooSmall",
                        "Your proposed upload is smaller than the minimum allowed object size.",
                    )

    def _ensure_versioned(self, bucket: str, headers: dict[str, str]) -> None:
        """Every B2 bucket keeps versions: switch it on upstream the first time we see it."""
        with self._lock:
            if not bucket or bucket in self._versioned:
                return
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            connection.request(
                "PUT",
                f"/{bucket}?versioning",
                body=_VERSIONING_ON,
                headers={"Authorization": headers.get("Authorization", ""), "Host": "localhost"},
            )
            status = connection.getresponse()
            status.read()
        finally:
            connection.close()
        if status.status == 200:
            with self._lock:
                self._versioned.add(bucket)

    # -- plumbing ----------------------------------------------------------------------------

    def start(self) -> B2Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _refuse(self, refusal: Refusal, op: str) -> None:
                payload = refusal.body() if self.command != "HEAD" else b""
                with proxy._lock:
                    proxy.refused[f"{op} {refusal.code}"] += 1
                self.send_response(refusal.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(refusal.body())))
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self) -> None:
                try:
                    self._serve()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout, a kill)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                op = operation(self.command, self.path, headers)
                with proxy._lock:
                    proxy.counts[op] += 1
                bucket, _key, query = split_path(self.path)
                try:
                    proxy.check(op, self.command, self.path, headers, body)
                except Refusal as refusal:
                    self._refuse(refusal, op)
                    return
                if op == "GetBucketVersioning":
                    self._answer(200, _VERSIONING_ON)
                    return
                if op == "PutBucketVersioning":
                    self._answer(200, b"")
                    return
                if op != "CreateBucket":
                    proxy._ensure_versioned(bucket, headers)
                self._forward(op, body, headers, query)
                if op == "CreateBucket":
                    proxy._ensure_versioned(bucket, headers)

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(
                self, op: str, body: bytes, headers: dict[str, str], query: dict[str, str]
            ) -> None:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=300)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    if op in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
                        data = _LAST_MODIFIED.sub(rb"\1.000\2", response.read())
                        self._relay_head(response, str(len(data)))
                        self.wfile.write(data)
                        return
                    if op == "UploadPart" and response.status == 200:
                        with proxy._lock:
                            proxy._parts[(query["uploadId"], int(query["partNumber"]))] = len(body)
                    announced = response.getheader("Content-Length")
                    if announced is None and self.command != "HEAD":
                        data = response.read()
                        self._relay_head(response, str(len(data)))
                        self.wfile.write(data)
                        return
                    self._relay_head(response, announced or "0")
                    if self.command == "HEAD":
                        return
                    while chunk := response.read(1 << 20):
                        self.wfile.write(chunk)
                finally:
                    upstream.close()

            def _relay_head(self, response: http.client.HTTPResponse, length: str) -> None:
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, name="b2proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
