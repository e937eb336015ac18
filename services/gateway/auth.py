"""Who sent a request: SigV4 header or presigned-query authentication against the root credentials.

No HTTP framework types here: callers pass the method, the raw path and query as sent, and
the headers as (name, value) pairs.
"""
from __future__ import annotations

import email.utils
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sealstore import config, errors, sigv4

from .body import ChunkChain

MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
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
                     headers: Iterable[tuple[str, str]]) -> Identity:
        hmap = _multimap(headers)
        pairs = sigv4.parse_query(raw_query)
        authorization = (hmap.get("authorization") or [""])[0]
        if authorization:
            if any(k in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm") for k, _ in pairs):
                raise errors.InvalidArgument("Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                                             "parameter or the Authorization header should be specified")
            return self._header_auth(method, raw_path, pairs, hmap, authorization)
        if any(k == "X-Amz-Signature" or k == "X-Amz-Credential" for k, _ in pairs):
            return self._query_auth(method, raw_path, pairs, hmap)
        if any(k in ("Signature", "AWSAccessKeyId") for k, _ in pairs):
            raise errors.AccessDenied("Signature Version 2 is not supported; use AWS4-HMAC-SHA256")
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
            if authorization.startswith("AWS "):
                raise errors.AccessDenied("Signature Version 2 is not supported; use AWS4-HMAC-SHA256") from None
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
