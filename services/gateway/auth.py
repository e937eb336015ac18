"""Who sent a request: SigV4 or SigV2, header or presigned query, against the root credentials.

No HTTP framework types here: callers pass the method, the raw path and query as sent, and
the headers as (name, value) pairs.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from sealstore import config, errors, sigv4

from .body import ChunkChain

MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
V2_PREFIX = "AWS "
V2_SUBRESOURCES = frozenset({
    # Query parameters SigV2 signs as part of the canonical resource (S3's list; the rest is not signed).
    "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory", "lifecycle",
    "location", "logging", "metrics", "notification", "object-lock", "partNumber", "policy", "replication",
    "requestPayment", "response-cache-control", "response-content-disposition", "response-content-encoding",
    "response-content-language", "response-content-type", "response-expires", "restore", "select",
    "select-type", "storageClass", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
    "versions", "website",
})
V2_QUERY_AUTH = ("AWSAccessKeyId", "Signature", "Expires")
NOT_SIGNED = "There were headers present in the request which were not signed"


def require_signed(hmap: dict[str, list[str]], signed: tuple[str, ...]) -> None:
    """As S3: `host` and every `x-amz-*` header present must be covered by the signature.

    Otherwise a presigned URL or a captured request could be replayed with an added
    x-amz-server-side-encryption-aws-kms-key-id (or any other x-amz-* header) or sent to
    another virtual-host bucket, and the gateway would act on headers nobody signed.
    """
    covered = set(signed)
    unsigned = sorted(name for name in hmap if (name == "host" or name.startswith("x-amz-")) and name not in covered)
    if "host" not in covered and "host" not in unsigned:
        unsigned.insert(0, "host")
    if unsigned:
        raise errors.AccessDenied(f"{NOT_SIGNED}: {', '.join(unsigned)}")


@dataclass(frozen=True)
class Identity:
    """The outcome of authentication: who, and how the payload is to be checked."""

    access_key: str
    payload_hash: str
    """x-amz-content-sha256 as signed: hex digest, UNSIGNED-PAYLOAD or a STREAMING-* mode."""
    chain: ChunkChain | None
    """Signature chain of a signed aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER])."""
    presigned: bool = False
    query_headers: tuple[tuple[str, str], ...] = ()
    """SigV2 presigned URLs carry signed x-amz-* headers in the query (botocore puts them there):
    the request is to be served as if they were headers."""


class Credentials:
    """The root credentials: env SEALSTORE_ROOT_USER/PASSWORD, else <data>/credentials.json.

    The file is re-read when it changes, so a launcher may write it after the gateway started.
    """

    def __init__(self, data_dir: Path | None = None, *, access_key: str = "", secret_key: str = ""):
        self._file = data_dir / "credentials.json" if data_dir is not None else None
        self._static = (access_key, secret_key) if access_key else None
        self._mtime: float | None = None
        self._loaded: tuple[str, str] | None = None

    def _current(self) -> tuple[str, str] | None:
        if self._static is not None:
            return self._static
        user, password = os.environ.get(config.ENV_ROOT_USER), os.environ.get(config.ENV_ROOT_PASSWORD)
        if user and password:
            return user, password
        if self._file is None:
            return None
        try:
            mtime = self._file.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime != self._mtime:
            raw = json.loads(self._file.read_text())
            self._loaded = (raw["access_key"], raw["secret_key"])
            self._mtime = mtime
        return self._loaded

    def secret_for(self, access_key: str) -> str:
        current = self._current()
        if current is None or current[0] != access_key:
            raise errors.InvalidAccessKeyId()
        return current[1]


def _multimap(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


def _check_credential(credential: sigv4.Credential, amz_date: str, bad) -> None:
    if credential.service != sigv4.SERVICE or credential.terminator != sigv4.TERMINATOR:
        raise bad(f"credential scope must end in /{sigv4.SERVICE}/{sigv4.TERMINATOR}")
    if credential.date != amz_date[:8]:
        raise bad("the credential date does not match the request date")
    if not credential.region:
        raise bad("the credential names no region")


class Authenticator:
    def __init__(self, credentials: Credentials, clock=time.time):
        self.credentials = credentials
        self.clock = clock

    def authenticate(self, method: str, raw_path: str, raw_query: str,
                     headers: Iterable[tuple[str, str]], *, vhost_bucket: str = "") -> Identity:
        """`vhost_bucket`: the bucket named by the Host header (virtual-host style), which SigV2
        signs as the first segment of the resource."""
        hmap = _multimap(headers)
        pairs = sigv4.parse_query(raw_query)
        names = {k for k, _ in pairs}
        authorization = (hmap.get("authorization") or [""])[0]
        if authorization:
            if names & {"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm", "Signature"}:
                raise errors.InvalidArgument("Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                                             "parameter, Signature query string parameter or the Authorization "
                                             "header should be specified")
            if authorization.startswith(V2_PREFIX):
                return self._v2_header_auth(method, raw_path, raw_query, hmap, authorization, vhost_bucket)
            return self._header_auth(method, raw_path, pairs, hmap, authorization)
        if "X-Amz-Signature" in names or "X-Amz-Credential" in names:
            return self._query_auth(method, raw_path, pairs, hmap)
        if names & set(V2_QUERY_AUTH):
            return self._v2_query_auth(method, raw_path, raw_query, pairs, hmap, vhost_bucket)
        raise errors.AccessDenied("Anonymous access is not allowed")

    def _verify(self, method: str, raw_path: str, query: str, hmap: dict[str, list[str]],
                signed: tuple[str, ...], payload_hash: str, amz_date: str, credential: sigv4.Credential,
                claimed: str) -> bytes:
        secret = self.credentials.secret_for(credential.access_key)
        key = sigv4.signing_key(secret, credential.date, credential.region, credential.service)
        missing = [h for h in signed if h not in hmap]
        if missing:
            raise errors.SignatureDoesNotMatch(f"signed header {missing[0]!r} is not in the request")
        # Clients sign the path as they encoded it; most encode exactly as SigV4 says, so the
        # re-encoded form is tried first and the raw form covers the rest.
        for uri in dict.fromkeys([sigv4.canonical_uri_from_raw(raw_path), raw_path or "/"]):
            canonical = sigv4.canonical_request(method, uri, query, hmap, signed, payload_hash)
            expected = sigv4.signature(key, sigv4.string_to_sign(amz_date, credential.scope, canonical))
            if sigv4.signatures_equal(expected, claimed):
                return key
        raise errors.SignatureDoesNotMatch()

    def _request_date(self, hmap: dict[str, list[str]]) -> str:
        if "x-amz-date" in hmap:
            try:
                return sigv4.format_amz_date(sigv4.parse_amz_date(hmap["x-amz-date"][0].strip()))
            except ValueError:
                raise errors.AccessDenied("X-Amz-Date is not a valid ISO 8601 basic timestamp") from None
        if "date" in hmap:
            try:
                moment = email.utils.parsedate_to_datetime(hmap["date"][0])
            except (TypeError, ValueError):
                moment = None
            if moment is not None and moment.tzinfo is not None:
                return sigv4.format_amz_date(moment)
        raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")

    def _check_skew(self, amz_date: str) -> None:
        when = sigv4.parse_amz_date(amz_date).timestamp()
        if abs(self.clock() - when) > MAX_SKEW_SECONDS:
            raise errors.RequestTimeTooSkewed()

    def _header_auth(self, method, raw_path, pairs, hmap, authorization) -> Identity:
        try:
            parsed = sigv4.parse_authorization(authorization)
        except ValueError as e:
            raise errors.AuthorizationHeaderMalformed(f"The authorization header is malformed: {e}") from None
        amz_date = self._request_date(hmap)
        _check_credential(parsed.credential, amz_date, errors.AuthorizationHeaderMalformed)
        self.credentials.secret_for(parsed.credential.access_key)
        self._check_skew(amz_date)
        if "x-amz-content-sha256" not in hmap:
            raise errors.InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        require_signed(hmap, parsed.signed_headers)
        payload_hash = hmap["x-amz-content-sha256"][0].strip()
        key = self._verify(method, raw_path, sigv4.canonical_query(pairs), hmap, parsed.signed_headers,
                           payload_hash, amz_date, parsed.credential, parsed.signature)
        chain = None
        if payload_hash in (sigv4.STREAMING_PAYLOAD, sigv4.STREAMING_PAYLOAD_TRAILER):
            chain = ChunkChain(key, amz_date, parsed.credential.scope, parsed.signature)
        return Identity(parsed.credential.access_key, payload_hash, chain)

    def _query_auth(self, method, raw_path, pairs, hmap) -> Identity:
        q = dict(pairs)
        needed = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                  "X-Amz-SignedHeaders", "X-Amz-Expires")
        if any(n not in q for n in needed):
            raise errors.AuthorizationQueryParametersError()
        if q["X-Amz-Algorithm"] != sigv4.ALGORITHM:
            raise errors.AuthorizationQueryParametersError("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
        try:
            credential = sigv4.Credential.parse(q["X-Amz-Credential"])
            amz_date = sigv4.format_amz_date(sigv4.parse_amz_date(q["X-Amz-Date"]))
            expires = int(q["X-Amz-Expires"])
        except ValueError:
            raise errors.AuthorizationQueryParametersError(
                "X-Amz-Credential, X-Amz-Date or X-Amz-Expires is malformed") from None
        if not 0 <= expires <= MAX_PRESIGN_EXPIRES:
            raise errors.AuthorizationQueryParametersError("X-Amz-Expires must be between 0 and 604800 seconds")
        _check_credential(credential, amz_date, errors.AuthorizationQueryParametersError)
        self.credentials.secret_for(credential.access_key)
        signed_at = sigv4.parse_amz_date(amz_date).timestamp()
        now = self.clock()
        if signed_at - now > MAX_SKEW_SECONDS:
            raise errors.RequestTimeTooSkewed("The request was signed in the future")
        if now > signed_at + expires:
            raise errors.ExpiredToken()
        payload_hash = q.get("X-Amz-Content-Sha256", sigv4.UNSIGNED_PAYLOAD)
        query = sigv4.canonical_query([(k, v) for k, v in pairs if k != "X-Amz-Signature"])
        signed = tuple(q["X-Amz-SignedHeaders"].split(";"))
        require_signed(hmap, signed)
        self._verify(method, raw_path, query, hmap, signed, payload_hash, amz_date, credential,
                     q["X-Amz-Signature"])
        return Identity(credential.access_key, payload_hash, None, presigned=True)

    # -- Signature Version 2 ---------------------------------------------------------------

    def _v2_check(self, access_key: str, claimed: str, method: str, raw_path: str, raw_query: str,
                  hmap: dict[str, list[str]], date_line: str, query_headers: dict[str, list[str]],
                  vhost_bucket: str) -> None:
        secret = self.credentials.secret_for(access_key)
        amz = v2_amz_headers(hmap, query_headers)
        content_md5 = _first(hmap, "content-md5", query_headers)
        content_type = _first(hmap, "content-type", query_headers)
        for resource in v2_resources(raw_path, raw_query, vhost_bucket):
            text = v2_string_to_sign(method, content_md5, content_type, date_line, amz, resource)
            if hmac.compare_digest(v2_signature(secret, text).encode(), claimed.encode("ascii", "replace")):
                return
        raise errors.SignatureDoesNotMatch()

    def _v2_header_auth(self, method, raw_path, raw_query, hmap, authorization, vhost_bucket) -> Identity:
        access_key, sep, claimed = authorization[len(V2_PREFIX):].strip().rpartition(":")
        if not sep or not access_key or not claimed:
            raise errors.InvalidArgument("AWS authorization header is invalid.  Expected AwsAccessKeyId:signature")
        self.credentials.secret_for(access_key)
        if "x-amz-date" in hmap:
            # S3: with x-amz-date, Date is ignored and its line of the string to sign stays empty.
            raw_date, date_line = hmap["x-amz-date"][0], ""
        elif "date" in hmap:
            raw_date = date_line = hmap["date"][0].strip()
        else:
            raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        when = v2_parse_date(raw_date)
        if when is None:
            raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        if abs(self.clock() - when) > MAX_SKEW_SECONDS:
            raise errors.RequestTimeTooSkewed()
        self._v2_check(access_key, claimed, method, raw_path, raw_query, hmap, date_line, {}, vhost_bucket)
        return Identity(access_key, sigv4.UNSIGNED_PAYLOAD, None)

    def _v2_query_auth(self, method, raw_path, raw_query, pairs, hmap, vhost_bucket) -> Identity:
        q = dict(pairs)
        if any(n not in q for n in V2_QUERY_AUTH):
            raise errors.AccessDenied("Query-string authentication requires the Signature, Expires and "
                                      "AWSAccessKeyId parameters")
        expires = q["Expires"].strip()
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            raise errors.AccessDenied("Invalid date (should be seconds since epoch): " + expires[:40])
        self.credentials.secret_for(q["AWSAccessKeyId"])
        if self.clock() > int(expires):
            raise errors.ExpiredToken()
        query_headers: dict[str, list[str]] = {}
        for name, value in pairs:
            lname = name.lower()
            if lname.startswith("x-amz-") or lname in ("content-type", "content-md5"):
                query_headers.setdefault(lname, []).append(value)
        # A `+` sent unencoded decodes to a space; base64 has no spaces, so it can only be a `+`.
        claimed = q["Signature"].replace(" ", "+")
        self._v2_check(q["AWSAccessKeyId"], claimed, method, raw_path, raw_query, hmap, expires, query_headers,
                       vhost_bucket)
        carried = tuple((n, vs[0]) for n, vs in query_headers.items() if n.startswith("x-amz-") and n not in hmap)
        return Identity(q["AWSAccessKeyId"], sigv4.UNSIGNED_PAYLOAD, None, presigned=True, query_headers=carried)

    # -- POST policy (browser uploads) ---------------------------------------------------------

    def verify_post_v4(self, credential_text: str, amz_date: str, policy_b64: str, claimed: str) -> str:
        """Checks a SigV4-signed POST policy; returns the access key."""
        try:
            credential = sigv4.Credential.parse(credential_text)
            sigv4.parse_amz_date(amz_date)
        except ValueError:
            raise errors.InvalidArgument("x-amz-credential or x-amz-date is malformed") from None
        _check_credential(credential, amz_date, errors.InvalidArgument)
        secret = self.credentials.secret_for(credential.access_key)
        key = sigv4.signing_key(secret, credential.date, credential.region, credential.service)
        if not sigv4.signatures_equal(sigv4.signature(key, policy_b64), claimed):
            raise errors.SignatureDoesNotMatch()
        return credential.access_key

    def verify_post_v2(self, access_key: str, policy_b64: str, claimed: str) -> str:
        """Checks a SigV2-signed POST policy (base64 HMAC-SHA1 of the policy field); returns the access key."""
        secret = self.credentials.secret_for(access_key)
        if not hmac.compare_digest(v2_signature(secret, policy_b64).encode(), claimed.encode("ascii", "replace")):
            raise errors.SignatureDoesNotMatch()
        return access_key


def with_query_headers(headers, carried: tuple[tuple[str, str], ...]) -> CIMultiDict:
    """The request's headers plus the x-amz-* headers a SigV2 presigned URL carried in its query."""
    merged = CIMultiDict(headers)
    for name, value in carried:
        merged.add(name, value)
    return merged


def _first(hmap: dict[str, list[str]], name: str, fallback: dict[str, list[str]]) -> str:
    values = hmap.get(name) or fallback.get(name) or [""]
    return values[0].strip()


def v2_signature(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()).decode()


def v2_string_to_sign(method: str, content_md5: str, content_type: str, date_line: str, amz_headers: str,
                      resource: str) -> str:
    return f"{method.upper()}\n{content_md5}\n{content_type}\n{date_line}\n{amz_headers}{resource}"


def v2_amz_headers(hmap: dict[str, list[str]], query_headers: dict[str, list[str]]) -> str:
    """CanonicalizedAmzHeaders: every x-amz-* header (and presigned-query x-amz-* parameter),
    lower-case, sorted, values joined by commas, one `name:value\n` line each."""
    merged: dict[str, list[str]] = {}
    for source in (hmap, query_headers):
        for name, values in source.items():
            if name.startswith("x-amz-"):
                merged.setdefault(name, []).extend(values)
    return "".join(f"{name}:{','.join(v.strip() for v in merged[name])}\n" for name in sorted(merged))


def v2_resources(raw_path: str, raw_query: str, vhost_bucket: str = "") -> list[str]:
    """CanonicalizedResource candidates: the path as sent (with the bucket of a virtual host),
    then the path re-encoded (clients differ in what they escape), each followed by the signed
    sub-resources (decoded values, sorted by name). A sub-resource without a value is signed
    bare by most clients, but a few sign `name=` when the URL says so: both are tried."""
    prefix = f"/{vhost_bucket}" if vhost_bucket else ""
    paths = dict.fromkeys([prefix + (raw_path or "/"), prefix + quote(unquote(raw_path or "/"), safe="/~")])
    full = prefix + (raw_path or "/")
    if full.count("/") == 1 and full != "/":
        # A bucket alone: botocore signs it as `/bucket/` (the virtual-host form) even path-style.
        paths[full + "/"] = None
    as_sent, bare = [], []
    for piece in raw_query.split("&") if raw_query else []:
        name, eq, value = piece.partition("=")
        name = unquote(name)
        if name in V2_SUBRESOURCES:
            value = unquote(value)
            as_sent.append((name, f"{name}={value}" if eq else name))
            bare.append((name, f"{name}={value}" if value else name))
    suffixes = []
    for items in (as_sent, bare):
        items = sorted(items, key=lambda item: item[0])
        suffix = ("?" + "&".join(text for _, text in items)) if items else ""
        if suffix not in suffixes:
            suffixes.append(suffix)
    return [path + suffix for path in paths for suffix in suffixes]


def v2_parse_date(text: str) -> float | None:
    """Seconds since the epoch of an RFC 1123 date (or S3's ISO 8601 basic form), or None."""
    text = text.strip()
    try:
        moment = email.utils.parsedate_to_datetime(text)
        if moment is not None and moment.tzinfo is not None:
            return moment.timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return sigv4.parse_amz_date(text).timestamp()
    except ValueError:
        return None
