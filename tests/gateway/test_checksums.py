"""x-amz-checksum-* and Content-MD5: each algorithm S3 accepts is verified against the body as it
streams, with AWS's errors, and the verified values are what the object keeps."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib

import pytest

from sealstore import errors, sigv4
from services.gateway.body import body_from_request, checksum_headers, requested_checksum_headers

_LOOP = asyncio.new_event_loop()
CHECK_INPUT = b"123456789"
# Check values of the CRC catalogue (each CRC's value for "123456789"), big-endian as S3 encodes them.
CATALOGUE = {
    "crc32": (0xCBF43926).to_bytes(4, "big"),
    "crc32c": (0xE3069283).to_bytes(4, "big"),
    "crc64nvme": (0xAE8B14860A799888).to_bytes(8, "big"),
    "sha1": hashlib.sha1(CHECK_INPUT).digest(),
    "sha256": hashlib.sha256(CHECK_INPUT).digest(),
}


class reader(asyncio.StreamReader):
    def __init__(self, data: bytes):
        super().__init__(limit=1 << 16, loop=_LOOP)
        self.feed_data(data)
        self.feed_eof()


def drain(body) -> bytes:
    async def go():
        out = bytearray()
        # Small pieces: a CRC carried across piece boundaries must still come out right.
        async for piece in body.pieces(size=3):
            out += piece
        body.finish()
        return bytes(out)
    return _LOOP.run_until_complete(go())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def plain(data: bytes, **headers: str):
    return body_from_request(reader(data), {"content-length": str(len(data)), **headers}, sigv4.UNSIGNED_PAYLOAD, None)


def chunked_with_trailer(data: bytes, algorithm: str, value: str):
    wire = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
            + f"x-amz-checksum-{algorithm}:{value}\r\n\r\n".encode())
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "x-amz-trailer": f"x-amz-checksum-{algorithm}", "x-amz-sdk-checksum-algorithm": algorithm.upper()}
    return body_from_request(reader(wire), headers, sigv4.STREAMING_UNSIGNED_TRAILER, None)


@pytest.mark.parametrize("algorithm", sorted(CATALOGUE))
def test_header_checksum_matching_is_kept_for_the_object(algorithm):
    body = plain(CHECK_INPUT, **{f"x-amz-checksum-{algorithm}": b64(CATALOGUE[algorithm]),
                                 "x-amz-sdk-checksum-algorithm": algorithm.upper()})
    assert body.checks.in_headers == {algorithm.upper(): b64(CATALOGUE[algorithm])}
    assert drain(body) == CHECK_INPUT
    assert body.checks.verified == {algorithm.upper(): b64(CATALOGUE[algorithm])}


@pytest.mark.parametrize("algorithm", sorted(CATALOGUE))
def test_header_checksum_mismatch_is_bad_digest(algorithm):
    wrong = bytearray(CATALOGUE[algorithm])
    wrong[0] ^= 1
    body = plain(CHECK_INPUT, **{f"x-amz-checksum-{algorithm}": b64(bytes(wrong))})
    with pytest.raises(errors.BadDigest) as caught:
        drain(body)
    assert caught.value.message == f"The {algorithm.upper()} you specified did not match the calculated checksum."
    assert body.checks.verified == {}


@pytest.mark.parametrize("algorithm", sorted(CATALOGUE))
def test_trailer_checksum_verified(algorithm):
    good = chunked_with_trailer(CHECK_INPUT, algorithm, b64(CATALOGUE[algorithm]))
    assert good.checks.in_headers == {}
    assert drain(good) == CHECK_INPUT
    assert good.checks.verified == {algorithm.upper(): b64(CATALOGUE[algorithm])}
    bad = chunked_with_trailer(CHECK_INPUT, algorithm, b64(bytes(len(CATALOGUE[algorithm]))))
    with pytest.raises(errors.BadDigest):
        drain(bad)


def test_long_body_crc_across_pieces():
    data = bytes(range(256)) * 5000
    body = body_from_request(reader(data), {"content-length": str(len(data)),
                                            "x-amz-checksum-crc32": b64(zlib.crc32(data).to_bytes(4, "big"))},
                             sigv4.UNSIGNED_PAYLOAD, None)
    async def go():
        async for _ in body.pieces():
            pass
        body.finish()
    _LOOP.run_until_complete(go())
    assert body.checks.verified["CRC32"]


@pytest.mark.parametrize("value", ["not base64!", b64(b"\0" * 5), "", b64(b"\0" * 32)])
def test_malformed_header_value_is_invalid_request_before_the_body(value):
    with pytest.raises(errors.InvalidRequest) as caught:
        plain(CHECK_INPUT, **{"x-amz-checksum-crc32": value})
    assert caught.value.message == "Value for x-amz-checksum-crc32 header is invalid."


def test_malformed_trailer_value_is_invalid_request():
    body = chunked_with_trailer(CHECK_INPUT, "sha256", "short")
    with pytest.raises(errors.InvalidRequest):
        drain(body)


def test_two_checksum_headers_are_refused():
    with pytest.raises(errors.InvalidRequest, match="Multiple checksum Types"):
        plain(CHECK_INPUT, **{"x-amz-checksum-crc32": b64(CATALOGUE["crc32"]),
                              "x-amz-checksum-sha1": b64(CATALOGUE["sha1"])})


def test_sdk_algorithm_without_its_checksum_is_refused():
    with pytest.raises(errors.InvalidRequest, match="no corresponding"):
        plain(CHECK_INPUT, **{"x-amz-sdk-checksum-algorithm": "CRC32C",
                              "x-amz-checksum-crc32": b64(CATALOGUE["crc32"])})
    with pytest.raises(errors.InvalidRequest, match="x-amz-sdk-checksum-algorithm header is invalid"):
        plain(CHECK_INPUT, **{"x-amz-sdk-checksum-algorithm": "MD5"})
    # Announced with no value at all (S3 answers 400 too).
    with pytest.raises(errors.InvalidRequest):
        plain(CHECK_INPUT, **{"x-amz-sdk-checksum-algorithm": "CRC32"})


def test_content_md5_malformed_and_mismatch():
    with pytest.raises(errors.InvalidDigest):
        plain(CHECK_INPUT, **{"content-md5": "abc"})
    with pytest.raises(errors.InvalidDigest):
        plain(CHECK_INPUT, **{"content-md5": b64(b"\0" * 15)})
    body = plain(CHECK_INPUT, **{"content-md5": b64(hashlib.md5(b"other").digest())})
    with pytest.raises(errors.BadDigest) as caught:
        drain(body)
    assert caught.value.message == "The Content-MD5 you specified did not match what we received."
    ok = plain(CHECK_INPUT, **{"content-md5": b64(hashlib.md5(CHECK_INPUT).digest()),
                               "x-amz-checksum-crc32c": b64(CATALOGUE["crc32c"])})
    assert drain(ok) == CHECK_INPUT and ok.checks.verified == {"CRC32C": b64(CATALOGUE["crc32c"])}


def test_response_headers_only_when_asked():
    stored = {"CRC32": b64(CATALOGUE["crc32"])}
    assert checksum_headers(stored) == {"x-amz-checksum-crc32": stored["CRC32"], "x-amz-checksum-type": "FULL_OBJECT"}
    assert checksum_headers({}) == {}
    assert requested_checksum_headers({}, stored) == {}
    assert requested_checksum_headers({"x-amz-checksum-mode": "ENABLED"}, stored)["x-amz-checksum-crc32"] == stored["CRC32"]
