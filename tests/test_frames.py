"""sealstore.frames: the hand-written bulk messages are byte for byte what protobuf writes, read
back as protobuf reads them, and anything else falls back to protobuf (same answer, same error)."""
from __future__ import annotations

import asyncio
import os
import random

import grpc
import pytest
from google.protobuf.message import DecodeError

from sealstore import frames, rpc, tls
from sealstore.v1 import crypto_pb2, storage_pb2, storage_pb2_grpc

SIZES = [0, 1, 127, 128, 16383, 16384, 65536 + 32, 1 << 20]
INDEXES = [0, 1, 127, 128, 300, 1 << 40]

# (message class, payload field, reader, carries an index)
BULK = [
    (crypto_pb2.PutObjectRequest, "data", frames.read_put_request, False),
    (crypto_pb2.GetObjectResponse, "data", frames.read_get_response, False),
    (storage_pb2.WriteShardRequest, "block", frames.read_write_shard_request, False),
    (storage_pb2.ShardBlock, "block", frames.read_shard_block, True),
]


@pytest.mark.parametrize("cls,field,read,indexed", BULK)
@pytest.mark.parametrize("size", SIZES)
def test_written_as_protobuf_writes_it_and_read_back(cls, field, read, indexed, size):
    payload = os.urandom(size)
    for index in INDEXES if indexed else [0]:
        reference = cls(**{field: payload, **({"index": index} if indexed else {})})
        encoded = frames.Payload(payload, index).encode()
        if not (indexed and not payload):
            assert encoded == reference.SerializeToString()
        # (ShardBlock.block is no oneof member: protobuf omits it when empty, the frame states
        # its empty length; both read back as the same message.)
        assert cls.FromString(encoded) == reference
        view = read(encoded)
        assert bytes(getattr(view, field)) == payload
        assert view.index == index
        if not indexed:
            assert view.WhichOneof("message") == field and view.HasField(field)
            assert not view.HasField("header")


@pytest.mark.parametrize("size", SIZES)
def test_a_commit_with_its_shard_block_is_written_as_protobuf_writes_it(size):
    """CommitObjectRequest.shard_block is appended by hand: it is the highest field number, so
    protobuf writes it last too, and the bytes must be the same."""
    from sealstore.v1 import types_pb2
    block = os.urandom(size)
    meta = types_pb2.ObjectMeta(bucket="b", key="k", data_id="d" * 32, size=size,
                                erasure=types_pb2.ErasureLayout(data_shards=2, parity_shards=2, stripe_count=1))
    fields = dict(upload_id="d" * 32, meta=meta, drive=3, part_uploads={"p": "q"})
    reference = storage_pb2.CommitObjectRequest(**fields, shard_block=block)
    field = storage_pb2.CommitObjectRequest.SHARD_BLOCK_FIELD_NUMBER
    assert field == max(f.number for f in storage_pb2.CommitObjectRequest.DESCRIPTOR.fields)
    encoded = frames.serialize(frames.WithBlock(storage_pb2.CommitObjectRequest(**fields), field, block))
    assert storage_pb2.CommitObjectRequest.FromString(encoded) == reference
    if block:  # protobuf leaves an empty bytes field out; the frame states its empty length
        assert encoded == reference.SerializeToString()


def test_shard_blocks_are_read_as_bytes():
    # pyeclib aborts the whole process when handed a memoryview: decoded blocks must be bytes.
    view = frames.read_shard_block(frames.Payload(b"abc", 3).encode())
    assert type(view.block) is bytes


@pytest.mark.parametrize("cls,field,read,indexed", BULK)
def test_other_messages_are_parsed_by_protobuf(cls, field, read, indexed):
    others = {
        crypto_pb2.PutObjectRequest: [crypto_pb2.PutObjectRequest(header=crypto_pb2.PutObjectHeader(bucket="b", key="k")),
                                      crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(size=5))],
        crypto_pb2.GetObjectResponse: [crypto_pb2.GetObjectResponse(head=crypto_pb2.GetObjectHead(offset=3, length=9))],
        storage_pb2.WriteShardRequest: [storage_pb2.WriteShardRequest(
            header=storage_pb2.WriteShardHeader(upload_id="u", bucket="b"))],
        storage_pb2.ShardBlock: [storage_pb2.ShardBlock(index=7)],
    }[cls]
    for message in [*others, cls()]:
        raw = message.SerializeToString()
        assert read(raw) == message
        assert frames.serialize(message) == raw


@pytest.mark.parametrize("cls,field,read,indexed", BULK)
def test_hostile_bytes_get_protobufs_answer(cls, field, read, indexed):
    """Truncated, padded, doubled, overlong and random frames: the reader answers exactly what
    protobuf answers (the same payload, or the same refusal), never a different payload."""
    rng = random.Random(1234)
    good = frames.Payload(b"x" * 300, 5 if indexed else 0).encode()
    cases = [good[:-1], good + b"\x00", good + good, good[:2], b"\x12", b"\x12\xff", b"\x12" + b"\xff" * 11,
             b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x08" + b"\xff" * 11 + b"\x12\x00",
             b"\x08\x01\x08\x02\x12\x01a", b"\x12\x01a\x08\x05"]
    cases += [rng.randbytes(rng.randrange(0, 40)) for _ in range(3000)]
    cases += [bytes([0x12, n]) + rng.randbytes(rng.randrange(0, 200)) for n in range(0, 200, 3)]
    for raw in cases:
        try:
            expected = cls.FromString(raw)
        except DecodeError:
            with pytest.raises(DecodeError):
                read(raw)
            continue
        got = read(raw)
        if isinstance(got, frames.DataView):
            assert bytes(getattr(got, field)) == getattr(expected, field)
            assert got.index == (expected.index if indexed else 0)
            assert not indexed and expected.WhichOneof("message") == field or indexed
        else:
            assert got == expected


class _Blocks(storage_pb2_grpc.StorageServiceServicer):
    async def ReadShard(self, request, context):
        for index in range(request.first_block, request.first_block + request.block_count):
            yield frames.Payload(bytes([index]) * 1000, index)

    async def WriteShard(self, request_iterator, context):
        total = 0
        async for request in request_iterator:
            if request.WhichOneof("message") == "block":
                total += len(request.block)
        return storage_pb2.WriteShardResponse(bytes=total)


def test_a_plain_protobuf_client_talks_to_a_framed_server(tmp_path):
    """grpcurl and other clients know nothing of sealstore.frames: the wire is protobuf's."""
    certs = tmp_path / "certs"
    tls.ensure_dev_pki(certs)

    async def go():
        server = rpc.build_server(certs=certs, role="storage", listen="127.0.0.1:0", services=[
            (storage_pb2_grpc.add_StorageServiceServicer_to_server, _Blocks(), "sealstore.v1.StorageService")])
        await server.start()
        try:
            channel = grpc.aio.secure_channel(f"127.0.0.1:{server.bound_port}",
                                              rpc.channel_credentials(certs, "crypto"),
                                              options=rpc.channel_options("storage"))
            plain = storage_pb2_grpc.StorageServiceStub(channel)
            framed = storage_pb2_grpc.StorageServiceStub(channel)
            frames.framed_stub(framed, channel, "storage")
            request = storage_pb2.ReadShardRequest(first_block=2, block_count=3)
            got = [b async for b in plain.ReadShard(request)]
            assert got == [storage_pb2.ShardBlock(index=i, block=bytes([i]) * 1000) for i in (2, 3, 4)]
            views = [b async for b in framed.ReadShard(request)]
            assert [(v.index, v.block) for v in views] == [(i, bytes([i]) * 1000) for i in (2, 3, 4)]

            async def blocks(as_payload: bool):
                yield storage_pb2.WriteShardRequest(header=storage_pb2.WriteShardHeader(upload_id="u"))
                for n in (10, 20):
                    yield frames.Payload(b"b" * n) if as_payload else storage_pb2.WriteShardRequest(block=b"b" * n)
            assert (await plain.WriteShard(blocks(False))).bytes == 30
            assert (await framed.WriteShard(blocks(True))).bytes == 30
            await channel.close()
        finally:
            await server.stop(None)
    asyncio.run(go())
