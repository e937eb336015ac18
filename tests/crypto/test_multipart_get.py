"""GET of completed multipart objects through the worker's real GET pipeline, in-process: whole,
ranged across part boundaries against the concatenated plaintext, ?partNumber, stripes read only
where needed, and part lists that were edited on the drives."""
from __future__ import annotations

import collections
import time

import pytest

from sealstore import errors
from sealstore import multipart as naming
from sealstore.v1 import types_pb2
from services.crypto import multipart
from services.crypto.copy import CopyRequest, copy_object
from services.crypto.get_pipeline import ObjectReader, RangeRequest, ResolvedRange, open_object
from services.crypto.sealing import PartTarget, PutHeader, SseKms, open_object_key
from tests.fakes.kms import InProcessKms
from tests.fakes.objects import body, get, payload, put
from tests.fakes.real_storage import RealStorage

BUCKET = "mpget-bucket"
KEY_NAME = "mp-key"
# Parts that end inside a package, on a package boundary, inside a stripe, and a tiny one.
PART_SIZES = [1_100_000, 65_536, 3, 200_001]


class Storage(RealStorage):
    """Real drive code in this process (tests/fakes/real_storage.py), counting calls per method."""

    def __init__(self, root):
        super().__init__(root)
        self.calls: collections.Counter = collections.Counter()
        for channel in self.channels.values():
            channel.before_call = self._count

    async def _count(self, method: str) -> None:
        self.calls[method] += 1


async def complete(store, record: types_pb2.ObjectMeta, numbers: list[int]) -> types_pb2.ObjectMeta:
    """CompleteMultipartUpload as the gateway does it: the listed parts, storage CompleteMultipart."""
    upload = record.upload
    one = store.set_for_upload(upload.bucket, upload.key)
    entries, _ = await one.list_objects(naming.SYSTEM_BUCKET, naming.parts_prefix(upload.bucket, upload.upload_id),
                                        "", 1000)
    listed = {e.part.number: e.part for e in entries}
    parts = [listed[n] for n in numbers]
    meta = types_pb2.ObjectMeta(
        format_version=1, bucket=upload.bucket, key=upload.key, data_id=upload.upload_id,
        size=sum(p.size for p in parts), stored_size=sum(p.stored_size for p in parts),
        etag=naming.multipart_etag([p.etag for p in parts]), mtime_ns=time.time_ns(),
        content_type=record.content_type, user_metadata=record.user_metadata, erasure=record.erasure, parts=parts)
    if record.HasField("encryption"):
        meta.encryption.CopyFrom(record.encryption)
    await store.complete_multipart(meta)
    return meta


async def upload_object(store, client, key: str, sizes: list[int], *, sse: bool = True):
    """A completed multipart object of parts `sizes` (numbered 1, 3, 5, ...); its plaintext."""
    header = PutHeader(bucket=BUCKET, key=key, sse_kms=SseKms(KEY_NAME) if sse else None)
    upload_id, record = await multipart.create_upload(store, client, header)
    datas, numbers = [], []
    for i, size in enumerate(sizes):
        number = 2 * i + 1
        data = payload(size, seed=number)
        await multipart.upload_part(store, client, PutHeader(
            bucket=BUCKET, key=key, content_length=size, part=PartTarget(upload_id, number)), body(data))
        datas.append(data)
        numbers.append(number)
    return await complete(store, record, numbers), b"".join(datas)


def run(storage, kms, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store, kms.client())
    return storage.run(go)


async def read(store, client, key, requested=None, part_number=0) -> tuple[bytes, object]:
    reader = await open_object(store, client, BUCKET, key, requested, part_number=part_number)
    return b"".join([c async for c in reader.chunks()]), reader.range


def boundaries() -> list[int]:
    out, total = [], 0
    for size in PART_SIZES:
        total += size
        out.append(total)
    return out


@pytest.mark.parametrize("sse", [True, False])
def test_whole_and_ranged_reads_across_parts(tmp_path, sse):
    storage, kms = Storage(tmp_path), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        meta, data = await upload_object(store, client, "obj", PART_SIZES, sse=sse)
        size = len(data)
        assert meta.size == size and [p.number for p in meta.parts] == [1, 3, 5, 7]
        assert (await read(store, client, "obj"))[0] == data
        ends = boundaries()
        cases = [(0, 0), (ends[0] - 1, ends[0]), (ends[0] - 10, ends[2] + 10), (ends[1], ends[1] + 2),
                 (65_536 * 3 + 5, ends[0] + 70_000), (ends[2] - 1, size - 1), (size - 1, size - 1)]
        for first, last in cases:
            got, resolved = await read(store, client, "obj", RangeRequest(first=first, last=last))
            assert got == data[first:last + 1], (first, last)
            assert (resolved.offset, resolved.length) == (first, last - first + 1)
        assert (await read(store, client, "obj", RangeRequest(first=ends[1] - 1)))[0] == data[ends[1] - 1:]
        for n in (1, 4, 200_005, size + 9):
            assert (await read(store, client, "obj", RangeRequest(is_suffix=True, suffix_length=n)))[0] == data[-n:]
        with pytest.raises(errors.InvalidRange):
            await read(store, client, "obj", RangeRequest(first=size))
    run(storage, kms, test)


def test_a_range_inside_one_part_reads_only_that_part(tmp_path):
    storage, kms = Storage(tmp_path), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        meta, data = await upload_object(store, client, "obj", PART_SIZES)
        before = storage.calls["ReadShard"]
        start = boundaries()[1] + 1  # inside the tiny third part
        got, _ = await read(store, client, "obj", RangeRequest(first=start, last=start + 1))
        assert got == data[start:start + 2]
        # k = 2 members, one shard stream each, for the one part: no other part is opened.
        assert storage.calls["ReadShard"] - before == 2
    run(storage, kms, test)


def test_part_number_reads_that_part(tmp_path):
    storage, kms = Storage(tmp_path), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        meta, data = await upload_object(store, client, "obj", PART_SIZES)
        ends = [0, *boundaries()]
        for index, number in enumerate([1, 3, 5, 7]):
            got, resolved = await read(store, client, "obj", part_number=number)
            assert got == data[ends[index]:ends[index + 1]]
            assert (resolved.offset, resolved.length, resolved.is_range) == (ends[index], PART_SIZES[index], True)
        for missing in (2, 8, 10_000):
            with pytest.raises(errors.InvalidPartNumber):
                await read(store, client, "obj", part_number=missing)
        with pytest.raises(errors.InvalidRequest):
            await read(store, client, "obj", RangeRequest(first=0, last=1), part_number=1)
        # A plain object is its own part 1.
        await put(store, BUCKET, "single", b"single object", kms=client, key_name=KEY_NAME)
        assert (await read(store, client, "single", part_number=1))[0] == b"single object"
        with pytest.raises(errors.InvalidPartNumber):
            await read(store, client, "single", part_number=2)
    run(storage, kms, test)


@pytest.mark.parametrize("edit", ["swap_nonces", "reorder", "drop_nonce", "size"])
def test_an_edited_part_list_never_yields_plaintext(tmp_path, edit):
    storage, kms = Storage(tmp_path), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        meta, _ = await upload_object(store, client, "obj", [70_000, 70_000])
        edited = types_pb2.ObjectMeta()
        edited.CopyFrom(meta)
        a, b = edited.parts[0], edited.parts[1]
        if edit == "swap_nonces":
            a.key_nonce, b.key_nonce = bytes(b.key_nonce), bytes(a.key_nonce)
        elif edit == "reorder":
            a.number, b.number = b.number, a.number
        elif edit == "drop_nonce":
            b.key_nonce = b""
        else:
            edited.size += 1
        # The reader as open_object makes it, over metadata edited on the drives.
        oek = await open_object_key(client, meta, BUCKET, "obj")
        reader = ObjectReader(store, BUCKET, "obj", edited, ResolvedRange(0, meta.size, False), oek, [0, 1, 2, 3])
        with pytest.raises(errors.ObjectTampered):
            b"".join([c async for c in reader.chunks()])
    run(storage, kms, test)


def test_copy_of_a_multipart_object_to_another_key(tmp_path):
    storage, kms = Storage(tmp_path), InProcessKms()
    kms.create_key(KEY_NAME)
    kms.create_key("other-key")

    async def test(store, client):
        meta, data = await upload_object(store, client, "obj", PART_SIZES)
        copied = await copy_object(store, client, CopyRequest(BUCKET, "obj", PutHeader(
            bucket=BUCKET, key="copy", sse_kms=SseKms("other-key"))))
        assert not copied.parts and copied.encryption.kms_key_name == "other-key"
        assert await get(store, BUCKET, "copy", kms=client) == data
        # Onto itself: the multipart object becomes a single stream under the other key.
        moved = await copy_object(store, client, CopyRequest(BUCKET, "obj", PutHeader(
            bucket=BUCKET, key="obj", sse_kms=SseKms("other-key"))))
        assert not moved.parts and await get(store, BUCKET, "obj", kms=client) == data
    run(storage, kms, test)
