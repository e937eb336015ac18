"""The request-body reader: plain and aws-chunked bodies, verified while streaming."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib

import pytest

from sealstore import errors, sigv4
from services.gateway.body import ChunkChain, body_from_request

SK = "secret/key with spaces"
DATE = "20260304T050607Z"
SCOPE = sigv4.scope("20260304", "us-east-1")
KEY = sigv4.signing_key(SK, "20260304", "us-east-1")
SEED = "f" * 64


class reader(asyncio.StreamReader):
    """An asyncio stream holding `data`; made lazily bound to the loop that reads it."""

    def __init__(self, data: bytes):
        super().__init__(limit=1 << 16, loop=_LOOP)
        self.feed_data(data)
        self.feed_eof()


_LOOP = asyncio.new_event_loop()


async def _drain(body) -> bytes:
    out = bytearray()
    async for piece in body.pieces(size=1000):
        out += piece
    body.finish()
    return bytes(out)


def run(coro):
    return _LOOP.run_until_complete(coro)


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_plain_body_with_matching_sha256_and_md5():
    data = b"0123456789" * 500
    headers = {"content-length": str(len(data)), "content-md5": base64.b64encode(hashlib.md5(data).digest()).decode()}
    body = body_from_request(reader(data), headers, hashlib.sha256(data).hexdigest(), None)
    assert run(_drain(body)) == data
    assert body.received == len(data)


def test_sha256_mismatch_is_detected_after_streaming():
    data = b"abc"
    body = body_from_request(reader(data), {"content-length": "3"}, hashlib.sha256(b"abd").hexdigest(), None)
    with pytest.raises(errors.XAmzContentSHA256Mismatch):
        run(_drain(body))


def test_content_md5_mismatch_and_malformed():
    data = b"abc"
    bad = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    body = body_from_request(reader(data), {"content-length": "3", "content-md5": bad}, sigv4.UNSIGNED_PAYLOAD, None)
    with pytest.raises(errors.BadDigest):
        run(_drain(body))
    with pytest.raises(errors.InvalidDigest):
        body_from_request(reader(data), {"content-length": "3", "content-md5": "bm90LTE2"}, sigv4.UNSIGNED_PAYLOAD, None)


def test_checksum_header_crc32_verified():
    data = b"some data" * 100
    ok = body_from_request(reader(data), {"content-length": str(len(data)), "x-amz-checksum-crc32": crc32_b64(data)},
                           sigv4.UNSIGNED_PAYLOAD, None)
    assert run(_drain(ok)) == data
    bad = body_from_request(reader(data), {"content-length": str(len(data)), "x-amz-checksum-crc32": crc32_b64(b"x")},
                            sigv4.UNSIGNED_PAYLOAD, None)
    with pytest.raises(errors.BadDigest):
        run(_drain(bad))


def test_plain_body_shorter_than_content_length():
    body = body_from_request(reader(b"abc"), {"content-length": "10"}, sigv4.UNSIGNED_PAYLOAD, None)
    with pytest.raises(errors.IncompleteBody):
        run(_drain(body))


def test_too_large_rejected_before_reading():
    with pytest.raises(errors.EntityTooLarge):
        body_from_request(reader(b""), {"content-length": str(5 * (1 << 30) + 1)}, sigv4.UNSIGNED_PAYLOAD, None)


def _signed_body(chunks, trailers=None):
    return sigv4.encode_signed_chunks(chunks, KEY, DATE, SCOPE, SEED, trailers=trailers)


def _signed_headers(total, trailer=None):
    h = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(total)}
    if trailer:
        h["x-amz-trailer"] = trailer
    return h


def test_signed_chunks_decode():
    chunks = [b"a" * 65536, b"b" * 4000, b"c"]
    data = b"".join(chunks)
    body = body_from_request(reader(_signed_body(chunks)), _signed_headers(len(data)), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    assert run(_drain(body)) == data


def test_bad_chunk_signature_is_signature_does_not_match():
    chunks = [b"a" * 100, b"b" * 100]
    wire = bytearray(_signed_body(chunks))
    wire[wire.index(b"\r\n") + 2 + 5] ^= 1  # flip a data bit of the first chunk
    body = body_from_request(reader(bytes(wire)), _signed_headers(200), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises(errors.SignatureDoesNotMatch):
        run(_drain(body))


def test_wrong_seed_signature_fails_first_chunk():
    body = body_from_request(reader(_signed_body([b"x" * 10])), _signed_headers(10), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, "0" * 64))
    with pytest.raises(errors.SignatureDoesNotMatch):
        run(_drain(body))


def test_reordered_chunks_fail():
    a = _signed_body([b"1" * 10, b"2" * 10])
    parts = a.split(b"\r\n")
    swapped = b"\r\n".join([parts[2], parts[3], parts[0], parts[1]] + parts[4:])
    body = body_from_request(reader(swapped), _signed_headers(20), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises(errors.SignatureDoesNotMatch):
        run(_drain(body))


@pytest.mark.parametrize("cut", [5, 40, 120, -3])
def test_truncated_chunked_body_is_incomplete(cut):
    wire = _signed_body([b"q" * 100])
    body = body_from_request(reader(wire[:cut]), _signed_headers(100), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises((errors.IncompleteBody, errors.SignatureDoesNotMatch)) as info:
        run(_drain(body))
    if cut != 120:  # cutting inside the final chunk header may also fail its signature
        assert isinstance(info.value, errors.IncompleteBody)


def test_decoded_length_mismatch():
    body = body_from_request(reader(_signed_body([b"q" * 100])), _signed_headers(150), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises(errors.IncompleteBody):
        run(_drain(body))
    body = body_from_request(reader(_signed_body([b"q" * 100])), _signed_headers(50), sigv4.STREAMING_PAYLOAD,
                             ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises(errors.IncompleteBody):
        run(_drain(body))


def test_missing_decoded_length():
    with pytest.raises(errors.MissingContentLength):
        body_from_request(reader(b""), {"content-encoding": "aws-chunked"}, sigv4.STREAMING_PAYLOAD, None)


def test_signed_trailer_verified():
    data = b"trailing" * 1000
    trailers = [("x-amz-checksum-crc32", crc32_b64(data))]
    wire = _signed_body([data[:5000], data[5000:]], trailers=trailers)
    body = body_from_request(reader(wire), _signed_headers(len(data), "x-amz-checksum-crc32"),
                             sigv4.STREAMING_PAYLOAD_TRAILER, ChunkChain(KEY, DATE, SCOPE, SEED))
    assert run(_drain(body)) == data
    # a trailer value changed after signing fails the trailer signature
    tampered = wire.replace(crc32_b64(data).encode(), crc32_b64(b"other").encode())
    body = body_from_request(reader(tampered), _signed_headers(len(data), "x-amz-checksum-crc32"),
                             sigv4.STREAMING_PAYLOAD_TRAILER, ChunkChain(KEY, DATE, SCOPE, SEED))
    with pytest.raises(errors.SignatureDoesNotMatch):
        run(_drain(body))


def _botocore_unsigned_trailer(data: bytes, algorithm: str = "crc32") -> bytes:
    from botocore.httpchecksum import AwsChunkedWrapper, _CHECKSUM_CLS
    import io
    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=_CHECKSUM_CLS[algorithm],
                             checksum_name=f"x-amz-checksum-{algorithm}", chunk_size=3000).read()


@pytest.mark.parametrize("algorithm", ["crc32", "sha1", "sha256"])
def test_botocore_unsigned_trailer_body(algorithm):
    data = bytes(range(256)) * 40
    wire = _botocore_unsigned_trailer(data, algorithm)
    headers = _signed_headers(len(data), f"x-amz-checksum-{algorithm}")
    body = body_from_request(reader(wire), headers, sigv4.STREAMING_UNSIGNED_TRAILER, None)
    assert run(_drain(body)) == data
    assert f"x-amz-checksum-{algorithm}" in body.trailers


def test_unsigned_trailer_with_wrong_checksum():
    data = b"z" * 5000
    wire = _botocore_unsigned_trailer(data).replace(crc32_b64(data).encode(), crc32_b64(b"nope").encode())
    body = body_from_request(reader(wire), _signed_headers(len(data), "x-amz-checksum-crc32"),
                             sigv4.STREAMING_UNSIGNED_TRAILER, None)
    with pytest.raises(errors.BadDigest):
        run(_drain(body))


def test_announced_trailer_missing():
    data = b"z" * 10
    wire = b"a\r\n" + data + b"\r\n0\r\n\r\n"
    body = body_from_request(reader(wire), _signed_headers(10, "x-amz-checksum-crc32"),
                             sigv4.STREAMING_UNSIGNED_TRAILER, None)
    with pytest.raises(errors.InvalidRequest):
        run(_drain(body))


def test_pieces_are_regrouped_to_the_requested_size():
    data = b"p" * 10_000

    async def sizes():
        body = body_from_request(reader(_signed_body([data[i:i + 700] for i in range(0, 10_000, 700)])),
                                 _signed_headers(10_000), sigv4.STREAMING_PAYLOAD, ChunkChain(KEY, DATE, SCOPE, SEED))
        out = [len(p) async for p in body.pieces(size=4096)]
        body.finish()
        return out
    got = run(sizes())
    assert sum(got) == 10_000 and all(s >= 4096 for s in got[:-1])
