"""The gateway's gRPC peers: crypto workers (object data), kms (DescribeKey only), erasure sets (metadata)."""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc

from sealstore import config, errors
from sealstore.config import Topology
from sealstore.rpc import aio_channel
from sealstore.v1 import crypto_pb2_grpc, kms_pb2, kms_pb2_grpc, types_pb2

ROLE = "gateway"
BUCKET_CACHE_SECONDS = 1.0
"""How long a bucket's info (existence, default encryption) is reused; this gateway's own
bucket operations invalidate it at once, other gateways' changes show up within this delay."""


class Backend:
    def __init__(self, topology: Topology, certs: Path, instance: str | None = None):
        """`instance`: this gateway's certificate (default $SEALSTORE_INSTANCE, else gateway-0)."""
        from sealstore.erasure.client import connect

        instance = config.instance_name(ROLE, instance)
        self._channels = [aio_channel(certs, instance, addr, server="crypto") for addr in topology.crypto]
        self._crypto = [crypto_pb2_grpc.CryptoServiceStub(ch) for ch in self._channels]
        self._next = itertools.cycle(range(len(self._crypto)))
        self._kms_channel = aio_channel(certs, instance, topology.kms, server="kms")
        self.kms = kms_pb2_grpc.KeyServiceStub(self._kms_channel)
        self.erasure = connect(topology, certs, instance)  # routes objects to their erasure set
        self._buckets: dict[str, tuple[float, types_pb2.BucketInfo]] = {}

    def crypto(self) -> crypto_pb2_grpc.CryptoServiceStub:
        """The next crypto worker, round-robin."""
        return self._crypto[next(self._next)]

    async def describe_key(self, name: str) -> kms_pb2.KeyInfo:
        try:
            return await self.kms.DescribeKey(kms_pb2.KeyRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    async def bucket(self, name: str) -> types_pb2.BucketInfo:
        """Bucket info (NoSuchBucket if absent), cached for BUCKET_CACHE_SECONDS."""
        hit = self._buckets.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < BUCKET_CACHE_SECONDS:
            return hit[1]
        info = await self.erasure.get_bucket(name)
        self._buckets[name] = (now, info)
        return info

    def forget_bucket(self, name: str) -> None:
        self._buckets.pop(name, None)

    async def close(self) -> None:
        await self.erasure.close()
        for ch in [*self._channels, self._kms_channel]:
            await ch.close()
