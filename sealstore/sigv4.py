"""AWS Signature Version 4 maths for S3, shared by the gateway (verify) and clients (sign).

Pure functions: no I/O, no HTTP framework. Everything here follows the public SigV4 spec
(canonical request -> string to sign -> HMAC chain), including the streaming variants
where an `aws-chunked` body carries one signature per chunk chained from the seed
signature of the request, and an optional signed trailer.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
TRAILER_ALGORITHM = "AWS4-HMAC-SHA256-TRAILER"
SERVICE = "s3"
TERMINATOR = "aws4_request"

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# Headers a signer must not sign: proxies and clients rewrite them.
UNSIGNABLE_HEADERS = frozenset({"authorization", "expect", "user-agent", "x-amzn-trace-id",
                                "connection", "transfer-encoding"})


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 encoding as SigV4 wants it: unreserved characters stay, the rest is %XX (UTF-8)."""
    return quote(text, safe="/~" if keep_slash else "~")


def canonical_uri_from_raw(raw_path: str) -> str:
    """The canonical URI of a received S3 request: its decoded path, encoded once (no dot-segment cleaning)."""
    return uri_encode(unquote(raw_path), keep_slash=True) or "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (name, value) pairs -> sorted, encoded `a=b&c=d` (names sorted, then values)."""
    encoded = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """A raw query string as decoded pairs, keeping blank values (`?encryption` -> ('encryption', ''))."""
    return parse_qsl(raw_query, keep_blank_values=True)


def trim_header_value(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """`name:value\\n` for each signed header; `headers` maps lower-case names to all their values."""
    lines = []
    for name in signed:
        values = headers.get(name, ())
        lines.append(f"{name}:{','.join(trim_header_value(v) for v in values)}\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, Sequence[str]],
                      signed: Sequence[str], payload_hash: str) -> str:
    return "\n".join([method.upper(), uri, query, canonical_headers(headers, signed),
                      ";".join(signed), payload_hash])


def scope(date: str, region: str, service: str = SERVICE) -> str:
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, credential_scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, credential_scope,
                      hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def signatures_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def chunk_string_to_sign(amz_date: str, credential_scope: str, previous_signature: str,
                         chunk_sha256_hex: str) -> str:
    """String to sign of one `aws-chunked` chunk; the chain starts at the request's seed signature."""
    return "\n".join([CHUNK_ALGORITHM, amz_date, credential_scope, previous_signature,
                      EMPTY_SHA256, chunk_sha256_hex])


def chunk_signature(key: bytes, amz_date: str, credential_scope: str, previous_signature: str,
                    chunk: bytes | None = None, *, chunk_sha256_hex: str | None = None) -> str:
    digest = chunk_sha256_hex if chunk_sha256_hex is not None else hashlib.sha256(chunk or b"").hexdigest()
    return signature(key, chunk_string_to_sign(amz_date, credential_scope, previous_signature, digest))


def canonical_trailer(trailers: Iterable[tuple[str, str]]) -> str:
    """The trailer block as signed: `name:value\\n` per trailing header, lower-case names."""
    return "".join(f"{name.lower()}:{value.strip()}\n" for name, value in trailers)


def trailer_signature(key: bytes, amz_date: str, credential_scope: str, previous_signature: str,
                      trailers: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256(canonical_trailer(trailers).encode("utf-8")).hexdigest()
    text = "\n".join([TRAILER_ALGORITHM, amz_date, credential_scope, previous_signature, digest])
    return signature(key, text)


# ---------------------------------------------------------------------------------------------
# Parsing what a client sent


@dataclass(frozen=True)
class Credential:
    access_key: str
    date: str
    region: str
    service: str
    terminator: str

    @property
    def scope(self) -> str:
        return scope(self.date, self.region, self.service)

    @classmethod
    def parse(cls, text: str) -> "Credential":
        """`AKID/20260101/us-east-1/s3/aws4_request`; the access key itself may contain '/'."""
        parts = text.rsplit("/", 4)
        if len(parts) != 5 or not parts[0]:
            raise ValueError("credential must be <access key>/<date>/<region>/<service>/aws4_request")
        return cls(*parts)


@dataclass(frozen=True)
class AuthorizationHeader:
    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> AuthorizationHeader:
    """Parses `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`; ValueError if malformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError(f"unsupported authorization algorithm {algorithm!r}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed authorization component {item.strip()!r}")
        fields[name.strip()] = val.strip()
    try:
        credential = Credential.parse(fields["Credential"])
        signed = tuple(fields["SignedHeaders"].split(";"))
        sig = fields["Signature"]
    except KeyError as missing:
        raise ValueError(f"authorization header lacks {missing.args[0]}") from None
    if not sig or not all(signed):
        raise ValueError("empty signature or signed header name")
    return AuthorizationHeader(credential, signed, sig)


def parse_amz_date(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, AMZ_DATE_FORMAT).replace(tzinfo=datetime.timezone.utc)


def format_amz_date(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(AMZ_DATE_FORMAT)


# ---------------------------------------------------------------------------------------------
# Signing, for clients (the command line, tests, benchmarks)


def _headers_multimap(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, list[str]] = {}
    for name, value in items:
        out.setdefault(name.lower(), []).append(str(value))
    return out


def sign_request(method: str, url: str, headers: Mapping[str, str], body_sha256: str,
                 access_key: str, secret_key: str, region: str = "us-east-1",
                 now: datetime.datetime | None = None) -> dict[str, str]:
    """Headers to send: the given ones plus host, x-amz-date, x-amz-content-sha256 and Authorization.

    `url` must already be encoded as it will go on the wire (path and query); `body_sha256`
    is the hex SHA-256 of the body, UNSIGNED-PAYLOAD, or one of the STREAMING-* constants.
    """
    parts = urlsplit(url)
    amz_date = format_amz_date(now or datetime.datetime.now(datetime.timezone.utc))
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date")}
    lower = {k.lower() for k in out}
    if "host" not in lower:
        out["host"] = parts.netloc
    out["x-amz-date"] = amz_date
    if "x-amz-content-sha256" not in lower:
        out["x-amz-content-sha256"] = body_sha256
    multimap = _headers_multimap(out)
    signed = sorted(n for n in multimap if n not in UNSIGNABLE_HEADERS)
    cred_scope = scope(amz_date[:8], region)
    canonical = canonical_request(method, canonical_uri_from_raw(parts.path or "/"),
                                  canonical_query(parse_query(parts.query)), multimap, signed, body_sha256)
    sig = signature(signing_key(secret_key, amz_date[:8], region), string_to_sign(amz_date, cred_scope, canonical))
    out["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{cred_scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return out


def presign_url(method: str, url: str, access_key: str, secret_key: str, expires: int = 3600,
                region: str = "us-east-1", now: datetime.datetime | None = None) -> str:
    """A presigned URL (query-string auth, host the only signed header, UNSIGNED-PAYLOAD)."""
    parts = urlsplit(url)
    amz_date = format_amz_date(now or datetime.datetime.now(datetime.timezone.utc))
    cred_scope = scope(amz_date[:8], region)
    pairs = parse_query(parts.query) + [
        ("X-Amz-Algorithm", ALGORITHM), ("X-Amz-Credential", f"{access_key}/{cred_scope}"),
        ("X-Amz-Date", amz_date), ("X-Amz-Expires", str(expires)), ("X-Amz-SignedHeaders", "host")]
    query = canonical_query(pairs)
    canonical = canonical_request(method, canonical_uri_from_raw(parts.path or "/"), query,
                                  {"host": [parts.netloc]}, ["host"], UNSIGNED_PAYLOAD)
    sig = signature(signing_key(secret_key, amz_date[:8], region), string_to_sign(amz_date, cred_scope, canonical))
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{query}&X-Amz-Signature={sig}"


def encode_signed_chunks(chunks: Iterable[bytes], key: bytes, amz_date: str, credential_scope: str,
                         seed_signature: str, trailers: Sequence[tuple[str, str]] | None = None) -> bytes:
    """An `aws-chunked` body with a signature per chunk (and a signed trailer if `trailers`)."""
    out = bytearray()
    previous = seed_signature
    for chunk in list(chunks) + [b""]:
        previous = chunk_signature(key, amz_date, credential_scope, previous, chunk)
        out += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk
        if chunk or trailers is None:
            out += b"\r\n"
    if trailers is not None:
        for name, value in trailers:
            out += f"{name.lower()}:{value}\r\n".encode()
        sig = trailer_signature(key, amz_date, credential_scope, previous, trailers)
        out += f"x-amz-trailer-signature:{sig}\r\n\r\n".encode()
    return bytes(out)
