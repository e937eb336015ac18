"""PUT and GET through the crypto worker's real pipelines (services/crypto/put_pipeline.py and
get_pipeline.py), for tests that run them over the storage fake."""
from __future__ import annotations

import random

from services.crypto.get_pipeline import RangeRequest, open_object
from services.crypto.put_pipeline import BodyEnd, PutHeader, SseKms, put_object


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def body(data: bytes, chunk: int = 256 * 1024, end: int | None = None):
    for off in range(0, len(data), chunk):
        yield data[off:off + chunk]
    yield BodyEnd(len(data) if end is None else end)


async def put(store, bucket: str, key: str, data: bytes, *, kms=None, key_name: str = "",
              content_length: int | None = None, end: int | None = None):
    header = PutHeader(bucket=bucket, key=key, sse_kms=SseKms(key_name) if key_name else None,
                       content_length=len(data) if content_length is None else content_length)
    return await put_object(store, kms, header, body(data, end=end))


async def get(store, bucket: str, key: str, *, kms=None, first: int | None = None, last: int = -1) -> bytes:
    requested = None if first is None else RangeRequest(first=first, last=last)
    reader = await open_object(store, kms, bucket, key, requested)
    return b"".join([chunk async for chunk in reader.chunks()])
