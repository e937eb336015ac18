"""KeyService over gRPC: converts protobuf to KeyManager calls and back, nothing more.

Calls that write or scan the keystore run in a thread so fsyncs and network round trips never
stall the event loop; data-key calls do too when the backend is remote (OpenBao), and stay on
the loop for the fs backend, whose keys are cached in memory.
"""
from __future__ import annotations

import asyncio

from sealstore.rpc import peer_identity
from sealstore.v1 import kms_pb2, kms_pb2_grpc, types_pb2
from services.kms.service import KeyInfo, KeyManager


def key_info_message(info: KeyInfo) -> kms_pb2.KeyInfo:
    return kms_pb2.KeyInfo(name=info.name, algorithm=info.algorithm, created_ns=info.created_ns,
                           created_by=info.created_by, enabled=info.enabled, version=info.version,
                           min_version=info.min_version, deletion_ns=info.deletion_ns)


class KeyServiceServicer(kms_pb2_grpc.KeyServiceServicer):
    def __init__(self, manager: KeyManager) -> None:
        self.manager = manager

    async def _fast(self, fn, *args):
        """Runs a call that is cheap with a local backend on the loop, else in a thread."""
        if self.manager.may_block:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def CreateKey(self, request, context):
        info = await asyncio.to_thread(self.manager.create_key, request.name, peer_identity(context))
        return key_info_message(info)

    async def ImportKey(self, request, context):
        info = await asyncio.to_thread(self.manager.import_key, request.name, request.key, peer_identity(context))
        return key_info_message(info)

    async def DescribeKey(self, request, context):
        return key_info_message(await self._fast(self.manager.describe_key, request.name))

    async def ListKeys(self, request, context):
        infos = await asyncio.to_thread(self.manager.list_keys, request.pattern)
        return kms_pb2.ListKeysResponse(keys=[key_info_message(i) for i in infos])

    async def DeleteKey(self, request, context):
        await asyncio.to_thread(lambda: self.manager.delete_key(
            request.name, peer_identity(context), pending_window_days=request.pending_window_days))
        return types_pb2.Empty()

    async def CancelKeyDeletion(self, request, context):
        info = await asyncio.to_thread(self.manager.cancel_key_deletion, request.name, peer_identity(context))
        return key_info_message(info)

    async def DisableKey(self, request, context):
        info = await asyncio.to_thread(self.manager.disable_key, request.name, peer_identity(context))
        return key_info_message(info)

    async def EnableKey(self, request, context):
        info = await asyncio.to_thread(self.manager.enable_key, request.name, peer_identity(context))
        return key_info_message(info)

    async def RotateKey(self, request, context):
        info = await asyncio.to_thread(self.manager.rotate_key, request.name, peer_identity(context))
        return key_info_message(info)

    async def SetMinVersion(self, request, context):
        info = await asyncio.to_thread(self.manager.set_min_version, request.name, request.min_version,
                                       peer_identity(context))
        return key_info_message(info)

    async def ReWrap(self, request, context):
        wrapped = await self._fast(self.manager.rewrap, request.name, request.ciphertext, request.context)
        return kms_pb2.ReWrapResponse(ciphertext=wrapped.ciphertext, version=wrapped.version)

    async def GenerateKey(self, request, context):
        dek = await self._fast(self.manager.generate_key, request.name, request.context)
        return kms_pb2.GenerateKeyResponse(plaintext=dek.plaintext, ciphertext=dek.ciphertext, version=dek.version)

    async def Decrypt(self, request, context):
        opened = await self._fast(self.manager.decrypt_versioned, request.name, request.ciphertext, request.context)
        return kms_pb2.DecryptResponse(plaintext=opened.plaintext, version=opened.version)

    async def Status(self, request, context):
        status = await asyncio.to_thread(self.manager.status, peer_identity(context))
        return kms_pb2.StatusResponse(version=status.version, keystore=status.keystore,
                                      key_count=status.key_count, uptime_seconds=status.uptime_seconds,
                                      caller_identity=status.caller_identity,
                                      keystore_reachable=status.keystore_reachable)


_key_info = key_info_message  # the foundation's name, kept for callers of it
