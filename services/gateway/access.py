"""One log line and the Prometheus metrics of every S3 request.

The line is written when aiohttp has sent the whole response (its access logger hook), so it
knows the status and the bytes that really went out; a request whose client went away before
its answer gets its line from `request_aborted` instead. Neither ever logs the query string
(a presigned URL's signature and credential) nor any header (SSE-C keys, authorization).
"""
from __future__ import annotations

import logging
import time
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("services.gateway.access")

REQUEST_ID = web.RequestKey("sealstore_request_id", str)
STARTED = web.RequestKey("sealstore_started", float)
RESPONSE = web.RequestKey("sealstore_response", web.StreamResponse)

REQUESTS = Counter("sealstore_s3_requests_total", "S3 requests answered, by operation and HTTP status",
                   ["operation", "status"])
DURATION = Histogram("sealstore_s3_request_duration_seconds", "S3 request duration (first byte in to last "
                     "byte out), by operation", ["operation"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
RECEIVED = Counter("sealstore_s3_received_bytes_total", "Request body bytes received, by operation", ["operation"])
SENT = Counter("sealstore_s3_sent_bytes_total", "Response body bytes sent, by operation", ["operation"])
IN_FLIGHT = Gauge("sealstore_s3_requests_in_flight", "S3 requests being answered now")

_BUCKET_SUBRESOURCES = (
    ("encryption", {"GET": "GetBucketEncryption", "PUT": "PutBucketEncryption", "DELETE": "DeleteBucketEncryption"}),
    ("policy", {"GET": "GetBucketPolicy", "PUT": "PutBucketPolicy", "DELETE": "DeleteBucketPolicy"}),
    ("tagging", {"GET": "GetBucketTagging", "PUT": "PutBucketTagging", "DELETE": "DeleteBucketTagging"}),
    ("acl", {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"}),
    ("versioning", {"GET": "GetBucketVersioning", "PUT": "PutBucketVersioning"}),
    ("versions", {"GET": "ListObjectVersions"}),
    ("uploads", {"GET": "ListMultipartUploads"}),
    ("location", {"GET": "GetBucketLocation"}),
    ("delete", {"POST": "DeleteObjects"}),
)
_OBJECT_SUBRESOURCES = (
    ("uploads", {"POST": "CreateMultipartUpload"}),
    ("uploadId", {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "GET": "ListParts",
                  "DELETE": "AbortMultipartUpload"}),
    ("tagging", {"GET": "GetObjectTagging", "PUT": "PutObjectTagging", "DELETE": "DeleteObjectTagging"}),
    ("acl", {"GET": "GetObjectAcl", "PUT": "PutObjectAcl"}),
)
_BUCKET_PLAIN = {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket", "POST": "PostObject"}
_OBJECT_PLAIN = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject", "PUT": "PutObject"}


def split_target(request: web.Request, domains: tuple[str, ...] = ()) -> tuple[str, str]:
    """(bucket, key) of a path-style or virtual-host request, for the log line only."""
    host = (request.host or "").split(":")[0].lower()
    path = unquote(request.raw_path.partition("?")[0]).lstrip("/")
    for domain in domains:
        if host.endswith("." + domain):
            return host[: -len(domain) - 1], path
    bucket, _, key = path.partition("/")
    return bucket, key


def operation(request: web.Request, bucket: str, key: str) -> str:
    """AWS's name of the S3 operation (a bounded label set: unknown shapes are "Other")."""
    method, query = request.method, request.query
    if not bucket:
        return "ListBuckets" if method == "GET" else "Other"
    if not key:
        for name, by_method in _BUCKET_SUBRESOURCES:
            if name in query:
                return by_method.get(method, "Other")
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        return _BUCKET_PLAIN.get(method, "Other")
    for name, by_method in _OBJECT_SUBRESOURCES:
        if name in query:
            if name == "uploadId" and method == "PUT" and "x-amz-copy-source" in request.headers:
                return "UploadPartCopy"
            return by_method.get(method, "Other")
    if method == "PUT" and "x-amz-copy-source" in request.headers:
        return "CopyObject"
    return _OBJECT_PLAIN.get(method, "Other")


def request_started(request: web.Request, request_id: str) -> None:
    request[REQUEST_ID] = request_id
    request[STARTED] = time.perf_counter()
    IN_FLIGHT.inc()


def _finish(request: web.Request, status: int, sent: int, domains: tuple[str, ...]) -> None:
    started = request.get(STARTED)
    if started is None:  # not through the middleware (refused by the expect handler): already counted there
        return
    del request[STARTED]
    IN_FLIGHT.dec()
    elapsed = time.perf_counter() - started
    bucket, key = split_target(request, domains)
    op = operation(request, bucket, key)
    received = getattr(request.content, "total_bytes", 0) or 0  # an empty body's reader has none
    REQUESTS.labels(op, str(status)).inc()
    DURATION.labels(op).observe(elapsed)
    RECEIVED.labels(op).inc(received)
    SENT.labels(op).inc(sent)
    fields = {"request_id": request.get(REQUEST_ID, ""), "operation": op, "method": request.method,
              "bucket": bucket, "key": key[:1024], "status": status, "bytes_in": received,
              "bytes_out": sent, "duration_ms": round(elapsed * 1000, 2), "remote": request.remote or "",
              "tls": request.transport is not None and request.transport.get_extra_info("sslcontext") is not None}
    # The request id as the record's own attribute: the line names it though the context that
    # held it (the handler's task) may be gone by now.
    log.info("%s %s %d", op, ascii(f"/{bucket}/{key}" if key else f"/{bucket}")[1:-1], status,
             extra={"fields": {k: v for k, v in fields.items() if k != "request_id"},
                    "request_id": fields["request_id"]})


def response_started(request: web.Request, response: web.StreamResponse) -> None:
    request[RESPONSE] = response


def request_aborted(request: web.Request, domains: tuple[str, ...] = ()) -> None:
    """The handler was cancelled: the client went away, or shutdown's grace ran out. Once the
    status line went out, that is what the client saw (a GET's client often closes as soon as
    it has its last byte, while the handler is still winding down); before, 499 as nginx."""
    response = request.get(RESPONSE)
    if response is not None and response.prepared:
        _finish(request, response.status, body_bytes_sent(request, response), domains)
    else:
        _finish(request, 499, 0, domains)


def body_bytes_sent(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes of the response: aiohttp counts what went on the wire, status line and headers
    included (written as below), so those are taken off again."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    # body_length is set when the response ends; one cut short only has its writer's count.
    wire = response.body_length or getattr(getattr(response, "_payload_writer", None), "output_size", 0) or 0
    head = len(f"HTTP/1.1 {response.status} {response.reason}\r\n") + 2 + sum(
        len(k) + len(v) + 4 for k, v in response.headers.items())
    sent = max(0, wire - head)
    if response.content_length is not None:
        sent = min(sent, response.content_length)
    return sent


class S3AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook: called once the response is completely written."""

    domains: tuple[str, ...] = ()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:  # noqa: A002
        _finish(request, response.status, body_bytes_sent(request, response), self.domains)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return True

