"""KeyService over gRPC: converts protobuf to KeyManager calls and back, nothing more.

Calls that write or scan the keystore run in a thread so fsyncs never stall the event loop;
GenerateKey/Decrypt/DescribeKey hit the keystore's cache and stay on the loop.
"""
from __future__ import annotations

import asyncio

from sealstore.rpc import peer_identity
from sealstore.v1 import kms_pb2, kms_pb2_grpc, types_pb2
from services.kms.service import KeyInfo, KeyManager


def _key_info(info: KeyInfo) -> kms_pb2.KeyInfo:
    return kms_pb2.KeyInfo(name=info.name, algorithm=info.algorithm, created_ns=info.created_ns,
                           created_by=info.created_by, enabled=info.enabled)


class KeyServiceServicer(kms_pb2_grpc.KeyServiceServicer):
    def __init__(self, manager: KeyManager) -> None:
        self.manager = manager

    async def CreateKey(self, request, context):
        info = await asyncio.to_thread(self.manager.create_key, request.name, peer_identity(context))
        return _key_info(info)

    async def ImportKey(self, request, context):
        info = await asyncio.to_thread(self.manager.import_key, request.name, request.key, peer_identity(context))
        return _key_info(info)

    async def DescribeKey(self, request, context):
        return _key_info(self.manager.describe_key(request.name))

    async def ListKeys(self, request, context):
        infos = await asyncio.to_thread(self.manager.list_keys, request.pattern)
        return kms_pb2.ListKeysResponse(keys=[_key_info(i) for i in infos])

    async def DeleteKey(self, request, context):
        await asyncio.to_thread(self.manager.delete_key, request.name, peer_identity(context))
        return types_pb2.Empty()

    async def DisableKey(self, request, context):
        info = await asyncio.to_thread(self.manager.disable_key, request.name, peer_identity(context))
        return _key_info(info)

    async def EnableKey(self, request, context):
        info = await asyncio.to_thread(self.manager.enable_key, request.name, peer_identity(context))
        return _key_info(info)

    async def GenerateKey(self, request, context):
        dek = self.manager.generate_key(request.name, request.context)
        return kms_pb2.GenerateKeyResponse(plaintext=dek.plaintext, ciphertext=dek.ciphertext)

    async def Decrypt(self, request, context):
        plaintext = self.manager.decrypt(request.name, request.ciphertext, request.context)
        return kms_pb2.DecryptResponse(plaintext=plaintext)

    async def Status(self, request, context):
        status = await asyncio.to_thread(self.manager.status, peer_identity(context))
        return kms_pb2.StatusResponse(version=status.version, keystore=status.keystore,
                                      key_count=status.key_count, uptime_seconds=status.uptime_seconds,
                                      caller_identity=status.caller_identity)
