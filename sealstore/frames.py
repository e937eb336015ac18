"""The bulk messages of the data path, written and read by hand, byte for byte as protobuf would.

Four messages carry an object's bytes between services: PutObjectRequest.data (gateway to
worker), WriteShardRequest.block (worker to storage), ShardBlock (storage to worker) and
GetObjectResponse.data (worker to gateway). Through protobuf, each payload was copied into the
message, serialised into a second buffer, parsed into a third and read out into a fourth; here
it is joined once behind its few header bytes when sent, and read as a view of the received
buffer. A fifth, CommitObjectRequest.shard_block (a one-stripe object's shard, carried with its
commit), is written by hand (`WithBlock`) and read by protobuf. The wire format is unchanged:
other clients (grpcurl, tests) see the same messages, and anything that is not exactly the
expected frame is parsed by protobuf as before.

The servers get them from sealstore.rpc's outermost interceptor (`SERVER_CODECS`), the clients
by `framed_stub` on their generated stubs (the gateway's crypto stubs, the erasure client's
storage stubs).
"""
from __future__ import annotations

from typing import Any, Callable

from sealstore.v1 import crypto_pb2, storage_pb2, types_pb2

DATA_FIELD = 2
"""The field number of the payload in all four messages."""
_DATA_TAG = bytes((DATA_FIELD << 3 | 2,))  # length-delimited
_INDEX_TAG = 1 << 3  # ShardBlock.index, varint


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ValueError if it runs off the end or past 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("bad varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class Payload:
    """A bulk message to send: `payload` as field 2 (and a ShardBlock's `index`)."""

    __slots__ = ("payload", "index")

    def __init__(self, payload, index: int = 0) -> None:
        self.payload = payload
        self.index = index

    def encode(self) -> bytes:
        head = _DATA_TAG + _varint(len(self.payload))
        if self.index:
            head = bytes((_INDEX_TAG,)) + _varint(self.index) + head
        return b"".join((head, self.payload))


class WithBlock:
    """A unary request with one bytes field written by hand: `message` (without that field)
    serialised by protobuf, then field `field` = `block` appended, joined once instead of copied
    into the message and again out of it. Protobuf reads the concatenation as the message with
    the field set; for a field numbered above all others it is byte for byte what protobuf
    writes (CommitObjectRequest.shard_block)."""

    __slots__ = ("message", "field", "block")

    def __init__(self, message: Any, field: int, block) -> None:
        self.message = message
        self.field = field
        self.block = block

    def encode(self) -> bytes:
        return b"".join((self.message.SerializeToString(), _varint(self.field << 3 | 2),
                         _varint(len(self.block)), self.block))


class DataView:
    """A received bulk message: what the code reading it uses of the protobuf message, with the
    payload as a view of the received buffer (no copy). `name` is the payload's field name."""

    __slots__ = ("_name", "_payload", "index")

    def __init__(self, name: str, payload, index: int = 0) -> None:
        self._name = name
        self._payload = payload
        self.index = index

    def WhichOneof(self, _group: str) -> str:  # noqa: N802 (protobuf's name)
        return self._name

    def HasField(self, name: str) -> bool:  # noqa: N802
        return name == self._name

    def __getattr__(self, name: str):
        if name == object.__getattribute__(self, "_name"):
            return object.__getattribute__(self, "_payload")
        raise AttributeError(name)


def payload_span(raw: bytes, with_index: bool = False) -> tuple[int, int] | None:
    """(index, offset of the payload) when `raw` is exactly [index field,] one field 2 running to
    its end, as the encoders above write it; None for anything else (protobuf parses those)."""
    try:
        pos, index = 0, 0
        if with_index and raw[:1] == bytes((_INDEX_TAG,)):
            index, pos = _read_varint(raw, 1)
        if raw[pos:pos + 1] != _DATA_TAG:
            return None
        length, pos = _read_varint(raw, pos + 1)
    except ValueError:
        return None
    if pos + length != len(raw):
        return None
    return index, pos


def serialize(message: Any) -> bytes:
    """A request or response serializer taking a Payload or any protobuf message."""
    if type(message) is Payload or type(message) is WithBlock:
        return message.encode()
    return message.SerializeToString()


def _view_deserializer(message_class, name: str, *, with_index: bool = False,
                       as_bytes: bool = False) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes):
        span = payload_span(raw, with_index)
        if span is None:
            return message_class.FromString(raw)
        index, offset = span
        # `as_bytes`: the reader needs bytes (pyeclib aborts the process on a memoryview).
        payload = raw[offset:] if as_bytes else memoryview(raw)[offset:]
        return DataView(name, payload, index)
    return deserialize


read_put_request = _view_deserializer(crypto_pb2.PutObjectRequest, "data")
read_get_response = _view_deserializer(crypto_pb2.GetObjectResponse, "data")
read_write_shard_request = _view_deserializer(storage_pb2.WriteShardRequest, "block")
read_shard_block = _view_deserializer(storage_pb2.ShardBlock, "block", with_index=True, as_bytes=True)

_CRYPTO = "/sealstore.v1.CryptoService/"
_STORAGE = "/sealstore.v1.StorageService/"

SERVER_CODECS: dict[str, tuple[Callable | None, Callable | None]] = {
    # method: (request deserializer, response serializer); None keeps the generated one.
    _CRYPTO + "PutObject": (read_put_request, None),
    _CRYPTO + "GetObject": (None, serialize),
    _STORAGE + "WriteShard": (read_write_shard_request, None),
    _STORAGE + "ReadShard": (None, serialize),
}


_CLIENT_CODECS = {  # service: (stub attribute, call kind, request serializer, response deserializer)
    "crypto": [("PutObject", "stream_unary", serialize, crypto_pb2.PutObjectResponse.FromString),
               ("GetObject", "unary_stream", crypto_pb2.GetObjectRequest.SerializeToString, read_get_response)],
    "storage": [("WriteShard", "stream_unary", serialize, storage_pb2.WriteShardResponse.FromString),
                ("ReadShard", "unary_stream", storage_pb2.ReadShardRequest.SerializeToString, read_shard_block),
                ("CommitObject", "unary_unary", serialize, types_pb2.Empty.FromString)],
}
_PREFIXES = {"crypto": _CRYPTO, "storage": _STORAGE}


def framed_stub(stub, channel, service: str) -> None:
    """Points the bulk methods of a generated stub of `service` ("crypto" or "storage") at the
    hand-written codecs; its other methods stay as generated."""
    for name, kind, write, read in _CLIENT_CODECS[service]:
        setattr(stub, name, getattr(channel, kind)(_PREFIXES[service] + name, request_serializer=write,
                                                   response_deserializer=read))
