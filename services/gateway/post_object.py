"""Browser POST uploads: multipart/form-data with a signed policy document (POST Object).

The form fields before the `file` field are read (bounded: they are all small), the policy's
signature (SigV4 or SigV2) and conditions are checked, and only then is the file streamed to a
crypto worker as it arrives, exactly like a PUT's body: never held whole, content-length-range
enforced while streaming, nothing committed unless the whole file arrived within the range.
Fields after the file are ignored, as S3 does.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import AsyncIterator, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web
from multidict import CIMultiDict

from sealstore import errors, sigv4
from sealstore.v1 import crypto_pb2

from . import bucket_config, config_xml, policy, s3xml, sse
from .body import MAX_OBJECT_SIZE

MAX_FORM_FIELDS_BYTES = 64 << 10
"""All form fields before the file together (AWS allows 20 KB of policy; fields are small)."""
MAX_FIELDS = 100
PIECE = 1 << 20
FILE_FIELD = "file"
SIGNATURE_FIELDS = frozenset({"policy", "x-amz-signature", "signature", "awsaccesskeyid", FILE_FIELD})
"""Fields the policy's conditions need not name (S3's rule; x-ignore-* too)."""
PASSTHROUGH = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
SSE_FIELDS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id",
              "x-amz-server-side-encryption-context", "x-amz-server-side-encryption-customer-algorithm",
              "x-amz-server-side-encryption-customer-key", "x-amz-server-side-encryption-customer-key-md5")
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


def _denied(message: str) -> errors.SealstoreError:
    return errors.AccessDenied(f"Invalid according to Policy: {message}")


# ---------------------------------------------------------------------------------------------
# The policy document (pure)


@dataclass(frozen=True)
class PostPolicy:
    expiration: datetime.datetime
    exact: tuple[tuple[str, str], ...] = ()
    """(field, value): the field must equal value."""
    starts_with: tuple[tuple[str, str], ...] = ()
    length_range: tuple[int, int] | None = None
    named: frozenset[str] = field(default_factory=frozenset)
    """Every field a condition names (lower case)."""


def _field_name(raw) -> str:
    if not isinstance(raw, str) or not raw.startswith("$") or len(raw) < 2:
        raise errors.InvalidPolicyDocument(f"Invalid Policy: Invalid Condition field {str(raw)[:64]!r}")
    return raw[1:].lower()


def _condition_text(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise errors.InvalidPolicyDocument("Invalid Policy: condition values must be strings")
    return str(value)


def _length(value) -> int:
    if isinstance(value, bool):
        raise errors.InvalidPolicyDocument("Invalid Policy: content-length-range takes two integers")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise errors.InvalidPolicyDocument("Invalid Policy: content-length-range takes two integers") from None
    if number < 0 or (isinstance(value, float) and value != number):
        raise errors.InvalidPolicyDocument("Invalid Policy: content-length-range takes two non-negative integers")
    return number


def parse_policy(policy_b64: str) -> PostPolicy:
    """The base64 `policy` field; InvalidPolicyDocument if it is not a valid POST policy."""
    try:
        raw = json.loads(base64.b64decode(policy_b64.strip(), validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidPolicyDocument("Invalid Policy: Invalid JSON.") from None
    if not isinstance(raw, dict):
        raise errors.InvalidPolicyDocument("Invalid Policy: Invalid JSON.")
    expiration = raw.get("expiration")
    if not isinstance(expiration, str):
        raise errors.InvalidPolicyDocument("Invalid Policy: Policy missing expiration.")
    try:
        moment = datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidPolicyDocument(f"Invalid Policy: Invalid 'expiration' value: {expiration[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    conditions = raw.get("conditions")
    if not isinstance(conditions, list):
        raise errors.InvalidPolicyDocument("Invalid Policy: Policy missing conditions.")
    exact, starts, named = [], [], set()
    length_range = None
    for condition in conditions:
        if isinstance(condition, dict):
            if len(condition) != 1:
                raise errors.InvalidPolicyDocument("Invalid Policy: a condition object has exactly one field")
            (name, value), = condition.items()
            exact.append((name.lower(), _condition_text(value)))
            named.add(name.lower())
        elif isinstance(condition, list) and len(condition) == 3 and isinstance(condition[0], str):
            op = condition[0].lower()
            if op == "content-length-range":
                low, high = _length(condition[1]), _length(condition[2])
                if low > high:
                    raise errors.InvalidPolicyDocument("Invalid Policy: content-length-range minimum exceeds maximum")
                length_range = (low, high)
            elif op in ("eq", "starts-with"):
                name = _field_name(condition[1])
                (exact if op == "eq" else starts).append((name, _condition_text(condition[2])))
                named.add(name)
            else:
                raise errors.InvalidPolicyDocument(f"Invalid Policy: Invalid Condition operator {condition[0][:40]!r}")
        else:
            raise errors.InvalidPolicyDocument("Invalid Policy: Invalid Simple-Condition: value must be a string.")
    return PostPolicy(moment, tuple(exact), tuple(starts), length_range, frozenset(named))


def check_conditions(post_policy: PostPolicy, fields: Mapping[str, str], bucket: str, now: float) -> None:
    """AccessDenied ("Invalid according to Policy: ...") unless the form meets its policy."""
    if now > post_policy.expiration.timestamp():
        raise _denied("Policy expired.")
    values = {**fields, "bucket": bucket}
    for name, expected in post_policy.exact:
        if values.get(name, "") != expected:
            raise _denied(f'Policy Condition failed: ["eq", "${name}", "{expected[:200]}"]')
    for name, prefix in post_policy.starts_with:
        if not values.get(name, "").startswith(prefix):
            raise _denied(f'Policy Condition failed: ["starts-with", "${name}", "{prefix[:200]}"]')
    extra = sorted(n for n in fields if n not in SIGNATURE_FIELDS and not n.startswith("x-ignore-")
                   and n not in post_policy.named)
    if extra:
        raise _denied(f"Extra input fields: {', '.join(extra)[:300]}")


def success_answer(fields: Mapping[str, str], bucket: str, key: str, etag: str, location: str,
                   headers: dict[str, str]) -> web.Response:
    """success_action_redirect (303 to it, with bucket, key and etag), else success_action_status
    200, 201 (with the PostResponse document) or 204 (the default)."""
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    quoted = s3xml.quote_etag(etag)
    if redirect:
        parts = urlsplit(redirect)
        if parts.scheme in ("http", "https") and parts.netloc:
            extra = urlencode({"bucket": bucket, "key": key, "etag": quoted})
            query = f"{parts.query}&{extra}" if parts.query else extra
            return web.Response(status=303, headers={**headers, "Location": urlunsplit(parts._replace(query=query))})
    status = fields.get("success_action_status", "")
    if status == "201":
        root = ET.Element("PostResponse")
        for tag, text in (("Location", location), ("Bucket", bucket), ("Key", key), ("ETag", quoted)):
            ET.SubElement(root, tag).text = text
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
        return web.Response(status=201, body=body, content_type="application/xml", headers=headers)
    return web.Response(status=200 if status == "200" else 204, headers=headers)


# ---------------------------------------------------------------------------------------------
# The form


def is_browser_upload(request: web.Request, t) -> bool:
    """POST /bucket with a multipart/form-data body and no header signature."""
    if request.method != "POST" or not t.bucket or t.key:
        return False
    if any(name in t.query for name in ("delete", "uploads", "uploadId")):
        return False
    content_type = request.headers.get("Content-Type", "")
    return content_type.lower().startswith("multipart/form-data") and "Authorization" not in request.headers


@dataclass
class Form:
    fields: dict[str, str]
    """Lower-case names -> values, of the fields before the file."""
    file_part: object
    filename: str


async def read_form(request: web.Request, read_timeout: float) -> Form:
    """Reads the fields up to the file field (bounded); MalformedPOSTRequest if the body is not
    well-formed multipart/form-data, InvalidArgument without a file."""
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError, LookupError):
        raise errors.MalformedPOSTRequest() from None
    fields: dict[str, str] = {}
    budget = MAX_FORM_FIELDS_BYTES
    while True:
        try:
            async with asyncio.timeout(read_timeout):
                part = await reader.next()
        except TimeoutError:
            raise errors.RequestTimeout() from None
        except (ValueError, AssertionError, RuntimeError, LookupError):
            raise errors.MalformedPOSTRequest() from None
        if part is None:
            raise errors.InvalidArgument("POST requires exactly one file upload per request.")
        if not hasattr(part, "read_chunk") or not part.name:
            raise errors.MalformedPOSTRequest("every form part needs a name")
        name = part.name.lower()
        if name == FILE_FIELD:
            return Form(fields, part, part.filename or "")
        value = bytearray()
        try:
            while True:
                async with asyncio.timeout(read_timeout):
                    chunk = await part.read_chunk(8192)
                if not chunk:
                    break
                value += chunk
                budget -= len(chunk)
                if budget < 0:
                    raise errors.MaxMessageLengthExceeded("The form fields before the file are too large")
        except TimeoutError:
            raise errors.RequestTimeout() from None
        except (ValueError, AssertionError, RuntimeError):
            raise errors.MalformedPOSTRequest() from None
        if name in fields:
            raise errors.InvalidArgument(f"The form field {name[:64]!r} appears more than once")
        if len(fields) >= MAX_FIELDS:
            raise errors.MalformedPOSTRequest("too many form fields")
        try:
            fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.MalformedPOSTRequest(f"the form field {name[:64]!r} is not UTF-8") from None


class FormFile:
    """The file field as a PUT body for _stream_to_worker: streamed, sized, never held whole."""

    class _NoChecks:
        verified: dict = {}
        in_headers: dict = {}

    def __init__(self, part, *, min_size: int, max_size: int, read_timeout: float):
        self._part = part
        self._min, self._max = min_size, max_size
        self._timeout = read_timeout
        self.received = 0
        self.length = -1
        self.checks = self._NoChecks()

    async def pieces(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await self._part.read_chunk(PIECE)
            except TimeoutError:
                raise errors.RequestTimeout() from None
            except (ValueError, AssertionError, RuntimeError):
                raise errors.MalformedPOSTRequest() from None
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self._max:
                raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed size")
            yield chunk

    def finish(self) -> None:
        if self.received < self._min:
            raise errors.EntityTooSmallForPolicy()


# ---------------------------------------------------------------------------------------------
# The operation


def _authenticate_form(api, request: web.Request, fields: Mapping[str, str]) -> str:
    """Checks the policy's signature (SigV4 or SigV2), through the failed-authentication throttle."""
    address = request.remote or "?"
    if not api.throttle.allow(address):
        err = errors.SlowDown("Too many failed authentications from your address; slow down.")
        err.logged = True
        raise err
    try:
        if "policy" not in fields:
            raise errors.AccessDenied("Bucket POST must contain a signed policy; anonymous uploads are not allowed")
        if "x-amz-signature" in fields:
            if fields.get("x-amz-algorithm") != sigv4.ALGORITHM:
                raise errors.InvalidArgument("x-amz-algorithm must be AWS4-HMAC-SHA256")
            for needed in ("x-amz-credential", "x-amz-date"):
                if needed not in fields:
                    raise errors.InvalidArgument(f"Bucket POST must contain a field named '{needed}'")
            return api.authenticator.verify_post_v4(fields["x-amz-credential"], fields["x-amz-date"],
                                                    fields["policy"], fields["x-amz-signature"])
        if "signature" in fields and "awsaccesskeyid" in fields:
            return api.authenticator.verify_post_v2(fields["awsaccesskeyid"], fields["policy"], fields["signature"])
        raise errors.AccessDenied("Bucket POST must be signed (x-amz-signature or AWSAccessKeyId and signature)")
    except errors.SealstoreError as err:
        if err.http_status < 500:
            api.throttle.failed(address, f"{err.code}: {ascii(err.message[:200])}")
            err.logged = True
        raise


@dataclass(frozen=True)
class _FormIdentity:
    access_key: str


async def post_object(api, request: web.Request, t) -> web.StreamResponse:
    from .s3api import grant_continue, validate_key  # s3api imports this module

    if not request.headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
        raise errors.PreconditionFailed("Bucket POST must be of the enclosure-type multipart/form-data")
    await grant_continue(request)
    form = await read_form(request, api.limits.body_timeout)
    fields = form.fields
    access_key = _authenticate_form(api, request, fields)
    post_policy = parse_policy(fields["policy"])
    if "key" not in fields:
        raise errors.InvalidArgument("Bucket POST must contain a field named 'key'.  If it is specified, please "
                                     "check the order of the fields.")
    check_conditions(post_policy, fields, t.bucket, api.authenticator.clock())
    key = fields["key"].replace("${filename}", form.filename)
    if not key:
        raise errors.InvalidArgument("User key must have a length greater than 0.")
    validate_key(key)
    hdrs = CIMultiDict((name, fields[name]) for name in SSE_FIELDS if name in fields)
    for name in ("x-amz-acl", "x-amz-grant-read", "x-amz-grant-full-control"):
        if name in fields:
            hdrs[name] = fields[name]
    config_xml.check_acl_headers(hdrs)
    secure = sse.is_tls(request)
    requested = sse.requested_encryption(hdrs, secure=secure)
    tags = config_xml.parse_tagging(fields["tagging"].encode("utf-8")) if fields.get("tagging") else {}
    info = await api.backend.bucket(t.bucket)
    context = policy.request_context(hdrs, secure=secure, source_ip=request.remote or "")
    await bucket_config.check_policy(api, request, _FormIdentity(access_key), t.bucket, key, "s3:PutObject",
                                     context)
    metadata = {name[len("x-amz-meta-"):]: value for name, value in fields.items() if name.startswith("x-amz-meta-")}
    metadata.update({name: fields[name] for name in PASSTHROUGH if name in fields})
    header = crypto_pb2.PutObjectHeader(bucket=t.bucket, key=key, user_metadata=metadata, content_length=-1,
                                        content_type=fields.get("content-type") or DEFAULT_CONTENT_TYPE)
    header.tags.update(tags)
    encryption = await api.write_encryption(hdrs, info, requested, header)
    checked_key = encryption.kms_key_to_check
    low, high = post_policy.length_range or (0, MAX_OBJECT_SIZE)
    body = FormFile(form.file_part, min_size=low, max_size=min(high, MAX_OBJECT_SIZE),
                    read_timeout=api.limits.body_timeout)
    try:
        response = await api._stream_to_worker(header, body)
    except errors.SealstoreError:
        if checked_key:
            api.backend.forget_key(checked_key)
        raise
    meta = response.meta
    location = f"{request.scheme}://{request.host}/{t.bucket}/{key}"
    out = {"ETag": s3xml.quote_etag(meta.etag), "Location": location}
    out.update(sse.response_headers(meta.encryption if meta.HasField("encryption") else None, encryption.customer))
    return success_answer(fields, t.bucket, key, meta.etag, location, out)
