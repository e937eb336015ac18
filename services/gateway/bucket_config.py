"""Bucket and object sub-resources: policy, tagging, ACL, versioning, ListObjectVersions; and the
checks every request passes before its operation (bucket policy, version id, ACL headers).

Policies and bucket tags are stored in BucketInfo on every drive (erasure client update_bucket),
object tags in ObjectMeta (update_object_tags, only onto the version read).
"""
from __future__ import annotations

from urllib.parse import quote, unquote

from aiohttp import web

from sealstore import errors

from . import config_xml, policy, s3xml, sse

POLICY_BODY_LIMIT = policy.MAX_POLICY_BYTES + 1
"""Read one byte more than a policy may have, so an oversized one is refused as AWS does."""


async def _update_bucket(api, bucket: str, **fields) -> None:
    """Stores policy or tags on every drive (NoSuchBucket before any write) and drops the
    gateway's cached bucket info, so the next request sees them."""
    await api.backend.erasure.get_bucket(bucket)
    await api.backend.erasure.update_bucket(bucket, **fields)
    api.backend.forget_bucket(bucket)


def _xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml")


# ---------------------------------------------------------------------------------------------
# Checks before every operation


def _unknown_keys(method: str, query) -> frozenset[str]:
    # UploadPart and CompleteMultipartUpload carry no SSE headers: the upload's encryption was
    # decided (and checked against the policy) by CreateMultipartUpload.
    if "uploadId" in query and method in ("PUT", "POST"):
        return policy.SSE_KEYS
    return frozenset()


async def check_policy(api, request: web.Request, identity, bucket: str, key: str, action: str,
                       context: dict | None = None, unknown_keys: frozenset[str] = frozenset()) -> None:
    """AccessDenied when `bucket`'s policy explicitly denies `action` on `key` (a missing bucket
    passes: the operation itself answers NoSuchBucket)."""
    try:
        info = await api.backend.bucket(bucket)
    except errors.NoSuchBucket:
        return
    if not info.policy_json:
        return
    if context is None:
        context = policy.request_context(request.headers, secure=sse.is_tls(request), source_ip=request.remote or "")
    policy.check(info.policy_json, bucket,
                 policy.Request(action, bucket, key, identity.access_key, context, unknown_keys))


DEFERRED_CHECK = web.RequestKey("sealstore.deferred_policy_check", object)
"""A write's policy check, run by s3api.grant_continue: every write grants its go-ahead only after
its own header checks and before it stores anything, so a malformed request is still refused
without a backend call and no write happens unchecked."""


async def authorize(api, request: web.Request, identity, t) -> None:
    """What every request passes after authentication and before its operation stores anything."""
    from .s3api import validate_key  # s3api imports this module

    method, q = request.method, t.query
    if t.key:
        validate_key(t.key)
        config_xml.check_version_id(q)
    if method in ("PUT", "POST") and "acl" not in q:
        config_xml.check_acl_headers(request.headers)
    if not t.bucket:
        return
    action = policy.object_action(method, q, request.headers) if t.key else policy.bucket_action(method, q)
    if not t.key and method == "POST" and "delete" in q:
        return  # DeleteObjects: checked per key (delete_object_allowed)
    if action == "s3:CreateBucket":
        return  # a bucket being created has no policy yet (an existing one answers BucketAlreadyOwnedByYou)
    context = policy.request_context(request.headers, secure=sse.is_tls(request), source_ip=request.remote or "",
                                     query=q)

    async def check() -> None:
        await check_policy(api, request, identity, t.bucket, t.key, action, context, _unknown_keys(method, q))
        source = request.headers.get("x-amz-copy-source") if t.key and method == "PUT" else None
        if source:
            source_bucket, source_key = _copy_source(source)
            if source_bucket:
                await check_policy(api, request, identity, source_bucket, source_key, "s3:GetObject", context)

    if method in ("PUT", "POST"):
        request[DEFERRED_CHECK] = check
    else:
        await check()


def take_deferred_check(request: web.Request):
    """The pending policy check, now the caller's to run (None if there is none)."""
    check = request.get(DEFERRED_CHECK)
    request[DEFERRED_CHECK] = None
    return check


async def run_deferred_check(request: web.Request) -> None:
    check = take_deferred_check(request)
    if check is not None:
        await check()


def _copy_source(value: str) -> tuple[str, str]:
    path = unquote(value.split("?", 1)[0]).lstrip("/")
    bucket, _, key = path.partition("/")
    return bucket, key


async def delete_object_allowed(api, request: web.Request, identity, bucket: str, key: str) -> None:
    """DeleteObjects: each key is an s3:DeleteObject of its own, as AWS evaluates it."""
    await check_policy(api, request, identity, bucket, key, "s3:DeleteObject")


# ---------------------------------------------------------------------------------------------
# Bucket policy


async def bucket_policy(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        info = await api.backend.erasure.get_bucket(t.bucket)
        if not info.policy_json:
            raise errors.NoSuchBucketPolicy(resource=f"/{t.bucket}")
        return web.Response(status=200, body=info.policy_json.encode("utf-8"), content_type="application/json")
    if method == "PUT":
        body = await api._small_body(request, identity, POLICY_BODY_LIMIT)
        policy.parse(body, t.bucket)  # MalformedPolicy before anything is stored
        await _update_bucket(api, t.bucket, policy_json=body.decode("utf-8"))
        return web.Response(status=204)
    if method == "DELETE":
        await _update_bucket(api, t.bucket, policy_json="")
        return web.Response(status=204)
    raise errors.MethodNotAllowed()


# ---------------------------------------------------------------------------------------------
# Tagging


async def bucket_tagging(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        info = await api.backend.erasure.get_bucket(t.bucket)
        if not info.tags:
            raise errors.NoSuchTagSet(resource=f"/{t.bucket}")
        return _xml(config_xml.tagging(dict(info.tags)))
    if method == "PUT":
        tags = config_xml.parse_tagging(await api._small_body(request, identity), bucket=True)
        await _update_bucket(api, t.bucket, tags=tags)
        return web.Response(status=204)
    if method == "DELETE":
        await _update_bucket(api, t.bucket, tags={})
        return web.Response(status=204)
    raise errors.MethodNotAllowed()


async def object_tagging(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        await api.backend.bucket(t.bucket)
        meta = await api.backend.erasure.get_object_meta(t.bucket, t.key)
        return _xml(config_xml.tagging(dict(meta.tags)))
    if method in ("PUT", "DELETE"):
        tags = config_xml.parse_tagging(await api._small_body(request, identity)) if method == "PUT" else {}
        await api.backend.bucket(t.bucket)
        meta = await api.backend.erasure.get_object_meta(t.bucket, t.key)
        # Only onto the version read: a PUT of the object in between wins (its tags are its own).
        await api.backend.erasure.update_object_tags(t.bucket, t.key, meta.data_id, tags)
        return web.Response(status=200 if method == "PUT" else 204)
    raise errors.MethodNotAllowed()


def tags_from_headers(headers) -> dict[str, str]:
    """x-amz-tagging on PUT (and CopyObject with REPLACE, POST uploads)."""
    value = headers.get("x-amz-tagging")
    return config_xml.parse_tagging_header(value) if value else {}


def tag_count_headers(meta) -> dict[str, str]:
    """x-amz-tagging-count on GET and HEAD, as AWS: only when the object has tags."""
    return {"x-amz-tagging-count": str(len(meta.tags))} if meta.tags else {}


# ---------------------------------------------------------------------------------------------
# ACLs


async def _put_acl(api, request: web.Request, identity) -> None:
    named = config_xml.check_acl_headers(request.headers)
    body = await api._small_body(request, identity)
    if body.strip():
        config_xml.check_acl_body(body)
    elif not named:
        raise errors.MissingSecurityHeader("Your request was missing a required header: x-amz-acl or an "
                                           "AccessControlPolicy body")


async def bucket_acl(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        await api.backend.erasure.get_bucket(t.bucket)
        return _xml(config_xml.access_control_policy())
    if method == "PUT":
        await api.backend.erasure.get_bucket(t.bucket)
        await _put_acl(api, request, identity)
        return web.Response(status=200)
    raise errors.MethodNotAllowed()


async def object_acl(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        await api.backend.bucket(t.bucket)
        await api.backend.erasure.get_object_meta(t.bucket, t.key)
        return _xml(config_xml.access_control_policy())
    if method == "PUT":
        await api.backend.bucket(t.bucket)
        await api.backend.erasure.get_object_meta(t.bucket, t.key)
        await _put_acl(api, request, identity)
        return web.Response(status=200)
    raise errors.MethodNotAllowed()


# ---------------------------------------------------------------------------------------------
# Versioning


async def bucket_versioning(api, request: web.Request, identity, t) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        await api.backend.erasure.get_bucket(t.bucket)
        return _xml(config_xml.versioning_configuration())
    if method == "PUT":
        status = config_xml.parse_versioning(await api._small_body(request, identity))
        await api.backend.erasure.get_bucket(t.bucket)
        if status:
            raise errors.NotImplementedS3(
                f"Bucket versioning ({status}) is not supported: buckets stay unversioned, every object has the "
                "single version \"null\"")
        return web.Response(status=200)
    raise errors.MethodNotAllowed()


async def list_object_versions(api, request: web.Request, identity, t) -> web.StreamResponse:
    q = t.query
    max_keys = s3xml.parse_max(q, "max-keys")
    encoding = q.get("encoding-type")
    if encoding not in (None, "url"):
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
    key_marker, version_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
    if version_marker and not key_marker:
        raise errors.InvalidArgument("A version-id marker cannot be specified without a key marker.")
    if version_marker and version_marker != config_xml.NULL_VERSION:
        raise errors.InvalidArgument("Invalid version id specified")
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    await api.backend.bucket(t.bucket)
    # One version per key: the page after (key-marker, any version) starts at the next key.
    listing = await api._listing(t.bucket, prefix, delimiter, key_marker, max_keys)
    encode = (lambda text: quote(text, safe="/")) if encoding == "url" else (lambda text: text)
    return _xml(config_xml.list_versions(listing, bucket=t.bucket, prefix=prefix, delimiter=delimiter,
                                         key_marker=key_marker, version_id_marker=version_marker,
                                         max_keys=max_keys, encode=encode, url_encoded=encoding == "url"))
