"""The S3 operations: one method per operation, dispatched by method, path and sub-resource.

Object bytes only ever go to or come from a crypto worker; metadata operations use the
erasure set directly. Errors are raised as `sealstore.errors` and rendered in server.py.
"""
from __future__ import annotations

import asyncio

import base64
import binascii
import email.utils
import logging
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, unquote

import grpc
from aiohttp import web

from sealstore import errors, frames, sigv4
from sealstore.conditions import Conditions
from sealstore.v1 import crypto_pb2, types_pb2

from . import auth, bucket_config, config_xml, copy, multipart, post_object, s3xml, sse
from .auth import Authenticator, Identity
from .backend import Backend
from .body import MAX_OBJECT_SIZE, body_from_request, checksum_headers, requested_checksum_headers
from .limits import FailedAuthThrottle, Limits

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
# Sub-resources S3 defines that this gateway does not implement (anything else in the query is ignored,
# e.g. botocore's `x-id`).
UNSUPPORTED_SUBRESOURCES = frozenset({
    "accelerate", "analytics", "attributes", "cors", "intelligent-tiering", "inventory", "legal-hold",
    "lifecycle", "logging", "metrics", "notification", "object-lock", "ownershipControls",
    "policyStatus", "publicAccessBlock", "replication", "requestPayment", "restore", "retention",
    "select", "torrent", "website",
})
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type", "response-content-language": "Content-Language",
    "response-expires": "Expires", "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition", "response-content-encoding": "Content-Encoding",
}
PASSTHROUGH_META = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
CONTINUE_PENDING = web.RequestKey("sealstore.continue_pending", bool)
"""The client sent `Expect: 100-continue` and waits for our go-ahead."""


@dataclass(frozen=True)
class Target:
    bucket: str
    key: str
    query: dict[str, str]


def validate_bucket_name(name: str) -> None:
    if not _BUCKET_NAME.match(name) or ".." in name or _IP_LIKE.match(name):
        raise errors.InvalidBucketName(resource=f"/{name}")


def validate_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError()


def http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def _url_encode(text: str) -> str:
    return quote(text, safe="/")


async def grant_continue(request: web.Request) -> None:
    """Sends the `100 Continue` a client with `Expect: 100-continue` waits for before its body.

    server.py's expect handler only marks the request; the operation calls this once every
    check that needs no body has passed (authentication, bucket, the SSE-KMS key), so a refused
    request is answered before the client sends a single body byte."""
    await bucket_config.run_deferred_check(request)  # the bucket policy: the last check before the body
    if request.get(CONTINUE_PENDING):
        request[CONTINUE_PENDING] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the real one


def not_modified_response(meta: types_pb2.ObjectMeta) -> web.Response:
    """304: no body; the validators the client compares with its cached copy."""
    return web.Response(status=304, headers={"ETag": s3xml.quote_etag(meta.etag),
                                             "Last-Modified": http_date(meta.mtime_ns)})


INT64_MAX = (1 << 63) - 1
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")


def parse_range(value: str | None) -> crypto_pb2.ByteRange | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n`; anything else (or several ranges) means the whole object, as S3.

    Positions beyond int64 are clamped, not rejected: no object is that large, so a first byte
    there is simply unsatisfiable (416 from the worker) and a last byte or suffix there means
    "to the end" / "all of it", exactly what the unclamped number would mean.
    """
    if not value:
        return None
    m = _RANGE.fullmatch(value)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        return crypto_pb2.ByteRange(suffix_length=min(int(last), INT64_MAX), is_suffix=True)
    if last and int(last) < int(first):
        return None
    return crypto_pb2.ByteRange(first=min(int(first), INT64_MAX), last=min(int(last), INT64_MAX) if last else -1)


def object_headers(meta: types_pb2.ObjectMeta, customer: sse.CustomerKey | None = None) -> dict[str, str]:
    headers = {
        "ETag": s3xml.quote_etag(meta.etag),
        "Last-Modified": http_date(meta.mtime_ns),
        "Content-Type": meta.content_type or DEFAULT_CONTENT_TYPE,
        "Accept-Ranges": "bytes",
    }
    for name, value in meta.user_metadata.items():
        if name in PASSTHROUGH_META:
            headers[name.title()] = value
        else:
            headers[f"x-amz-meta-{name}"] = value
    headers.update(bucket_config.tag_count_headers(meta))
    headers.update(sse.response_headers(meta.encryption if meta.HasField("encryption") else None, customer))
    return headers


def user_metadata(request: web.Request) -> dict[str, str]:
    out = {}
    for name, value in request.headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            out[lname[len("x-amz-meta-"):]] = value
        elif lname == "content-encoding":
            # aws-chunked describes the upload's framing, not the object (S3 drops it too).
            rest = [e.strip() for e in value.split(",") if e.strip() and e.strip().lower() != "aws-chunked"]
            if rest:
                out[lname] = ",".join(rest)
        elif lname in PASSTHROUGH_META:
            out[lname] = value
    return out


def _rpc(e: grpc.RpcError) -> errors.SealstoreError:
    return errors.from_rpc_error(e)


class S3Api:
    def __init__(self, authenticator: Authenticator, backend_factory, domains: tuple[str, ...] = (),
                 limits: Limits | None = None):
        self.authenticator = authenticator
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self.domains = domains
        self.limits = limits or Limits()
        self.throttle = FailedAuthThrottle(self.limits.auth_fail_burst, self.limits.auth_fail_rate)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._backend_factory()
        return self._backend

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()

    # -- routing ---------------------------------------------------------------------------

    def vhost_bucket(self, request: web.Request) -> str:
        """The bucket a virtual-host style request names in its Host header, or ''."""
        host = (request.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        vhost_bucket = ""
        for domain in self.domains:
            if host.endswith("." + domain):
                vhost_bucket = host[: -len(domain) - 1]
        return vhost_bucket

    def target(self, request: web.Request) -> Target:
        raw_path, _, raw_query = request.raw_path.partition("?")
        path = unquote(raw_path)
        vhost_bucket = self.vhost_bucket(request)
        if vhost_bucket:
            bucket, key = vhost_bucket, path[1:]
        else:
            bucket, _, key = path[1:].partition("/")
        query = {}
        for name, value in sigv4.parse_query(raw_query):
            query.setdefault(name, value)
        return Target(bucket, key, query)

    def precheck(self, request: web.Request) -> None:
        """Checks that need no body and no authentication: a declared size too large is refused
        before a single body byte is read (or 100-continue is sent)."""
        headers = request.headers
        for name in ("Content-Length", "x-amz-decoded-content-length"):
            value = headers.get(name)
            if value is None:
                continue
            value = value.strip()
            if not value.isascii() or not value.isdigit():
                raise errors.InvalidArgument(f"{name} must be a non-negative decimal number")
            if len(value) > 19 or int(value) > MAX_OBJECT_SIZE + self._framing_allowance(headers, name):
                raise errors.EntityTooLarge()

    @staticmethod
    def _framing_allowance(headers, name: str) -> int:
        """aws-chunked framing adds ~90 bytes per chunk to Content-Length; 8 KiB chunks are the smallest S3 allows."""
        if name == "Content-Length" and "x-amz-decoded-content-length" in headers:
            return (MAX_OBJECT_SIZE // 8192 + 2) * 180
        return 0

    def _authenticate(self, request: web.Request, raw_path: str, raw_query: str) -> Identity:
        address = request.remote or "?"
        if not self.throttle.allow(address):
            err = errors.SlowDown("Too many failed authentications from your address; slow down.")
            err.logged = True
            raise err
        try:
            return self.authenticator.authenticate(request.method, raw_path, raw_query, request.headers.items(),
                                                   vhost_bucket=self.vhost_bucket(request))
        except errors.SealstoreError as err:
            if err.http_status < 500:
                self.throttle.failed(address, f"{err.code}: {ascii(err.message[:200])}")
                err.logged = True  # the throttle logs each burst once, not each request
            raise

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.precheck(request)
        raw_path, _, raw_query = request.raw_path.partition("?")
        if post_object.is_browser_upload(request, self.target(request)):
            # Signed by its form's policy, not by a header or query: post_object authenticates it.
            return await post_object.post_object(self, request, self.target(request))
        identity = self._authenticate(request, raw_path, raw_query)
        if identity.query_headers:
            request = request.clone(headers=auth.with_query_headers(request.headers, identity.query_headers))
        t = self.target(request)
        method = request.method
        unsupported = UNSUPPORTED_SUBRESOURCES.intersection(t.query)
        if unsupported:
            raise errors.NotImplementedS3(f"The {sorted(unsupported)[0]} sub-resource is not implemented")
        await bucket_config.authorize(self, request, identity, t)
        if not t.bucket:
            if method == "GET":
                return await self.list_buckets()
            raise errors.MethodNotAllowed()
        if not t.key:
            return await self.bucket_operation(request, identity, t)
        validate_key(t.key)
        return await self.object_operation(request, identity, t)

    async def bucket_operation(self, request: web.Request, identity: Identity, t: Target) -> web.StreamResponse:
        method, q = request.method, t.query
        if "encryption" in q:
            return await self.bucket_encryption(request, identity, t)
        if "policy" in q:
            return await bucket_config.bucket_policy(self, request, identity, t)
        if "tagging" in q:
            return await bucket_config.bucket_tagging(self, request, identity, t)
        if "acl" in q:
            return await bucket_config.bucket_acl(self, request, identity, t)
        if "versioning" in q:
            return await bucket_config.bucket_versioning(self, request, identity, t)
        if "versions" in q and method == "GET":
            return await bucket_config.list_object_versions(self, request, identity, t)
        if "uploads" in q and method == "GET":
            return await multipart.list_uploads(self, request, identity, t)
        if "location" in q and method == "GET":
            await self.backend.bucket(t.bucket)
            return _xml(s3xml.location_constraint())
        if "delete" in q and method == "POST":
            return await self.delete_objects(request, identity, t)
        if method == "POST":
            return await post_object.post_object(self, request, t)
        if method == "PUT":
            return await self.create_bucket(request, identity, t)
        if method == "HEAD":
            await self.backend.erasure.get_bucket(t.bucket)
            return web.Response(status=200)
        if method == "DELETE":
            await self.backend.erasure.delete_bucket(t.bucket)
            self.backend.forget_bucket(t.bucket)
            return web.Response(status=204)
        if method == "GET":
            return await self.list_objects(t)
        raise errors.MethodNotAllowed()

    async def object_operation(self, request: web.Request, identity: Identity, t: Target) -> web.StreamResponse:
        method, q = request.method, t.query
        if "uploads" in q:
            if method == "POST":
                return await multipart.create_upload(self, request, identity, t)
            raise errors.MethodNotAllowed()
        if "uploadId" in q:
            if method == "PUT":
                if "x-amz-copy-source" in request.headers:
                    return await copy.upload_part_copy(self, request, identity, t)
                return await multipart.upload_part(self, request, identity, t)
            if method == "POST":
                return await multipart.complete_upload(self, request, identity, t)
            if method == "GET":
                return await multipart.list_parts(self, request, identity, t)
            if method == "DELETE":
                return await multipart.abort_upload(self, request, identity, t)
            raise errors.MethodNotAllowed()
        if "tagging" in q:
            return await bucket_config.object_tagging(self, request, identity, t)
        if "acl" in q:
            return await bucket_config.object_acl(self, request, identity, t)
        if method == "PUT":
            if "x-amz-copy-source" in request.headers:
                return await copy.copy_object(self, request, identity, t)
            return await self.put_object(request, identity, t)
        if method == "GET":
            return await self.get_object(request, t)
        if method == "HEAD":
            return await self.head_object(request, t)
        if method == "DELETE":
            await self.backend.bucket(t.bucket)
            await self.backend.erasure.delete_object(t.bucket, t.key)
            return web.Response(status=204)
        raise errors.MethodNotAllowed()

    # -- buckets ---------------------------------------------------------------------------

    async def list_buckets(self) -> web.Response:
        buckets = await self.backend.erasure.list_buckets()
        return _xml(s3xml.list_buckets((b.name, b.created_ns) for b in buckets))

    async def _small_body(self, request: web.Request, identity: Identity, limit: int = s3xml.MAX_CONFIG_XML) -> bytes:
        body = body_from_request(request.content, request.headers, identity.payload_hash, identity.chain,
                                 read_timeout=self.limits.body_timeout)
        # A small document is read (and capped) before the bucket policy is asked about it.
        deferred = bucket_config.take_deferred_check(request)
        await grant_continue(request)
        data = await body.read_all(limit)
        if deferred is not None:
            await deferred()
        return data

    async def create_bucket(self, request: web.Request, identity: Identity, t: Target) -> web.Response:
        validate_bucket_name(t.bucket)
        s3xml.parse_create_bucket(await self._small_body(request, identity))
        await self.backend.erasure.make_bucket(t.bucket)
        self.backend.forget_bucket(t.bucket)
        return web.Response(status=200, headers={"Location": f"/{t.bucket}"})

    async def bucket_encryption(self, request: web.Request, identity: Identity, t: Target) -> web.Response:
        method = request.method
        if method == "GET":
            info = await self.backend.erasure.get_bucket(t.bucket)
            enc = info.encryption if info.HasField("encryption") else None
            if enc is None or not enc.sse_algorithm:
                raise errors.ServerSideEncryptionConfigurationNotFoundError(resource=f"/{t.bucket}")
            return _xml(s3xml.bucket_encryption(s3xml.BucketEncryptionRule(enc.sse_algorithm, enc.kms_master_key_id)))
        if method == "PUT":
            rule = s3xml.parse_bucket_encryption(await self._small_body(request, identity))
            await self.backend.erasure.get_bucket(t.bucket)
            if rule.sse_algorithm == sse.KMS:
                # A default no PUT could use (missing, disabled) is refused now rather than at every upload.
                name = sse.normalize_key_id(rule.kms_master_key_id) if rule.kms_master_key_id \
                    else sse.deployment_kms_key_name()
                await self.backend.check_key_usable(name, fresh=True)
            await self.backend.erasure.set_bucket_encryption(
                t.bucket, types_pb2.BucketEncryption(sse_algorithm=rule.sse_algorithm,
                                                     kms_master_key_id=rule.kms_master_key_id))
            self.backend.forget_bucket(t.bucket)
            return web.Response(status=200)
        if method == "DELETE":
            await self.backend.erasure.get_bucket(t.bucket)
            await self.backend.erasure.set_bucket_encryption(t.bucket, None)
            self.backend.forget_bucket(t.bucket)
            return web.Response(status=204)
        raise errors.MethodNotAllowed()

    async def list_objects(self, t: Target) -> web.Response:
        q = t.query
        v2 = q.get("list-type") == "2"
        max_keys = s3xml.parse_max(q, "max-keys")
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise errors.InvalidArgument("encoding-type must be url")
        encode = _url_encode if encoding == "url" else s3xml.NO_ENCODING
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        token = q.get("continuation-token", "")
        if v2:
            start_after = q.get("start-after", "")
            marker = start_after
            if token:
                try:
                    marker = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError, ValueError):
                    raise errors.InvalidArgument("The continuation token provided is incorrect") from None
        else:
            start_after = ""
            marker = q.get("marker", "")
        await self.backend.bucket(t.bucket)
        listing = await self._listing(t.bucket, prefix, delimiter, marker, max_keys)
        next_token = ""
        if v2 and listing.is_truncated:
            next_token = base64.urlsafe_b64encode(listing.next_marker.encode("utf-8")).decode()
        return _xml(s3xml.list_objects(
            listing, bucket=t.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, encode=encode,
            v2=v2, start_after=start_after, continuation_token=token, next_continuation_token=next_token,
            marker=marker if not v2 else ""))

    async def _listing(self, bucket: str, prefix: str, delimiter: str, marker: str, max_keys: int) -> s3xml.Listing:
        """Walks the merged listing, folding keys into common prefixes, until max_keys items."""
        objects: list[s3xml.ListedObject] = []
        prefixes: list[str] = []
        last = marker
        # A marker that is itself a common prefix means "after everything under it".
        if delimiter and marker.startswith(prefix) and marker.endswith(delimiter) and delimiter in marker[len(prefix):]:
            last = marker + "\U0010ffff"
        if max_keys == 0:
            return s3xml.Listing([], [], False, "")
        while True:
            entries, truncated = await self.backend.erasure.list_objects(bucket, prefix, last, 1000)
            for entry in entries:
                if entry.key <= last:
                    continue
                rest = entry.key[len(prefix):]
                cut = rest.find(delimiter) if delimiter else -1
                if len(objects) + len(prefixes) == max_keys:
                    return s3xml.Listing(objects, prefixes, True, _marker_of(objects, prefixes))
                if cut >= 0:
                    cp = prefix + rest[: cut + len(delimiter)]
                    prefixes.append(cp)
                    last = cp + "\U0010ffff"
                else:
                    objects.append(s3xml.ListedObject(entry.key, entry.size, entry.etag, entry.mtime_ns))
                    last = entry.key
            if not truncated or not entries:
                return s3xml.Listing(objects, prefixes, False, "")
            last = max(last, entries[-1].key)

    async def delete_objects(self, request: web.Request, identity: Identity, t: Target) -> web.Response:
        objects, quiet = s3xml.parse_delete_object_versions(
            await self._small_body(request, identity, self.limits.max_xml_body))
        await self.backend.bucket(t.bucket)
        deleted, failed = [], []
        for key, version in objects:
            try:
                validate_key(key)
                if version is not None:
                    config_xml.check_version_id({"versionId": version})  # only "null" exists here
                await bucket_config.delete_object_allowed(self, request, identity, t.bucket, key)
                await self.backend.erasure.delete_object(t.bucket, key)
                deleted.append(key)
            except errors.SealstoreError as e:
                failed.append((key, e.code, e.message))
        return _xml(s3xml.delete_result(deleted, failed, quiet))

    # -- objects ---------------------------------------------------------------------------

    async def put_object(self, request: web.Request, identity: Identity, t: Target) -> web.Response:
        headers = request.headers
        tags = bucket_config.tags_from_headers(headers)
        # Header errors (contradictory SSE, SSE-C over plain HTTP) before any backend call.
        requested = sse.requested_encryption(headers, secure=sse.is_tls(request))
        body = body_from_request(request.content, headers, identity.payload_hash, identity.chain,
                                 read_timeout=self.limits.body_timeout)
        info = await self.backend.bucket(t.bucket)
        header = crypto_pb2.PutObjectHeader(
            bucket=t.bucket, key=t.key, content_type=headers.get("Content-Type", DEFAULT_CONTENT_TYPE),
            user_metadata=user_metadata(request), content_length=body.length)
        header.tags.update(tags)
        header.checksums.update(body.checks.in_headers)
        encryption = await self.write_encryption(headers, info, requested, header)
        checked_key = encryption.kms_key_to_check
        await grant_continue(request)
        try:
            response = await self._stream_to_worker(header, body)
        except errors.SealstoreError:
            if checked_key:
                self.backend.forget_key(checked_key)  # the next PUT asks the kms again
            raise
        meta = response.meta
        out = {"ETag": s3xml.quote_etag(meta.etag)}
        out.update(checksum_headers(meta.checksums))
        out.update(sse.response_headers(meta.encryption if meta.HasField("encryption") else None,
                                        encryption.customer))
        return web.Response(status=200, headers=out)

    async def write_encryption(self, headers: Mapping[str, str], info: types_pb2.BucketInfo,
                               requested: sse.WriteEncryption | None,
                               header: crypto_pb2.PutObjectHeader) -> sse.WriteEncryption:
        """The SSE a new object gets (PUT, POST, CreateMultipartUpload, copy destination): the
        request's own SSE headers win entirely, else the bucket's default, else the deployment's;
        set on `header`. A kms key it names must be usable (fail fast, before any body byte)."""
        encryption = sse.resolve_write_encryption(
            headers, info.encryption if info.HasField("encryption") else None, requested=requested)
        encryption.apply_to(header)
        if encryption.kms_key_to_check:
            await self.backend.check_key_usable(encryption.kms_key_to_check)
        return encryption

    async def _stream_to_worker(self, header: crypto_pb2.PutObjectHeader, body) -> crypto_pb2.PutObjectResponse:
        """Streams the body to a crypto worker and returns its answer.

        The worker may answer before the body's end (a key that became unusable, a lost quorum):
        then sending stops at once, even while waiting for a slow client, and the worker's
        status is the answer. The unread rest of the client's body is left alone (server.py
        closes the connection)."""
        call = self.backend.crypto().PutObject()

        async def send() -> None:
            await call.write(crypto_pb2.PutObjectRequest(header=header))
            async for piece in body.pieces():
                await call.write(frames.Payload(piece))
            body.finish()  # only a fully verified body may be committed
            await call.write(crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(
                size=body.received, checksums=body.checks.verified)))
            await call.done_writing()

        async def answer() -> crypto_pb2.PutObjectResponse:
            return await call

        async def worker_error(exc: BaseException) -> errors.SealstoreError:
            err = _typed(exc)
            if type(err) is errors.SealstoreError:
                # Untyped: grpc may have replaced the worker's status because we were writing
                # as the call ended; the worker sent its error in the initial metadata too.
                try:
                    early = errors.from_initial_metadata(await call.initial_metadata())
                except Exception:
                    early = None
                return early or err
            return err

        sending, answering = asyncio.ensure_future(send()), asyncio.ensure_future(answer())
        try:
            await asyncio.wait((sending, answering), return_when=asyncio.FIRST_COMPLETED)
            failure = sending.exception() if sending.done() else None
            if not answering.done() and failure is not None \
                    and not isinstance(failure, (grpc.RpcError, asyncio.InvalidStateError)):
                # The client's body failed (bad signature, cut off, gone): nothing may be committed.
                raise failure
            # Everything was sent, or a write failed because the call ended, or the worker
            # answered first: its answer decides.
            try:
                response = await answering
            except grpc.RpcError as final:
                raise await worker_error(final) from None
            await sending
            return response
        except BaseException:
            call.cancel()
            await _cancelled(sending)
            await _cancelled(answering)
            raise

    async def head_object(self, request: web.Request, t: Target) -> web.Response:
        customer = sse.customer_key(request.headers, secure=sse.is_tls(request))
        meta = await self.backend.erasure.get_object_meta(t.bucket, t.key)
        try:
            Conditions.from_headers(request.headers).check(meta, resource=request.path)
        except errors.NotModified:
            return not_modified_response(meta)
        sse.check_customer_key(meta, customer, resource=request.path)
        headers = object_headers(meta, customer)
        headers["Content-Length"] = str(meta.size)
        part = multipart.part_number_query(t.query, request.headers)
        if part is not None:
            status, extra, length = multipart.part_view(meta, part)
            headers.update(extra)
            headers["Content-Length"] = str(length)
            return web.Response(status=status, headers=headers)
        headers.update(requested_checksum_headers(request.headers, meta.checksums))
        return web.Response(status=200, headers=headers)

    async def get_object(self, request: web.Request, t: Target) -> web.StreamResponse:
        customer = sse.customer_key(request.headers, secure=sse.is_tls(request))
        byte_range = parse_range(request.headers.get("Range"))
        part = multipart.part_number_query(t.query, request.headers)
        get = crypto_pb2.GetObjectRequest(bucket=t.bucket, key=t.key, part_number=part or 0)
        if customer is not None:
            get.sse_customer_key = customer.key  # the worker checks it against the object
        if byte_range is not None:
            get.range.CopyFrom(byte_range)
        conditions = Conditions.from_headers(request.headers)
        if conditions:
            # The worker checks them right after its metadata read: a 304 or 412 costs no kms call.
            get.conditions.CopyFrom(conditions.to_proto())
        call = self.backend.crypto().GetObject(get)
        try:
            try:
                first = await call.read()
            except grpc.RpcError as e:
                raise _rpc(e) from None
            if first is grpc.aio.EOF or not first.HasField("head"):
                raise errors.InternalError("the crypto worker sent no object head")
            head = first.head
            if head.not_modified:
                call.cancel()
                return not_modified_response(head.meta)
            headers = object_headers(head.meta, customer)
            for param, header in RESPONSE_OVERRIDES.items():
                if param in t.query:
                    headers[header] = t.query[param]
            status = 206 if head.is_range else 200
            if part is not None:
                status, extra, _ = multipart.part_view(head.meta, part)
                headers.update(extra)
            elif head.is_range:
                end = head.offset + head.length - 1
                headers["Content-Range"] = f"bytes {head.offset}-{end}/{head.meta.size}"
            else:
                headers.update(requested_checksum_headers(request.headers, head.meta.checksums))
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = head.length
        except BaseException:
            call.cancel()
            raise
        await response.prepare(request)
        sent = 0
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                sent += len(msg.data)
                await response.write(msg.data)
        except Exception as e:
            call.cancel()
            err = _rpc(e) if isinstance(e, grpc.RpcError) else e
            log.warning("GET /%s/%s broke after %d of %d bytes: %r", t.bucket, t.key, sent, head.length, err)
            _abort(request)
            return response
        if sent != head.length:
            log.warning("GET /%s/%s: worker sent %d of %d bytes", t.bucket, t.key, sent, head.length)
            _abort(request)
            return response
        await response.write_eof()
        return response


def _typed(exc: BaseException) -> errors.SealstoreError:
    """The typed error behind a failed worker call or write."""
    if isinstance(exc, errors.SealstoreError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return _rpc(exc)
    return errors.InternalError(f"the crypto worker call failed: {type(exc).__name__}")


async def _cancelled(task: asyncio.Future) -> None:
    """Cancels `task` and waits for it to end, whatever it ends with."""
    if not task.done():
        task.cancel()
    try:
        await task
    except BaseException:
        pass


def _abort(request: web.Request) -> None:
    """Headers are out, so the only honest signal left is a broken connection."""
    if request.transport is not None:
        request.transport.abort()


def _marker_of(objects: list[s3xml.ListedObject], prefixes: list[str]) -> str:
    candidates = [o.key for o in objects[-1:]] + prefixes[-1:]
    return max(candidates) if candidates else ""


def _xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml")
