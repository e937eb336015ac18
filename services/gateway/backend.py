"""The gateway's gRPC peers: crypto workers (object data), kms (DescribeKey only), erasure sets (metadata)."""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import grpc

from sealstore import config, errors, frames
from sealstore.config import Topology
from sealstore.rpc import aio_channel
from sealstore.v1 import crypto_pb2_grpc, kms_pb2, kms_pb2_grpc, types_pb2

ROLE = "gateway"
BUCKET_CACHE_SECONDS = 1.0
"""How long a bucket's info (existence, default encryption) is reused; this gateway's own
bucket operations invalidate it at once, other gateways' changes show up within this delay."""
KEY_CHECK_SECONDS = float(os.environ.get("SEALSTORE_GATEWAY_KEY_CHECK_SECONDS", "5"))
"""How long a key the kms described as usable is taken as usable without asking again.

The check only lets a PUT naming a missing or disabled key fail before its body is read; the
crypto worker's GenerateKey stays the authority. So a key disabled or deleted up to this long
ago can pass here, and its PUT is then refused by the worker (still before the body is needed,
and the worker answers at once): never an object under a disabled key, only a later refusal.
Only "usable" answers are kept (a key just created or enabled is usable at once), and any
failed upload forgets its key, so the next PUT asks the kms again."""
MAX_CACHED_KEYS = 4096
"""Bound on the cache of usable keys (key names come from clients)."""


class Backend:
    def __init__(self, topology: Topology, certs: Path, instance: str | None = None):
        """`instance`: this gateway's certificate (default $SEALSTORE_INSTANCE, else gateway-0)."""
        from sealstore.erasure.client import connect

        instance = config.instance_name(ROLE, instance)
        self._channels = [aio_channel(certs, instance, addr, server="crypto") for addr in topology.crypto]
        self._crypto = [crypto_pb2_grpc.CryptoServiceStub(ch) for ch in self._channels]
        for stub, ch in zip(self._crypto, self._channels):
            frames.framed_stub(stub, ch, "crypto")
        self._next = itertools.cycle(range(len(self._crypto)))
        self._kms_channel = aio_channel(certs, instance, topology.kms, server="kms")
        self.kms = kms_pb2_grpc.KeyServiceStub(self._kms_channel)
        self.erasure = connect(topology, certs, instance)  # routes objects to their erasure set
        self._buckets: dict[str, tuple[float, types_pb2.BucketInfo]] = {}
        self._usable_keys: dict[str, float] = {}  # key name -> when the kms said it is usable

    def crypto(self) -> crypto_pb2_grpc.CryptoServiceStub:
        """The next crypto worker, round-robin."""
        return self._crypto[next(self._next)]

    async def describe_key(self, name: str) -> kms_pb2.KeyInfo:
        try:
            return await self.kms.DescribeKey(kms_pb2.KeyRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    async def check_key_usable(self, name: str, *, fresh: bool = False) -> None:
        """KMSNotFound, KMSDisabled or KMSPendingDeletion unless the kms says `name` can take new
        data keys (`fresh`: ask even if it said so less than KEY_CHECK_SECONDS ago)."""
        now = time.monotonic()
        seen = self._usable_keys.get(name)
        if not fresh and seen is not None and now - seen < KEY_CHECK_SECONDS:
            return
        self._usable_keys.pop(name, None)
        try:
            info = await self.describe_key(name)
        except errors.ServiceUnavailable as e:
            raise errors.KMSUnavailable(e.message) from None
        if not info.enabled:
            if info.deletion_ns:
                raise errors.KMSPendingDeletion(f"The KMS key {name!r} is pending deletion.")
            raise errors.KMSDisabled(f"The KMS key {name!r} is disabled.")
        if fresh:
            return  # a configuration check (bucket default): only uploads warm the cache
        while len(self._usable_keys) >= MAX_CACHED_KEYS:
            self._usable_keys.pop(next(iter(self._usable_keys)))  # the oldest answer
        self._usable_keys[name] = now

    def forget_key(self, name: str) -> None:
        self._usable_keys.pop(name, None)

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
