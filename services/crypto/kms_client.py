"""The worker's calls to the kms: GenerateKey on PUT, Decrypt on GET, typed errors out.

Plaintext data keys returned here are handed straight to the key derivation and dropped;
they are never logged and never written anywhere.
"""
from __future__ import annotations

import grpc

from sealstore import errors
from sealstore.v1 import kms_pb2, kms_pb2_grpc

DEFAULT_TIMEOUT = 10.0


def _typed(exc: grpc.RpcError) -> errors.SealstoreError:
    err = errors.from_rpc_error(exc)
    if type(err) is errors.ServiceUnavailable:
        return errors.KMSUnavailable(err.message)
    return err


class KmsClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = DEFAULT_TIMEOUT):
        self._stub = kms_pb2_grpc.KeyServiceStub(channel)
        self._timeout = timeout

    async def generate_key(self, name: str, context: bytes) -> tuple[bytes, bytes]:
        """(plaintext DEK, DEK ciphertext bound to `context`); KMSNotFound, KMSDisabled, ..."""
        plaintext, ciphertext, _ = await self.generate_versioned_key(name, context)
        return plaintext, ciphertext

    async def generate_versioned_key(self, name: str, context: bytes) -> tuple[bytes, bytes, int]:
        """As generate_key, plus the key version the ciphertext is under (stored in the envelope
        so that `sealstore key rewrap` knows which objects are on an old version)."""
        try:
            reply = await self._stub.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=context),
                                                 timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _typed(exc) from None
        if len(reply.plaintext) != 32:
            raise errors.KMSUnavailable(f"the kms returned a data key of the wrong size for key {name!r}")
        return reply.plaintext, reply.ciphertext, reply.version

    async def decrypt(self, name: str, ciphertext: bytes, context: bytes) -> bytes:
        try:
            reply = await self._stub.Decrypt(
                kms_pb2.DecryptRequest(name=name, ciphertext=ciphertext, context=context), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _typed(exc) from None
        if len(reply.plaintext) != 32:
            raise errors.KMSUnavailable(f"the kms returned a data key of the wrong size for key {name!r}")
        return reply.plaintext
