"""Request bodies: plain or `aws-chunked`, verified while they stream.

A body is read as an async iterator of plaintext pieces. Nothing here decides to store
anything: the caller forwards pieces as they come and calls `finish()` at the end, which
raises if any check failed (length, x-amz-content-sha256, Content-MD5, x-amz-checksum-*,
chunk signatures, trailer). Only then does the caller let the object be committed.

The reader is anything with asyncio's `readline()` / `readexactly(n)` / `read(n)`
(aiohttp's request.content and asyncio.StreamReader both qualify).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Mapping, Protocol

import crc32c
import crcmod

from sealstore import errors, sigv4

log = logging.getLogger(__name__)

PIECE = 1 << 20
"""Largest piece handed to the caller (~ one gRPC message)."""
MAX_CHUNK_HEADER = 4096
MAX_CHUNK_SIZE = 16 << 20
"""Largest aws-chunked chunk accepted (SDKs send 64 KiB to 8 MiB); bounds what one chunk can cost."""
DEFAULT_READ_TIMEOUT = 60.0
# A chunk size is 1-16 hex digits, nothing else: no sign, no spaces, no 0x (int(x, 16) takes all three).
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")

# x-amz-checksum-<name> -> digest size in bytes: the algorithms S3 accepts, each verified here.
CHECKSUM_SIZES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_DECIMAL = re.compile(r"[0-9]{1,19}")


class Reader(Protocol):
    async def readline(self) -> bytes: ...
    async def readexactly(self, n: int) -> bytes: ...
    async def read(self, n: int = -1) -> bytes: ...


class _Crc:
    """A running CRC with hashlib's update/digest shape."""

    def __init__(self, function, size: int):
        self._function = function
        self._size = size
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = self._function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self._size, "big")


# CRC-64/NVME: reflected, all-ones initial value and final xor (crcmod wants the xor-ed form of the
# initial value, hence 0).
_crc64nvme = crcmod.mkCrcFun(0x1AD93D23594C93659, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def _new_checksum(algorithm: str):
    if algorithm == "crc32":
        return _Crc(zlib.crc32, 4)
    if algorithm == "crc32c":
        return _Crc(crc32c.crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(_crc64nvme, 8)
    return hashlib.new(algorithm)


def _decode_checksum(algorithm: str, value: str) -> bytes:
    """The digest a client claims, or InvalidRequest if it cannot be one of `algorithm`."""
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != CHECKSUM_SIZES[algorithm]:
        raise errors.InvalidRequest(f"Value for x-amz-checksum-{algorithm} header is invalid.")
    return digest


@dataclass
class PayloadChecks:
    """Digests of the decoded payload, compared at the end."""

    sha256_hex: str | None = None
    md5: bytes | None = None
    checksums: dict[str, str | None] = field(default_factory=dict)
    """x-amz-checksum-<alg> -> expected base64 value (None: expected in the trailer)."""

    def __post_init__(self):
        self._sha256 = hashlib.sha256() if self.sha256_hex else None
        self._md5 = hashlib.md5() if self.md5 is not None else None
        self._sums = {algorithm: _new_checksum(algorithm) for algorithm in self.checksums}
        self._verified: dict[str, str] = {}

    @property
    def costly(self) -> bool:
        """True when updating means real work, worth a thread: hashlib releases the GIL; CRC-64/NVME
        (crcmod, some 400 MiB/s) does not, but still overlaps with socket reads. CRC32 and CRC32C
        run at GB/s and stay inline."""
        return self._sha256 is not None or self._md5 is not None or any(
            algorithm not in ("crc32", "crc32c") for algorithm in self._sums)

    def update(self, data: bytes) -> None:
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        for hasher in self._sums.values():
            hasher.update(data)

    def verify(self, trailers: Mapping[str, str]) -> None:
        if self._sha256 is not None and self._sha256.hexdigest() != self.sha256_hex.lower():
            raise errors.XAmzContentSHA256Mismatch()
        if self._md5 is not None and self._md5.digest() != self.md5:
            raise errors.BadDigest()
        for algorithm, expected in self.checksums.items():
            name = f"x-amz-checksum-{algorithm}"
            if expected is None:
                expected = trailers.get(name)
                if expected is None:
                    raise errors.InvalidRequest(f"the trailer {name} announced in x-amz-trailer is missing")
            if self._sums[algorithm].digest() != _decode_checksum(algorithm, expected):
                raise errors.BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
            self._verified[algorithm.upper()] = expected.strip()

    @property
    def in_headers(self) -> dict[str, str]:
        """The checksums sent as headers, "CRC32" -> base64: known before the body, verified at its end."""
        return {algorithm.upper(): value.strip() for algorithm, value in self.checksums.items() if value is not None}

    @property
    def verified(self) -> dict[str, str]:
        """After verify(): the client's checksums that matched, "CRC32" -> base64 (ObjectMeta.checksums)."""
        return dict(self._verified)


@dataclass
class ChunkChain:
    """The running signature chain of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body."""

    key: bytes
    amz_date: str
    scope: str
    previous: str  # the seed signature (from the Authorization header) to start with

    def check_chunk(self, claimed: str, chunk_sha256_hex: str) -> None:
        expected = sigv4.chunk_signature(self.key, self.amz_date, self.scope, self.previous,
                                         chunk_sha256_hex=chunk_sha256_hex)
        if not sigv4.signatures_equal(expected, claimed):
            raise errors.SignatureDoesNotMatch("chunk signature does not match")
        self.previous = expected

    def check_trailer(self, claimed: str, trailers: list[tuple[str, str]]) -> None:
        expected = sigv4.trailer_signature(self.key, self.amz_date, self.scope, self.previous, trailers)
        if not sigv4.signatures_equal(expected, claimed):
            raise errors.SignatureDoesNotMatch("trailer signature does not match")


class Body:
    """One request body: `async for piece in body.pieces()` yields decoded bytes, then `finish()` checks."""

    def __init__(self, reader: Reader, *, length: int, checks: PayloadChecks,
                 chunked: bool = False, chain: ChunkChain | None = None, trailer: bool = False,
                 read_timeout: float = DEFAULT_READ_TIMEOUT):
        self.reader = reader
        self.read_timeout = read_timeout
        self.length = length
        self.checks = checks
        self.chunked = chunked
        self.chain = chain
        self.trailer = trailer
        self.received = 0
        self.trailers: dict[str, str] = {}
        self._complete = False

    async def pieces(self, size: int = PIECE) -> AsyncIterator[bytes]:
        """Decoded bytes regrouped into pieces of about `size`, fed to the checks on the way.

        Costly digests run in a thread (hashlib releases the GIL), overlapping with whatever
        the caller does with the piece; they stay in order because each waits for the last.
        """
        loop = asyncio.get_running_loop()
        offload = self.checks.costly
        pending: asyncio.Future | None = None
        group: list[bytes] = []
        grouped = 0
        raw = self._decoded() if self.chunked else self._plain()
        async for part in raw:
            group.append(part)
            grouped += len(part)
            if grouped < size:
                continue
            piece = group[0] if len(group) == 1 else b"".join(group)
            group, grouped = [], 0
            if pending is not None:
                await pending
            if offload:
                pending = loop.run_in_executor(None, self.checks.update, piece)
            else:
                self.checks.update(piece)
            yield piece
        if pending is not None:
            await pending
        if group:
            piece = b"".join(group)
            self.checks.update(piece)
            yield piece

    async def _read(self, operation, *args) -> bytes:
        """One read from the client, which must make progress within read_timeout."""
        try:
            async with asyncio.timeout(self.read_timeout):
                return await operation(*args)
        except TimeoutError:
            raise errors.RequestTimeout() from None

    async def _plain(self) -> AsyncIterator[bytes]:
        while self.received < self.length:
            piece = await self._read(self.reader.read, min(PIECE, self.length - self.received))
            if not piece:
                raise errors.IncompleteBody()
            self.received += len(piece)
            yield piece
        self._complete = True

    async def _line(self) -> bytes:
        try:
            line = await self._read(self.reader.readline)
        except ValueError:
            raise errors.IncompleteBody("aws-chunked line too long") from None
        if not line.endswith(b"\r\n"):
            raise errors.IncompleteBody("aws-chunked body ended early")
        if len(line) > MAX_CHUNK_HEADER:
            raise errors.IncompleteBody("aws-chunked line too long")
        return line[:-2]

    async def _exactly(self, n: int) -> bytes:
        try:
            return await self._read(self.reader.readexactly, n)
        except asyncio.IncompleteReadError:
            raise errors.IncompleteBody() from None

    async def _decoded(self) -> AsyncIterator[bytes]:
        while True:
            size, claimed = self._chunk_header(await self._line())
            if self.received + size > self.length:
                raise errors.IncompleteBody("aws-chunked body longer than x-amz-decoded-content-length")
            digest = hashlib.sha256() if self.chain is not None else None
            left = size
            while left:
                piece = await self._exactly(min(PIECE, left))
                left -= len(piece)
                self.received += len(piece)
                if digest is not None:
                    digest.update(piece)
                yield piece
            if self.chain is not None:
                self.chain.check_chunk(claimed, digest.hexdigest())
            if size == 0:
                break
            if await self._exactly(2) != b"\r\n":
                raise errors.IncompleteBody("aws-chunked chunk not followed by CRLF")
        await self._read_trailers()
        if self.received != self.length:
            raise errors.IncompleteBody()
        if await self._read(self.reader.read, 1):
            raise errors.IncompleteBody("data after the final aws-chunked chunk")
        self._complete = True

    def _chunk_header(self, header: bytes) -> tuple[int, str]:
        """`<hex size>[;chunk-signature=<64 hex>]` -> (size, claimed signature or '')."""
        size_text, sep, extension = header.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise errors.IncompleteBody("malformed aws-chunked chunk size")
        size = int(size_text, 16)
        if size > MAX_CHUNK_SIZE:
            raise errors.InvalidRequest(f"aws-chunked chunk larger than {MAX_CHUNK_SIZE} bytes")
        claimed = ""
        if sep:
            name, eq, value = extension.partition(b"=")
            if name != b"chunk-signature" or not eq:
                raise errors.IncompleteBody("malformed aws-chunked chunk extension")
            claimed = value.decode("latin-1")
            if not _HEX64.match(claimed):
                raise errors.SignatureDoesNotMatch("malformed chunk-signature")
        if self.chain is not None and not claimed:
            raise errors.SignatureDoesNotMatch("chunk without chunk-signature")
        return size, claimed

    async def _read_trailers(self) -> None:
        trailers: list[tuple[str, str]] = []
        signature = ""
        while True:
            line = await self._line()
            if not line:
                break
            name, sep, value = line.decode("utf-8", "replace").partition(":")
            if not sep:
                raise errors.IncompleteBody("malformed aws-chunked trailer")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                signature = value.strip()
            else:
                trailers.append((name, value.strip()))
        if trailers and not self.trailer:
            raise errors.InvalidRequest("trailing headers sent without x-amz-trailer")
        if self.chain is not None and self.trailer:
            if not signature:
                raise errors.SignatureDoesNotMatch("trailer without x-amz-trailer-signature")
            self.chain.check_trailer(signature, trailers)
        self.trailers = dict(trailers)

    def finish(self) -> None:
        """Raises the first failed check; call after the iteration ended."""
        if not self._complete:
            raise errors.IncompleteBody()
        self.checks.verify(self.trailers)

    async def read_all(self, limit: int) -> bytes:
        """The whole (small) body, verified; for XML request bodies."""
        if self.length > limit:
            raise errors.MaxMessageLengthExceeded(f"Your request was too big (more than {limit} bytes).")
        parts = []
        async for piece in self.pieces():
            parts.append(piece)
        self.finish()
        return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Building a Body from a request's headers


MAX_OBJECT_SIZE = 5 * (1 << 30)


def _content_md5(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise errors.InvalidDigest() from None
    if len(digest) != 16:
        raise errors.InvalidDigest()
    return digest


def _header_checksums(headers: Mapping[str, str], trailer_names: list[str]) -> dict[str, str | None]:
    """The x-amz-checksum-* the body must match: from headers (value checked for form now) or trailers."""
    out: dict[str, str | None] = {}
    for algorithm in CHECKSUM_SIZES:
        value = headers.get(f"x-amz-checksum-{algorithm}")
        if value is not None:
            _decode_checksum(algorithm, value)
            out[algorithm] = value
    for name in trailer_names:
        algorithm = name.removeprefix("x-amz-checksum-")
        if algorithm == name or algorithm not in CHECKSUM_SIZES:
            raise errors.InvalidRequest(f"unsupported trailer {name!r}")
        out[algorithm] = None
    if len(out) > 1:
        raise errors.InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    announced = headers.get("x-amz-sdk-checksum-algorithm")
    if announced is not None:
        algorithm = announced.strip().lower()
        if algorithm not in CHECKSUM_SIZES:
            raise errors.InvalidRequest("Value for x-amz-sdk-checksum-algorithm header is invalid.")
        if algorithm not in out:
            raise errors.InvalidRequest(
                "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* "
                "or x-amz-trailer headers were found.")
    return out


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    # ASCII digits only: int() would also take signs, spaces, underscores and non-ASCII digits.
    if not _DECIMAL.fullmatch(value.strip()):
        raise errors.InvalidArgument(f"{name} must be a non-negative decimal number")
    return int(value.strip())


def body_from_request(reader: Reader, headers: Mapping[str, str], payload_hash: str,
                      chain: ChunkChain | None, *, max_size: int = MAX_OBJECT_SIZE,
                      read_timeout: float = DEFAULT_READ_TIMEOUT) -> Body:
    """A Body for a request, from its headers and the payload hash that authentication settled.

    `payload_hash` is what x-amz-content-sha256 (or the presigned default) said: a hex digest,
    UNSIGNED-PAYLOAD, or one of the STREAMING-* modes; `chain` is set for signed streaming.
    """
    streaming = payload_hash.startswith("STREAMING-")
    encodings = [e.strip().lower() for e in headers.get("content-encoding", "").split(",") if e.strip()]
    if streaming or "aws-chunked" in encodings:
        if payload_hash not in (sigv4.STREAMING_PAYLOAD, sigv4.STREAMING_PAYLOAD_TRAILER,
                                sigv4.STREAMING_UNSIGNED_TRAILER, sigv4.UNSIGNED_PAYLOAD):
            raise errors.InvalidArgument(f"x-amz-content-sha256 {payload_hash!r} does not fit an aws-chunked body")
        length = _int_header(headers, "x-amz-decoded-content-length")
        if length is None:
            raise errors.MissingContentLength("aws-chunked bodies need x-amz-decoded-content-length")
        trailer = payload_hash in (sigv4.STREAMING_PAYLOAD_TRAILER, sigv4.STREAMING_UNSIGNED_TRAILER)
        trailer_names = [t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()]
        if trailer_names and not trailer:
            trailer = payload_hash == sigv4.UNSIGNED_PAYLOAD  # unsigned chunks may still carry a trailer
        sha = None
    else:
        length = _int_header(headers, "content-length")
        if length is None:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                raise errors.MissingContentLength()
            length = 0
        trailer_names = []
        trailer = False
        if payload_hash == sigv4.UNSIGNED_PAYLOAD:
            sha = None
        elif _HEX64.match(payload_hash):
            sha = payload_hash.lower()
        else:
            raise errors.InvalidArgument(f"x-amz-content-sha256 {payload_hash!r} is not valid")
    if length > max_size:
        raise errors.EntityTooLarge()
    checks = PayloadChecks(sha256_hex=sha, md5=_content_md5(headers),
                           checksums=_header_checksums(headers, trailer_names))
    chunked = streaming or "aws-chunked" in encodings
    return Body(reader, length=length, checks=checks, chunked=chunked,
                chain=chain if payload_hash in (sigv4.STREAMING_PAYLOAD, sigv4.STREAMING_PAYLOAD_TRAILER) else None,
                trailer=trailer, read_timeout=read_timeout)


def checksum_headers(checksums: Mapping[str, str]) -> dict[str, str]:
    """Response headers for stored checksums ("CRC32" -> base64), as AWS names them."""
    out = {f"x-amz-checksum-{algorithm.lower()}": value for algorithm, value in checksums.items()
           if algorithm.lower() in CHECKSUM_SIZES}
    if out:
        out["x-amz-checksum-type"] = "FULL_OBJECT"
    return out


def requested_checksum_headers(request_headers: Mapping[str, str], checksums: Mapping[str, str]) -> dict[str, str]:
    """GET/HEAD of a whole object: its checksums, only for a client that asked with x-amz-checksum-mode."""
    if request_headers.get("x-amz-checksum-mode", "").strip().upper() != "ENABLED":
        return {}
    return checksum_headers(checksums)
